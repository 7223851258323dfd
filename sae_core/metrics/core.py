"""SAEBench *core* metrics on a given model: CE-loss score, KL score, explained variance, MSE, cosine
similarity, L0/L1, shrinkage, feature density (dead / alive latents).

SAEBench's ``multiple_evals`` loads the model by name; its ``run_evals(sae, activation_store,
model, eval_config, ignore_tokens=...)`` takes the objects, so this adapter builds the
``ActivationsStore`` the way ``multiple_evals`` does (``ActivationsStore.from_sae(model, sae,
context_size, dataset)``, shuffled with seed 42), calls ``run_evals``, adds SAEBench's
``calculate_misc_metrics`` (frac_alive, ...) and lets SAEBench's ``save_single_eval_result`` write
its ``CoreEvalOutput`` JSON, which becomes ``MetricResult.raw``.

Data: ``settings.dataset`` (default ``Skylion007/openwebtext``) is fetched with
``datasets.load_dataset`` inside SAE Lens; offline it is served by
:func:`sae_core.datasets.mirror.dataset_overrides`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline
from sae_core.metrics.base import sae_bench_version, sae_lens_version


class CoreSettings(MetricSettings):
    """Defaults are SAEBench's paper settings (``evals/core/main.py`` usage line)."""

    dataset: str = "Skylion007/openwebtext"
    context_size: int = 128
    batch_size_prompts: int = 16
    n_eval_reconstruction_batches: int = 200
    n_eval_sparsity_variance_batches: int = 2000
    exclude_special_tokens_from_reconstruction: bool = True
    compute_kl: bool = True
    compute_ce_loss: bool = True
    compute_l2_norms: bool = True
    compute_sparsity_metrics: bool = True
    compute_variance_metrics: bool = True
    compute_featurewise_density_statistics: bool = True
    compute_featurewise_weight_based_metrics: bool = True
    #: None -> the model's own dtype.
    llm_dtype: str | None = None
    shuffle_seed: int = 42
    streaming: bool = True
    #: keep SAEBench's per-latent details (7 numbers per latent) in ``raw``.
    keep_feature_details: bool = True


TOY_DEFAULTS = CoreSettings(
    context_size=64,
    batch_size_prompts=8,
    n_eval_reconstruction_batches=4,
    n_eval_sparsity_variance_batches=8,
    streaming=False,
)
HUB_DEFAULTS = CoreSettings()


