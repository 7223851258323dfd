"""Scheduled re-evaluation: re-run chosen metrics for every SAE variant already in storage.

Unchanged metric code, settings and sae-bench version hit the cache (no work); a new version or a
changed setting writes new rows next to the old ones, so results can be compared over time.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runners import task_runner
from sae_core.config import KNOWN_METRICS
from sae_core.metrics.registry import settings_for
from sae_core.storage import DEFAULT_STORAGE_URL, Storage
from tasks.catalog import stored_variants
from tasks.metrics import evaluate_metric
from tasks.report import write_report
from tasks.runtime import result_storage_reference


@flow(name="sae-transfer-reevaluate-run", log_prints=True, result_serializer="json")
def reevaluate_stored(storage_url: str, metrics: list[str], metric_profile: str, settings: dict[str, dict],
                      device: str, dtype: str) -> dict[str, Any]:
    variants = stored_variants(storage_url)
    results = [evaluate_metric.with_options(name=f"metric-{metric}")(metric, variant, settings[metric], metric_profile,
                                                                     "reevaluation", storage_url, device, dtype)
               for variant in variants for metric in metrics]
    report = write_report("reevaluation", {"metrics": metrics, "settings": settings, "profile": metric_profile}, [],
                          variants, results, storage_url)
    return {"n_variants": len(variants), "n_metric_results": len(results), "report": report}


@flow(name="sae-transfer-reevaluate", log_prints=True, result_serializer="json")
def reevaluate(storage_url: str = DEFAULT_STORAGE_URL, metrics: list[str] = ["core"], metric_profile: str = "toy",
               metric_overrides: dict[str, dict] | None = None, device: str = "cpu", dtype: str = "float32",
               runner: str = "threads") -> dict[str, Any]:
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
    settings = {m: settings_for(m, metric_profile, (metric_overrides or {}).get(m)) for m in metrics}
    storage = Storage(storage_url)
    storage.check_reachable()
    return reevaluate_stored.with_options(result_storage=result_storage_reference(storage.url), task_runner=task_runner(runner))(
        storage.url, metrics, metric_profile, settings, device, dtype)
