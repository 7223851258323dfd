"""SAEBench *sparse probing* on a given model, via ``sae_bench.evals.sparse_probing.main.run_eval_single_sae``
(which takes the SAE and the ``HookedTransformer``).

The ``SparseProbingEvalOutput`` is assembled exactly as SAEBench's ``run_eval`` does and becomes
``MetricResult.raw``. LLM activations and the LLM-baseline probe accuracies are cached by SAEBench,
written as safetensors (:mod:`sae_core.metrics.safe_cache`, never pickled) under
``<llm cache>/sparse_probing/<hash of model weights, tokenizer, settings, hook, datasets, versions>/entry/``
and reused across runs.

Data: the bias-in-bios class sets come from ``LabHC/bias_in_bios`` (served offline by
:func:`~sae_core.datasets.mirror.dataset_overrides`); the other SAEBench datasets
(amazon reviews, github code, ag news, europarl) only exist on the hub.
"""

from __future__ import annotations

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline, reseeded_calls


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


class SparseProbing(MetricFamily):
    name = "sparse_probing"
    settings_cls = SparseProbingSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS
    needs_pad_token = True

    def run(self, inputs: MetricInputs, config: SparseProbingSettings) -> MetricResult:
        import sae_bench.evals.sparse_probing.main as sp_main
        from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
        from sae_bench.evals.sparse_probing.eval_output import (
            SparseProbingEvalOutput,
            SparseProbingLlmMetrics,
            SparseProbingMetricCategories,
            SparseProbingResultDetail,
            SparseProbingSaeMetrics,
        )

        hooked_model, device = inputs.hooked_model, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        eval_config = SparseProbingEvalConfig(
            random_seed=config.random_seed,
            dataset_names=list(config.dataset_names),
            probe_train_set_size=config.probe_train_set_size,
            probe_test_set_size=config.probe_test_set_size,
            context_length=config.context_length,
            sae_batch_size=config.sae_batch_size,
            llm_batch_size=self.llm_batch_size(inputs, config.llm_batch_size),
            llm_dtype=llm_dtype,
            model_name=inputs.model_name,
            k_values=list(config.k_values),
            lower_vram_usage=config.lower_vram_usage,
        )
        # the SAE-side draws start from the seed whether the LLM side was computed or read from SAEBench's cache
        with self.saebench(inputs, llm_dtype, seed=config.random_seed, context_size=config.context_length) as sae, \
                reseeded_calls(config.random_seed, (sp_main.activation_collection, "get_sae_meaned_activations")):
            # LLM activations and LLM-probe accuracies: safetensors, kept across runs (safe_cache)
            with self.llm_cache(inputs, sae.cfg.hook_name, config, llm_dtype, eval_config.llm_batch_size,
                                modules=(sp_main.__name__,), datasets=tuple(config.dataset_names)) as folder:
                results, per_class = sp_main.run_eval_single_sae(
                    eval_config, sae, hooked_model, device, str(folder), save_activations=config.save_activations
                )
            raw = self.eval_output_raw(
                SparseProbingEvalOutput, sae,
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
            )
        rows = [
            headline(name, value, True)
            for name, value in results.items()
            if not isinstance(value, dict) and (name.startswith("sae_") or name.startswith("llm_"))
        ]
        return self.result(raw, rows)
