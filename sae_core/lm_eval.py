"""Language-model evaluation helpers (plain library: no prefect)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["perplexity", "mean_nll", "logits_batch_size"]

# One float32 logits tensor per batch stays under this (TransformerLens' loss also holds its log-softmax):
# Gemma's 262k-row vocabulary makes 8 x 128 tokens of logits 1.07 GB each, several alive at once.
LOGITS_BUDGET_BYTES = 2**28


def logits_batch_size(d_vocab: int, seq_len: int, cap: int = 8) -> int:
    """Sequences per forward pass so that one float32 ``[batch, seq, vocab]`` logits tensor fits
    ``LOGITS_BUDGET_BYTES`` (at most ``cap``, at least 1). Losses are sums over tokens, so the batch
    size changes memory, not results."""
    return max(1, min(cap, LOGITS_BUDGET_BYTES // max(1, 4 * d_vocab * seq_len)))


@torch.no_grad()
def mean_nll(model: nn.Module, input_ids: torch.Tensor, batch_size: int | None = None) -> float:
    """Mean next-token negative log-likelihood (nats) over every predicted token.

    Each row of ``input_ids`` ``[n, seq]`` is an independent sequence; position ``t``
    predicts token ``t+1`` (``n * (seq - 1)`` predictions in all). Per-token NLLs are
    computed from float32 (or wider) logits and summed in float64. ``batch_size`` None: as many
    sequences as keep one logits tensor small (``logits_batch_size``).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a 2-D LongTensor [n, seq], got {getattr(input_ids, 'shape', input_ids)!r}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    n, seq = input_ids.shape
    if n == 0 or seq < 2:
        raise ValueError(f"input_ids needs >= 1 row and >= 2 tokens per row, got shape {tuple(input_ids.shape)}")
    if batch_size is None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or model.get_output_embeddings().weight.shape[0]
        batch_size = logits_batch_size(int(vocab), seq)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = emb.weight.device if emb is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for s in range(0, n, batch_size):
            batch = input_ids[s : s + batch_size].to(device=device, dtype=torch.long)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            targets = batch[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            total += nll.double().sum().cpu()
            count += targets.numel()
    finally:
        model.train(was_training)
    return float(total / count)


def perplexity(model: nn.Module, input_ids: torch.Tensor, batch_size: int | None = None) -> float:
    """``exp(mean next-token NLL)`` over ``input_ids`` ``[n, seq]`` (float64 accumulation)."""
    return math.exp(mean_nll(model, input_ids, batch_size=batch_size))
