"""SAEBench *SCR* (spurious correlation removal) and *TPP* (targeted probe perturbation) on a given
model, via ``sae_bench.evals.scr_and_tpp.main.run_eval_single_sae`` (takes the SAE and the
``HookedTransformer``); ``perform_scr`` selects the metric, as in SAEBench.

``ScrEvalOutput`` / ``TppEvalOutput`` are assembled as SAEBench's ``run_eval`` does and become
``MetricResult.raw``. LLM activations and LLM probes are cached by SAEBench, written as safetensors
(:mod:`sae_core.metrics.safe_cache`, never pickled) under ``<llm cache>/<scr|tpp>/<hash of model
weights, tokenizer, settings, hook, datasets, versions>/entry/`` and reused across runs.

Data: ``LabHC/bias_in_bios`` (``..._class_set1``; SAEBench only defines SCR/TPP column-2 values
for class_set1 and amazon reviews). Offline it is served by
:func:`~sae_core.datasets.mirror.dataset_overrides`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline, reseeded_calls, to_jsonable
from sae_core.metrics.encode_memo import memoised_feature_ablations

SCR_PAIRS_BIOS = [("professor", "nurse"), ("architect", "journalist"), ("surgeon", "psychologist"), ("attorney", "teacher")]
SCR_PAIRS_AMAZON = [
    ("Books", "CDs_and_Vinyl"),
    ("Software", "Electronics"),
    ("Pet_Supplies", "Office_Products"),
    ("Industrial_and_Scientific", "Toys_and_Games"),
]


class ScrTppSettings(MetricSettings):
    """Mirrors ``ScrAndTppEvalConfig`` (minus ``perform_scr``, fixed per metric); defaults are SAEBench's."""

    dataset_names: list[str] = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"]
    train_set_size: int = 4000
    test_set_size: int = 1000
    context_length: int = 128
    probe_train_batch_size: int = 16
    probe_test_batch_size: int = 500
    probe_epochs: int = 20
    probe_lr: float = 1e-3
    probe_l1_penalty: float = 1e-3
    early_stopping_patience: int = 20
    sae_batch_size: int = 125
    #: None -> SAEBench's LLM_NAME_TO_BATCH_SIZE for known models, else 32.
    llm_batch_size: int | None = None
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    n_values: list[int] = [2, 5, 10, 20, 50, 100, 500]
    column1_vals_lookup: dict[str, list[tuple[str, str]]] = {
        "LabHC/bias_in_bios_class_set1": SCR_PAIRS_BIOS,
        "canrager/amazon_reviews_mcauley_1and5": SCR_PAIRS_AMAZON,
    }
    random_seed: int = 42
    lower_vram_usage: bool = False
    save_activations: bool = True


class ScrSettings(ScrTppSettings):
    pass


class TppSettings(ScrTppSettings):
    pass


_TOY = dict(
    dataset_names=["LabHC/bias_in_bios_class_set1"],
    train_set_size=200,
    test_set_size=100,
    context_length=64,
    probe_epochs=10,
    early_stopping_patience=10,
    probe_test_batch_size=100,
    sae_batch_size=50,
    llm_batch_size=50,
    n_values=[2, 5, 10, 20],
)
SCR_TOY_DEFAULTS = ScrSettings(**_TOY, column1_vals_lookup={"LabHC/bias_in_bios_class_set1": SCR_PAIRS_BIOS[:2]})
TPP_TOY_DEFAULTS = TppSettings(**_TOY)
SCR_HUB_DEFAULTS = ScrSettings()
TPP_HUB_DEFAULTS = TppSettings()


