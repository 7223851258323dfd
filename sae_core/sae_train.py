"""Train a fresh SAE (the "retrained" variant) on cached activations with sae-lens.

sae-lens does the training: its training SAE classes
(``StandardTrainingSAE`` = ReLU + L1, ``TopKTrainingSAE``,
``JumpReLUTrainingSAE``) provide the losses, and its ``SAETrainer`` provides
Adam, the LR / coefficient schedulers, gradient clipping, dead-latent
tracking (used by the TopK aux loss), activation-norm estimation and folding.
``SAETrainer`` takes any iterator of ``[batch, d_in]`` tensors as its data
provider, so our activation cache plugs straight in.

We drive the trainer through its public per-step seams (``step``,
``maybe_reset_sparsity``, ``set_final_sae_metadata``) exactly as sae-lens'
own ``MultiSAETrainer`` does, rather than ``SAETrainer.fit()``, only so that
progress display can be switched off and per-step metrics collected;
the optimisation itself is sae-lens' code.

Every trained SAE comes out with unit-norm decoder rows (as SAEBench assumes)
and the function it was trained to compute, dead latents included:

* TopK trains with sae-lens' ``rescale_acts_by_decoder_norm=True`` (its own
  default for training SAEs): TopK selects on pre-activation x decoder-row
  norm and decodes with unit-normalised rows, so the row norms carry no
  meaning; sae-lens folds them into ``W_enc`` / ``b_enc`` when producing the
  inference SAE (``process_state_dict_for_saving_inference``), which is exact.
* standard (ReLU) and JumpReLU train with free decoder norms and are then
  folded with sae-lens' ``fold_W_dec_norm`` (``W_dec`` rows / norm,
  ``W_enc`` columns, ``b_enc`` and JumpReLU ``threshold`` x norm), exact
  because ReLU / JumpReLU commute with positive per-latent scaling.

Folding divides every row by its own norm, so latents that never fired keep
no trace of their initial norm.  ``report["decoder_norm_max_deviation"]``
records ``max |‖d_j‖ - 1|`` of the result.  One exception: a TopK SAE trained
with ``normalize_activations="covariance_whitening"`` (not used by the
presets) has its whitening folded by sae-lens into non-unit rows that TopK
then selects on, which cannot be re-folded exactly; the report shows it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from typing import Any

import torch

from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.mixing_buffer import mixing_buffer
from sae_lens.training.sae_trainer import SAETrainer

from sae_core.progress import Progress
from sae_core.sae_io import ARCHITECTURES, decoder_norm_deviation, flat_sae_inputs, new_sae, no_hook_z_reshaping

__all__ = ["CURVE_COLUMNS", "INITS", "train_sae", "training_to_inference_sae", "rebatch_activations", "warm_start_training_sae"]

INITS = ("new", "keep")  # train_sae(init=...): sae-lens' fresh initialisation, or like's own weights
# report["curve"]: the training curve, one value per recorded step (see train_sae's curve_points).
CURVE_COLUMNS = ("step", "tokens", "loss", "mse_loss", "aux_loss", "mse", "explained_variance", "l0",
                 "dead_latents", "silent_latents")


def rebatch_activations(
    activation_batches: Iterable[torch.Tensor],
    d_in: int,
    batch_size: int,
    *,
    allow_repeat: bool = True,
    stats: dict[str, int] | None = None,
    flatten: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield float ``[batch_size, d_in]`` tensors from batches of any size ``[..., d_in]``.

    When the source runs out it is iterated again if it is re-iterable (a
    list, a DataLoader, ...) and ``allow_repeat``; a one-shot iterator that
    runs dry raises ValueError.  ``stats`` (if given) counts ``tokens_read``
    and ``passes`` (number of started passes over the source).  ``flatten``
    (optional) maps each raw batch to ``[n, d_in]`` first (e.g. hook_z heads).
    """
    stats = stats if stats is not None else {}
    stats.setdefault("tokens_read", 0)
    stats.setdefault("passes", 0)
    buffer: list[torch.Tensor] = []
    buffered = 0
    while True:
        iterator = iter(activation_batches)
        one_shot = iterator is activation_batches
        if stats["passes"] > 0 and (one_shot or not allow_repeat):
            raise ValueError(
                f"activation stream ran out after {stats['tokens_read']} tokens; pass a "
                f"re-iterable source (list / DataLoader) to allow repeated passes, or lower total_tokens"
            )
        stats["passes"] += 1
        tokens_this_pass = 0
        for batch in iterator:
            if not isinstance(batch, torch.Tensor):
                raise ValueError(f"activation batch must be a torch.Tensor, got {type(batch).__name__}")
            if flatten is not None:
                batch = flatten(batch)
            if batch.dim() < 1 or batch.shape[-1] != d_in:
                raise ValueError(
                    f"activation batch of shape {tuple(batch.shape)} does not match d_in={d_in} "
                    f"(expected [..., {d_in}])"
                )
            flat = batch.detach().reshape(-1, d_in)
            if flat.shape[0] == 0:
                continue
            stats["tokens_read"] += flat.shape[0]
            tokens_this_pass += flat.shape[0]
            buffer.append(flat)
            buffered += flat.shape[0]
            while buffered >= batch_size:
                joined = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
                yield joined[:batch_size]
                rest = joined[batch_size:]
                buffer = [rest] if rest.shape[0] else []
                buffered = rest.shape[0]
        if tokens_this_pass == 0:
            raise ValueError("activation source yielded no activations")


