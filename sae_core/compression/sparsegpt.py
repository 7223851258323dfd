"""SparseGPT (Frantar & Alistarh 2023), ``sparsegpt:S`` / ``sparsegpt:N:M``, and the inverse-Hessian
column sweep it shares with GPTQ (``gptq.py``).

Per Linear/Conv1D module (weight viewed ``[out, in]``), as in IST-DASLab/sparsegpt (copied into
locuslab/wanda ``lib/sparsegpt.py``):

- ``H = (2/n) sum X X^T`` over the module's calibration inputs, updated as a running mean per
  batch (``n`` counts sequences, as in the reference), in float32 (float64 for float64 models).
- Dead inputs (``H_jj == 0``): ``H_jj = 1`` and ``W[:, j] = 0``.
- Damping ``0.01 * mean(diag H)`` on the diagonal; ``Hinv`` = the upper Cholesky factor of
  ``H^-1``. If a factorisation fails, the damping is multiplied by 10 (at most
  ``MAX_DAMPING_RETRIES`` times) with a warning, and the damping used is reported per module;
  if it still fails, :class:`HessianError` names the module. There is no identity-inverse
  fallback (llm-compressor's silent one turns SparseGPT into block-wise magnitude pruning).
- Columns are swept in blocks of 128. Unstructured: at the start of each block the score
  ``W^2 / diag(Hinv_block)^2`` of the *current* (error-updated) weights is thresholded at its
  ``sparsity`` quantile over the whole block flattened (reference rule: the value at sorted
  index ``int(numel * sparsity)``, and every score ``<=`` it is pruned, so a block loses at
  least one weight more than ``numel * sparsity``; ``sparsity == 0`` prunes nothing). N:M: at
  every M-th column, each row prunes its N lowest scores among the next M columns (for an M
  that does not divide 128 the blocks shrink to a multiple of M, so groups stay aligned).
- OBS update per column ``i``: ``err = (w - q) / Hinv_ii``, ``W[:, i:] -= err Hinv[i, i:]``
  inside the block, then ``W[:, rest] -= Err Hinv[block, rest]`` after it.

Modules are compressed sequentially, block by block (``sequential.py``), like the reference
driver: all modules of a decoder block use Hessians from that block's inputs, which come from
the already compressed blocks before it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from sae_core.compression.base import CompressionMethod
from sae_core.compression.modules import Target, acc_dtype, weight_out_in

__all__ = ["BLOCKSIZE", "PERCDAMP", "HessianAccumulator", "HessianError", "SparseGPTMethod", "inverse_hessian_factor",
           "obs_sweep_", "sparsegpt_prune_"]

BLOCKSIZE = 128
PERCDAMP = 0.01
MAX_DAMPING_RETRIES = 4  # damping up to PERCDAMP * 10^4 of the mean diagonal


class HessianError(RuntimeError):
    """The (damped) Hessian of a module could not be inverted."""


class HessianAccumulator:
    """``H = (2/n) sum X X^T`` as a running mean over batches (the reference's ``add_batch``)."""

    def __init__(self, target: Target):
        w = weight_out_in(target.module)
        self.n_in = int(w.shape[1])
        self.H = torch.zeros(self.n_in, self.n_in, dtype=acc_dtype(w.dtype), device=w.device)
        self.n_samples = 0

    def add(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.ndim >= 3 else 1
        x = x.reshape(-1, self.n_in).t().to(self.H.dtype)
        self.H *= self.n_samples / (self.n_samples + batch)
        self.n_samples += batch
        x = math.sqrt(2 / self.n_samples) * x
        self.H += x @ x.t()


def inverse_hessian_factor(H: torch.Tensor, name: str, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of ``(H + damp I)^-1`` with ``damp = percdamp * mean(diag H)``.

    On failure the damping grows 10x, up to ``MAX_DAMPING_RETRIES`` times (with a warning).
    Returns ``(Hinv, damping fraction used, retries)``. ``H`` must already have dead inputs fixed.
    """
    mean_diag = float(torch.diag(H).mean())
    if not torch.isfinite(H).all() or not math.isfinite(mean_diag) or mean_diag <= 0:
        raise HessianError(f"the Hessian of {name} is not finite or has a non-positive mean diagonal "
                           f"({mean_diag!r}); its calibration inputs are unusable")
    idx = torch.arange(H.shape[0], device=H.device)
    fraction = percdamp
    for retry in range(MAX_DAMPING_RETRIES + 1):
        damped = H.clone()
        damped[idx, idx] += fraction * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                if retry:
                    warnings.warn(f"Cholesky of the Hessian of {name} failed with damping {percdamp:g} x mean diag; "
                                  f"succeeded with {fraction:g} x mean diag", RuntimeWarning, stacklevel=2)
                return upper, fraction, retry
        fraction *= 10
    raise HessianError(f"Cholesky of the Hessian of {name} failed even with damping {fraction / 10:g} x mean diag "
                       f"({MAX_DAMPING_RETRIES} retries from {percdamp:g}); refusing to fall back to an identity inverse")


def prepare_weight_and_hessian(module: nn.Module, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float ``[out, in]`` working copy of the weight, and ``H`` with dead inputs fixed (in place)."""
    W = weight_out_in(module).detach().clone().to(acc_dtype(module.weight.dtype))
    H = H.to(W.dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def obs_sweep_(W: torch.Tensor, Hinv: torch.Tensor, rule, blocksize: int = BLOCKSIZE) -> None:
    """The column sweep shared by SparseGPT and GPTQ, in place on ``W`` (``[out, in]``).

    ``rule.begin_block(i1, W1, d)`` sees each block's current weights ``W1`` and ``d =
    diag(Hinv_block)``; ``rule.column(i1, i, W1, d)`` returns the compressed column ``i`` of the
    block (zeros for pruned weights, grid values for quantized ones).
    """
    n_cols = W.shape[1]
    for i1 in range(0, n_cols, blocksize):
        i2 = min(i1 + blocksize, n_cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        rule.begin_block(i1, W1, d)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = rule.column(i1, i, W1, d)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


class _PruneRule:
    """SparseGPT's mask selection inside the sweep."""

    def __init__(self, sparsity: float, nm: tuple[int, int] | None):
        self.sparsity, self.nm = sparsity, nm
        self.mask: torch.Tensor | None = None

    def begin_block(self, i1: int, W1: torch.Tensor, d: torch.Tensor) -> None:
        if self.nm is not None or self.sparsity <= 0:
            self.mask = torch.zeros_like(W1, dtype=torch.bool)
            return
        scores = W1**2 / d.reshape(1, -1) ** 2
        threshold = torch.sort(scores.flatten())[0][int(scores.numel() * self.sparsity)]
        self.mask = scores <= threshold

    def column(self, i1: int, i: int, W1: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.nm is not None and i % self.nm[1] == 0:
            n, m = self.nm
            scores = W1[:, i : i + m] ** 2 / d[i : i + m].reshape(1, -1) ** 2
            self.mask.scatter_(1, i + torch.topk(scores, n, dim=1, largest=False)[1], True)
        q = W1[:, i].clone()
        q[self.mask[:, i]] = 0
        return q


def write_weight_(module: nn.Module, W: torch.Tensor) -> None:
    weight_out_in(module).copy_(W.to(module.weight.dtype))  # through the (transposed) view


@torch.no_grad()
def sparsegpt_prune_(module: nn.Module, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                     *, name: str = "module", blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP) -> dict[str, Any]:
    """Prune one module in place from its Hessian ``H`` (modified: dead inputs); returns damping facts."""
    W, H = prepare_weight_and_hessian(module, H)
    Hinv, damping, retries = inverse_hessian_factor(H, name, percdamp)
    if nm is not None:  # N:M groups never straddle two column blocks (the reference assumes M divides 128)
        blocksize = nm[1] * max(1, blocksize // nm[1])
    obs_sweep_(W, Hinv, _PruneRule(sparsity, nm), blocksize)
    write_weight_(module, W)
    return {"damping": damping, "damping_retries": retries}


class SparseGPTMethod(CompressionMethod):
    name = "sparsegpt"
    needs_calibration = True

    def accumulator(self, target: Target) -> HessianAccumulator:
        return HessianAccumulator(target)

    def compress_module(self, target: Target, stats: HessianAccumulator | None) -> dict[str, Any]:
        return sparsegpt_prune_(target.module, stats.H, self.spec.sparsity, self.spec.nm, name=target.name)
