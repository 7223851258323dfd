"""``recalibrate``: no gradient steps; re-estimate what depends on the activation distribution.

From N compressed-model activations (``inputs.compressed``, at most ``inputs.n_tokens``) and,
when given, dense-model activations (``inputs.dense``; same tokens preferred, same distribution
suffices here):

1. *Input frame* (dense activations given). The compressed model moves the activation cloud;
   the encoder should see, on compressed tokens, what it saw on dense ones. With the means
   ``μ_c``, ``μ_d`` and total variances (trace of the covariance) ``v_c``, ``v_d``, the map
   ``T(x) = μ_d + (x - μ_c) / s``, ``s = sqrt(v_c / v_d)`` (``inputs.options["rescale"]=False``
   keeps ``s = 1``: a pure mean shift), is folded into the SAE exactly: ``encode'(x) =
   encode(T(x))`` and ``decode'(f) = T⁻¹(decode(f))`` (``W_dec`` scaled by ``s``, ``b_dec' = μ_c +
   s (b_dec - μ_d)``, then folded back to unit rows: a common positive factor, so TopK order and
   JumpReLU firing are unchanged). This is the "re-estimate input scale and decoder bias" lever:
   sae-lens' own normalisations hold no statistic to re-estimate at inference (``layer_norm`` /
   ``constant_norm_rescale`` are per token and refused here as unfoldable; ``expected_average_only_in``
   and ``covariance_whitening`` are folded into the weights when training ends), so the scale
   lives in the frame map. For activations = dense + a constant shift, ``T`` undoes the shift
   exactly and the SAE reconstructs as on dense activations.
   With ``apply_b_dec_to_input`` the choice is deliberate: the encoder sees ``T(x) - b_dec``, i.e.
   what it saw on the dense model, not what the original saw on the (shifted) compressed input.
2. *JumpReLU thresholds* (dense activations given). Each latent's threshold is moved so that it
   fires on the compressed tokens at the rate the original fires on the dense tokens (rates of
   ``act > 0``; latents that never fire on dense keep their threshold; thresholds stay >= 0). The
   quantile is found from per-latent histograms (one pass for the range, one with 1024 bins,
   linear interpolation inside the bin). Without dense activations thresholds are left as they
   were (the report says so).
3. *Decoder bias* (always). ``b_dec += mean_t (x_t - x̂_t)``, the mean residual of the SAE from
   steps 1-2 on the compressed tokens, with the change folded into ``b_enc`` when
   ``apply_b_dec_to_input`` so that no code changes. Why this estimator: with the codes fixed it
   is the exact least-squares optimum of the bias (``argmin_b Σ||x - f W_dec - b||²``), so the
   fitting MSE falls by exactly ``||r||²`` per token and can never rise. (``mean(x_cmp) -
   mean(x̂)`` is the same quantity.) Without dense activations this is the only change: it cannot
   undo code damage, because no reference says where the data ought to be.

Report details: ``mean_shift_norm``, ``scale``, thresholds moved, ``residual_bias_norm``,
``fit_mse_before_bias`` / ``fit_mse_after`` (per element, on the fitting tokens), notes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sae_lens import SAE

from sae_core.sae_io import clone_sae, no_hook_z_reshaping
from sae_core.variants.base import VariantInputs, VariantMethod, reiterable
from sae_core.variants.folding import fold_affine_into_encoder, limited_batches, set_b_dec, unit_norm_decoder

__all__ = ["HISTOGRAM_BINS", "RecalibrateMethod", "matched_thresholds"]

HISTOGRAM_BINS = 1024


@torch.no_grad()
def _moments(sae: SAE[Any], batches, n_tokens: int | None, fire_counts_of: SAE[Any] | None = None):
    """(mean [d_in], total variance, n, firing counts of ``fire_counts_of`` or None), float64."""
    d_in = sae.cfg.d_in
    s1 = torch.zeros(d_in, dtype=torch.float64, device=sae.device)
    s2 = 0.0
    n = 0
    counts = None if fire_counts_of is None else torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=sae.device)
    for x in limited_batches(sae, batches, n_tokens):
        x64 = x.double()
        s1 += x64.sum(0)
        s2 += float(x64.pow(2).sum())
        n += int(x.shape[0])
        if counts is not None:
            counts += (fire_counts_of.encode(x) > 0).double().sum(0)
    if n == 0:
        raise ValueError("recalibrate got no activations")
    mean = s1 / n
    return mean, max(0.0, s2 / n - float(mean.pow(2).sum())), n, counts


def _pre(sae: SAE[Any], x: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x) @ sae.W_enc + sae.b_enc


@torch.no_grad()
def matched_thresholds(sae: SAE[Any], batches, n_tokens: int | None, target_rate: torch.Tensor,
                       bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Per-latent thresholds ``θ_j >= 0`` with ``P_t(pre_j > θ_j) ≈ target_rate_j`` on ``batches``
    (``sae``'s pre-activations; latents with target 0 keep their threshold)."""
    d_sae = sae.cfg.d_sae
    lo = torch.full((d_sae,), math.inf, dtype=torch.float64, device=sae.device)
    hi = torch.full((d_sae,), -math.inf, dtype=torch.float64, device=sae.device)
    n = 0
    for x in limited_batches(sae, batches, n_tokens):
        pre = _pre(sae, x).double()
        lo, hi = torch.minimum(lo, pre.amin(0)), torch.maximum(hi, pre.amax(0))
        n += int(x.shape[0])
    width = ((hi - lo) / bins).clamp(min=1e-12)
    counts = torch.zeros(d_sae * bins, dtype=torch.float64, device=sae.device)
    offsets = torch.arange(d_sae, device=sae.device) * bins
    for x in limited_batches(sae, batches, n_tokens):
        pre = _pre(sae, x).double()
        idx = ((pre - lo) / width).floor().clamp(0, bins - 1).long() + offsets
        counts += torch.bincount(idx.reshape(-1), minlength=d_sae * bins).double()
    counts = counts.view(d_sae, bins)
    tail = counts.flip(1).cumsum(1).flip(1)  # tail[j, k] = #(pre_j >= lo_j + k width_j)
    target = target_rate.double().to(sae.device) * n
    k = ((tail > target[:, None]).sum(1) - 1).clamp(0, bins - 1)
    at = tail.gather(1, k[:, None]).squeeze(1)
    in_bin = counts.gather(1, k[:, None]).squeeze(1).clamp(min=1.0)
    theta = lo + width * (k.double() + ((at - target) / in_bin).clamp(0.0, 1.0))
    theta = torch.where(target >= n, lo - width, theta).clamp(min=0.0)
    old = sae.threshold.detach().double()
    return torch.where(target > 0, theta, old)