class Core(MetricFamily):
    name = "core"
    settings_cls = CoreSettings
    toy_defaults = TOY_DEFAULTS
    hub_defaults = HUB_DEFAULTS

    def run(self, inputs: MetricInputs, config: CoreSettings) -> MetricResult:
        """Core metrics of the SAE spliced into the ``HookedTransformer`` (HF model / tokenizer unused)."""
        from sae_lens.training.activations_store import ActivationsStore

        import sae_bench.evals.core.main as core_main
        from sae_bench.evals.core.eval_config import CoreEvalConfig
        from sae_bench.sae_bench_utils import get_eval_uuid

        hooked_model, device = inputs.hooked_model, inputs.device
        llm_dtype = self.llm_dtype(inputs, config)
        out_dir = Path(inputs.scratch_dir) if inputs.scratch_dir is not None else Path(inputs.artifacts_dir) / self.name
        out_dir.mkdir(parents=True, exist_ok=True)

        with self.saebench(inputs, llm_dtype, grad=False, context_size=config.context_size) as sae:
            eval_config = CoreEvalConfig(
                model_name=inputs.model_name,
                llm_dtype=llm_dtype,
                batch_size_prompts=config.batch_size_prompts,
                n_eval_reconstruction_batches=config.n_eval_reconstruction_batches,
                n_eval_sparsity_variance_batches=config.n_eval_sparsity_variance_batches,
                dataset=config.dataset,
                context_size=config.context_size,
                compute_kl=config.compute_kl,
                compute_ce_loss=config.compute_ce_loss,
                compute_l2_norms=config.compute_l2_norms,
                compute_sparsity_metrics=config.compute_sparsity_metrics,
                compute_variance_metrics=config.compute_variance_metrics,
                compute_featurewise_density_statistics=config.compute_featurewise_density_statistics,
                compute_featurewise_weight_based_metrics=config.compute_featurewise_weight_based_metrics,
                exclude_special_tokens_from_reconstruction=config.exclude_special_tokens_from_reconstruction,
            )
            activation_store = ActivationsStore.from_sae(
                hooked_model,
                sae,
                context_size=config.context_size,
                dataset=config.dataset,
                dataset_trust_remote_code=True,
                streaming=config.streaming,
                device=device,
            )
            activation_store.shuffle_input_dataset(seed=config.shuffle_seed)

            model_tokenizer = hooked_model.tokenizer
            scalar_metrics, feature_metrics = core_main.run_evals(
                sae=sae,
                activation_store=activation_store,
                model=hooked_model,
                eval_config=eval_config,
                ignore_tokens={model_tokenizer.pad_token_id, model_tokenizer.eos_token_id, model_tokenizer.bos_token_id},
                verbose=False,
            )
            eval_metrics: dict[str, Any] = {
                "unique_id": "custom_sae",
                "sae_set": "custom",
                "sae_id": "custom_sae",
                "eval_cfg": eval_config,
                "metrics": scalar_metrics,
            }
            want_misc = config.compute_featurewise_density_statistics and config.compute_featurewise_weight_based_metrics
            if want_misc:
                eval_metrics["metrics"]["misc_metrics"] = core_main.calculate_misc_metrics(feature_metrics)
            if want_misc and config.keep_feature_details:
                eval_metrics["feature_metrics"] = feature_metrics
            # SAEBench writes NaN as -1 in its JSON; the headline keeps the real value.
            headline_rows = _headline(eval_metrics["metrics"])
            if not want_misc:  # SAEBench's output schema requires the block: NaN (written -1) = not computed
                import dataclasses

                from sae_bench.evals.core.eval_output import MiscMetrics  # a pydantic *dataclass*: no model_fields

                eval_metrics["metrics"]["misc_metrics"] = {f.name: math.nan for f in dataclasses.fields(MiscMetrics)}
            cleaned = core_main.replace_nans_with_negative_one(eval_metrics)
            json_path = out_dir / "custom_sae_eval_results.json"
            core_main.save_single_eval_result(
                cleaned, get_eval_uuid(), sae_lens_version(), f"sae-bench=={sae_bench_version()}", str(json_path), sae
            )
        raw = json.loads(json_path.read_text())
        return self.result(raw, headline_rows)


_HEADLINE = (
    ("model_performance_preservation", "ce_loss_score", True),
    ("model_performance_preservation", "ce_loss_with_sae", False),
    ("model_performance_preservation", "ce_loss_without_sae", False),
    ("model_performance_preservation", "ce_loss_with_ablation", None),
    ("model_behavior_preservation", "kl_div_score", True),
    ("model_behavior_preservation", "kl_div_with_sae", False),
    ("reconstruction_quality", "explained_variance", True),
    ("reconstruction_quality", "mse", False),
    ("reconstruction_quality", "cossim", True),
    ("shrinkage", "l2_ratio", None),
    ("shrinkage", "relative_reconstruction_bias", None),
    ("sparsity", "l0", None),
    ("sparsity", "l1", None),
    ("misc_metrics", "frac_alive", True),
)


def _headline(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for category, name, higher in _HEADLINE:
        if name in metrics.get(category, {}):
            rows.append(headline(name, metrics[category][name], higher))
    if "frac_alive" in metrics.get("misc_metrics", {}):
        frac_alive = metrics["misc_metrics"]["frac_alive"]
        rows.append(headline("frac_dead", 1.0 - frac_alive if not math.isnan(frac_alive) else math.nan, False))
    return rows
