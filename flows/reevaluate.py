"""Scheduled re-evaluation: re-run chosen metrics for every SAE variant already in storage.

A metric task's cache key is what its result depends on (variant, metric, settings, profile,
library code, sae-bench version; see ``tasks.metrics.metric_cache_key``), so unchanged ones show as
Cached, also against the experiment runs that first computed them; a new sae-bench version or a
changed setting writes new rows next to the old ones, so results can be compared over time.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runners import run_settings
from sae_core.config import KNOWN_METRICS
from sae_core.metrics.registry import settings_for
from sae_core.storage import DEFAULT_STORAGE_URL, Storage
from tasks.catalog import stored_variants
from tasks.metrics import evaluate_metric
from tasks.report import write_report


@flow(name="sae-transfer-reevaluate", log_prints=True, result_serializer="json")
def reevaluate(storage_url: str = DEFAULT_STORAGE_URL, metrics: list[str] = ["core"], metric_profile: str = "toy",
               metric_overrides: dict[str, dict] | None = None, device: str = "cpu", dtype: str = "float32",
               runner: str = "threads") -> dict[str, Any]:
    """Re-run SAEBench metrics for every SAE variant in storage, each on the compressed model it was built for.

    Args:
        storage_url: The storage root the experiments wrote to: file://PATH (relative to the worker's directory)
            or s3://bucket/prefix.
        metrics: Metric families to run, from core, absorption, scr, tpp, sparse_probing, ravel, autointerp.
        metric_profile: toy (tiny settings, offline stand-in datasets) or hub (SAEBench's defaults and datasets).
        metric_overrides: Per-metric setting overrides, e.g. {"core": {"n_eval_reconstruction_batches": 8}};
            a changed setting adds new rows beside the old ones.
        device: cpu, cuda or cuda:N.
        dtype: float32, bfloat16 or float16.
        runner: threads (one process) or ray (see README "Ray runner").
    """
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
    settings = {m: settings_for(m, metric_profile, (metric_overrides or {}).get(m)) for m in metrics}
    storage = Storage(storage_url)
    storage.check_reachable()
    with run_settings(storage.url, runner):
        variants = stored_variants(storage.url)
        futures = [evaluate_metric.with_options(name=f"metric-{metric}").submit(
                       metric, variant, settings[metric], metric_profile, "reevaluation", storage.url, device, dtype)
                   for variant in variants for metric in metrics]
        results = [f.result() for f in futures]
        report = write_report("reevaluation", {"metrics": metrics, "settings": settings, "profile": metric_profile}, [],
                              variants, results, storage.url)
    return {"n_variants": len(variants), "n_metric_results": len(results), "report": report}