class RecalibrateMethod(VariantMethod):
    name = "recalibrate"
    folds = True

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        compressed = reiterable(inputs.compressed, "recalibrate")
        n_tokens = inputs.n_tokens
        sae = clone_sae(original)
        notes: list[str] = []
        details: dict[str, Any] = {"used_dense": inputs.dense is not None}
        passes = 0
        tokens = 0
        with no_hook_z_reshaping(sae), no_hook_z_reshaping(original):
            if inputs.dense is not None:
                jumprelu = sae.cfg.architecture() == "jumprelu"
                mu_c, var_c, n_c, _ = _moments(sae, compressed, n_tokens)
                mu_d, var_d, n_d, fires = _moments(original, inputs.dense, n_tokens, original if jumprelu else None)
                passes += 1
                tokens = max(n_c, n_d)
                rescale = bool(inputs.options.get("rescale", True))
                s = math.sqrt(var_c / var_d) if rescale and var_c > 0 and var_d > 0 else 1.0
                eye = torch.eye(sae.cfg.d_in, dtype=torch.float64, device=sae.device)
                fold_affine_into_encoder(sae, eye / s, mu_d - mu_c / s)  # encode'(x) = encode(T(x))
                set_b_dec(sae, mu_c + s * (sae.b_dec.detach().double() - mu_d))  # decode' = T^-1(decode)
                sae.W_dec.data.mul_(s)
                unit_norm_decoder(sae, original, notes)
                details.update(mean_shift_norm=float((mu_c - mu_d).norm()), scale=s)
                if jumprelu:
                    rate = fires / n_d
                    new = matched_thresholds(sae, compressed, n_tokens, rate)
                    moved = int((new != sae.threshold.detach().double()).sum())
                    sae.threshold.data.copy_(new.to(sae.threshold.dtype))
                    passes += 2
                    details.update(thresholds_matched=moved, threshold_histogram_bins=HISTOGRAM_BINS)
            else:
                details.update(mean_shift_norm=None, scale=1.0)
                notes.append("no dense activations: input frame and thresholds left as they were; only the decoder "
                             "bias moved (mean residual, codes unchanged)")
            # decoder bias: the mean residual, codes frozen
            resid = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=sae.device)
            sse = 0.0
            n = 0
            for x in limited_batches(sae, compressed, n_tokens):
                err = x.double() - sae.decode(sae.encode(x)).double()
                resid += err.sum(0)
                sse += float(err.pow(2).sum())
                n += int(x.shape[0])
            passes += 1
            if n == 0:
                raise ValueError("recalibrate got no activations")
            r = resid / n
            set_b_dec(sae, sae.b_dec.detach().double() + r)
        d_in = sae.cfg.d_in
        details.update(residual_bias_norm=float(r.norm()), fit_tokens=n, compressed_passes=passes,
                       fit_mse_before_bias=sse / (n * d_in),
                       fit_mse_after=max(0.0, sse - n * float(r.pow(2).sum())) / (n * d_in), notes=notes)
        return sae, max(tokens, n), 0, details
