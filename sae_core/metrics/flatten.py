"""MetricResult -> tidy rows ``(metric_family, metric_name, value, higher_is_better)``.

One row per headline number. A skipped result gives no rows (its ``status``/``reason`` travel with
the result itself). ``higher_is_better`` is True/False, or None for descriptive numbers (L0, L1,
split-feature counts...). Run id / model / hook / variant columns are added by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

from sae_core.metrics.base import MetricResult, sae_bench_version

COLUMNS: tuple[str, ...] = ("metric_family", "metric_name", "value", "higher_is_better")

__all__ = ["COLUMNS", "flatten_result", "flatten_results", "results_frame", "sae_bench_version"]


def flatten_result(result: MetricResult) -> list[dict]:
    """Tidy rows for one result (empty for a skipped one)."""
    if result.status != "ok":
        return []
    return [
        {
            "metric_family": result.metric,
            "metric_name": row["metric_name"],
            "value": float(row["value"]),
            "higher_is_better": row["higher_is_better"],
        }
        for row in result.headline
    ]


def flatten_results(results: Iterable[MetricResult]) -> list[dict]:
    rows: list[dict] = []
    for result in results:
        rows.extend(flatten_result(result))
    return rows


def results_frame(results: Iterable[MetricResult] | MetricResult):
    """The rows as a ``pandas.DataFrame`` with dtypes str / str / float64 / nullable boolean."""
    import pandas as pd

    if isinstance(results, MetricResult):
        results = [results]
    frame = pd.DataFrame(flatten_results(results), columns=list(COLUMNS))
    return frame.astype({"metric_family": "string", "metric_name": "string", "value": "float64",
                         "higher_is_better": "boolean"})
