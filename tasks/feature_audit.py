"""The feature-level audit as a cached task: one per (original SAE, compressed model).

Stores, under one content-hashed key:
- ``feature_audit/<key>.parquet``: one row per SAE feature (r, firing rates, class, ...);
- ``feature_audit/<key>.json``: the summary, the per-subset summaries, the perplexities on the
  audit tokens and the survival-predictor AUC;
- ``feature_audit/<key>.topk.parquet`` and ``feature_audit/<key>.hist.parquet``: what the feature
  cards (task ``feature-cards``) need, recorded in the same pass: per feature its top dense
  activations (window, position, the compressed model's value there) and both sides' histograms;
- ``metrics/feature_fidelity/<key>.parquet``: the headline figures as metric rows in the
  schema of every other metric (``sae_core.metrics.rows.metric_rows``), so one
  ``pd.read_parquet("<root>/metrics")`` reads them beside SAEBench's. Written last: it commits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from prefect import task

from sae_core.datasets import token_batch
from sae_core.hashing import config_hash
from sae_core.metrics.rows import metric_rows
from sae_core.model_ref import compression_label, compression_of, model_identity, model_key
from sae_core.progress import Progress
from sae_core.storage import Storage
from tasks.common import (ARTIFACT_TASK_OPTIONS, activation_batches, code_fingerprint, compute_lock, flow_run_id, load_model_ref,
                          load_stored_sae, ml_stack)
from tasks.progress import report_progress

FAMILY = "feature_fidelity"
# (summary key, metric name, higher is better); None: neither direction is "better".
HEADLINE = [
    ("survived_frac", "survived_frac", True), ("degraded_frac", "degraded_frac", None), ("damaged_frac", "damaged_frac", False),
    ("dead_after_frac", "dead_after_frac", False), ("mean_r", "mean_r", True), ("median_r", "median_r", True),
    ("mean_firing_jaccard", "mean_firing_jaccard", True), ("median_magnitude_ratio", "median_magnitude_ratio", None),
    ("survived_frac_subset_std", "survived_frac_subset_std", None), ("survived_frac_subset_range", "survived_frac_subset_range", None),
    ("damaged_frac_subset_std", "damaged_frac_subset_std", None), ("n_active", "n_active", None), ("n_tokens", "n_tokens", None),
]


def audit_windows(audit: dict) -> int:
    """Token windows to read so that about ``n_tokens`` positions remain after BOS / EOS are dropped."""
    return math.ceil(audit["n_tokens"] / (audit["seq_len"] - 2))


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


@task(name="feature-fidelity", **ARTIFACT_TASK_OPTIONS)
def feature_fidelity(original: dict, dense: dict, compressed: dict, audit: dict, dataset: str, experiment: str, storage_url: str,
                     device: str = "cpu", dtype: str = "float32") -> dict:
    """Audit every feature of the ``original`` SAE on the ``compressed`` model against the ``dense`` one."""
    ml_stack()
    storage = Storage(storage_url)
    key = config_hash(FAMILY, original["prefix"], model_identity(dense), model_identity(compressed), original.get("processing", {}), audit,
                      dataset, code_fingerprint(__name__))
    table_key, summary_key, rows_key = f"feature_audit/{key}.parquet", f"feature_audit/{key}.json", f"metrics/{FAMILY}/{key}.parquet"
    if not storage.exists(rows_key):
        _audit_and_store(storage, original, dense, compressed, audit, dataset, experiment, device, dtype, key,
                         table_key, summary_key, rows_key)
    stored = storage.get_json(summary_key)
    return {"kind": FAMILY, "metric": FAMILY, "status": "ok", "rows_key": rows_key, "table_key": table_key, "summary_key": summary_key,
            "topk_key": topk_key(key), "histogram_key": histogram_key(key),
            "uri": storage.uri(rows_key), "hook": original["hook"], "sae_prefix": original["prefix"],
            "model_prefix": model_key(compressed), "compression": compression_of(compressed),
            "perplexity": compressed.get("perplexity"), "audit_perplexity": stored["perplexity"],
            "summary": stored["summary"], "auc": stored["auc"]}


def topk_key(key: str) -> str:
    return f"feature_audit/{key}.topk.parquet"


def histogram_key(key: str) -> str:
    return f"feature_audit/{key}.hist.parquet"


def _audit_and_store(storage, original, dense, compressed, audit, dataset, experiment, device, dtype, key,
                     table_key, summary_key, rows_key) -> None:
    from sae_core.activations import special_token_ids
    from sae_core.feature_audit import CARD_TOP_K, audit_feature_fidelity, check_same_hf_config, survival_auc

    dense_model = load_model_ref(storage, dense, device, dtype)
    compressed_model = load_model_ref(storage, compressed, device, dtype)
    check_same_hf_config(dense_model.hf_model, compressed_model.hf_model)  # before building anything
    sae = load_stored_sae(storage, original["prefix"], device)
    tokens = token_batch(dense_model.tokenizer, dataset, audit_windows(audit), audit["seq_len"], skip_sequences=audit["skip_sequences"])
    processing = original.get("processing", {})
    with compute_lock():
        if storage.exists(rows_key):  # the same audit, submitted twice, finished while this one waited
            return
        # two forward passes per window batch: minutes on the real model, so it shows a bar (console and UI)
        with report_progress(), Progress(len(tokens), f"feature audit {original['hook']}", unit="win") as bar:
            result = audit_feature_fidelity(dense_model.hooked(processing), compressed_model.hooked(processing), sae, tokens,
                                            original["hook"], exclude_ids=special_token_ids(dense_model.tokenizer),
                                            batch_sequences=audit["batch_sequences"], n_subsets=audit["subsets"], card_top_k=CARD_TOP_K,
                                            perplexity_tokens=audit.get("perplexity_tokens"), on_batch=bar.update)
    auc = survival_auc(result.table)
    storage.put_parquet(topk_key(key), result.cards.topk_table())
    storage.put_parquet(histogram_key(key), result.cards.histogram_table())
    storage.put_parquet(table_key, result.table)
    storage.put_json(summary_key, _clean({"summary": result.summary, "subsets": result.subset_summaries,
                                          "perplexity": result.perplexity, "auc": auc, "audit": audit, "dataset": dataset}))
    headline = [{"metric_name": name, "value": float(result.summary[src]), "higher_is_better": better} for src, name, better in HEADLINE]
    headline += [{"metric_name": "auc_survival", "value": float(auc["auc_mean"]), "higher_is_better": None},
                 {"metric_name": "auc_survival_std", "value": float(auc["auc_std"]), "higher_is_better": None},
                 {"metric_name": "ppl_delta_pct_audit_tokens", "value": float(result.perplexity["delta_pct"]), "higher_is_better": False},
                 {"metric_name": "ppl_audit_tokens", "value": float(result.perplexity["tokens"]), "higher_is_better": None}]
    outcome = SimpleNamespace(metric=FAMILY, status="ok", reason="", headline=headline)
    variant = {"llm": compressed, "hook": original["hook"], "variant": "original", "sae_prefix": original["prefix"]}
    storage.put_parquet(rows_key, metric_rows(outcome, variant, audit, experiment, run_id=flow_run_id()))  # the row file commits the audit


@task(name="feature-overlap", **ARTIFACT_TASK_OPTIONS)
def feature_overlap(reference_audit: dict, matched_audit: dict, experiment: str, storage_url: str) -> dict:
    """Do the two compressions damage the same features? (sae_core.feature_audit.compare_methods)
    Rows under ``metrics/feature_overlap/``, like every other metric."""
    from sae_core.feature_audit import compare_methods

    storage = Storage(storage_url)
    key = config_hash("feature-overlap", reference_audit["table_key"], matched_audit["table_key"], code_fingerprint(__name__))
    rows_key = f"metrics/feature_overlap/{key}.parquet"
    labels = compression_label(reference_audit), compression_label(matched_audit)
    if not storage.exists(rows_key):
        overlap = compare_methods(storage.get_parquet(reference_audit["table_key"]), storage.get_parquet(matched_audit["table_key"]))
        headline = [{"metric_name": name, "value": float(value), "higher_is_better": None} for name, value in overlap.items()]
        # Rows belong to the matched model (the report groups by its spec); the reference is in the manifest.
        llm = {"prefix": matched_audit["model_prefix"], "compression": matched_audit["compression"]}
        variant = {"llm": llm, "hook": matched_audit["hook"], "variant": "original", "sae_prefix": matched_audit["sae_prefix"]}
        outcome = SimpleNamespace(metric="feature_overlap", status="ok", reason="", headline=headline)
        storage.put_parquet(rows_key, metric_rows(outcome, variant, {"reference": labels[0], "matched": labels[1]}, experiment, run_id=flow_run_id()))
    rows = storage.get_parquet(rows_key)
    return {"kind": "feature_overlap", "metric": "feature_overlap", "status": "ok", "rows_key": rows_key, "uri": storage.uri(rows_key),
            "hook": matched_audit["hook"], "reference": labels[0], "matched": labels[1],
            "perplexity": {labels[0]: reference_audit["audit_perplexity"], labels[1]: matched_audit["audit_perplexity"]},
            "overlap": _clean({r["metric_name"]: float(r["value"]) for _, r in rows.iterrows()})}


IDENTITY_FAMILY = "feature_identity"


@task(name="feature-identity", **ARTIFACT_TASK_OPTIONS)
def feature_identity(variant: dict, original: dict, dense_held_out: dict, held_out: dict, experiment: str, storage_url: str,
                     device: str = "cpu") -> dict:
    """Does each latent of the ``variant`` (a ``sae-variant`` result) still mean what it meant in the ``original``?

    Decoder cosines with the same latent (index-wise) and after a one-to-one matching
    (``sae_core.variants.identity``), and per-latent Pearson r between the original's codes on the
    dense model and the variant's codes on the compressed model over the same held-out tokens
    (``dense_held_out`` and ``held_out``: one spec, one processing). Rows under
    ``metrics/feature_identity/<key>.parquet``, like every metric family (written last: they commit)."""
    from sae_core.variants.registry import METHODS

    ml_stack()
    storage = Storage(storage_url)
    method = variant.get("method") or "transfer"
    keeps_identity = METHODS[method].keeps_identity if method in METHODS else True
    key = config_hash(IDENTITY_FAMILY, variant["sae_prefix"], original["prefix"], dense_held_out["prefix"], held_out["prefix"],
                      keeps_identity, code_fingerprint(__name__))
    rows_key = f"metrics/{IDENTITY_FAMILY}/{key}.parquet"
    if not storage.exists(rows_key):
        headline = _identity_headline(storage, variant, original, dense_held_out, held_out, keeps_identity, device)
        outcome = SimpleNamespace(metric=IDENTITY_FAMILY, status="ok", reason="", headline=headline)
        settings = {"dense_held_out": dense_held_out["prefix"], "held_out": held_out["prefix"], "keeps_identity": keeps_identity}
        storage.put_parquet(rows_key, metric_rows(outcome, variant, settings, experiment, run_id=flow_run_id()))
    rows = storage.get_parquet(rows_key)
    return {"kind": IDENTITY_FAMILY, "metric": IDENTITY_FAMILY, "status": "ok", "rows_key": rows_key, "uri": storage.uri(rows_key),
            "hook": variant["hook"], "sae_prefix": variant["sae_prefix"], "model_prefix": model_key(variant["llm"]),
            "spec": variant.get("spec"), "headline": {r["metric_name"]: float(r["value"]) for _, r in rows.iterrows()}}


def _identity_headline(storage, variant, original, dense_held_out, held_out, keeps_identity, device) -> list[dict]:
    from sae_core.variants.identity import code_fidelity, decoder_identity, match_latents

    original_sae = load_stored_sae(storage, original["prefix"], device)
    variant_sae = load_stored_sae(storage, variant["sae_prefix"], device)
    with compute_lock():
        index_wise = decoder_identity(original_sae, variant_sae)
        matched = match_latents(original_sae, variant_sae)
        permutation = None if keeps_identity else matched["permutation"]
        _, summary = code_fidelity(original_sae, variant_sae, activation_batches(storage, dense_held_out),
                                   activation_batches(storage, held_out), permutation=permutation)
    figures = [
        ("decoder_cosine_kept_fraction", index_wise["kept_frac"], True), ("decoder_mean_cosine", index_wise["mean_cosine"], True),
        ("matched_fraction", matched["matched_frac"], True),
        ("identity_kept_fraction", index_wise["kept_frac"] if keeps_identity else matched["matched_frac"], True),
        ("mean_r", summary["mean_r"], True), ("median_r", summary["median_r"], True),
        ("survived_pct", 100 * summary["survived_frac"], True), ("degraded_pct", 100 * summary["degraded_frac"], None),
        ("damaged_pct", 100 * summary["damaged_frac"], False), ("dead_after_pct", 100 * summary["dead_after_frac"], False),
        ("n_active", summary["n_active"], None), ("n_tokens", summary["n_tokens"], None),
    ]
    return [{"metric_name": name, "value": float(value), "higher_is_better": better} for name, value, better in figures]
