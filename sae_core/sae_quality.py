"""Quick SAE quality figures: reconstruction on held-out activations, spliced-in CE loss."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from sae_lens import SAE

from sae_core.lm_eval import logits_batch_size
from sae_core.sae_io import check_sae_matches_hook, flat_sae_inputs, no_hook_z_reshaping, sae_hook_name

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

__all__ = ["dense_patched_ce", "reconstruction_stats", "spliced_ce"]


def _checked_batch_size(model: HookedTransformer, tokens: torch.Tensor, batch_size: int | None) -> int:
    """``batch_size``, or (None) as many sequences as keep one logits tensor within the budget."""
    if batch_size is None:
        batch_size = logits_batch_size(model.cfg.d_vocab, tokens.shape[1])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


@torch.no_grad()
def reconstruction_stats(
    sae: SAE[Any], activation_batches: Iterable[torch.Tensor], max_tokens: int | None = None
) -> dict[str, float]:
    """Reconstruction quality of ``sae`` on held-out activations ``[..., d_in]``.

    All sums are accumulated in float64 over every token of every batch:

    * ``mse``: mean squared error per element, ``sum ||x - x̂||² / (n d_in)``
    * ``mse_per_token``: ``sum ||x - x̂||² / n`` (sae-lens' training MSE convention)
    * ``explained_variance``: ``1 - sum ||x - x̂||² / sum ||x - mean(x)||²``, mean
      over all tokens (finite for any finite reconstruction, including pruned SAEs)
    * ``cosine_similarity``: mean over tokens of cos(x, x̂) (0 for a zero x̂)
    * ``l0``: mean number of non-zero latents per token
    * ``alive_fraction``: fraction of latents that fire on at least one token
    * ``n_tokens``

    ``max_tokens`` stops after that many tokens (the last batch is truncated).
    """
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    n = 0
    sse = 0.0
    sum_sq = 0.0
    sum_x = torch.zeros(d_in, dtype=torch.float64)
    cos_sum = 0.0
    l0_sum = 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    was_training = sae.training
    sae.eval()
    try:
        with no_hook_z_reshaping(sae):
            for batch in activation_batches:
                x = flat_sae_inputs(sae, batch).to(sae.device)
                if max_tokens is not None:
                    x = x[: max(0, max_tokens - n)]
                if x.shape[0] == 0:
                    if max_tokens is not None and n >= max_tokens:
                        break
                    continue
                feats = sae.encode(x)
                if feats.is_sparse:
                    feats = feats.to_dense()
                x_hat = sae.decode(feats)
                x64 = x.double()
                xh64 = x_hat.double()
                sse += (x64 - xh64).pow(2).sum().item()
                sum_sq += x64.pow(2).sum().item()
                sum_x += x64.sum(0).cpu()
                cos_sum += torch.nn.functional.cosine_similarity(x64, xh64, dim=-1, eps=1e-12).sum().item()
                active = feats != 0
                l0_sum += active.sum().item()
                fired |= active.any(0).cpu()
                n += x.shape[0]
    finally:
        sae.train(was_training)
    if n == 0:
        raise ValueError("reconstruction_stats got no activations")
    # sum ||x - mean||² = sum ||x||² - n ||mean||², in float64
    sst = sum_sq - (sum_x.pow(2).sum().item() / n)
    if not sst > 0:
        raise ValueError(f"held-out activations have zero variance over {n} tokens; explained variance undefined")
    return {
        "mse": sse / (n * d_in),
        "mse_per_token": sse / n,
        "explained_variance": 1.0 - sse / sst,
        "cosine_similarity": cos_sum / n,
        "l0": l0_sum / n,
        "alive_fraction": float(fired.float().mean().item()),
        "n_tokens": int(n),
    }


def _splice_hook(sae: SAE[Any], mode: str, keep: torch.Tensor | None = None):
    """Forward hook replacing the activation by its SAE reconstruction ("sae") or zeros ("zero");
    positions where ``keep [batch, seq]`` is True keep their own activation."""
    head = sae.cfg.metadata.hook_head_index

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        target = act[:, :, head] if head is not None else act
        if mode == "zero":
            new = torch.zeros_like(target)
        else:
            new = sae(target.to(sae.dtype)).to(act.dtype)
        if keep is not None:
            mask = keep.to(new.device).view(*keep.shape, *([1] * (new.dim() - 2)))
            new = torch.where(mask, target, new)
        if head is None:
            return new
        act = act.clone()
        act[:, :, head] = new
        return act

    return hook


@torch.no_grad()
def spliced_ce(
    model: HookedTransformer,
    sae: SAE[Any],
    tokens: torch.Tensor,
    batch_size: int | None = None,
    hook_name: str | None = None,
    keep_token_ids: Iterable[int] = (),
) -> dict[str, float]:
    """Next-token CE of ``model`` on ``tokens [n, seq]``: clean, with the SAE spliced in, and zero-ablated.

    Positions holding a token of ``keep_token_ids`` (e.g. BOS) keep their own activation, as
    SAEBench's ``exclude_special_tokens_from_reconstruction`` does: an SAE trained without them
    (Gemma's BOS residual is ~15x the norm of other positions) is not asked to reconstruct them.

    The SAE replaces the activation at ``hook_name`` (default
    ``sae.cfg.metadata.hook_name``) via ``model.run_with_hooks``; single-head
    SAEs (``metadata.hook_head_index``) replace only their head.  Losses are
    means over all predicted tokens (not means of batch means).

    Returns ``ce_clean``, ``ce_with_sae``, ``ce_zero_ablation``,
    ``ce_loss_score = (ce_zero - ce_sae) / (ce_zero - ce_clean)`` (1 = perfect,
    0 = as bad as zero ablation; NaN if zero ablation does not change the
    loss), ``ce_delta = ce_with_sae - ce_clean`` and ``ce_tokens`` (number of
    predicted tokens; named so it does not clash with ``reconstruction_stats``'
    ``n_tokens`` when the two dicts are merged).
    """
    hook_name = hook_name or sae_hook_name(sae)
    if hook_name is None:
        raise ValueError("no hook_name given and the SAE has no cfg.metadata.hook_name")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int):
        raise ValueError(
            f"tokens must be an integer tensor [n, seq], got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens need seq >= 2 to compute next-token loss, got shape {tuple(tokens.shape)}")
    batch_size = _checked_batch_size(model, tokens, batch_size)
    check_sae_matches_hook(sae, model, hook_name, allow_other_hook=True)

    device = getattr(model.cfg, "device", None) or "cpu"
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_tok = 0
    was_training = (model.training, sae.training)
    model.eval()
    sae.eval()
    try:
        for start in range(0, tokens.shape[0], batch_size):
            toks = tokens[start : start + batch_size].to(device)
            keep = torch.isin(toks, torch.tensor(sorted(set(keep_token_ids)), dtype=toks.dtype, device=toks.device))
            keep = keep if keep.any() else None
            clean = model(toks, return_type="loss", loss_per_token=True)
            totals["clean"] += clean.double().sum().item()
            for mode in ("sae", "zero"):
                loss = model.run_with_hooks(
                    toks,
                    return_type="loss",
                    loss_per_token=True,
                    fwd_hooks=[(hook_name, _splice_hook(sae, mode, keep))],
                )
                totals[mode] += loss.double().sum().item()
            n_tok += clean.numel()
    finally:
        model.train(was_training[0])
        sae.train(was_training[1])
    ce_clean, ce_sae, ce_zero = (totals[k] / n_tok for k in ("clean", "sae", "zero"))
    denom = ce_zero - ce_clean
    score = (ce_zero - ce_sae) / denom if abs(denom) > 1e-12 else float("nan")
    return {
        "ce_clean": ce_clean,
        "ce_with_sae": ce_sae,
        "ce_zero_ablation": ce_zero,
        "ce_loss_score": score,
        "ce_delta": ce_sae - ce_clean,
        "ce_tokens": int(n_tok),
    }


@torch.no_grad()
def dense_patched_ce(model: HookedTransformer, dense_activations: torch.Tensor, tokens: torch.Tensor, hook_name: str,
                     batch_size: int | None = None) -> dict[str, float]:
    """The control for reading CE-based transfer numbers: ``model``'s (the pruned LM's) next-token CE,
    clean and with the dense model's own activations (``dense_activations``, from
    ``sae_core.activations.hook_activations`` on the same ``tokens``) patched in at ``hook_name``
    (every position).

    ``delta_ce_dense_patch = ce_dense_patched - ce_clean`` (nats) is what a *perfect* reconstruction
    of the dense model's activations would change in the pruned model's loss: an SAE trained on the
    dense model cannot do better than this on the pruned one, whatever its CE-loss score says.

    The dense activations are taken first, by the caller, so that only one of the two language
    models has to be in memory at a time (two Gemma 3 270M copies were a cold run's peak).
    """
    if dense_activations.shape[:2] != tokens.shape:
        raise ValueError(f"dense_activations {tuple(dense_activations.shape)} do not cover tokens {tuple(tokens.shape)}")
    batch_size = _checked_batch_size(model, tokens, batch_size)
    device = getattr(model.cfg, "device", None) or "cpu"
    total_clean = total_patched = 0.0
    n_tok = 0
    for start in range(0, tokens.shape[0], batch_size):
        toks = tokens[start : start + batch_size].to(device)
        dense_acts = dense_activations[start : start + batch_size].to(device)
        clean = model(toks, return_type="loss", loss_per_token=True)
        patched = model.run_with_hooks(toks, return_type="loss", loss_per_token=True,
                                       fwd_hooks=[(hook_name, lambda act, hook: dense_acts.reshape(act.shape).to(act.dtype))])
        total_clean += clean.double().sum().item()
        total_patched += patched.double().sum().item()
        n_tok += clean.numel()
    ce_clean, ce_patched = total_clean / n_tok, total_patched / n_tok
    return {"ce_clean": ce_clean, "ce_dense_patched": ce_patched, "delta_ce_dense_patch": ce_patched - ce_clean,
            "ce_tokens": int(n_tok)}
