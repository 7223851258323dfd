"""``affine``: an affine map from the compressed model's activations to the dense model's, folded
into the encoder, then the decoder refit (affine stitching, Chen, Merullo, Stolfo, Pavlick 2025).

1. Fit ``x_dense ≈ x_cmp A + c`` by ridge least squares on the same tokens (``inputs.compressed``
   and ``inputs.dense``, row-aligned): streaming float64 normal equations, ``λ = ridge *
   mean_i Σ_t x_cmp[t, i]²`` on A only (``ridge = 1e-6`` by default, ``inputs.options["ridge"]``).
2. Fold it into the encoder so that the new SAE's ``encode(x_cmp)`` equals the original's
   ``encode(x_cmp A + c)`` exactly (:func:`~sae_core.variants.folding.fold_affine_into_encoder`:
   ``W_enc' = A W_enc``, ``b_enc' = b_enc + (c - a b_dec) W_enc + a b_dec A W_enc`` with ``a`` =
   ``apply_b_dec_to_input``; TopK selection and JumpReLU thresholds see identical pre-activations).
3. The decoder maps codes back to the *compressed* model's activations (the SAE is read on the
   compressed model): refit as in :mod:`~sae_core.variants.refit_decoder` (ridge LS, bias folded
   to keep encoder input, never-firing latents keep their row, unit-norm fold).

The result is a plain SAE of the original's architecture. Report details: the affine fit's
explained variance and relative residual, ``||A - I||_F / sqrt(d_in)``, ``||c||``, and the refit's figures.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import clone_sae
from sae_core.variants.base import VariantInputs, VariantMethod, reiterable
from sae_core.variants.folding import NormalEquations, fold_affine_into_encoder, paired_batches
from sae_core.variants.refit_decoder import DEFAULT_RIDGE, refit_decoder_

__all__ = ["AffineMethod", "fit_affine"]


@torch.no_grad()
def fit_affine(sae: SAE[Any], compressed, dense, n_tokens: int | None, ridge: float = DEFAULT_RIDGE
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(A [d_in, d_in], c [d_in], details)`` with ``x_dense ≈ x_cmp A + c`` (float64)."""
    d_in = sae.cfg.d_in
    ne = NormalEquations(d_in, d_in, device=sae.device)
    for x_cmp, x_dense in paired_batches(sae, compressed, dense, n_tokens):
        ne.update(x_cmp, x_dense)
    if ne.n == 0:
        raise ValueError("affine got no activations")
    A, c, lam = ne.solve(ridge)
    sse, sst = ne.sse(A, c), ne.sst()
    identity = torch.eye(d_in, dtype=torch.float64, device=A.device)
    details = {"affine_tokens": int(ne.n), "affine_ridge": float(ridge), "affine_lambda": float(lam),
               "affine_explained_variance": 1.0 - sse / sst if sst > 0 else 0.0,
               "affine_relative_residual": math.sqrt(sse / ne.yy) if ne.yy > 0 else 0.0,
               "affine_distance_from_identity": float((A - identity).norm() / math.sqrt(d_in)),
               "affine_offset_norm": float(c.norm())}
    return A, c, details


class AffineMethod(VariantMethod):
    name = "affine"
    folds = True

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        compressed = reiterable(inputs.compressed, "affine (fit, then decoder refit)")
        ridge = float(inputs.options.get("ridge", DEFAULT_RIDGE))
        A, c, details = fit_affine(original, compressed, inputs.dense, inputs.n_tokens, ridge)
        sae = clone_sae(original)
        fold_affine_into_encoder(sae, A, c)
        details.update(refit_decoder_(sae, original, compressed, inputs.n_tokens, ridge))
        return sae, max(details["affine_tokens"], details["fit_tokens"]), 0, details
