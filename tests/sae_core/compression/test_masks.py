"""The one lowest-k mask routine (``sae_core.compression.masks.prune_mask``) gives each caller the
masks it gave before the two selections were merged: SAE pruning (``sae_prune._mask_lowest``, plain
``int(sparsity * n)``, per column / row / whole matrix) and LLM compression (``prune_mask``,
``floor(n * sparsity + 1e-9)``, per row / whole matrix). The references are the two former
implementations, written out with a stable sort.
"""

from __future__ import annotations

import math

import pytest
import torch

from sae_core.compression.masks import n_prune, prune_mask
from sae_core.sae_prune import _mask_lowest


def former_sae_mask_lowest(scores: torch.Tensor, sparsity: float, dim: int | None) -> torch.Tensor:
    """``sae_prune._mask_lowest`` as it was: stable sort, ``int(sparsity * group)``."""
    if dim is None:
        flat = scores.reshape(-1)
        n = int(sparsity * flat.numel())
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        if n:
            mask[torch.sort(flat, stable=True).indices[:n]] = True
        return mask.view_as(scores)
    n = int(sparsity * scores.shape[dim])
    moved = scores.movedim(dim, -1).contiguous()
    mask = torch.zeros_like(moved, dtype=torch.bool)
    if n:
        mask.scatter_(-1, torch.sort(moved, dim=-1, stable=True).indices[..., :n], True)
    return mask.movedim(-1, dim)


def former_prune_mask(scores: torch.Tensor, sparsity: float, per: str) -> torch.Tensor:
    """``prune_mask`` as documented: ``floor(n * sparsity + 1e-9)`` lowest per row / matrix, stable ties."""
    rows = scores.reshape(1, -1) if per == "matrix" else scores
    k = int(math.floor(rows.shape[1] * sparsity + 1e-9))
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.sort(rows, dim=1, stable=True).indices[:, :k], True)
    return mask.reshape(scores.shape)


def _scores(kind: str, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    if kind == "continuous":
        return torch.rand(shape, generator=generator)
    if kind == "ties":  # few distinct values: the k-th value is tied in most groups
        return torch.randint(0, 4, shape, generator=generator).float()
    if kind == "signed_zeros":  # -0.0 ties with +0.0 (lower index first), it is not smaller
        s = torch.randint(0, 3, shape, generator=generator).float()
        negative_zero = (s == 0) & (torch.rand(shape, generator=generator) < 0.5)
        return torch.where(negative_zero, torch.tensor(-0.0), s)
    raise ValueError(kind)


SHAPES = [(7, 100), (100, 7), (13, 29)]
SPARSITIES = [0.0, 0.29, 0.3, 0.37, 0.5, 0.99]


@pytest.mark.parametrize("kind", ["continuous", "ties", "signed_zeros"])
def test_sae_pruning_masks_are_unchanged(kind):
    generator = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        scores = _scores(kind, shape, generator)
        for sparsity in SPARSITIES:
            for dim in (None, 0, 1):
                assert torch.equal(_mask_lowest(scores, sparsity, dim), former_sae_mask_lowest(scores, sparsity, dim)), \
                    (shape, sparsity, dim)


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_compression_masks_are_unchanged(kind):
    generator = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        scores = _scores(kind, shape, generator)
        for sparsity in SPARSITIES:
            for per in ("row", "matrix"):
                expected = former_prune_mask(scores, sparsity, per)
                assert torch.equal(prune_mask(scores, sparsity, per=per), expected), (shape, sparsity, per)
                assert torch.equal(prune_mask(scores, sparsity, per=per, nonneg=True), expected), (shape, sparsity, per)


def test_the_two_roundings_differ_where_float_error_bites():
    assert (n_prune(100, 0.29, "floor"), n_prune(100, 0.29)) == (28, 29)  # 0.29 * 100 == 28.999999999999996
    assert (n_prune(64, 0.3, "floor"), n_prune(64, 0.3)) == (19, 19)
    scores = torch.rand(100, 3, generator=torch.Generator().manual_seed(2))
    assert _mask_lowest(scores, 0.29, 0).sum(0).tolist() == [28, 28, 28]
    assert prune_mask(scores, 0.29, per="column").sum(0).tolist() == [29, 29, 29]
    with pytest.raises(ValueError, match="rounding"):
        n_prune(10, 0.5, "round")
