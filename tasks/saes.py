"""The SAE variants as tasks: original (transfer), retrained on the pruned model, pruned SAE.

Each variant task stores (once) its checkpoint in sae-lens' folder format under
``saes/<variant>/<hash>/`` and one Parquet row under ``variants/<hash>.parquet``: what it is,
what it cost (tokens, wall time) and how well it reconstructs the *pruned* model's held-out
activations (MSE, explained variance, L0, dead latents, CE loss with the SAE spliced in).
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
from tasks.common import (ARTIFACT_TASK_OPTIONS, activation_batches, code_fingerprint, compute_lock, load_model_ref, load_stored_sae,
                          ml_stack, sae_processing, store_sae)
from tasks.progress import report_progress



# ------------------------------------------------------------------ helpers (no algorithms here)
def _training_options(settings: dict) -> dict[str, Any]:
    """``train_sae`` keywords of a train / retrain section beyond budget, lr and batch size."""
    trainer = {k: settings[k] for k in ("dead_feature_window",) if settings.get(k) is not None}  # None: sae-lens' default
    return {"trainer_overrides": trainer, "b_dec_init": settings.get("b_dec_init", "zeros")}


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


def _variant_result(storage, key, sae_manifest, prefix, llm, held_out, compute_quality) -> dict:
    """Write (once) the variant's Parquet row; ``compute_quality`` runs only if the row is new."""
    row_key = f"variants/{key}.parquet"
    if storage.exists(row_key):
        row = storage.get_parquet(row_key).iloc[0].to_dict()
    else:
        row = {
            "hook": held_out["hook_name"], "model_prefix": model_key(llm),
            "compression": compression_label(llm), "strength": compression_strength(llm),
            "sae_variant": sae_manifest["variant"], "sae_scoring_rule": sae_manifest.get("rule") or "",
            "sae_sparsity": float(sae_manifest.get("sparsity") or 0.0),
            "achieved_sparsity": float(sae_manifest.get("achieved_sparsity") or 0.0),
            "tokens_used": int(sae_manifest.get("tokens_used") or 0),
            "wall_time_s": float(sae_manifest.get("wall_time_s") or 0.0),
            "sae_prefix": prefix, "d_sae": int(sae_manifest["d_sae"]), **compute_quality(),
        }
        # latents that never fire on the held-out activations
        row["dead_latents"] = int(round(row["d_sae"] * (1.0 - row["alive_fraction"])))
        storage.put_parquet(row_key, pd.DataFrame([row]))
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    return {"kind": "sae_variant", "sae_prefix": prefix, "sae_uri": storage.uri(prefix), "variant": sae_manifest["variant"],
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
            with compute_lock(), report_progress():
                sae, report = train_sae(blank, activation_batches(storage, dense_acts, shuffle=True, seed=seed), train["train_tokens"],
                                        lr=train["lr"], batch_size=train["batch_size"], seed=seed,
                                        **_training_options(train))
        store_sae(storage, sae, prefix, {"variant": "original", "hook": hook_name, "source": source or {"trained_on": dense_acts["prefix"]},
                                          "processing": sae_processing(sae), "tokens_used": int(report.get("tokens_used", 0)),
                                          "wall_time_s": round(time.perf_counter() - started, 3)})
    manifest = storage.manifest(prefix)
    return {"kind": "sae", "prefix": prefix, "uri": storage.uri(prefix), "hook": hook_name, "processing": manifest["processing"],
            "architecture": manifest["architecture"], "d_in": manifest["d_in"], "d_sae": manifest["d_sae"]}


# ------------------------------------------------------------------ variants on the pruned model
@task(name="transfer-sae", **ARTIFACT_TASK_OPTIONS)
def transfer_sae(original: dict, llm: dict, held_out: dict, quality: dict, dataset: str, storage_url: str,
                 device: str = "cpu", dtype: str = "float32") -> dict:
    """Variant 1: the original SAE, unchanged, read on the pruned model."""
    ml_stack()
    storage = Storage(storage_url)
    key = config_hash("transfer", original["prefix"], llm.get("prefix"), held_out["prefix"], quality, code_fingerprint(__name__))
    manifest = {**storage.manifest(original["prefix"]), "variant": "original", "tokens_used": 0, "wall_time_s": 0.0}
    return _variant_result(storage, key, manifest, original["prefix"], llm, held_out, lambda: _quality(
        storage, load_stored_sae(storage, original["prefix"], device), llm, held_out, quality, dataset, device, dtype))


@task(name="retrain-sae", **ARTIFACT_TASK_OPTIONS)
def retrain_sae(original: dict, llm: dict, train_acts: dict, held_out: dict, retrain: dict, quality: dict, dataset: str,
                storage_url: str, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> dict:
    """Variant 2: a fresh SAE of the original's architecture, width and k, trained on the pruned model."""
    ml_stack()
    from sae_core.sae_train import train_sae

    storage = Storage(storage_url)
    key = config_hash("retrain", original["prefix"], train_acts["prefix"], retrain, seed, code_fingerprint(__name__))
    prefix = f"saes/retrained/{key}"
    if not storage.is_committed(prefix):
        like = load_stored_sae(storage, original["prefix"], device)
        started = time.perf_counter()
        # Same architecture, width and k as the original: a sparsity-matched, fair baseline.
        with compute_lock(), report_progress():
            sae, report = train_sae(like, activation_batches(storage, train_acts, shuffle=True, seed=seed), retrain["train_tokens"],
                                    lr=retrain["lr"], batch_size=retrain["batch_size"], seed=seed,
                                    **_training_options(retrain))
        store_sae(storage, sae, prefix, {"variant": "retrained", "hook": original["hook"], "parent": original["prefix"],
                                          "trained_on": train_acts["prefix"], "processing": original["processing"],
                                          "tokens_used": int(report["tokens_used"]), "wall_time_s": round(time.perf_counter() - started, 3)})
    quality_key = config_hash(key, llm.get("prefix"), held_out["prefix"], quality)
    return _variant_result(storage, quality_key, storage.manifest(prefix), prefix, llm, held_out, lambda: _quality(
        storage, load_stored_sae(storage, prefix, device), llm, held_out, quality, dataset, device, dtype))


@task(name="prune-sae", **ARTIFACT_TASK_OPTIONS)
def prune_sae_task(original: dict, llm: dict, calibration_acts: dict, held_out: dict, rule: str, sparsity: float,
                   calibration_tokens: int, quality: dict, dataset: str, storage_url: str,
                   device: str = "cpu", dtype: str = "float32") -> dict:
    """Variant 3: the original SAE's encoder and decoder pruned by ``rule`` at ``sparsity``."""
    ml_stack()
    from sae_core.sae_prune import accumulate_sae_norms, prune_sae

    storage = Storage(storage_url)
    key = config_hash("prune", original["prefix"], calibration_acts["prefix"], rule, sparsity, calibration_tokens, code_fingerprint(__name__))
    prefix = f"saes/pruned/{key}"
    if not storage.is_committed(prefix):
        sae = load_stored_sae(storage, original["prefix"], device)
        started = time.perf_counter()
        norms = None
        with compute_lock():
            if rule != "magnitude":  # magnitude needs no activations
                norms = accumulate_sae_norms(sae, activation_batches(storage, calibration_acts, max_tokens=calibration_tokens))
            pruned, report = prune_sae(sae, rule, sparsity, norms)
        store_sae(storage, pruned, prefix, {
            "variant": "pruned", "hook": original["hook"], "parent": original["prefix"], "rule": rule, "sparsity": sparsity,
            "achieved_sparsity": float(report.get("achieved_sparsity", report.get("achieved_overall_sparsity", sparsity))),
            "prune_report": report, "calibration": calibration_acts["prefix"], "processing": original["processing"],
            "tokens_used": int(norms.n_tokens) if norms is not None else 0, "wall_time_s": round(time.perf_counter() - started, 3)})
    quality_key = config_hash(key, llm.get("prefix"), held_out["prefix"], quality)
    return _variant_result(storage, quality_key, storage.manifest(prefix), prefix, llm, held_out, lambda: _quality(
        storage, load_stored_sae(storage, prefix, device), llm, held_out, quality, dataset, device, dtype))
