"""SAEBench metric adapters: SAEBench's own metric code, run on a given SAE object and model object.

Public API::

    from sae_core.metrics import run_metric, get_metric, METRIC_NAMES, MetricResult
    from sae_core.metrics import flatten_result, results_frame, sae_bench_version

    result = run_metric("core", sae, hooked_model, hf_model, tokenizer,
                        settings=None, profile="hub", artifacts_dir="...", device="cuda")

Metric families (``METRIC_NAMES``): core, absorption, scr, tpp, sparse_probing, ravel, autointerp,
sparse_probing_sae_probes (SAEBench's wrapper of the ``sae-probes`` package). Each family's
``reliability`` (``registry.RELIABILITY``: what is known about how far its figures can be trusted) is
rendered beside its columns in reports by ``registry.render_reliability``.
Every family is a :class:`~sae_core.metrics.base.MetricFamily` (name, settings class, toy / real /
hub defaults, ``run(inputs, config)`` with one shared signature; the inputs are one
:class:`~sae_core.metrics.base.MetricInputs`). One module per family (``core``, ``absorption``,
``scr_tpp`` (SCR and TPP), ``sparse_probing``, ``ravel``, ``autointerp``, ``sparse_probing_sae_probes``) holds its family class and
its ``<Metric>Settings``; ``registry`` lists the family objects by name; ``rows`` builds the metrics
table's rows for every family. SAEBench's hub datasets are served from local folders by the one mechanism of
:mod:`sae_core.datasets.mirror` (``dataset_overrides``).

SAEBench, SAE Lens and `datasets` are imported lazily, when a metric runs.

Adding a family: one module with a ``MetricFamily`` subclass (name, settings class, defaults per
profile, ``run``) and one entry in ``registry.FAMILIES`` (plus its "real" sizes in
``registry.REAL_OVERRIDES``, if any). ``run(inputs, config)`` holds only the family's own SAEBench
calls and its headline numbers; the plumbing is the base class's: ``self.llm_dtype``,
``self.llm_batch_size``, ``with self.saebench(inputs, dtype, seed=...) as sae`` (global state kept,
the prepared SAE copy), ``self.model_cache_dir`` / ``with self.llm_cache(...) as folder`` (SAEBench's
LLM-side caches, kept across runs in safe formats: :mod:`~sae_core.metrics.safe_cache`),
``self.eval_output_raw`` and ``self.result`` /
``self.skipped``; :func:`~sae_core.metrics.registry.run_metric` builds the inputs, resolves the
profile's settings and datasets and times the run, and :func:`~sae_core.metrics.rows.metric_rows`
turns the result into the metrics table's rows.
"""

import importlib
from typing import Any

# Light names load now; the adapters (and with them torch) on first use, so that reading a metric's
# settings or computing a cache key stays cheap.
from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, sae_bench_version

_LAZY = {
    "COLUMNS": "rows", "METRIC_COLUMNS": "rows", "flatten_result": "rows", "flatten_results": "rows", "headline_rows": "rows",
    "metric_rows": "rows", "results_frame": "rows",
    "FAMILIES": "registry", "METRIC_NAMES": "registry", "METRICS": "registry", "get_metric": "registry",
    "run_metric": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sae_core.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sae_core.metrics' has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "METRIC_COLUMNS",
    "FAMILIES",
    "METRICS",
    "METRIC_NAMES",
    "MetricFamily",
    "MetricInputs",
    "MetricResult",
    "MetricSettings",
    "flatten_result",
    "flatten_results",
    "headline_rows",
    "metric_rows",
    "get_metric",
    "results_frame",
    "run_metric",
    "sae_bench_version",
]
