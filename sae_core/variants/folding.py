"""Exact weight surgery shared by the gradient-free fixes, and the streaming shrinkage least squares
they use (:class:`NormalEquations`, :func:`validation_rows`, :func:`choose_shrink`: one estimator for
the decoder refit and the affine map, see :mod:`~sae_core.variants.refit_decoder`).

Conventions (sae-lens 6, ``a`` = ``cfg.apply_b_dec_to_input`` as 0/1): every architecture here
computes the pre-activation ``pre = (x - a b_dec) W_enc + b_enc`` (TopK with
``rescale_acts_by_decoder_norm`` then multiplies ``pre_j`` by ``||W_dec[j]||``), applies its
activation (ReLU, TopK, JumpReLU with ``threshold``) and decodes ``x_hat = f W_dec + b_dec``
(TopK with the flag divides ``f_j`` by ``||W_dec[j]||`` first). The folds below keep either every
pre-activation or the whole function unchanged, exactly (to float rounding):

- :func:`set_b_dec`: a new ``b_dec`` with unchanged pre-activations (``b_enc += a Δ W_enc``);
- :func:`fold_affine_into_encoder`: ``encode'(x) = encode(x A + c)``;
- :func:`unit_norm_decoder`: decoder rows to unit norm, norms into ``W_enc`` columns, ``b_enc``
  and ``threshold`` (sae_prune's exact fold, TopK under ``rescale_acts_by_decoder_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import flat_sae_inputs

__all__ = ["NormalEquations", "VALIDATION_EVERY", "VALIDATION_MAX_TOKENS", "VALIDATION_MIN_TOKENS", "choose_shrink",
           "decoder_input", "fold_affine_into_encoder", "limited_batches", "paired_batches", "set_b_dec",
           "unit_norm_decoder", "validation_rows"]


def _a(sae: SAE[Any]) -> float:
    return 1.0 if sae.cfg.apply_b_dec_to_input else 0.0


@torch.no_grad()
def set_b_dec(sae: SAE[Any], new_b_dec: torch.Tensor) -> None:
    """Set ``b_dec`` in place without changing any pre-activation (encoder input centring kept)."""
    new = new_b_dec.detach().to(torch.float64)
    if sae.cfg.apply_b_dec_to_input:
        delta = new - sae.b_dec.detach().double()
        # pre = (x - b_dec - Δ) W_enc + b_enc' equals the old pre iff b_enc' = b_enc + Δ W_enc
        sae.b_enc.data.copy_((sae.b_enc.detach().double() + delta @ sae.W_enc.detach().double()).to(sae.b_enc.dtype))
    sae.b_dec.data.copy_(new.to(sae.b_dec.dtype))


@torch.no_grad()
def fold_affine_into_encoder(sae: SAE[Any], A: torch.Tensor, c: torch.Tensor) -> None:
    """In place: afterwards ``sae.encode(x)`` equals the old ``sae.encode(x @ A + c)``; ``b_dec`` unchanged.

    Old pre-activation of ``z = x A + c``: ``(x A + c - a b_dec) W + b_enc``. New: ``(x - a b_dec) W' + b_enc'``.
    Equal for every x iff ``W' = A W`` and ``b_enc' = b_enc + (c - a b_dec) W + a b_dec A W``
    (the last term: the new encoder subtracts ``b_dec`` from ``x`` *before* ``A``; forgetting it
    leaves the pre-activations off by ``a b_dec (A - I) W``).
    """
    W = sae.W_enc.detach().double()
    A64, c64, b_dec = A.detach().double().to(W.device), c.detach().double().to(W.device), sae.b_dec.detach().double()
    W_new = A64 @ W
    b_enc = sae.b_enc.detach().double() + (c64 - _a(sae) * b_dec) @ W + _a(sae) * (b_dec @ W_new)
    sae.W_enc.data.copy_(W_new.to(sae.W_enc.dtype))
    sae.b_enc.data.copy_(b_enc.to(sae.b_enc.dtype))


@torch.no_grad()
def unit_norm_decoder(sae: SAE[Any], original: SAE[Any], notes: list[str]) -> int:
    """Fold decoder-row norms into the encoder, in place (sae_prune's exact fold; see its docstring).

    Rows of norm 0 get ``original``'s direction and their latents are switched off (they decode to
    nothing). TopK adopts ``rescale_acts_by_decoder_norm`` semantics, under which the fold is exact:
    it then selects the k largest ``pre_j * ||W_dec[j]||`` (contribution sizes). Returns the number of
    switched-off latents.
    """
    from sae_core.sae_prune import _unit_norm_decoder  # the one implementation of this fold

    return _unit_norm_decoder(sae, original, notes)


def decoder_input(sae: SAE[Any], feature_acts: torch.Tensor) -> torch.Tensor:
    """What ``W_dec`` multiplies (TopK with ``rescale_acts_by_decoder_norm`` divides by row norms)."""
    if feature_acts.is_sparse:
        feature_acts = feature_acts.to_dense()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return feature_acts / sae.W_dec.norm(dim=-1)
    return feature_acts


# ------------------------------------------------------------------ streaming inputs
def limited_batches(sae: SAE[Any], batches: Iterable[torch.Tensor], max_tokens: int | None) -> Iterator[torch.Tensor]:
    """Flat ``[n, d_in]`` batches on the SAE's device, stopping after ``max_tokens`` rows (None: all)."""
    seen = 0
    for batch in batches:
        x = flat_sae_inputs(sae, batch)
        if max_tokens is not None:
            x = x[: max(0, max_tokens - seen)]
        if x.shape[0]:
            seen += int(x.shape[0])
            yield x.to(sae.device)
        if max_tokens is not None and seen >= max_tokens:
            return


