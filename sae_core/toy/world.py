"""Build the offline toy world: corpus -> byte-level BPE tokenizer -> small GPT-2, as an HF folder.

Everything is a pure function of ``ToyWorldConfig`` (seeded, single-threaded, deterministic
kernels), so building twice gives byte-identical files. The result is an ordinary Hugging Face
model folder: every later step loads it exactly like ``gpt2``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from sae_core.progress import Progress
from sae_core.toy.corpus import generate_corpus

if TYPE_CHECKING:  # torch loads on first use: config validation and cached runs never need it
    import torch

BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


TOY_MODEL = "toy"  # the model name that means "build the toy world here"


class ToyWorldConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    n_documents: int = Field(12_000, gt=0)
    vocab_size: int = Field(1024, ge=300)
    n_layer: int = Field(2, ge=1)
    d_model: int = Field(128, ge=16)
    n_head: int = Field(4, ge=1)
    n_ctx: int = Field(128, ge=16)
    train_steps: int = Field(500, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)


@dataclass
class ToyWorld:
    folder: Path
    model_dir: Path
    train_stats: dict


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2 style byte-level BPE tokenizer, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        unk_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1024,
    )


def pack_tokens(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Documents joined by BOS and cut into [n, seq_len] windows, each starting with BOS."""
    import torch

    ids: list[int] = []
    for encoding in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoding + [tokenizer.bos_token_id])
    body = seq_len - 1
    n = len(ids) // body
    windows = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    bos = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, windows], dim=1)


def train_language_model(cfg: ToyWorldConfig, tokenizer, tokens: torch.Tensor, progress: bool = True):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    model_cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_ctx,
        n_ctx=cfg.n_ctx,  # as in the hub gpt2 config.json; TransformerLens reads it
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.d_model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(model_cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, cfg.train_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up then cosine to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, cfg.train_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses = []
    bar = Progress(cfg.train_steps, "toy LM training", unit="step", show=progress)
    for _ in range(cfg.train_steps):
        batch = tokens[torch.randint(len(tokens), (cfg.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model, losses


def build_toy_world(out_dir: Path, cfg: ToyWorldConfig = ToyWorldConfig(), progress: bool = True) -> ToyWorld:
    """Write corpus-trained tokenizer + model to ``out_dir/model`` (an HF folder)."""
    import torch

    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    started = time.perf_counter()
    # Deterministic, reproducible kernels; restored afterwards so callers keep their settings.
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        texts = [doc.text for doc in generate_corpus(cfg.n_documents, seed=cfg.seed)]
        tokenizer = train_tokenizer(texts, cfg.vocab_size)
        tokens = pack_tokens(tokenizer, texts, cfg.n_ctx)
        model, losses = train_language_model(cfg, tokenizer, tokens, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    stats = {
        "config": cfg.model_dump(),
        "train_tokens": int(tokens.numel()),
        "final_loss": float(sum(losses[-20:]) / len(losses[-20:])),
        "first_loss": float(losses[0]),
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    # Wall time differs between builds; keep it out of the model folder so files stay identical.
    (out_dir / "train_stats.json").write_text(json.dumps({k: v for k, v in stats.items() if k != "build_seconds"}, indent=2))
    return ToyWorld(folder=out_dir, model_dir=model_dir, train_stats=stats)
