"""The metrics table's rows: one builder for every family (SAEBench's, the feature audit's, ...).

``MetricResult`` -> tidy rows. :func:`headline_rows` gives ``(metric_family, metric_name, value,
higher_is_better)`` per headline number (none for a skipped result); :func:`metric_rows` adds the
columns that say which SAE, model, hook and run a row belongs to (``METRIC_COLUMNS``), with one
``skipped`` row for a skipped result so that its status and reason are stored. ``higher_is_better``
is True/False, or None for descriptive numbers (L0, L1, split-feature counts...).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sae_core.hashing import config_hash
from sae_core.metrics.base import MetricResult, sae_bench_version
from sae_core.model_ref import compression_label, compression_strength, model_key
from sae_core.variants.registry import label_spec

COLUMNS: tuple[str, ...] = ("metric_family", "metric_name", "value", "higher_is_better")
METRIC_COLUMNS: tuple[str, ...] = (
    "run_id", "experiment", "model", "compression", "strength", "hook", "layer", "sae_variant", "sae_scoring_rule",
    "sae_sparsity", "metric_family", "metric_name", "value", "higher_is_better", "status", "reason", "eval_config_hash",
    "sae_bench_version", "sae_prefix", "model_prefix", "timestamp", "variant_spec")

__all__ = ["COLUMNS", "METRIC_COLUMNS", "flatten_result", "flatten_results", "headline_rows", "metric_rows", "results_frame",
           "sae_bench_version"]


def headline_rows(result: MetricResult) -> list[dict]:
    """Tidy rows for one result (empty for a skipped one)."""
    if result.status != "ok":
        return []
    return [{"metric_family": result.metric, "metric_name": row["metric_name"], "value": float(row["value"]),
             "higher_is_better": row["higher_is_better"]} for row in result.headline]


flatten_result = headline_rows  # the name the metrics package has always exported


def flatten_results(results: Iterable[MetricResult]) -> list[dict]:
    rows: list[dict] = []
    for result in results:
        rows.extend(headline_rows(result))
    return rows


def results_frame(results: Iterable[MetricResult] | MetricResult):
    """The rows as a ``pandas.DataFrame`` with dtypes str / str / float64 / nullable boolean."""
    import pandas as pd

    if isinstance(results, MetricResult):
        results = [results]
    frame = pd.DataFrame(flatten_results(results), columns=list(COLUMNS))
    return frame.astype({"metric_family": "string", "metric_name": "string", "value": "float64",
                         "higher_is_better": "boolean"})


def metric_rows(result: Any, variant: dict, settings: dict, experiment: str, run_id: str, timestamp: str | None = None):
    """The stored rows (``METRIC_COLUMNS``) of one result for one SAE variant on its model.

    ``result``: a ``MetricResult`` or anything with ``metric``, ``status``, ``reason`` and ``headline``.
    ``variant``: the variant's manifest (``llm``, ``hook``, ``variant``, ``sae_prefix``, optional ``rule``
    and ``sparsity``). ``settings``: what the figures were computed with (hashed into ``eval_config_hash``).
    """
    import pandas as pd

    llm, hook = variant["llm"], variant["hook"]
    base = {
        "run_id": run_id, "experiment": experiment,
        "model": llm.get("base_model") or llm.get("hub_id") or llm.get("prefix"),
        "compression": compression_label(llm), "strength": compression_strength(llm),
        "hook": hook, "layer": int(hook.split(".")[1]) if hook.startswith("blocks.") else -1,
        "sae_variant": variant["variant"], "sae_scoring_rule": variant.get("rule") or "",
        "sae_sparsity": float(variant.get("sparsity") or 0.0), "metric_family": result.metric,
        "status": result.status, "reason": result.reason or "", "eval_config_hash": config_hash(settings),
        "sae_bench_version": sae_bench_version(), "sae_prefix": variant["sae_prefix"],
        "model_prefix": model_key(llm), "timestamp": timestamp or datetime.now(timezone.utc).isoformat(),
        # which variant (two finetune fractions share the label "finetune"); manifests without a spec: from the label
        "variant_spec": variant.get("spec") or label_spec(variant["variant"], variant.get("rule"), variant.get("sparsity"))[0],
    }
    headline = result.headline or [{"metric_name": "skipped", "value": float("nan"), "higher_is_better": None}]
    rows = [{**base, "metric_name": h["metric_name"], "value": float(h["value"]), "higher_is_better": h["higher_is_better"]}
            for h in headline]
    frame = pd.DataFrame(rows)[list(METRIC_COLUMNS)]
    frame["higher_is_better"] = frame["higher_is_better"].astype("boolean")
    return frame