def training_to_inference_sae(training_sae: TrainingSAE[Any]) -> SAE[Any]:
    """Convert a sae-lens training SAE to its inference class, in memory, with unit-norm decoder rows.

    Same transformation as ``TrainingSAE.save_inference_model`` followed by
    ``SAE.load_from_disk`` (which folds TopK decoder norms when
    ``rescale_acts_by_decoder_norm``), without the disk; standard and JumpReLU
    SAEs are then folded with sae-lens' exact ``fold_W_dec_norm``.  The
    function is unchanged (to float rounding); ``training_sae`` is not modified.
    """
    state = {k: v.detach().clone() for k, v in training_sae.state_dict().items()}
    training_sae.process_state_dict_for_saving_inference(state)
    cfg_dict = training_sae.cfg.get_inference_sae_cfg_dict()
    device = cfg_dict["device"]
    cfg_dict["device"] = "meta"
    sae = SAE.from_dict(cfg_dict)
    sae.cfg.device = device
    sae.process_state_dict_for_loading(state)
    sae.load_state_dict(state, assign=True)
    sae = sae.to(device=device, dtype=sae.dtype)
    if sae.cfg.architecture() != "topk":  # TopK was folded above (only possible with the rescale flag)
        sae.fold_W_dec_norm()
    return sae


_WARM_START_NORMS = ("none", "layer_norm", "constant_norm_rescale")


@torch.no_grad()
def warm_start_training_sae(training_sae: TrainingSAE[Any], like: SAE[Any]) -> TrainingSAE[Any]:
    """Copy ``like``'s weights into ``training_sae`` (in place, float32) so training starts from them.

    The training SAE then computes ``like``'s function: the same parameters (``W_enc``,
    ``b_enc``, ``W_dec``, ``b_dec``, JumpReLU ``threshold``) in the same formulas. TopK trains
    with ``rescale_acts_by_decoder_norm=True``, which equals ``like``'s selection only when
    ``like``'s decoder rows have unit norm (or ``like`` carries the flag): anything else is
    refused, as are normalisations the trainer would re-estimate (``expected_average_only_in``,
    ``covariance_whitening``: the kept weights were not fit to rescaled inputs).
    """
    arch = like.cfg.architecture()
    if training_sae.cfg.architecture() != arch or (training_sae.cfg.d_in, training_sae.cfg.d_sae) != (like.cfg.d_in, like.cfg.d_sae):
        raise ValueError(f"cannot warm-start a {training_sae.cfg.architecture()} SAE of d_in={training_sae.cfg.d_in}, "
                         f"d_sae={training_sae.cfg.d_sae} from a {arch} SAE of d_in={like.cfg.d_in}, d_sae={like.cfg.d_sae}")
    norm = like.cfg.normalize_activations
    if norm not in _WARM_START_NORMS:
        raise ValueError(f"warm start (init='keep') needs normalize_activations in {_WARM_START_NORMS}, got {norm!r}: "
                         "the trainer would re-estimate it and feed the kept weights inputs they were not fit to")
    if (arch == "topk" and getattr(training_sae.cfg, "rescale_acts_by_decoder_norm", False)
            and not getattr(like.cfg, "rescale_acts_by_decoder_norm", False) and decoder_norm_deviation(like) > 1e-3):
        raise ValueError("warm start of a topk SAE without rescale_acts_by_decoder_norm needs unit-norm decoder rows "
                         f"(max deviation {decoder_norm_deviation(like):.3g}): training selects on pre-activation x row norm")
    own = training_sae.state_dict()
    theirs = like.state_dict()
    if set(own) != set(theirs):
        raise ValueError(f"cannot warm-start: parameters differ ({sorted(own)} vs {sorted(theirs)})")
    for name, value in theirs.items():
        own[name].copy_(value.detach().to(own[name].device, own[name].dtype))
    return training_sae


