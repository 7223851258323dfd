"""``refit_decoder``: encoder frozen; decoder weights AND bias by closed-form ridge least squares.

On N compressed-model activations ``x`` the frozen encoder gives codes ``F`` (what ``W_dec``
multiplies). The new decoder minimises ``Σ_t ||x_t - F_t W - b||² + λ ||W||²_F``: the normal
equations ``([F 1]^T [F 1] + diag(λ, …, λ, 0)) [W; b] = [F 1]^T X`` are accumulated in float64
over the batches (:class:`~sae_core.variants.folding.NormalEquations`, never the whole F) and
solved by Cholesky. ``λ = ridge * mean_j Σ_t F_tj²`` with ``ridge = 1e-6`` by default
(``inputs.options["ridge"]``): scale-free, negligible for any latent that fires more than a
handful of times, and enough to make the system positive definite when latents never fire; the
bias is not penalised (its fitted value makes the mean residual exactly zero).

Then, exactly (function unchanged, see :mod:`~sae_core.variants.folding`):

1. ``b_dec`` changes but the encoder must see what it saw: with ``apply_b_dec_to_input`` the change
   is folded into ``b_enc`` (pre-activations unchanged);
2. latents that never fired on the N tokens keep their original (unit) decoder row (the fit
   has no information about them; ridge alone would zero them);
3. rows are folded to unit norm into ``W_enc`` columns / ``b_enc`` / JumpReLU ``threshold``.
   ReLU and JumpReLU commute with positive per-latent scaling, so this is exact. TopK is folded
   under sae-lens' ``rescale_acts_by_decoder_norm`` semantics (the flag is set, as sae_prune
   does): the folded SAE selects the k largest ``pre_j * n_j`` (``n_j`` the refit row norm, i.e.
   contribution size) and computes exactly the pre-fold SAE with that flag; the least-squares fit
   itself used the original selection, so for TopK the refit is optimal for the old selection and
   the reported ``fit_mse_after`` holds for ReLU / JumpReLU exactly, for TopK up to the tokens
   whose selection the row norms change.

Report details: ``fit_mse_before`` / ``fit_mse_after`` (per element, on the fitting tokens, from
the normal equations), ``never_fired`` latents, ``ridge`` and ``lambda``, ``switched_off`` latents.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import clone_sae, no_hook_z_reshaping
from sae_core.variants.base import VariantInputs, VariantMethod
from sae_core.variants.folding import NormalEquations, decoder_input, limited_batches, set_b_dec, unit_norm_decoder

__all__ = ["DEFAULT_RIDGE", "RefitDecoderMethod", "refit_decoder_"]

DEFAULT_RIDGE = 1e-6


@torch.no_grad()
def decoder_normal_equations(sae: SAE[Any], batches, n_tokens: int | None) -> tuple[NormalEquations, torch.Tensor]:
    """Normal equations of ``x ≈ codes W + b`` for ``sae``'s frozen encoder, and which latents fired."""
    ne = NormalEquations(sae.cfg.d_sae, sae.cfg.d_in, device=sae.device)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=sae.device)
    with no_hook_z_reshaping(sae):
        for x in limited_batches(sae, batches, n_tokens):
            codes = decoder_input(sae, sae.encode(x))
            fired |= (codes != 0).any(0)
            ne.update(codes, x)
    if ne.n == 0:
        raise ValueError("refit_decoder got no activations")
    return ne, fired


@torch.no_grad()
def refit_decoder_(sae: SAE[Any], original: SAE[Any], batches, n_tokens: int | None, ridge: float = DEFAULT_RIDGE,
                   fold: bool = True) -> dict[str, Any]:
    """Refit ``sae``'s decoder in place on ``batches`` (its encoder frozen); ``original`` gives the
    rows kept for never-firing latents. ``fold=False`` stops before the unit-norm fold (tests)."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    ne, fired = decoder_normal_equations(sae, batches, n_tokens)
    old_W, old_b = sae.W_dec.detach().double(), sae.b_dec.detach().double()  # what the codes multiply
    W, b, lam = ne.solve(ridge)
    W = torch.where(fired[:, None], W, original.W_dec.detach().double().to(W.device))
    set_b_dec(sae, b)
    sae.W_dec.data.copy_(W.to(sae.W_dec.dtype))
    d_in = sae.cfg.d_in
    details: dict[str, Any] = {
        "fit_tokens": int(ne.n), "ridge": float(ridge), "lambda": float(lam),
        "never_fired": int((~fired).sum()),
        "fit_mse_before": ne.sse(old_W, old_b) / (ne.n * d_in), "fit_mse_after": ne.sse(W, b) / (ne.n * d_in),
        "fit_explained_variance_after": 1.0 - ne.sse(W, b) / ne.sst() if ne.sst() > 0 else 0.0,
    }
    if fold:
        notes: list[str] = []
        details["switched_off"] = unit_norm_decoder(sae, original, notes)
        details["notes"] = notes
    return details


class RefitDecoderMethod(VariantMethod):
    name = "refit_decoder"
    folds = True

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        sae = clone_sae(original)
        details = refit_decoder_(sae, original, inputs.compressed, inputs.n_tokens,
                                 float(inputs.options.get("ridge", DEFAULT_RIDGE)))
        return sae, details["fit_tokens"], 0, details