def paired_batches(sae: SAE[Any], first: Iterable[torch.Tensor], second: Iterable[torch.Tensor],
                   max_tokens: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Row-aligned pairs (compressed, dense) of the same tokens; ValueError when they do not line up."""
    seen = 0
    it_a, it_b = iter(first), iter(second)
    while True:
        a, b = next(it_a, None), next(it_b, None)
        if a is None or b is None:
            if (a is None) != (b is None):
                raise ValueError(f"compressed and dense activation streams differ in length (after {seen} tokens): "
                                 "they must hold the same tokens, batch for batch")
            return
        xa, xb = flat_sae_inputs(sae, a), flat_sae_inputs(sae, b)
        if xa.shape != xb.shape:
            raise ValueError(f"compressed batch {tuple(xa.shape)} and dense batch {tuple(xb.shape)} differ: they must "
                             "hold the same tokens, row for row")
        if max_tokens is not None:
            keep = max(0, max_tokens - seen)
            xa, xb = xa[:keep], xb[:keep]
        if xa.shape[0]:
            seen += int(xa.shape[0])
            yield xa.to(sae.device), xb.to(sae.device)
        if max_tokens is not None and seen >= max_tokens:
            return


# ------------------------------------------------------------------ shrinkage least squares
#: Every ``VALIDATION_EVERY``-th streamed row (global row index ``t % 5 == 4``) is held out of the
#: fit to choose the shrinkage, up to ``VALIDATION_MAX_TOKENS`` rows (kept in memory); the final
#: solve then uses every row. Fewer than ``VALIDATION_MIN_TOKENS`` validation rows: a fixed rule.
VALIDATION_EVERY = 5
VALIDATION_MAX_TOKENS = 8192
VALIDATION_MIN_TOKENS = 256


def validation_rows(start: int, n: int, taken: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask of the validation rows among global rows ``start .. start + n - 1`` (``taken``:
    validation rows chosen before this batch; the cap is applied in order)."""
    index = torch.arange(start, start + n, device=device)
    mask = index % VALIDATION_EVERY == VALIDATION_EVERY - 1
    room = max(0, VALIDATION_MAX_TOKENS - taken)
    if int(mask.sum()) > room:
        mask &= mask.cumsum(0) <= room
    return mask


class NormalEquations:
    """Streaming float64 normal equations of ``Y ≈ F W + 1 b``, shrunk towards a prior on W (not on b).

    Accumulates ``G = [F 1]^T [F 1]``, ``R = [F 1]^T Y`` and ``Σ||Y||²`` over batches;
    :meth:`solve` minimises ``Σ||Y - F W - b||² + λ ||W - P||²_F`` (``P`` the prior, 0 when None):
    ``([F 1]^T [F 1] + diag(λ, …, λ, 0)) [W; b] = [F 1]^T Y + [λ P; 0]``. With ``λ = 0`` it is
    plain least squares (minimum-norm solution when singular).
    """

    def __init__(self, p: int, q: int, device: torch.device | str = "cpu"):
        self.p, self.q = p, q
        self.G = torch.zeros(p + 1, p + 1, dtype=torch.float64, device=device)
        self.R = torch.zeros(p + 1, q, dtype=torch.float64, device=device)
        self.yy = 0.0
        self.n = 0

    @torch.no_grad()
    def update(self, F: torch.Tensor, Y: torch.Tensor) -> None:
        F64, Y64 = F.detach().double(), Y.detach().double()
        p = self.p
        if F64.shape[0] and (F64 != 0).float().mean() < 0.1:  # sparse codes: sparse @ dense is far cheaper
            Ft = F64.t().to_sparse()
            self.G[:p, :p] += torch.sparse.mm(Ft, F64)
            self.R[:p] += torch.sparse.mm(Ft, Y64)
        else:
            self.G[:p, :p] += F64.t() @ F64
            self.R[:p] += F64.t() @ Y64
        s = F64.sum(0)
        self.G[:p, p] += s
        self.G[p, :p] += s
        self.G[p, p] += F64.shape[0]
        self.R[p] += Y64.sum(0)
        self.yy += float(Y64.pow(2).sum())
        self.n += int(F64.shape[0])

    def merged(self, other: "NormalEquations") -> "NormalEquations":
        """The normal equations of both row sets together (sums add)."""
        out = NormalEquations(self.p, self.q, device=self.G.device)
        out.G, out.R = self.G + other.G, self.R + other.R
        out.yy, out.n = self.yy + other.yy, self.n + other.n
        return out

    def energies(self) -> torch.Tensor:
        """``diag(F^T F)``: each column's energy (a latent's Σ_t f_tj²)."""
        return torch.diagonal(self.G)[: self.p]

    def ridge_lambda(self, ridge: float) -> float:
        """``ridge * mean_j (F^T F)_jj`` (scale-free)."""
        diag = self.energies()
        mean = float(diag.mean()) if self.p else 0.0
        return float(ridge) * (mean if mean > 0 else 1.0)

    def median_energy(self) -> float:
        """Median of ``(F^T F)_jj`` over the columns that are ever non-zero (1.0 if none)."""
        diag = self.energies()
        live = diag[diag > 0]
        return float(torch.quantile(live, 0.5)) if live.numel() else 1.0  # the mean of the middle two when even

    def solve(self, lam: float, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [p, q], b [q])`` minimising ``Σ||Y - F W - b||² + λ ||W - prior||²``."""
        if self.n == 0:
            raise ValueError("least squares got no activations")
        G, R = self.G.clone(), self.R.clone()
        G.diagonal()[: self.p] += lam
        if prior is not None and lam > 0:
            R[: self.p] += lam * prior.detach().double().to(R.device)
        chol, info = torch.linalg.cholesky_ex(G)
        if int(info) == 0:
            sol = torch.cholesky_solve(R, chol)
        else:  # singular (λ 0 and a column that is never non-zero): minimum-norm solution
            sol = torch.linalg.lstsq(G.cpu(), R.cpu(), driver="gelsd").solution.to(G.device)
        return sol[: self.p], sol[self.p]

    def sse(self, W: torch.Tensor, b: torch.Tensor) -> float:
        """``Σ||Y - F W - b||²`` over the accumulated rows, from the sums alone."""
        Wb = torch.cat([W.double(), b.double()[None]], 0).to(self.G.device)
        return max(0.0, self.yy - 2.0 * float((Wb * self.R).sum()) + float((Wb * (self.G @ Wb)).sum()))

    def sst(self) -> float:
        """``Σ||Y - mean(Y)||²``."""
        return max(0.0, self.yy - float(self.R[self.p].pow(2).sum()) / max(self.n, 1))


def choose_shrink(grid: tuple[float, ...], validation_sse) -> tuple[float, list[float]]:
    """The grid value with the lowest validation error (ties: the larger, i.e. closer to the prior),
    and every value's error. ``validation_sse(c) -> float``."""
    scores = [float(validation_sse(c)) for c in grid]
    best = min(range(len(grid)), key=lambda i: (scores[i], -grid[i]))
    return float(grid[best]), scores


def finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