class ScrTpp(MetricFamily):
    """SCR and TPP: one SAEBench eval (``run_eval_single_sae``); ``perform_scr`` selects the metric."""

    perform_scr: ClassVar[bool]
    needs_pad_token = True
    #: the last run's encode-memo counts (encode_hits / encode_misses / decode_hits / bytes), for tests and benchmarks
    last_encode_memo: dict[str, int] = {}

    def run(self, inputs: MetricInputs, config: ScrTppSettings) -> MetricResult:
        import sae_bench.evals.scr_and_tpp.main as st_main
        from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig
        from sae_bench.evals.scr_and_tpp.eval_output import (
            EVAL_TYPE_ID_SCR,
            EVAL_TYPE_ID_TPP,
            ScrEvalOutput,
            ScrMetricCategories,
            ScrMetrics,
            ScrResultDetail,
            TppEvalOutput,
            TppMetricCategories,
            TppMetrics,
            TppResultDetail,
        )

        metric, perform_scr = self.name, self.perform_scr
        hooked_model, device = inputs.hooked_model, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        eval_config = ScrAndTppEvalConfig(
            random_seed=config.random_seed,
            dataset_names=list(config.dataset_names),
            perform_scr=perform_scr,
            early_stopping_patience=config.early_stopping_patience,
            train_set_size=config.train_set_size,
            test_set_size=config.test_set_size,
            context_length=config.context_length,
            probe_train_batch_size=config.probe_train_batch_size,
            probe_test_batch_size=config.probe_test_batch_size,
            probe_epochs=config.probe_epochs,
            probe_lr=config.probe_lr,
            probe_l1_penalty=config.probe_l1_penalty,
            sae_batch_size=config.sae_batch_size,
            llm_batch_size=self.llm_batch_size(inputs, config.llm_batch_size),
            llm_dtype=llm_dtype,
            lower_vram_usage=config.lower_vram_usage,
            model_name=inputs.model_name,
            n_values=list(config.n_values),
            column1_vals_lookup={k: [tuple(p) for p in v] for k, v in config.column1_vals_lookup.items()},
        )
        # the SAE-side draws start from the seed whether the LLM side was computed or read from SAEBench's cache;
        # the ablation loop encodes each cached test batch once, not once per (class x threshold): encode_memo
        # the LLM activations and probes: safetensors in a cache kept across runs (safe_cache)
        with self.saebench(inputs, llm_dtype, seed=config.random_seed, context_size=config.context_length) as sae, \
                reseeded_calls(config.random_seed, (st_main, "get_all_node_effects_for_one_sae")), \
                memoised_feature_ablations(st_main) as memos:
            too_many = [n for n in config.n_values if n > sae.cfg.d_sae]
            if too_many:
                raise ValueError(f"{metric}: n_values {too_many} exceed the SAE width d_sae={sae.cfg.d_sae}")
            with self.llm_cache(inputs, sae.cfg.hook_name, config, llm_dtype, eval_config.llm_batch_size,
                                modules=(st_main.__name__,), datasets=tuple(config.dataset_names)) as folder:
                results, per_dataset_class = st_main.run_eval_single_sae(
                    eval_config, sae, hooked_model, device, str(folder), save_activations=config.save_activations
                )
            self.last_encode_memo = {name: sum(getattr(m, name) for m in memos)
                                     for name in ("encode_hits", "encode_misses", "decode_hits", "bytes")}
            scalars = {k: v for k, v in results.items() if not isinstance(v, dict)}
            details = {k: v for k, v in results.items() if isinstance(v, dict)}
            if perform_scr:
                output_cls, type_id, detail_cls, unstructured = ScrEvalOutput, EVAL_TYPE_ID_SCR, ScrResultDetail, {}
                metrics = ScrMetricCategories(scr_metrics=ScrMetrics(**_known(ScrMetrics, scalars)))
            else:
                output_cls, type_id, detail_cls = TppEvalOutput, EVAL_TYPE_ID_TPP, TppResultDetail
                metrics = TppMetricCategories(tpp_metrics=TppMetrics(**_known(TppMetrics, scalars)))
                unstructured = dict(eval_result_unstructured=per_dataset_class)
            raw = self.eval_output_raw(
                output_cls, sae,
                eval_config=eval_config,
                eval_type_id=type_id,
                eval_result_metrics=metrics,
                eval_result_details=[detail_cls(dataset_name=name, **_known(detail_cls, r)) for name, r in details.items()],
                **unstructured,
            )
        # SAEBench's output schema only has fields for its default thresholds; keep every computed number.
        raw["sae_transfer_all_thresholds"] = to_jsonable(scalars)
        rows = []
        for n in config.n_values:
            if perform_scr:
                rows.append(headline(f"scr_metric_threshold_{n}", scalars.get(f"scr_metric_threshold_{n}"), True))
            else:
                rows.append(headline(f"tpp_threshold_{n}_total_metric", scalars.get(f"tpp_threshold_{n}_total_metric"), True))
                rows.append(headline(f"tpp_threshold_{n}_intended_diff_only", scalars.get(f"tpp_threshold_{n}_intended_diff_only"), True))
                rows.append(headline(f"tpp_threshold_{n}_unintended_diff_only", scalars.get(f"tpp_threshold_{n}_unintended_diff_only"), False))
        return self.result(raw, rows)


class Scr(ScrTpp):
    """Spurious correlation removal (``perform_scr=True``)."""

    name = "scr"
    perform_scr = True
    settings_cls = ScrSettings
    toy_defaults = SCR_TOY_DEFAULTS
    hub_defaults = SCR_HUB_DEFAULTS


class Tpp(ScrTpp):
    """Targeted probe perturbation (``perform_scr=False``)."""

    name = "tpp"
    perform_scr = False
    settings_cls = TppSettings
    toy_defaults = TPP_TOY_DEFAULTS
    hub_defaults = TPP_HUB_DEFAULTS


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