def _validate_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@torch.no_grad()
def _step_metrics(out: Any) -> tuple[float, float, float, float]:
    """(sum sq err, sum sq deviation from batch mean, sum l0, n) of a train step."""
    sae_in = out.sae_in.float()
    sae_out = out.sae_out.float()
    feats = out.feature_acts
    if feats.is_sparse:
        feats = feats.to_dense()
    sse = (sae_out - sae_in).pow(2).sum().item()
    sst = (sae_in - sae_in.mean(0)).pow(2).sum().item()
    l0 = (feats != 0).sum().item()
    return sse, sst, float(l0), float(sae_in.shape[0])


def train_sae(
    like: SAE[Any],
    activation_batches: Iterable[torch.Tensor],
    total_tokens: int,
    *,
    lr: float = 3e-4,
    l1_coefficient: float = 1.0,
    l0_coefficient: float = 1.0,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    lr_scheduler_name: str = "constant",
    lr_warm_up_steps: int = 0,
    lr_decay_steps: int = 0,
    lr_decay_fraction: float = 0.0,
    shuffle_buffer_batches: int = 0,
    allow_repeat: bool = True,
    n_batches_for_norm_estimate: int = 10,
    b_dec_init: str = "zeros",
    final_window_steps: int = 10,
    sae_overrides: dict[str, Any] | None = None,
    trainer_overrides: dict[str, Any] | None = None,
    init: str = "new",
    curve_points: int = 1000,
) -> tuple[SAE[Any], dict[str, Any]]:
    """Train a new SAE shaped like ``like`` on ``activation_batches``; return ``(sae, report)``.

    The new SAE has ``like``'s architecture, d_in, d_sae, k, hook metadata and
    normalisation settings (see :func:`sae_core.sae_io.new_sae`); the result is
    an inference ``SAE`` of the same class, in ``like``'s dtype and device
    (training itself runs in float32).

    ``activation_batches``: iterable of ``[..., d_in]`` tensors (any batch
    size; re-batched to ``batch_size``).  Re-iterable sources are repeated if
    the token budget exceeds one pass (see ``report["data_passes"]``).
    ``total_tokens``: training budget; ``total_tokens // batch_size`` steps.
    ``l1_coefficient`` is used by "standard" SAEs, ``l0_coefficient`` by
    "jumprelu" (sae-lens' defaults are 1.0); TopK has no sparsity coefficient.
    ``sae_overrides`` / ``trainer_overrides`` set any other field of the
    sae-lens training-SAE config / ``SAETrainerConfig``.
    ``shuffle_buffer_batches > 0`` mixes tokens through sae-lens'
    ``mixing_buffer`` (seeded).  Deterministic for a given seed and data order.
    ``b_dec_init="mean"`` starts the decoder bias at the mean of the first
    ``n_batches_for_norm_estimate`` training batches (those batches are still
    trained on).  Residual streams with a large common direction (Gemma's
    mid-layer mean has ~98% of a typical token's norm) otherwise steer every
    token's TopK choice to the same few latents and leave most latents dead.

    Report keys: architecture, d_in, d_sae, k, tokens_requested, tokens_used,
    tokens_read, data_passes, steps, batch_size, lr, l1_coefficient /
    l0_coefficient (when used), seed, wall_time_s, final_mse (per element),
    final_mse_per_token (summed over d_in), final_explained_variance,
    final_l0 (means over the last ``final_window_steps`` training batches, as
    seen by the trainer just before each update; MSE converted back to raw
    units when sae-lens' ``expected_average_only_in`` scaling was used, left in
    whitened units for ``covariance_whitening``), dead_latents (sae-lens'
    definition: no firing in ``dead_feature_window`` steps),
    decoder_norm_max_deviation (``max |‖W_dec[j]‖ - 1|`` of the returned SAE;
    see the module docstring).  TopK SAEs always train with
    ``rescale_acts_by_decoder_norm=True``; overriding it to False is refused.  For held-out
    numbers use :func:`sae_core.sae_quality.reconstruction_stats`.

    ``lr_decay_fraction`` (with ``lr_decay_steps=0``) decays the learning rate linearly over that final
    fraction of the steps (sae-lens' decay phase, to 0), so a fine-tune on a share of the budget decays
    over its own last steps.

    ``init="keep"`` warm-starts: training begins from ``like``'s own weights (see
    :func:`warm_start_training_sae`) instead of sae-lens' initialisation, so step 0 computes
    ``like``'s function; ``b_dec_init`` must then stay "zeros" (it is not applied: the kept
    ``b_dec`` is used). ``report["init"]`` records the choice.

    ``report["curve"]`` is the training curve: columns :data:`CURVE_COLUMNS`, one row every
    ``ceil(steps / curve_points)`` steps and at the last step (``curve_points=0``: none). Per
    training batch, as the trainer saw it just before the update: ``loss`` (sae-lens' total),
    ``mse_loss`` and ``aux_loss`` (its parts; TopK's AuxK, 0 while no latent is dead), ``mse``
    (per element, raw units as ``final_mse``), ``explained_variance`` (about the batch mean),
    ``l0``; ``dead_latents`` (sae-lens' definition, what the AuxK loss acts on: no firing in the last
    ``dead_feature_window`` steps, ``report["dead_feature_window"]``) and ``silent_latents`` (no
    firing in the last ``report["silent_window_steps"]`` steps, 5% of the run, so that short runs
    whose window exceeds the run still show their dead latents). Not part of the SAE's metadata.
    """
    if not isinstance(like, SAE):
        raise ValueError(f"like must be a sae-lens SAE, got {type(like).__name__}")
    arch = like.cfg.architecture()
    if arch not in ARCHITECTURES:
        raise ValueError(f"training supports SAE architectures {ARCHITECTURES}, not {arch!r}")
    total_tokens = _validate_positive_int("total_tokens", total_tokens)
    batch_size = _validate_positive_int("batch_size", batch_size)
    if total_tokens < batch_size:
        raise ValueError(f"total_tokens={total_tokens} is smaller than one batch (batch_size={batch_size})")
    if b_dec_init not in ("zeros", "mean"):
        raise ValueError(f"b_dec_init must be 'zeros' or 'mean', got {b_dec_init!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(curve_points, bool) or not isinstance(curve_points, int) or curve_points < 0:
        raise ValueError(f"curve_points must be a non-negative int, got {curve_points!r}")
    if init == "keep" and b_dec_init != "zeros":
        raise ValueError(f"init='keep' starts from like's own b_dec; b_dec_init={b_dec_init!r} would overwrite it")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    if activation_batches is None or isinstance(activation_batches, torch.Tensor):
        raise ValueError(
            "activation_batches must be an iterable of [batch, d_in] tensors "
            "(wrap a single tensor as [tensor] or tensor.split(n))"
        )
    if not (isinstance(lr_decay_fraction, (int, float)) and 0.0 <= lr_decay_fraction < 1.0):
        raise ValueError(f"lr_decay_fraction must be in [0, 1), got {lr_decay_fraction!r}")
    device = device or like.cfg.device
    steps = total_tokens // batch_size
    tokens_used = steps * batch_size
    if lr_decay_fraction and not lr_decay_steps:
        lr_decay_steps = int(round(lr_decay_fraction * steps))

    sae_kwargs: dict[str, Any] = {}
    if arch == "standard":
        sae_kwargs["l1_coefficient"] = float(l1_coefficient)
    elif arch == "jumprelu":
        sae_kwargs["l0_coefficient"] = float(l0_coefficient)
    elif arch == "topk":
        # Decoder norms must not steer the TopK selection, so that folding them
        # away afterwards is exact (``like`` may be an inference SAE without the flag).
        sae_kwargs["rescale_acts_by_decoder_norm"] = True
        if (sae_overrides or {}).get("rescale_acts_by_decoder_norm", True) is not True:
            raise ValueError(
                "topk SAEs are trained with rescale_acts_by_decoder_norm=True so that their decoder rows can be "
                f"folded to unit norm exactly; got sae_overrides rescale_acts_by_decoder_norm="
                f"{sae_overrides['rescale_acts_by_decoder_norm']!r}"  # type: ignore[index]
            )
    sae_kwargs.update(sae_overrides or {})

    trainer_kwargs: dict[str, Any] = dict(
        total_training_samples=tokens_used,
        train_batch_size_samples=batch_size,
        lr=float(lr),
        lr_end=float(lr) / 10,
        lr_scheduler_name=lr_scheduler_name,
        lr_warm_up_steps=lr_warm_up_steps,
        lr_decay_steps=lr_decay_steps,
        device=device,
        n_batches_for_norm_estimate=n_batches_for_norm_estimate,
    )
    valid_trainer = {f.name for f in fields(SAETrainerConfig)}
    unknown = sorted(set(trainer_overrides or {}) - valid_trainer)
    if unknown:
        raise ValueError(f"unknown SAETrainerConfig field(s) {unknown}; valid: {sorted(valid_trainer)}")
    trainer_kwargs.update(trainer_overrides or {})
    trainer_cfg = SAETrainerConfig(**trainer_kwargs)

    d_in = like.cfg.d_in
    stats: dict[str, int] = {}
    start = time.perf_counter()
    rng_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        training_sae = new_sae(
            like=like, training=True, dtype="float32", device=device, **sae_kwargs
        )
        if init == "keep":
            warm_start_training_sae(training_sae, like)
        provider: Iterator[torch.Tensor] = rebatch_activations(
            activation_batches,
            d_in,
            batch_size,
            allow_repeat=allow_repeat,
            stats=stats,
            flatten=lambda b: flat_sae_inputs(like, b),
        )
        if shuffle_buffer_batches > 0:
            provider = mixing_buffer(
                buffer_size=shuffle_buffer_batches * batch_size,
                batch_size=batch_size,
                activations_loader=provider,
            )
        provider = (b.to(device=device, dtype=torch.float32) for b in provider)

        trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=provider, evaluator=None)
        window: list[tuple[float, float, float, float]] = []
        curve: dict[str, list[float]] = {c: [] for c in CURVE_COLUMNS}
        curve_every = math.ceil(steps / curve_points) if curve_points else 0
        silent_window = max(1, round(0.05 * steps))
        with no_hook_z_reshaping(training_sae):
            training_sae.to(device)
            norm = training_sae.cfg.normalize_activations
            if norm == "expected_average_only_in":
                trainer.activation_scaler.estimate_scaling_factor(
                    d_in=d_in, data_provider=provider, n_batches_for_norm_estimate=n_batches_for_norm_estimate
                )
            elif norm == "covariance_whitening":
                trainer.activation_scaler.estimate_whitening(
                    d_in=d_in, data_provider=provider, n_batches_for_norm_estimate=n_batches_for_norm_estimate
                )
            if b_dec_init == "mean":
                if norm == "covariance_whitening":
                    raise ValueError("b_dec_init='mean' does not combine with covariance_whitening (whitening centres the data)")
                peeked = list(itertools.islice(provider, max(1, n_batches_for_norm_estimate)))
                provider = itertools.chain(peeked, provider)  # the peeked batches are still trained on
                mean = torch.cat(peeked).mean(0)
                scale = trainer.activation_scaler.scaling_factor
                training_sae.b_dec.data.copy_(mean * scale if scale is not None else mean)
            factor = trainer.activation_scaler.scaling_factor  # known before the first step; None: raw units
            curve_unscale = 1.0 / factor**2 if factor else 1.0
            with Progress(tokens_used, f"Training {arch} SAE", unit="tok", show=progress) as pbar:
                while trainer.n_training_samples < tokens_used:
                    trainer.maybe_reset_sparsity()
                    try:
                        batch = next(provider)
                    except StopIteration:  # only possible via mixing_buffer's tail
                        raise ValueError(
                            f"activation stream ran out after {stats.get('tokens_read', 0)} tokens"
                        ) from None
                    out = trainer.step(batch)
                    trainer.n_training_steps += 1
                    pbar.update(batch.shape[0])
                    last = steps - trainer.n_training_steps < max(1, final_window_steps)
                    step = trainer.n_training_steps
                    show = progress and step % 10 == 0
                    record = bool(curve_every) and (step % curve_every == 0 or step == steps)
                    if last or show or record:  # metrics cost a host sync; only when needed
                        metrics = _step_metrics(out)
                        if last:
                            window.append(metrics)
                        sse, sst, l0, n = metrics
                        if record:
                            _record_curve(curve, trainer, out, metrics, d_in, curve_unscale, silent_window)
                        pbar.set_postfix(mse=f"{sse / (n * d_in):.4g}", l0=f"{l0 / n:.1f}")
            # fold activation normalisation into the weights, as SAETrainer.fit() does
            scaler = trainer.activation_scaler
            # training-batch metrics were measured on scaled activations: back to raw units
            mse_unscale = 1.0 / scaler.scaling_factor**2 if scaler.scaling_factor else 1.0
            if scaler.scaling_factor is not None:
                training_sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
                scaler.scaling_factor = None
            if scaler.whitening is not None:
                training_sae.fold_activation_whitening(
                    mean=scaler.whitening.mean,
                    whitening_matrix=scaler.whitening.matrix,
                    unwhitening_matrix=scaler.whitening.inverse_matrix,
                )
                scaler.whitening = None
            trainer.set_final_sae_metadata()
        training_sae.eval()
        sae = training_to_inference_sae(training_sae)
    sae = sae.to(device=like.cfg.device, dtype=like.dtype)
    wall = time.perf_counter() - start

    sse = sum(w[0] for w in window) * mse_unscale
    sst = sum(w[1] for w in window) * mse_unscale
    l0 = sum(w[2] for w in window)
    n = sum(w[3] for w in window)
    tokens_read = stats.get("tokens_read", 0)
    report: dict[str, Any] = {
        "architecture": arch,
        "init": init,
        "d_in": int(d_in),
        "d_sae": int(like.cfg.d_sae),
        "k": getattr(sae.cfg, "k", None),
        "tokens_requested": int(total_tokens),
        "tokens_used": int(trainer.n_training_samples),
        "tokens_read": int(tokens_read),
        "data_passes": int(stats.get("passes", 0)),
        "steps": int(trainer.n_training_steps),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
        "wall_time_s": float(wall),
        "final_mse": sse / (n * d_in) if n else float("nan"),
        "final_mse_per_token": sse / n if n else float("nan"),
        "final_explained_variance": 1.0 - sse / sst if sst > 0 else 0.0,
        "final_l0": l0 / n if n else float("nan"),
        "dead_latents": int(trainer.dead_neurons.sum().item()),
        "decoder_norm_max_deviation": decoder_norm_deviation(sae),
        "dead_feature_window": int(trainer_cfg.dead_feature_window),
        "silent_window_steps": int(silent_window),
    }
    if arch == "standard":
        report["l1_coefficient"] = float(training_sae.cfg.l1_coefficient)
    if arch == "jumprelu":
        report["l0_coefficient"] = float(training_sae.cfg.l0_coefficient)
    sae.cfg.metadata.sae_transfer_training = {
        k: v for k, v in report.items() if k not in ("wall_time_s",)
    }
    report["curve"] = curve  # after the metadata: the curve stays out of the SAE's config
    return sae, report


@torch.no_grad()
def _record_curve(curve: dict[str, list[float]], trainer: SAETrainer[Any], out: Any,
                  metrics: tuple[float, float, float, float], d_in: int, unscale: float, silent_window: int) -> None:
    """Append one step's row to ``curve`` (see train_sae's ``report["curve"]``)."""
    sse, sst, l0, n = metrics
    losses = {name: float(value.item() if isinstance(value, torch.Tensor) else value) for name, value in out.losses.items()}
    mse_loss = losses.pop("mse_loss", float("nan"))
    since_fired = trainer.n_forward_passes_since_fired
    row = {
        "step": trainer.n_training_steps, "tokens": trainer.n_training_samples, "loss": float(out.loss.item()),
        "mse_loss": mse_loss, "aux_loss": sum(losses.values()) if losses else 0.0,
        "mse": sse * unscale / (n * d_in), "explained_variance": 1.0 - sse / sst if sst > 0 else 0.0, "l0": l0 / n,
        "dead_latents": int(trainer.dead_neurons.sum().item()), "silent_latents": int((since_fired >= silent_window).sum().item()),
    }
    for name in CURVE_COLUMNS:
        curve[name].append(row[name])
