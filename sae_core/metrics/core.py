"""SAEBench *core* metrics on a given model: CE-loss score, KL score, explained variance, MSE, cosine
similarity, L0/L1, shrinkage, feature density (dead / alive latents).

SAEBench's ``multiple_evals`` loads the model by name; its ``run_evals(sae, activation_store,
model, eval_config, ignore_tokens=...)`` takes the objects, so this adapter builds the
``ActivationsStore`` the way ``multiple_evals`` does (``ActivationsStore.from_sae(model, sae,
context_size, dataset)``, shuffled with seed 42), calls ``run_evals``, adds SAEBench's
``calculate_misc_metrics`` (frac_alive, ...) and lets SAEBench's ``save_single_eval_result`` write
its ``CoreEvalOutput`` JSON, which becomes ``MetricResult.raw``.

Several SAE variants on one model: ``run_evals``' SAE-independent work (token draws, clean and
zero-ablated forwards, hook activations) is recorded by the first SAE and replayed for the next ones
(:mod:`sae_core.metrics.shared_work`, under ``artifacts_dir/core/``; identical results, bit for bit);
``Core.share_model_work = False`` runs SAEBench exactly as before.

Data: ``settings.dataset`` (default ``Skylion007/openwebtext``) is fetched with
``datasets.load_dataset`` inside SAE Lens; offline it is served by
:func:`sae_core.datasets.mirror.dataset_overrides`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from sae_core.metrics.base import MetricFamily, MetricInputs, MetricResult, MetricSettings, headline
from sae_core.metrics.base import sae_bench_version, sae_lens_version

log = logging.getLogger(__name__)


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
    #: Record the SAE-independent work of ``run_evals`` for the first SAE on a model and replay it for
    #: the next ones (:mod:`sae_core.metrics.shared_work`; identical results). Off: SAEBench as is.
    share_model_work: bool = True
    #: What the last :meth:`run` did with the shared work (diagnostics: status, passes computed / reused).
    last_shared_work: dict[str, Any] = {"status": "off"}

    def run(self, inputs: MetricInputs, config: CoreSettings) -> MetricResult:
        """Core metrics of the SAE spliced into the ``HookedTransformer`` (HF model / tokenizer unused)."""
        import sae_bench.evals.core.main as core_main
        from sae_bench.evals.core.eval_config import CoreEvalConfig
        from sae_bench.sae_bench_utils import get_eval_uuid

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
            scalar_metrics, feature_metrics, sae = self._run_evals(inputs, config, sae, eval_config, llm_dtype)
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


    def _run_evals(self, inputs: MetricInputs, config: CoreSettings, sae: Any, eval_config: Any,
                   llm_dtype: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """SAEBench's ``run_evals`` on ``sae``: ``(scalar_metrics, feature_metrics, the SAE it ran on)``.

        With :attr:`share_model_work` (and an entry small enough, :data:`~sae_core.metrics.shared_work.MAX_BYTES`)
        the SAE-independent work is recorded by the first SAE on a model and replayed for the next
        (:mod:`sae_core.metrics.shared_work`); the SAE-dependent work always runs. A stored entry that
        cannot answer is discarded and the evaluation rerun from scratch on a fresh SAE copy.
        """
        import sae_bench.evals.core.main as core_main

        from sae_core.metrics import shared_work as shared
        from sae_core.metrics.base import model_fingerprint, prepare_sae

        hooked_model = inputs.hooked_model
        tokenizer = hooked_model.tokenizer
        ignore_tokens = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}

        def run_evals(model: Any, store: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            return core_main.run_evals(sae=sae, activation_store=store, model=model, eval_config=eval_config,
                                       ignore_tokens=ignore_tokens, verbose=False)

        self.last_shared_work = {"status": "off"}
        if not self.share_model_work:
            return (*run_evals(hooked_model, self._activation_store(inputs, config, sae)), sae)
        itemsize = _itemsize(llm_dtype)
        size = shared.estimated_bytes(config, d_vocab=hooked_model.cfg.d_vocab, d_in=sae.cfg.d_in, itemsize=itemsize)
        if size > shared.MAX_BYTES:
            log.info("core: shared work would take %.1f GiB (> %.1f GiB); not shared", size / 2**30, shared.MAX_BYTES / 2**30)
            self.last_shared_work = {"status": "too_big", "bytes": size}
            return (*run_evals(hooked_model, self._activation_store(inputs, config, sae)), sae)
        fingerprint = model_fingerprint(hooked_model)
        key = shared.shared_work_key(model_fingerprint=fingerprint, tokenizer=tokenizer, settings=config, sae=sae,
                                     llm_dtype=llm_dtype, device=inputs.device)
        parent = self.cache_dir(inputs, "shared_work", key)
        counters = shared.Counters()
        entry = shared.SharedWorkEntry.open(parent, key)
        if entry is not None:
            try:
                store = shared.ReplayStore(entry, counters, inputs.device, context_size=config.context_size,
                                           store_batch_size_prompts=eval_config.batch_size_prompts)
                out = run_evals(shared.ReplayModel(hooked_model, entry, counters, inputs.device), store)
                if not store.finished():
                    raise shared.SharedWorkMismatch("fewer token draws than recorded")
                self.last_shared_work = {"status": "replayed", "folder": str(entry.folder), **vars(counters)}
                return (*out, sae)
            except shared.SharedWorkMismatch as exc:
                log.warning("core: shared work at %s not usable (%s); recomputing", entry.folder, exc)
                entry.discard()
                sae = prepare_sae(inputs.sae, model_name=inputs.model_name, device=inputs.device, dtype=llm_dtype,
                                  context_size=config.context_size)
                counters = shared.Counters()
        writer = shared.EntryWriter(parent, key)
        try:
            store = shared.RecordingStore(self._activation_store(inputs, config, sae), writer, counters)
            out = run_evals(shared.RecordingModel(hooked_model, writer, counters), store)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.last_shared_work = {"status": "recorded", "folder": str(parent / shared.ENTRY), **vars(counters)}
        return (*out, sae)

    @staticmethod
    def _activation_store(inputs: MetricInputs, config: CoreSettings, sae: Any) -> Any:
        """The ``ActivationsStore`` SAEBench's ``multiple_evals`` builds, shuffled with ``shuffle_seed``."""
        from sae_lens.training.activations_store import ActivationsStore

        store = ActivationsStore.from_sae(
            inputs.hooked_model,
            sae,
            context_size=config.context_size,
            dataset=config.dataset,
            dataset_trust_remote_code=True,
            streaming=config.streaming,
            device=inputs.device,
        )
        store.shuffle_input_dataset(seed=config.shuffle_seed)
        return store


def _itemsize(dtype: str) -> int:
    import sae_bench.sae_bench_utils.general_utils as general_utils

    return general_utils.str_to_dtype(dtype).itemsize


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
