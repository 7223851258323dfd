"""``refit_decoder``: encoder frozen; decoder weights AND bias by least squares shrunk towards the
original decoder, the shrinkage chosen on held-back fitting tokens.

On N compressed-model activations ``x`` the frozen encoder gives codes ``F`` (what ``W_dec``
multiplies). The new decoder minimises

    Σ_t ||x_t - F_t W - b||²  +  λ Σ_j ||W_j - W_orig_j||²,      λ = c · median_j Σ_t F_tj²  (+ ridge floor)

(``W_orig`` the original's unit rows; the bias is not penalised, so the mean residual is exactly
zero). Closed form: ``([F 1]^T [F 1] + diag(λ, …, λ, 0)) [W; b] = [F 1]^T X + [λ W_orig; 0]``,
accumulated in float64 over the batches (:class:`~sae_core.variants.folding.NormalEquations`,
never the whole F) and solved by Cholesky. It is the MAP decoder under a Gaussian prior centred on
the original: latent j's row is a weighted mean of its data fit (weight its firing energy
``Σ_t F_tj²``) and its original row (weight λ). A latent that fires often is refit from the data; one
that fires rarely (its data fit is noise) stays near its original direction and norm, so it keeps
its meaning (its label) and, for TopK, does not grow a large norm that makes it win selections it
never won (see below). ``λ`` is on the scale of a typical latent's energy (the median over latents
that fire), so ``c`` is scale- and token-count-free. With the codes frozen, the fit can never be
worse on the fitting tokens than the original decoder (the original has zero penalty).

Choosing ``c`` (``inputs.options["shrink"]``, default ``"auto"``): every 5th fitting token (up to
8192, :func:`~sae_core.variants.folding.validation_rows`) is held back; for each ``c`` in
``SHRINK_GRID`` the decoder is fit on the rest, folded exactly as the product is (below), and
scored by its reconstruction error on the held-back tokens *through the folded SAE's own encoder*
(so a TopK selection change counts); the best ``c`` is then refit on every token. Never on the
evaluation tokens the pipeline reports. Fewer than 256 held-back tokens: the fixed rule ``c = 0.1``.
A number sets ``c`` directly (``0`` with ``ridge = 0``: plain least squares). ``ridge``
(``inputs.options["ridge"]``, default ``1e-6``, relative to the mean column energy) is only a
numerical floor added to ``λ`` (positive definite when latents never fire).

Why (measured on the toy preset, ``benchmarks/bench_repair_fixes.py``; docs/results-repair.md
"Estimator"): with ``c = 0`` latents that fire once or twice get rows of norm up to ~6; after the
unit-norm fold TopK selects by ``pre_j · ||W_j||``, so those latents displace ~24% of the
selections the fit assumed and held-out EV fell below transfer's. Shrinkage fixes both the noise
and the selection drift; one refit suffices (iterating fit -> fold -> re-encode -> refit gained
nothing measurable once shrunk, and without shrinkage made it worse), so ``refit_iterations = 1``.

Then, exactly (function unchanged, see :mod:`~sae_core.variants.folding`):

1. ``b_dec`` changes but the encoder must see what it saw: with ``apply_b_dec_to_input`` the change
   is folded into ``b_enc`` (pre-activations unchanged);
2. latents that never fired on the N tokens keep their original (unit) decoder row (the shrunk
   solution is that row already when ``λ > 0``);
3. rows are folded to unit norm into ``W_enc`` columns / ``b_enc`` / JumpReLU ``threshold``.
   ReLU and JumpReLU commute with positive per-latent scaling, so this is exact. TopK is folded
   under sae-lens' ``rescale_acts_by_decoder_norm`` semantics (the flag is set, as sae_prune
   does): the folded SAE selects the k largest ``pre_j * n_j`` (``n_j`` the refit row norm) and
   computes exactly the pre-fold SAE with that flag; ``fit_mse_after`` (codes frozen) holds for
   ReLU / JumpReLU exactly, for TopK up to the tokens whose selection the row norms change (the
   choice of ``c`` already scores the folded SAE).

Report details: ``fit_mse_before`` / ``fit_mse_after`` (per element, on the fitting tokens, codes
frozen), ``never_fired`` latents, ``ridge``, ``shrink`` (the chosen ``c``), ``shrink_chosen_by``,
``shrink_grid`` / ``shrink_validation_mse`` (per element, folded SAE), ``validation_tokens``,
``lambda`` (the total), ``refit_iterations``, ``switched_off`` latents.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import clone_sae, no_hook_z_reshaping
from sae_core.variants.base import VariantInputs, VariantMethod
from sae_core.variants.folding import (VALIDATION_MIN_TOKENS, NormalEquations, choose_shrink, decoder_input,
                                       limited_batches, set_b_dec, unit_norm_decoder, validation_rows)

__all__ = ["DEFAULT_RIDGE", "DEFAULT_SHRINK", "SHRINK_GRID", "RefitDecoderMethod", "refit_decoder_", "shrink_option"]

DEFAULT_RIDGE = 1e-6
SHRINK_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # c: λ / median latent energy
DEFAULT_SHRINK = 0.1  # the fixed rule when too few tokens are held back (the toy preset's choice)
_CHUNK = 4096


def shrink_option(value: Any, what: str = "shrink") -> str | float:
    """``"auto"`` or a number ``>= 0``; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 'auto' or a number >= 0, got {value!r}") from None
    if not c >= 0:
        raise ValueError(f"{what} must be 'auto' or a number >= 0, got {value!r}")
    return c


