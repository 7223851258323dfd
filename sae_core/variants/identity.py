"""Feature identity of a variant vs the original SAE: does latent j still mean what it meant?

Labels made for the original (autointerp explanations, dashboards, circuits) survive a fix only
for latents that keep their meaning. Three measures:

(a) :func:`decoder_identity`: cosine of each latent's decoder direction with the SAME latent of
    the original; kept = cosine > 0.9 (the feature audit's survival threshold).
(b) :func:`match_latents`: for variants without correspondence by index (retrain), each original
    latent's best-cosine latent of the variant (greedy, many-to-one allowed) and, for d_sae <=
    8192, a one-to-one matching (``scipy.optimize.linear_sum_assignment`` on -cosine); matched
    fraction = share of original latents whose match has cosine > 0.9. The returned permutation
    ``perm[j]`` (variant latent matched to original latent j) lets the audit compare matched latents.
(c) :func:`code_fidelity`: per-latent Pearson r between the original's codes on dense activations
    and the variant's codes (optionally permuted) on compressed activations over the same tokens,
    streamed through :class:`sae_core.feature_audit.FeatureMoments`, with its survived / degraded /
    damaged classes (Duan's thresholds).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from sae_lens import SAE

from sae_core.feature_audit import SURVIVAL_THRESHOLD, FeatureMoments, summarize
from sae_core.sae_io import no_hook_z_reshaping
from sae_core.variants.folding import paired_batches

__all__ = ["ASSIGNMENT_MAX_D_SAE", "code_fidelity", "decoder_cosines", "decoder_identity", "match_latents"]

ASSIGNMENT_MAX_D_SAE = 8192  # one-to-one matching above this costs too much (O(d_sae^3))
_CHUNK = 2048


def _unit_rows(sae: SAE[Any]) -> torch.Tensor:
    W = sae.W_dec.detach().float().cpu()
    return W / W.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _check_pair(original: SAE[Any], variant: SAE[Any], same_width: bool) -> None:
    if original.cfg.d_in != variant.cfg.d_in:
        raise ValueError(f"original d_in={original.cfg.d_in} and variant d_in={variant.cfg.d_in} differ")
    if same_width and original.cfg.d_sae != variant.cfg.d_sae:
        raise ValueError(f"original d_sae={original.cfg.d_sae} and variant d_sae={variant.cfg.d_sae} differ: "
                         "compare by index only at equal width (use match_latents)")


@torch.no_grad()
def decoder_cosines(original: SAE[Any], variant: SAE[Any]) -> np.ndarray:
    """``cos(W_dec_original[j], W_dec_variant[j])`` for every latent j (same index)."""
    _check_pair(original, variant, same_width=True)
    return (_unit_rows(original) * _unit_rows(variant)).sum(-1).double().numpy()


def decoder_identity(original: SAE[Any], variant: SAE[Any], threshold: float = SURVIVAL_THRESHOLD) -> dict[str, Any]:
    """(a) ``{"cosine": [d_sae], "kept": bool [d_sae], "kept_frac", "mean_cosine", "threshold"}``."""
    cos = decoder_cosines(original, variant)
    kept = cos > threshold
    return {"cosine": cos, "kept": kept, "kept_frac": float(kept.mean()), "mean_cosine": float(cos.mean()),
            "threshold": float(threshold)}


@torch.no_grad()
def match_latents(original: SAE[Any], variant: SAE[Any], threshold: float = SURVIVAL_THRESHOLD,
                  one_to_one: bool | None = None) -> dict[str, Any]:
    """(b) Match each original latent to a variant latent by decoder cosine.

    Returns ``greedy`` (variant index per original latent, its best cosine), ``greedy_cosine``,
    ``greedy_matched_frac``; with a one-to-one matching (default when both widths <= 8192 and the
    variant is at least as wide) also ``assignment``, ``assignment_cosine``,
    ``assignment_matched_frac``. ``permutation`` / ``matched_frac`` / ``cosine`` are the one-to-one
    figures when computed, else the greedy ones.
    """
    _check_pair(original, variant, same_width=False)
    U, V = _unit_rows(original), _unit_rows(variant)
    n, m = U.shape[0], V.shape[0]
    best = torch.empty(n, dtype=torch.long)
    best_cos = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        block = U[start:start + _CHUNK] @ V.T
        best_cos[start:start + _CHUNK], best[start:start + _CHUNK] = block.max(1)
    out: dict[str, Any] = {"greedy": best.numpy(), "greedy_cosine": best_cos.double().numpy(),
                           "greedy_matched_frac": float((best_cos > threshold).double().mean()), "threshold": float(threshold)}
    if one_to_one is None:
        one_to_one = max(n, m) <= ASSIGNMENT_MAX_D_SAE and m >= n
    if one_to_one:
        from scipy.optimize import linear_sum_assignment

        if m < n:
            raise ValueError(f"a one-to-one matching needs the variant ({m} latents) at least as wide as the original ({n})")
        cos = (U @ V.T).double().numpy()
        rows, cols = linear_sum_assignment(-cos)
        perm = np.empty(n, dtype=np.int64)
        perm[rows] = cols
        matched = cos[np.arange(n), perm]
        out.update(assignment=perm, assignment_cosine=matched, assignment_matched_frac=float((matched > threshold).mean()))
        out.update(permutation=perm, cosine=matched, matched_frac=out["assignment_matched_frac"], one_to_one=True)
    else:
        out.update(permutation=out["greedy"], cosine=out["greedy_cosine"], matched_frac=out["greedy_matched_frac"],
                   one_to_one=False)
    return out


@torch.no_grad()
def code_fidelity(original: SAE[Any], variant: SAE[Any], dense_batches: Iterable[torch.Tensor],
                  compressed_batches: Iterable[torch.Tensor], permutation: np.ndarray | torch.Tensor | None = None,
                  n_tokens: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """(c) Per-latent r of ``original.encode(dense)[:, j]`` vs ``variant.encode(compressed)[:, perm[j]]``.

    ``dense_batches`` / ``compressed_batches``: the same tokens, row for row. Returns the feature
    audit's table (``sae_core.feature_audit.TABLE_COLUMNS``, "dense" = original on dense,
    "compressed" = variant on compressed) and its summary.
    """
    _check_pair(original, variant, same_width=permutation is None)
    perm = None if permutation is None else torch.as_tensor(np.asarray(permutation), dtype=torch.long)
    if perm is not None and (perm.ndim != 1 or perm.shape[0] != original.cfg.d_sae):
        raise ValueError(f"permutation must have one entry per original latent ({original.cfg.d_sae}), got {tuple(perm.shape)}")
    moments = FeatureMoments(int(original.cfg.d_sae))
    with no_hook_z_reshaping(original), no_hook_z_reshaping(variant):
        for x_cmp, x_dense in paired_batches(original, compressed_batches, dense_batches, n_tokens):
            x = original.encode(x_dense.to(original.dtype))
            y = variant.encode(x_cmp.to(variant.device, variant.dtype))
            if perm is not None:
                y = y[:, perm.to(y.device)]
            moments.update(x, y)
    table = moments.table()
    return table, summarize(table)
