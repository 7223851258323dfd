"""``affine``: an affine map from the compressed model's activations to the dense model's, folded
into the encoder, then the decoder refit (affine stitching, Chen, Merullo, Stolfo, Pavlick 2025).

1. Fit ``x_dense ≈ x_cmp A + c`` on the same tokens (``inputs.compressed`` and ``inputs.dense``,
   row-aligned) by least squares shrunk towards the identity map, the same estimator as the decoder
   refit (:class:`~sae_core.variants.folding.NormalEquations`): minimise ``Σ_t ||x_dense - x_cmp A -
   c||² + λ ||A - I||²_F`` (c unpenalised), ``λ = (ridge + s) · mean_i Σ_t x_cmp[t, i]²``. A tiny
   compression change then gives a near-identity map instead of a noisy one. ``s``
   (``inputs.options["affine_shrink"]``, default ``"auto"``) is chosen from ``AFFINE_SHRINK_GRID``
   by the map's own error on the held-back fitting tokens (every 5th, as for the decoder; exact from
   the sums, no extra pass); ties go to the larger ``s``; too few held-back tokens: ``s = 0``.
2. Fold it into the encoder so that the new SAE's ``encode(x_cmp)`` equals the original's
   ``encode(x_cmp A + c)`` exactly (:func:`~sae_core.variants.folding.fold_affine_into_encoder`:
   ``W_enc' = A W_enc``, ``b_enc' = b_enc + (c - a b_dec) W_enc + a b_dec A W_enc`` with ``a`` =
   ``apply_b_dec_to_input``; TopK selection and JumpReLU thresholds see identical pre-activations).
3. The decoder maps codes back to the *compressed* model's activations (the SAE is read on the
   compressed model): refit as in :mod:`~sae_core.variants.refit_decoder` (shrunk towards the
   original rows, ``c`` chosen on the held-back tokens through the folded SAE, bias folded to keep
   encoder input, never-firing latents keep their row, unit-norm fold).

The result is a plain SAE of the original's architecture. Report details: the affine fit's
explained variance and relative residual, ``affine_shrink`` (and how it was chosen, the grid's
held-back errors), ``||A - I||_F / sqrt(d_in)``, ``||c||``, and the refit's figures.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import clone_sae
from sae_core.variants.base import VariantInputs, VariantMethod, reiterable
from sae_core.variants.folding import (VALIDATION_MIN_TOKENS, NormalEquations, choose_shrink, fold_affine_into_encoder,
                                       paired_batches, validation_rows)
from sae_core.variants.refit_decoder import DEFAULT_RIDGE, refit_decoder_, shrink_option

__all__ = ["AFFINE_SHRINK_GRID", "AffineMethod", "fit_affine"]


AFFINE_SHRINK_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # s: λ / mean input energy, on top of ridge


@torch.no_grad()
def fit_affine(sae: SAE[Any], compressed, dense, n_tokens: int | None, ridge: float = DEFAULT_RIDGE,
               shrink: str | float = "auto") -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(A [d_in, d_in], c [d_in], details)`` with ``x_dense ≈ x_cmp A + c`` (float64), shrunk towards I."""
    shrink = shrink_option(shrink, "affine_shrink")
    d_in = sae.cfg.d_in
    fit, val = NormalEquations(d_in, d_in, device=sae.device), NormalEquations(d_in, d_in, device=sae.device)
    seen = 0
    for x_cmp, x_dense in paired_batches(sae, compressed, dense, n_tokens):
        mask = validation_rows(seen, x_cmp.shape[0], val.n, device=x_cmp.device)
        seen += int(x_cmp.shape[0])
        fit.update(x_cmp[~mask], x_dense[~mask])
        if mask.any():
            val.update(x_cmp[mask], x_dense[mask])
    if seen == 0:
        raise ValueError("affine got no activations")
    identity = torch.eye(d_in, dtype=torch.float64, device=sae.device)

    def lam(ne: NormalEquations, s: float) -> float:
        return ne.ridge_lambda(ridge) + ne.ridge_lambda(s)

    details: dict[str, Any] = {"affine_validation_tokens": 0}
    if shrink != "auto":
        s, details["affine_shrink_chosen_by"] = float(shrink), "option"
    elif val.n < VALIDATION_MIN_TOKENS or fit.n == 0:
        s, details["affine_shrink_chosen_by"] = 0.0, f"fixed rule (fewer than {VALIDATION_MIN_TOKENS} held-back tokens)"
    else:
        s, scores = choose_shrink(AFFINE_SHRINK_GRID, lambda s: val.sse(*fit.solve(lam(fit, s), identity)))
        details.update(affine_shrink_chosen_by="validation (every 5th fitting token held back)",
                       affine_validation_tokens=int(val.n), affine_shrink_grid=list(AFFINE_SHRINK_GRID),
                       affine_shrink_validation_mse=[v / (val.n * d_in) for v in scores])
    ne = fit.merged(val)
    total = lam(ne, s)
    A, c = ne.solve(total, identity)
    sse, sst = ne.sse(A, c), ne.sst()
    details.update({"affine_tokens": int(ne.n), "affine_ridge": float(ridge), "affine_shrink": float(s),
                    "affine_lambda": float(total),
                    "affine_explained_variance": 1.0 - sse / sst if sst > 0 else 0.0,
                    "affine_relative_residual": math.sqrt(sse / ne.yy) if ne.yy > 0 else 0.0,
                    "affine_distance_from_identity": float((A - identity).norm() / math.sqrt(d_in)),
                    "affine_offset_norm": float(c.norm())})
    return A, c, details


class AffineMethod(VariantMethod):
    name = "affine"
    folds = True

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        compressed = reiterable(inputs.compressed, "affine (fit, then decoder refit)")
        ridge = float(inputs.options.get("ridge", DEFAULT_RIDGE))
        A, c, details = fit_affine(original, compressed, inputs.dense, inputs.n_tokens, ridge,
                                   shrink=inputs.options.get("affine_shrink", "auto"))
        sae = clone_sae(original)
        fold_affine_into_encoder(sae, A, c)
        details.update(refit_decoder_(sae, original, compressed, inputs.n_tokens, ridge,
                                      shrink=inputs.options.get("shrink", "auto")))
        return sae, max(details["affine_tokens"], details["fit_tokens"]), 0, details
