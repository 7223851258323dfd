"""Canonical WANDA pruning (Sun et al. 2023, locuslab/wanda) and the magnitude baselines' pruning core.

WANDA score of weight ``W[i, j]`` of a linear map stored as ``[out, in]``::

    S[i, j] = |W[i, j]| * ||X_j||_2

where ``X_j`` is input feature ``j`` over *all* calibration tokens (accumulated in at least
float32). Scores are compared within each output row; the lowest-scoring fraction of each row
is set to zero (selection rule: ``masks.py``). There is no weight update: kept weights are
bit-identical to the originals. The model is pruned sequentially, block by block
(``sequential.py``), like the reference implementation; all modules of a block use
statistics of the dense block.

Magnitude baselines (``|W|`` per row, ``|W|`` per whole matrix) use the same
:func:`prune_weight_` and need no calibration pass (their registry entries: ``magnitude.py``).
Entry point for every method: ``sae_core.compression.compress_model``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from sae_core.compression.base import CompressionMethod
from sae_core.compression.masks import magnitude_scores, prune_mask
from sae_core.compression.modules import Target, acc_dtype, weight_out_in

__all__ = ["SumOfSquares", "WandaMethod", "prune_weight_"]

_CHUNK_ELEMS = 1 << 22  # rows are scored / selected / masked in chunks of <= 4M elements (bounds temporaries)


@torch.no_grad()
def prune_weight_(module: nn.Module, sparsity: float, structure: str, scoring: Literal["wanda", "row", "matrix"],
                  input_sq_sum: torch.Tensor | None = None) -> int:
    """Prune one Linear/Conv1D module in place; returns the number of weights zeroed.

    ``scoring``: ``"wanda"`` (|W| * ||X_j||, per row; needs ``input_sq_sum``, per input column,
    over all calibration tokens), ``"row"`` (|W| per row) or ``"matrix"`` (|W| over the matrix).
    Row-wise rules are applied to chunks of output rows (same result as whole-matrix
    selection, less temporary memory, better cache use); kept weights are never written.
    """
    w = weight_out_in(module)
    out_f, in_f = w.shape
    dt = acc_dtype(w.dtype)
    norms = None
    if scoring == "wanda":
        if input_sq_sum is None:
            raise ValueError("method 'wanda' needs input_sq_sum (per-input-column sum of squares)")
        if tuple(input_sq_sum.shape) != (in_f,):
            raise ValueError(f"input_sq_sum has shape {tuple(input_sq_sum.shape)}, expected ({in_f},)")
        norms = input_sq_sum.to(device=w.device, dtype=dt).sqrt()
    elif scoring == "matrix":
        mask = prune_mask(magnitude_scores(w), sparsity, structure, per="matrix", nonneg=True)
        w.masked_fill_(mask, 0)
        return int(torch.count_nonzero(mask))

    n_pruned = 0
    rows = max(1, _CHUNK_ELEMS // in_f)
    for o0 in range(0, out_f, rows):
        wc = w[o0 : o0 + rows]
        sc = torch.empty(wc.shape, dtype=dt, device=w.device)
        sc.copy_(wc).abs_()  # always a copy: the weight itself is only touched by masked_fill_
        if norms is not None:
            sc.mul_(norms)
        mask = prune_mask(sc, sparsity, structure, per="row", nonneg=True)
        del sc
        wc.masked_fill_(mask, 0)  # in place through the (possibly transposed) view
        n_pruned += int(torch.count_nonzero(mask))
    return n_pruned


class SumOfSquares:
    """WANDA's statistics: per input column, the sum of squares over all calibration tokens."""

    def __init__(self, target: Target):
        w = weight_out_in(target.module)
        self.n_in = int(w.shape[1])
        self.sum = torch.zeros(self.n_in, dtype=acc_dtype(w.dtype), device=w.device)

    def add(self, x: torch.Tensor) -> None:
        x2 = x.reshape(-1, self.n_in)
        if x2.dtype != self.sum.dtype:
            x2 = x2.to(self.sum.dtype)
        self.sum.add_(torch.square(x2).sum(dim=0))


class WandaMethod(CompressionMethod):
    """``wanda:S`` / ``wanda:N:M``: |W| * ||X_j||_2 per output row, no weight update."""

    name = "wanda"
    needs_calibration = True
    scoring: ClassVar[Literal["wanda", "row", "matrix"]] = "wanda"

    def accumulator(self, target: Target) -> SumOfSquares:
        return SumOfSquares(target)

    def compress_module(self, target: Target, stats: SumOfSquares | None) -> dict[str, Any]:
        prune_weight_(target.module, float(self.spec.sparsity), self.spec.structure, self.scoring,
                      None if stats is None else stats.sum)
        return {}
