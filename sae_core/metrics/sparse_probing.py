"""SAEBench *sparse probing* on a given model, via ``sae_bench.evals.sparse_probing.main.run_eval_single_sae``
(which takes the SAE and the ``HookedTransformer``).

The ``SparseProbingEvalOutput`` is assembled exactly as SAEBench's ``run_eval`` does and becomes
``MetricResult.raw``. LLM activations and the LLM-baseline probe accuracies are cached by SAEBench in
``artifacts_dir/sparse_probing/<hash of model weights, settings, hook>/`` (see
:func:`sae_core.metrics.base.cache_dir`).

Data: the bias-in-bios class sets come from ``LabHC/bias_in_bios`` (served offline by
:func:`~sae_core.datasets.mirror.dataset_overrides`); the other SAEBench datasets
(amazon reviews, github code, ag news, europarl) only exist on the hub.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sae_core.metrics.base import (
    MetricFamily,
    MetricResult,
    MetricSettings,
    Timer,
    eval_output_provenance,
    headline,
    hooked_model_name,
    model_fingerprint,
    prepare_sae,
    require_tokenizer_specials,
    resolve_llm_dtype,
    sae_bench_context,
    to_jsonable,
)


SAEBENCH_DATASETS = [
    "LabHC/bias_in_bios_class_set1",
    "LabHC/bias_in_bios_class_set2",
    "LabHC/bias_in_bios_class_set3",
    "canrager/amazon_reviews_mcauley_1and5",
    "canrager/amazon_reviews_mcauley_1and5_sentiment",
    "codeparrot/github-code",
    "fancyzhx/ag_news",
    "Helsinki-NLP/europarl",
]


class SparseProbingSettings(MetricSettings):
    """Mirrors ``SparseProbingEvalConfig``; defaults are SAEBench's."""

    dataset_names: list[str] = list(SAEBENCH_DATASETS)
    probe_train_set_size: int = 4000
    probe_test_set_size: int = 1000
    context_length: int = 128
    sae_batch_size: int = 125
    #: None -> SAEBench's LLM_NAME_TO_BATCH_SIZE for known models, else 32.
    llm_batch_size: int | None = None
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    k_values: list[int] = [1, 2, 5]
    random_seed: int = 42
    lower_vram_usage: bool = False
    #: reuse LLM activations across SAEs evaluated on the same model (SAEBench's default).
    save_activations: bool = True


TOY_DEFAULTS = SparseProbingSettings(
    dataset_names=["LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3"],
    probe_train_set_size=200,
    probe_test_set_size=100,
    context_length=64,
    sae_batch_size=50,
    llm_batch_size=50,
    k_values=[1, 2, 5],
)
HUB_DEFAULTS = SparseProbingSettings()


def default_llm_batch_size(model_name: str, fallback: int = 32) -> int:
    import sae_bench.sae_bench_utils.activation_collection as activation_collection

    return activation_collection.LLM_NAME_TO_BATCH_SIZE.get(model_name, fallback)


class SparseProbing(MetricFamily):
    name = "sparse_probing"
    settings_cls = SparseProbingSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS

    def run(self, sae: Any, hooked_model: Any, hf_model: Any, tokenizer: Any, settings: SparseProbingSettings | None = None,
            artifacts_dir: str | Path = "artifacts", device: str = "cpu", scratch_dir: str | Path | None = None) -> MetricResult:
        import sae_bench.evals.sparse_probing.main as sp_main
        from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
        from sae_bench.evals.sparse_probing.eval_output import (
            SparseProbingEvalOutput,
            SparseProbingLlmMetrics,
            SparseProbingMetricCategories,
            SparseProbingResultDetail,
            SparseProbingSaeMetrics,
        )

        config = settings or self.hub_defaults
        timer = Timer()
        require_tokenizer_specials(hooked_model.tokenizer)
        model_name = hooked_model_name(hooked_model)
        llm_dtype = resolve_llm_dtype(config.llm_dtype, hooked_model)
        eval_config = SparseProbingEvalConfig(
            random_seed=config.random_seed,
            dataset_names=list(config.dataset_names),
            probe_train_set_size=config.probe_train_set_size,
            probe_test_set_size=config.probe_test_set_size,
            context_length=config.context_length,
            sae_batch_size=config.sae_batch_size,
            llm_batch_size=config.llm_batch_size or default_llm_batch_size(model_name),
            llm_dtype=llm_dtype,
            model_name=model_name,
            k_values=list(config.k_values),
            lower_vram_usage=config.lower_vram_usage,
        )
        with sae_bench_context(config.random_seed):
            sae = prepare_sae(sae, model_name=model_name, device=device, dtype=llm_dtype, context_size=config.context_length)
            folder = self.cache_dir(artifacts_dir, model_fingerprint(hooked_model), sae.cfg.hook_name, config)
            results, per_class = sp_main.run_eval_single_sae(
                eval_config, sae, hooked_model, device, str(folder), save_activations=config.save_activations
            )
            eval_output = SparseProbingEvalOutput(
                eval_config=eval_config,
                eval_result_metrics=SparseProbingMetricCategories(
                    llm=SparseProbingLlmMetrics(
                        **{k: v for k, v in results.items() if k.startswith("llm_") and not isinstance(v, dict)}
                    ),
                    sae=SparseProbingSaeMetrics(
                        **{k: v for k, v in results.items() if k.startswith("sae_") and not isinstance(v, dict)}
                    ),
                ),
                eval_result_details=[
                    SparseProbingResultDetail(dataset_name=name, **result)
                    for name, result in results.items()
                    if isinstance(result, dict)
                ],
                eval_result_unstructured=per_class,
                **eval_output_provenance(sae),
            )
        raw = to_jsonable(asdict(eval_output))
        rows = [
            headline(name, value, True)
            for name, value in results.items()
            if not isinstance(value, dict) and (name.startswith("sae_") or name.startswith("llm_"))
        ]
        return self.result(raw, rows, timer=timer)
