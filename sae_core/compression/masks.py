"""Mask selection for pruning: which weights to zero, given scores.

Selection rule (documented, used identically by WANDA and the magnitude baselines):

- ``k = floor(n * sparsity + 1e-9)`` weights are zeroed per group, where the group is an
  output row (``wanda``, ``magnitude``), the whole matrix (``magnitude_matrix``) or,
  for N:M, each run of M consecutive inputs of a row (exactly N zeroed). The ``1e-9``
  guards against ``0.29 * 100 == 28.999...``; otherwise this is the reference's
  ``int(n * sparsity)`` (``rounding="tolerant_floor"``, the default).
- Ties are broken deterministically: among equal scores, the lower input index (for the
  whole-matrix baseline: lower row-major index of the ``[out, in]`` view) is pruned first,
  i.e. exactly what a stable ascending sort gives.

The same routine, :func:`prune_mask`, selects the SAE-pruning masks of
:mod:`sae_core.sae_prune`: there the groups are columns (``per="column"``), rows or the
whole matrix of ``W_enc`` / ``W_dec``, and ``k`` is the SAE-pruning reference's plain
``int(sparsity * n)`` (``rounding="floor"``, no float-error guard: at ``0.29 * 100`` it
zeroes 28, not 29), so that its masks stay those of the published rule.

(SparseGPT selects its own masks inside its column sweep; see ``sparsegpt.py``.)
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch

from sae_core.compression.modules import acc_dtype

__all__ = ["ROUNDINGS", "Rounding", "magnitude_scores", "n_prune", "parse_structure", "prune_mask", "wanda_scores"]

_EPS_K = 1e-9

#: How the number of weights zeroed per group, ``k``, is rounded from ``n * sparsity``:
#: ``"tolerant_floor"`` -- ``floor(n * sparsity + 1e-9)`` (LLM compression: 0.29 * 100 -> 29);
#: ``"floor"`` -- ``int(sparsity * n)`` (SAE pruning's reference rule: 0.29 * 100 -> 28).
Rounding = Literal["tolerant_floor", "floor"]
ROUNDINGS: tuple[str, ...] = ("tolerant_floor", "floor")


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` with ``1 <= N < M``."""
    if not isinstance(structure, str):
        raise ValueError(f"structure must be 'unstructured' or 'N:M', got {structure!r}")
    s = structure.strip().lower()
    if s == "unstructured":
        return None
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", s)
    if m is None:
        raise ValueError(f"structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {structure!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 1 <= n < mm:
        raise ValueError(f"N:M structure needs 1 <= N < M, got {structure!r} (N={n}, M={mm})")
    return n, mm


def wanda_scores(weight_out_in: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(sum_t X_tj^2)`` as a contiguous ``[out, in]`` tensor (>= float32)."""
    dt = acc_dtype(weight_out_in.dtype)
    norms = input_sq_sum.to(device=weight_out_in.device, dtype=dt).sqrt()
    s = weight_out_in.abs().to(dt).mul_(norms.unsqueeze(0))
    return s.contiguous()


def magnitude_scores(weight_out_in: torch.Tensor) -> torch.Tensor:
    return weight_out_in.abs().to(acc_dtype(weight_out_in.dtype)).contiguous()


def n_prune(n: int, sparsity: float, rounding: Rounding = "tolerant_floor") -> int:
    """How many of ``n`` weights to zero at ``sparsity`` (see :data:`Rounding`)."""
    if rounding == "tolerant_floor":
        return int(math.floor(n * sparsity + _EPS_K))
    if rounding == "floor":
        return int(sparsity * n)
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def _order_keys(scores: torch.Tensor, nonneg: bool = False) -> torch.Tensor:
    """Integer view with the same order as the (non-negative) float scores: selecting on
    int32/int64 bit patterns is exact and faster than on floats (no NaN handling).

    Without the ``nonneg`` promise the view is taken only if every score is ``>= 0`` and none
    is ``-0.0`` (whose bit pattern would sort it before ``+0.0`` instead of tying with it)."""
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(scores.dtype)
    if view is None or not (nonneg or (bool((scores >= 0).all()) and not bool(torch.signbit(scores).any()))):
        return scores
    return scores.view(view)


def _lowest_k_rows(scores: torch.Tensor, k: int, nonneg: bool = False) -> torch.Tensor:
    """Bool mask with exactly ``k`` True per row at the lowest scores (stable tie-break)."""
    rows, n = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    keys = _order_keys(scores, nonneg)
    # Fast path: k-th value per row (quickselect, O(n)), then <=. Every row then has >= k
    # entries selected, exactly k unless the k-th value is tied; such rows are redone with
    # a stable sort (lower index pruned first).
    thr = keys.kthvalue(k, dim=1, keepdim=True).values
    mask = keys <= thr
    if int(torch.count_nonzero(mask)) != rows * k:
        bad = (mask.sum(dim=1) != k).nonzero().flatten()
        idx = torch.sort(keys[bad], dim=1, stable=True).indices[:, :k]
        fix = torch.zeros((bad.numel(), n), dtype=torch.bool, device=scores.device)
        fix.scatter_(1, idx, True)
        mask[bad] = fix
    return mask


def prune_mask(
    scores: torch.Tensor,
    sparsity: float,
    structure: str = "unstructured",
    per: Literal["row", "column", "matrix"] = "row",
    *,
    nonneg: bool = False,
    rounding: Rounding = "tolerant_floor",
) -> torch.Tensor:
    """Bool 2-D mask (True = prune) of the lowest scores.

    ``per="row"``: ``k = n_prune(n_columns, sparsity, rounding)`` per row (the ``[out, in]``
    layout of LLM weights: per output, over its inputs); ``per="column"``: ``k`` of each
    column's ``n_rows``; ``per="matrix"``: ``n_prune(numel, sparsity, rounding)`` over the
    whole matrix (row-major tie-break); N:M: exactly N per group of M consecutive inputs of
    each row (``sparsity``, ``per`` and ``rounding`` are then ignored). Ties: the lower index
    within the group is pruned first (a stable ascending sort). ``nonneg=True`` promises
    scores >= 0 (skips a check). ``rounding``: see :data:`Rounding`.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    out_f, in_f = scores.shape
    nm = parse_structure(structure)
    if nm is not None:
        n, m = nm
        if in_f % m:
            raise ValueError(f"structure {structure!r}: M={m} does not divide the input dimension {in_f}")
        g = _order_keys(scores, nonneg).reshape(out_f * (in_f // m), m)
        idx = torch.sort(g, dim=1, stable=True).indices[:, :n]
        mask = torch.zeros_like(g, dtype=torch.bool)
        mask.scatter_(1, idx, True)
        return mask.reshape(out_f, in_f)
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if per == "row":
        return _lowest_k_rows(scores, n_prune(in_f, sparsity, rounding), nonneg)
    if per == "column":
        # Selected along a contiguous last axis: a sort / kthvalue along a strided axis is several
        # times slower on CPU (measured on a Gemma Scope-sized [2304, 16384] W_enc).
        return _lowest_k_rows(scores.t().contiguous(), n_prune(out_f, sparsity, rounding), nonneg).t()
    if per == "matrix":
        flat = scores.reshape(1, -1)
        return _lowest_k_rows(flat, n_prune(scores.numel(), sparsity, rounding), nonneg).reshape(out_f, in_f)
    raise ValueError(f"per must be 'row', 'column' or 'matrix', got {per!r}")


_CHUNK_ELEMS = 1 << 22  # rows are scored / selected / masked in chunks of <= 4M elements (bounds temporaries)

