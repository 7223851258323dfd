"""The SAEs as tasks: the original (trained on the dense model), and one task kind, ``sae-variant``,
for every way to get an SAE for a compressed model (``sae_core.variants``: transfer, retrain,
prune:RULE:S, finetune:F, recalibrate, refit_decoder, affine, ...).

A variant task stores (once) its checkpoint in sae-lens' folder format under
``saes/<folder>/<hash>/`` (the folder from the method's registry entry; transfer stores none: its
SAE is the original's) and one Parquet row under ``variants/<hash>.parquet``: what it is, what it
cost (tokens, gradient steps, wall time) and how well it reconstructs the *compressed* model's
held-out activations (MSE, explained variance, L0, dead latents, CE loss with the SAE spliced in).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from prefect import task

from sae_core.datasets import token_batch
from sae_core.hashing import config_hash
from sae_core.model_ref import compression_label, compression_strength, model_identity, model_key
from sae_core.storage import Storage
from sae_core.training_report import TRAINING_CURVE  # beside a trained SAE's checkpoint: loss, EV, dead latents per step
from tasks.common import (ARTIFACT_TASK_OPTIONS, activation_batches, code_fingerprint, compute_lock, is_transient, load_model_ref,
                          load_stored_sae, ml_stack, sae_processing, store_sae)
from tasks.progress import report_progress



# ------------------------------------------------------------------ helpers (no algorithms here)
def _training_budget(settings: dict) -> tuple[int, int | None]:
    """``(total tokens, tokens per epoch)`` of a train / retrain section: ``train_tokens x epochs``, and
    ``train_tokens`` as the epoch's share of the cache when ``epochs > 1`` (None: the whole cache, repeated
    as needed, as before epochs existed)."""
    epochs = int(settings.get("epochs") or 1)
    return int(settings["train_tokens"]) * epochs, (int(settings["train_tokens"]) if epochs > 1 else None)


def _store_training_curve(storage: Storage, prefix: str, curve: dict | None) -> None:
    """The training curve (sae_core.sae_train's report["curve"]) beside the SAE, before its manifest commits it."""
    if curve and curve.get("step"):
        storage.put_parquet(f"{prefix}/{TRAINING_CURVE}", pd.DataFrame(curve))


def _training_options(settings: dict) -> dict[str, Any]:
    """``train_sae`` keywords of a train / retrain section beyond budget, lr and batch size."""
    trainer = {k: settings[k] for k in ("dead_feature_window",) if settings.get(k) is not None}  # None: sae-lens' default
    options = {"trainer_overrides": trainer, "b_dec_init": settings.get("b_dec_init", "zeros")}
    if settings.get("lr_decay_fraction"):
        options["lr_decay_fraction"] = float(settings["lr_decay_fraction"])
    return options


def _quality(storage: Storage, sae, llm: dict, held_out: dict, quality: dict, dataset: str, device: str, dtype: str) -> dict:
    from sae_core.activations import special_token_ids
    from sae_core.sae_quality import reconstruction_stats, spliced_ce

    model = load_model_ref(storage, llm, device, dtype)
    spec = held_out["spec"]
    tokens = token_batch(model.tokenizer, dataset, quality["ce_sequences"], spec["seq_len"], skip_sequences=spec["skip_sequences"])
    with compute_lock():
        stats = reconstruction_stats(sae, activation_batches(storage, held_out, max_tokens=quality["n_tokens"]))
        hooked = model.hooked(sae_processing(sae))
        # BOS/EOS positions keep their own activations: the SAE never saw them (cached activations exclude them)
        ce = spliced_ce(hooked, sae.to(device), tokens, hook_name=held_out["hook_name"], keep_token_ids=special_token_ids(model.tokenizer))
    # Named for what it is: 1 - SSE / SST with SST about the per-dimension mean (sae_quality), not
    # SAEBench core's `explained_variance` (a different formula, in the metric rows).
    stats = {VARIANT_COLUMN_NAMES.get(k, k): v for k, v in stats.items()}
    return {**{k: float(v) for k, v in stats.items()}, **{k: float(v) for k, v in ce.items()}}


VARIANT_COLUMN_NAMES = {"explained_variance": "explained_variance_centred"}


def _variant_result(storage, key, sae_manifest, prefix, llm, held_out, seed, compute_quality) -> dict:
    """Write (once) the variant's Parquet row; ``compute_quality`` runs only if the row is new."""
    row_key = f"variants/{key}.parquet"
    if storage.exists(row_key):
        row = storage.get_parquet(row_key).iloc[0].to_dict()
    else:
        row = {
            "hook": held_out["hook_name"], "model_prefix": model_key(llm),
            "compression": compression_label(llm), "strength": compression_strength(llm),
            "variant_spec": sae_manifest["variant_spec"], "variant_method": sae_manifest["variant_method"],
            "sae_variant": sae_manifest["variant"], "sae_scoring_rule": sae_manifest.get("rule") or "",
            "sae_sparsity": float(sae_manifest.get("sparsity") or 0.0),
            "achieved_sparsity": float(sae_manifest.get("achieved_sparsity") or 0.0),
            "seed": int(seed), "tokens_used": int(sae_manifest.get("tokens_used") or 0),
            "gradient_steps": int(sae_manifest.get("gradient_steps") or 0),
            "wall_time_s": float(sae_manifest.get("wall_time_s") or 0.0),
            "sae_prefix": prefix, "d_sae": int(sae_manifest["d_sae"]), **compute_quality(),
        }
        # latents that never fire on the held-out activations
        row["dead_latents"] = int(round(row["d_sae"] * (1.0 - row["alive_fraction"])))
        storage.put_parquet(row_key, pd.DataFrame([row]))
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    return {"kind": "sae_variant", "sae_prefix": prefix, "sae_uri": storage.uri(prefix), "variant": sae_manifest["variant"],
            "spec": sae_manifest["variant_spec"], "method": sae_manifest["variant_method"],
            "rule": sae_manifest.get("rule"), "sparsity": sae_manifest.get("sparsity"), "hook": held_out["hook_name"],
            "llm": llm, "row": row, "row_uri": storage.uri(row_key), "processing": sae_manifest.get("processing", {})}


# ------------------------------------------------------------------ the original SAE
@task(name="original-sae", **ARTIFACT_TASK_OPTIONS)
def original_sae(dense: dict, hook_name: str, source: dict | None, train: dict | None, dense_acts: dict | None,
                 storage_url: str, device: str = "cpu", seed: int = 0) -> dict:
    """The SAE trained on the dense model: from a release / folder, or trained here (toy preset)."""
    ml_stack()
    storage = Storage(storage_url)
    identity = model_identity(dense)
    # A trained SAE depends on the seed (initialisation, batch order); a loaded one does not.
    trained_with_seed = seed if source is None else None
    prefix = f"saes/original/{config_hash(identity, hook_name, source, train, dense_acts and dense_acts['prefix'], trained_with_seed, code_fingerprint(__name__))}"
    if not storage.is_committed(prefix):
        started = time.perf_counter()
        if source is not None:
            from sae_core.sae_io import load_sae

            sae = load_sae(source["folder"] if "folder" in source else f"release:{source['release']}?id={source['sae_id']}", device=device)
            report = {"tokens_used": 0}
        else:
            from sae_core.sae_io import new_sae
            from sae_core.sae_train import train_sae

            blank = new_sae(train["architecture"], dense_acts["d_in"], train["d_sae"], hook_name, k=train.get("k"), seed=seed)
            total, per_epoch = _training_budget(train)
            with compute_lock(), report_progress():
                sae, report = train_sae(blank, activation_batches(storage, dense_acts, shuffle=True, seed=seed, max_tokens=per_epoch),
                                        total, lr=train["lr"], batch_size=train["batch_size"], seed=seed,
                                        **_training_options(train))
            _store_training_curve(storage, prefix, report.get("curve"))
        store_sae(storage, sae, prefix, {"variant": "original", "hook": hook_name, "source": source or {"trained_on": dense_acts["prefix"]},
                                          "processing": sae_processing(sae), "tokens_used": int(report.get("tokens_used", 0)),
                                          "wall_time_s": round(time.perf_counter() - started, 3)})
    manifest = storage.manifest(prefix)
    return {"kind": "sae", "prefix": prefix, "uri": storage.uri(prefix), "hook": hook_name, "processing": manifest["processing"],
            "architecture": manifest["architecture"], "d_in": manifest["d_in"], "d_sae": manifest["d_sae"]}


# ------------------------------------------------------------------ every variant on the compressed model
def variant_task_name(spec) -> str:
    """The task-run name a variant shows under: ``transfer-sae``, ``retrain-sae``, ``prune-sae``, ``finetune-sae``, ..."""
    return f"{spec.method.replace('_', '-')}-sae"


def variant_inputs_used(spec, compressed_acts: dict | None, dense_acts: dict | None) -> tuple[dict | None, dict | None]:
    """The activation caches building ``spec`` actually reads (the others are not part of its key)."""
    from sae_core.variants.registry import METHODS

    entry = METHODS[spec.method]
    needs_compressed = entry.needs_compressed_activations and not (spec.method == "prune" and spec.rule == "magnitude")
    wants_dense = entry.needs_dense_activations or entry.uses_dense_activations
    if entry.needs_dense_activations and dense_acts is None:
        raise ValueError(f"SAE variant {spec.text!r} needs the dense model's activations on the compressed training tokens")
    return (compressed_acts if needs_compressed else None), (dense_acts if wants_dense else None)


@task(name="sae-variant", **ARTIFACT_TASK_OPTIONS)
def sae_variant_task(spec, original: dict, llm: dict, compressed_acts: dict | None, dense_acts: dict | None, held_out: dict,
                     settings: dict, quality: dict, dataset: str, storage_url: str, device: str = "cpu", dtype: str = "float32",
                     seed: int = 0) -> dict:
    """One SAE variant of ``original`` for the compressed model ``llm`` (``spec``: a parsed
    ``sae_core.variants.VariantSpec``), stored once, and its row of the variants table.

    ``compressed_acts``: the compressed model's training activations; ``dense_acts``: the dense
    model's on the same tokens (for the fixes that need or use them); ``settings``:
    ``ExperimentConfig.variant_settings(spec)``. Every check of the method runs before any work.
    """
    ml_stack()
    from sae_core.variants.registry import METHODS

    storage = Storage(storage_url)
    entry = METHODS[spec.method]
    compressed_acts, dense_acts = variant_inputs_used(spec, compressed_acts, dense_acts)
    trained_with_seed = seed if entry.trains else None
    key = config_hash(spec.text, original["prefix"], compressed_acts and compressed_acts["prefix"], dense_acts and dense_acts["prefix"],
                      settings, trained_with_seed, code_fingerprint(__name__))
    folder = entry.storage_folder(spec.method)
    prefix = original["prefix"] if folder is None else f"saes/{folder}/{key}"
    if folder is None:
        manifest = {**storage.manifest(original["prefix"]), "tokens_used": 0, "gradient_steps": 0, "wall_time_s": 0.0}
    else:
        if not storage.is_committed(prefix):
            _build_and_store(storage, spec, original, compressed_acts, dense_acts, settings, prefix, device, seed)
        manifest = storage.manifest(prefix)
    manifest = {**manifest, "variant": entry.display_label(spec.method), "variant_spec": spec.text, "variant_method": spec.method}
    if spec.method == "prune":
        manifest = {**manifest, "rule": spec.rule, "sparsity": spec.sparsity}
    quality_key = config_hash(key, llm.get("prefix"), held_out["prefix"], quality, seed)
    return _variant_result(storage, quality_key, manifest, prefix, llm, held_out, seed, lambda: _quality(
        storage, load_stored_sae(storage, prefix, device), llm, held_out, quality, dataset, device, dtype))


class VariantFailed(RuntimeError):
    """A fix that could not be built (the failure names the variant; nothing of it is stored)."""


def _build_and_store(storage: Storage, spec, original: dict, compressed_acts, dense_acts, settings: dict, prefix: str,
                     device: str, seed: int) -> None:
    from sae_core.sae_train import train_sae
    from sae_core.variants import VariantInputs, method_for

    method = method_for(spec)
    sae = load_stored_sae(storage, original["prefix"], device)
    method.check(sae)  # an architecture / hook / normalisation the fix cannot carry: this variant fails, before any work
    trains = method.entry.trains
    # Training reads shuffled batches (as the original's training did), an epoch of the retrain settings' size; the fits
    # read both models' caches in order, row for row.
    train, per_epoch = None, None
    if trains:
        retrain = settings["train"]
        total, per_epoch = _training_budget(retrain)  # finetune:F trains F x total
        train = {"train_tokens": total, "lr": retrain["lr"], "batch_size": retrain["batch_size"], **_training_options(retrain)}
    compressed = None if compressed_acts is None else activation_batches(storage, compressed_acts, shuffle=trains, seed=seed,
                                                                         max_tokens=per_epoch if trains else settings.get("n_tokens"))
    dense = None if dense_acts is None else activation_batches(storage, dense_acts, max_tokens=settings.get("n_tokens"))
    inputs = VariantInputs(compressed=compressed, dense=dense, n_tokens=settings.get("n_tokens"), train=train, train_fn=train_sae,
                           seed=seed, progress=True, options=dict(settings.get("options") or {}))
    try:
        with compute_lock(), report_progress():
            variant, report = method.build(sae, inputs)
    except Exception as err:  # noqa: BLE001 - named and re-raised; storage / network trouble stays retryable
        if is_transient(err):
            raise
        raise VariantFailed(f"SAE variant {spec.text!r} of {original['prefix']} ({original['hook']}) failed: "
                            f"{type(err).__name__}: {err}") from err
    summary = report.summary()
    details = summary.get("details") or {}
    _store_training_curve(storage, prefix, details.pop("training_curve", None))  # a table, not manifest JSON
    manifest = {"variant": method.entry.display_label(spec.method), "variant_spec": spec.text, "variant_method": spec.method,
                "hook": original["hook"], "parent": original["prefix"], "processing": original["processing"],
                "trained_on": compressed_acts and compressed_acts["prefix"], "dense_activations": dense_acts and dense_acts["prefix"],
                "settings": settings, "seed": seed if trains else None, "report": summary,
                "tokens_used": int(report.tokens), "gradient_steps": int(report.gradient_steps),
                "wall_time_s": round(float(report.wall_time_s), 3)}
    if spec.method == "prune":
        prune_report = details.get("prune_report", {})
        manifest.update(rule=spec.rule, sparsity=spec.sparsity, calibration=compressed_acts and compressed_acts["prefix"],
                        prune_report=prune_report, achieved_sparsity=float(prune_report.get(
                            "achieved_sparsity", prune_report.get("achieved_overall_sparsity", spec.sparsity))))
    store_sae(storage, variant, prefix, _json_safe(manifest))  # the manifest commits the checkpoint, last


def _json_safe(value):
    """Manifest values as JSON (a report's numpy / torch scalars become plain numbers, NaN None)."""
    import math

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
