"""SAEBench metric adapters: SAEBench's own metric code, run on a given SAE object and model object.

Public API::

    from sae_core.metrics import run_metric, get_metric, METRIC_NAMES, MetricResult
    from sae_core.metrics import dataset_overrides, flatten_result, results_frame, sae_bench_version

    result = run_metric("core", sae, hooked_model, hf_model, tokenizer,
                        config=None, artifacts_dir="...", device="cuda", preset="hub")

Metric families (``METRIC_NAMES``): core, absorption, scr, tpp, sparse_probing, ravel, autointerp.
One module per family (``core``, ``absorption``, ``scr_tpp``, ``sparse_probing``, ``ravel``,
``autointerp``) holds ``run_<metric>`` and its ``<Metric>Settings``; ``registry`` maps names to
them; ``offline_datasets`` is the single mechanism that serves SAEBench's hub datasets from local
folders; ``flatten`` turns results into tidy rows.

SAEBench, SAE Lens and `datasets` are imported lazily, when a metric runs.
"""

from sae_core.metrics.base import MetricResult, MetricSettings, sae_bench_version
from sae_core.metrics.flatten import COLUMNS, flatten_result, flatten_results, results_frame
from sae_core.metrics.offline_datasets import ABSORPTION_WORDS, dataset_overrides
from sae_core.metrics.registry import METRIC_NAMES, METRICS, MetricSpec, get_metric, run_metric

__all__ = [
    "ABSORPTION_WORDS",
    "COLUMNS",
    "METRICS",
    "METRIC_NAMES",
    "MetricResult",
    "MetricSettings",
    "MetricSpec",
    "dataset_overrides",
    "flatten_result",
    "flatten_results",
    "get_metric",
    "results_frame",
    "run_metric",
    "sae_bench_version",
]
