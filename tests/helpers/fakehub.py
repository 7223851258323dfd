"""A synthetic Hugging Face hub cache for the hub presets (``gpt2-small``, ``gemma-2-2b``), offline.

:func:`build_fake_hub` writes, under ``<root>/hf_home`` (use it as ``HF_HOME`` with
``HF_HUB_OFFLINE=1``), the repositories the presets' loaders ask for, in the hub cache layout
(``hub/models--<owner>--<name>/refs/main`` + ``snapshots/<commit>/<files>``), so that
``transformers``, TransformerLens and sae-lens read them exactly as they read a download:

* model repos ``gpt2`` and ``google/gemma-2-2b``: ``config.json`` with the real architecture
  settings, tokenizer files (``tokenizer.json`` + ``tokenizer_config.json``) and ``model.safetensors``
  holding *random* weights of the right shapes. Shrunk, and only where the loaders allow it:
  - GPT-2 Small: nothing shrunk (12 layers x 768, 12 heads, 50257-token vocabulary, 1024 positions);
    the tokenizer is a 1024-token byte-level BPE trained on the toy corpus (ids < 50257).
  - Gemma-2-2B: width 2304, 8 query heads of 256, 4 KV heads (GQA), MLP 9216, soft-capping 50/30,
    sliding window 4096 on alternate layers -- all real; the layer count is cut to
    ``gemma_layers`` (26 real) and the vocabulary to ``gemma_vocab`` (256000 real: 2.4 GB of
    embedding alone in float32). TransformerLens configures Gemma 2 from its own table, not from
    config.json; ``sae_core.models`` takes the layer count and vocabulary from the loaded HF model
    (TransformerLens' ``first_n_layers`` and ``hf_cfg``), so both shrink consistently.
* sae-lens release repos, with the file names, folder layout and ``cfg.json`` keys that sae-lens'
  loaders for those releases read (``sae_lens/pretrained_saes.yaml`` + ``loading/pretrained_sae_loaders.py``):
  - ``gpt2-small-resid-post-v5-32k`` / ``gpt2-small-mlp-out-v5-32k`` (loader ``sae_lens``, pre-6.0
    config): ``<path>/cfg.json`` + ``<path>/sae_weights.safetensors``, the OpenAI TopK SAEs' keys
    (``activation_fn_str: topk``, ``activation_fn_kwargs.k: 32``, ``normalize_activations: layer_norm``,
    ``hook_point``, ``context_size: 64``, ``prepend_bos: false``), 32768 latents;
  - ``gpt2-small-hook-z-kk`` (loader ``connor_rob_hook_z``): ``<path>.pt`` (a state dict written
    with ``torch.save``; sae-lens reads it with ``torch.load``) + ``<path minus .pt>_cfg.json``
    (``act_size``, ``dict_size``, ``act_name``), 24576 latents on ``attn.hook_z`` (768 = 12 x 64);
  - ``gemma-scope-2b-pt-{res,mlp,att}-canonical`` (loader ``gemma_2``): ``<path>/params.npz`` with
    ``w_enc, w_dec, b_enc, b_dec, threshold``; the loader takes d_in from the repo id (2304; 2048 for
    ``att``) and d_sae from the folder name (``width_16k`` -> 16384).
  Only the SAEs of the requested ``layers`` are written (each is 100-300 MB).
* the hub datasets as a site mirror (``<root>/datasets/<owner>/<name>/``, the layout that
  ``SAE_TRANSFER_DATASET_MIRROR`` reads): the toy world's stand-ins for every SAEBench dataset and
  the presets' text corpora (``Skylion007/openwebtext``, ``monology/pile-uncopyrighted``).

Decoder rows of the fake SAEs are unit-norm random directions and encoders their transposes, so
latents fire (TopK picks k; the JumpReLU threshold is set below typical pre-activations).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMMIT = "0" * 40
GPT2 = "gpt2"
GEMMA2 = "google/gemma-2-2b"

GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "embd_pdrop": 0.1,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
    "n_head": 12, "n_inner": None, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "vocab_size": 50257,
}
GEMMA2_CONFIG = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "cache_implementation": "hybrid", "final_logit_softcapping": 30.0, "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
    "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
    "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000,
}


@dataclass
class FakeHub:
    root: Path
    hf_home: Path
    dataset_mirror: Path

    def env(self) -> dict[str, str]:
        """The environment a process needs to read this hub offline."""
        return {"HF_HOME": str(self.hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "SAE_TRANSFER_DATASET_MIRROR": str(self.dataset_mirror)}


# --------------------------------------------------------------------------- cache layout
def snapshot_dir(hf_home: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` (creating ``refs/main``) in the hub cache under ``hf_home``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _sae_lens_release(release: str):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()[release]


def _release_path(release: str, sae_id: str) -> tuple[str, str]:
    info = _sae_lens_release(release)
    return info.repo_id, info.saes_map[sae_id]


# --------------------------------------------------------------------------- tokenizers and models
def _corpus(n_documents: int = 3000) -> list[str]:
    from sae_core.toy.corpus import generate_corpus

    return [doc.text for doc in generate_corpus(n_documents, seed=7)]


def _bpe(texts: list[str], vocab_size: int, special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def write_gpt2(hf_home: Path, texts: list[str], seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = snapshot_dir(hf_home, GPT2)
    eot = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=_bpe(texts, 1024, [eot]), bos_token=eot, eos_token=eot, unk_token=eot,
                                  model_max_length=1024)
    tokenizer.save_pretrained(folder)
    config = GPT2Config(**{k: v for k, v in GPT2_CONFIG.items() if k != "model_type"},
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_gemma2(hf_home: Path, texts: list[str], n_layers: int, vocab_size: int, seed: int = 0) -> Path:
    from tokenizers import processors
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    folder = snapshot_dir(hf_home, GEMMA2)
    # Gemma's special tokens and ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3; BOS is prepended.
    bpe = _bpe(texts, min(2048, vocab_size), ["<pad>", "<eos>", "<bos>", "<unk>"])
    bpe.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                              processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                                            special_tokens=[("<bos>", 2)])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                        unk_token="<unk>", model_max_length=8192)
    tokenizer.save_pretrained(folder)
    settings = {k: v for k, v in GEMMA2_CONFIG.items() if k != "model_type"}
    settings.update(num_hidden_layers=n_layers, vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(Gemma2Config(**settings))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------- SAEs
def _directions(d_in: int, d_sae: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w_dec = torch.randn(d_sae, d_in, generator=generator)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    return w_dec.T.contiguous(), w_dec


def write_oai_topk(hf_home: Path, release: str, layer: int, hook: str, seed: int = 0) -> Path:
    """An OpenAI v5 32k TopK SAE as jbloom's repos hold it (sae-lens pre-6.0 cfg.json + safetensors)."""
    from safetensors.torch import save_file

    sae_id = f"blocks.{layer}.{hook}"
    repo_id, path = _release_path(release, sae_id)
    folder = snapshot_dir(hf_home, repo_id) / path
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = 768, 32768
    cfg = {"model_name": "gpt2-small", "hook_point": sae_id, "hook_point_layer": layer, "hook_point_head_index": None,
           "d_in": d_in, "d_sae": d_sae, "dtype": "torch.float32", "device": "cpu", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 32}, "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
           "sae_lens_training_version": None, "prepend_bos": False, "dataset_path": "Skylion007/openwebtext",
           "dataset_trust_remote_code": True, "context_size": 64, "normalize_activations": "layer_norm"}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    generator = torch.Generator().manual_seed(seed + layer)
    w_enc, w_dec = _directions(d_in, d_sae, generator)
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)},
              str(folder / "sae_weights.safetensors"))
    return folder