@torch.no_grad()
def decoder_normal_equations(sae: SAE[Any], batches, n_tokens: int | None):
    """One pass: normal equations of ``x ≈ codes W + b`` for ``sae``'s frozen encoder on the fit rows
    and on the held-back validation rows (:func:`validation_rows`), the validation inputs, and which
    latents fired on the fit rows / on any row."""
    d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
    fit, val = NormalEquations(d_sae, d_in, device=sae.device), NormalEquations(d_sae, d_in, device=sae.device)
    fired_fit = torch.zeros(d_sae, dtype=torch.bool, device=sae.device)
    fired = fired_fit.clone()
    held: list[torch.Tensor] = []
    seen = 0
    with no_hook_z_reshaping(sae):
        for x in limited_batches(sae, batches, n_tokens):
            codes = decoder_input(sae, sae.encode(x))
            mask = validation_rows(seen, x.shape[0], val.n, device=x.device)
            seen += int(x.shape[0])
            fired_fit |= (codes[~mask] != 0).any(0)
            fired |= (codes != 0).any(0)
            fit.update(codes[~mask], x[~mask])
            if mask.any():
                val.update(codes[mask], x[mask])
                held.append(x[mask])
    if seen == 0:
        raise ValueError("refit_decoder got no activations")
    x_val = torch.cat(held) if held else torch.zeros(0, d_in, device=sae.device)
    return fit, val, x_val, fired_fit, fired


@torch.no_grad()
def _install(sae: SAE[Any], original: SAE[Any], W: torch.Tensor, b: torch.Tensor, fired: torch.Tensor) -> None:
    W = torch.where(fired[:, None], W, original.W_dec.detach().double().to(W.device))
    set_b_dec(sae, b)
    sae.W_dec.data.copy_(W.to(sae.W_dec.dtype))


@torch.no_grad()
def _folded_sse(sae: SAE[Any], original: SAE[Any], W, b, fired, x_val: torch.Tensor) -> float:
    """Σ||x - x̂||² on ``x_val`` of ``sae`` with decoder ``(W, b)`` installed and folded (a scratch copy)."""
    cand = clone_sae(sae)
    _install(cand, original, W, b, fired)
    unit_norm_decoder(cand, original, [])
    total = 0.0
    with no_hook_z_reshaping(cand):
        for x in x_val.split(_CHUNK):
            total += float((cand.decode(cand.encode(x)).double() - x.double()).pow(2).sum())
    return total


@torch.no_grad()
def refit_decoder_(sae: SAE[Any], original: SAE[Any], batches, n_tokens: int | None, ridge: float = DEFAULT_RIDGE,
                   fold: bool = True, shrink: str | float = "auto") -> dict[str, Any]:
    """Refit ``sae``'s decoder in place on ``batches`` (its encoder frozen), shrunk towards
    ``original``'s rows (the module docstring); ``fold=False`` stops before the unit-norm fold (tests;
    the choice of ``c`` still scores folded candidates)."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    shrink = shrink_option(shrink)
    ne_fit, ne_val, x_val, fired_fit, fired = decoder_normal_equations(sae, batches, n_tokens)
    prior = original.W_dec.detach().double()

    def lam(ne: NormalEquations, c: float) -> float:
        return ne.ridge_lambda(ridge) + c * ne.median_energy()

    details: dict[str, Any] = {"ridge": float(ridge), "validation_tokens": 0, "refit_iterations": 1}
    if shrink != "auto":
        c, details["shrink_chosen_by"] = float(shrink), "option"
    elif ne_val.n < VALIDATION_MIN_TOKENS or ne_fit.n == 0:
        c, details["shrink_chosen_by"] = DEFAULT_SHRINK, f"fixed rule (fewer than {VALIDATION_MIN_TOKENS} held-back tokens)"
    else:
        def score(c: float) -> float:
            W, b = ne_fit.solve(lam(ne_fit, c), prior)
            return _folded_sse(sae, original, W, b, fired_fit, x_val)

        c, scores = choose_shrink(SHRINK_GRID, score)
        per = float(ne_val.n * sae.cfg.d_in)
        details.update(shrink_chosen_by="validation (every 5th fitting token held back)", validation_tokens=int(ne_val.n),
                       shrink_grid=list(SHRINK_GRID), shrink_validation_mse=[s / per for s in scores])
    ne = ne_fit.merged(ne_val)
    old_W, old_b = sae.W_dec.detach().double(), sae.b_dec.detach().double()  # what the codes multiply
    total = lam(ne, c)
    W, b = ne.solve(total, prior)
    _install(sae, original, W, b, fired)
    W = sae.W_dec.detach().double()
    d_in = sae.cfg.d_in
    details.update({
        "fit_tokens": int(ne.n), "shrink": float(c), "lambda": float(total),
        "never_fired": int((~fired).sum()),
        "fit_mse_before": ne.sse(old_W, old_b) / (ne.n * d_in), "fit_mse_after": ne.sse(W, b) / (ne.n * d_in),
        "fit_explained_variance_after": 1.0 - ne.sse(W, b) / ne.sst() if ne.sst() > 0 else 0.0,
    })
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
                                 float(inputs.options.get("ridge", DEFAULT_RIDGE)),
                                 shrink=inputs.options.get("shrink", "auto"))
        return sae, details["fit_tokens"], 0, details