def write_kissane_hook_z(hf_home: Path, layer: int, seed: int = 0) -> Path:
    """A Kissane et al. attention-output SAE (hook_z, all heads concatenated) as its repo holds it."""
    release, sae_id = "gpt2-small-hook-z-kk", f"blocks.{layer}.hook_z"
    repo_id, path = _release_path(release, sae_id)
    folder = snapshot_dir(hf_home, repo_id)
    d_in, d_sae = 768, 24576
    cfg = {"act_name": f"blocks.{layer}.attn.hook_z", "act_size": d_in, "dict_size": d_sae, "layer": layer,
           "site": "z", "model_name": "gpt2-small", "l1_coeff": 1.8, "lr": 1.2e-3, "seed": seed}
    (folder / (path.split(".pt")[0] + "_cfg.json")).write_text(json.dumps(cfg, indent=1))
    generator = torch.Generator().manual_seed(seed + 100 + layer)
    w_enc, w_dec = _directions(d_in, d_sae, generator)
    torch.save({"W_enc": w_enc, "W_dec": w_dec, "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)}, folder / path)
    return folder / path


def write_gemma_scope(hf_home: Path, kind: str, layer: int, seed: int = 0) -> Path:
    """A Gemma Scope 16k canonical JumpReLU SAE (``params.npz``), ``kind`` in res / mlp / att."""
    release, sae_id = f"gemma-scope-2b-pt-{kind}-canonical", f"layer_{layer}/width_16k/canonical"
    repo_id, path = _release_path(release, sae_id)
    folder = snapshot_dir(hf_home, repo_id) / path
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = (2048 if kind == "att" else 2304), 16384
    generator = torch.Generator().manual_seed(seed + 1000 * len(kind) + layer)
    w_enc, w_dec = _directions(d_in, d_sae, generator)
    np.savez(folder / "params.npz", w_enc=w_enc.numpy(), w_dec=w_dec.numpy(), b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 1e-3, np.float32))
    return folder


# --------------------------------------------------------------------------- datasets
def write_dataset_mirror(mirror: Path, seed: int = 0) -> Path:
    """Every hub dataset the presets and SAEBench read, as ``<mirror>/<owner>/<name>/`` folders."""
    from sae_core.datasets import build_eval_datasets

    built = build_eval_datasets(mirror.parent / "standins", seed=seed)
    for dataset_id, folder in built.items():
        target = mirror / dataset_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copytree(folder, target)
    return mirror


# --------------------------------------------------------------------------- all of it
def build_fake_hub(root: str | Path, presets: tuple[str, ...] = ("gpt2-small", "gemma-2-2b"), layers: tuple[int, ...] = (1,),
                   gemma_layers: int = 2, gemma_vocab: int = 4096, seed: int = 0) -> FakeHub:
    """Write the fake hub cache and dataset mirror for ``presets`` (SAEs of ``layers`` only)."""
    root = Path(root)
    hf_home, mirror = root / "hf_home", root / "datasets"
    texts = _corpus()
    random.Random(seed).shuffle(texts)
    if "gpt2-small" in presets:
        write_gpt2(hf_home, texts, seed)
        for layer in layers:
            write_oai_topk(hf_home, "gpt2-small-resid-post-v5-32k", layer, "hook_resid_post", seed)
            write_oai_topk(hf_home, "gpt2-small-mlp-out-v5-32k", layer, "hook_mlp_out", seed)
            write_kissane_hook_z(hf_home, layer, seed)
    if "gemma-2-2b" in presets:
        too_deep = [layer for layer in layers if layer >= gemma_layers]
        if too_deep:
            raise ValueError(f"layers {too_deep} do not exist in the {gemma_layers}-layer fake Gemma")
        write_gemma2(hf_home, texts, gemma_layers, gemma_vocab, seed)
        for layer in layers:
            for kind in ("res", "mlp", "att"):
                write_gemma_scope(hf_home, kind, layer, seed)
    write_dataset_mirror(mirror, seed)
    return FakeHub(root=root, hf_home=hf_home, dataset_mirror=mirror)


def shared_fake_hub(tmp_path_factory, layers: tuple[int, ...] = (1,)) -> FakeHub:
    """One fake hub per test session (built once, ~1 GB, a minute or two), shared by every test module."""
    root = tmp_path_factory.getbasetemp() / f"fakehub-layers-{'-'.join(map(str, layers))}"
    done = root / "BUILT"
    if not done.exists():
        hub = build_fake_hub(root, layers=layers)
        done.write_text("ok")
        return hub
    return FakeHub(root=root, hf_home=root / "hf_home", dataset_mirror=root / "datasets")


if __name__ == "__main__":  # python -m tests.helpers.fakehub OUT_DIR [preset ...]: build one to inspect by hand
    import sys

    hub = build_fake_hub(sys.argv[1], tuple(sys.argv[2:]) or ("gpt2-small", "gemma-2-2b"))
    print(json.dumps(hub.env(), indent=1))
