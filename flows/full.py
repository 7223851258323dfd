"""The paper's experiment as one Prefect flow.

For each hook: the original SAE (trained on the dense model) -> compress the LLM (each spec of
``compression``: WANDA, SparseGPT, magnitude, RTN, GPTQ) -> cache the compressed model's
activations -> the SAE variants (``variants``: transfer, retrain, prune:RULE:S, finetune:F,
recalibrate, refit_decoder, affine) and their feature identity -> every SAEBench metric on the
compressed model -> one table and a report.

    python -m flows.full                     # toy preset, offline, ./artifacts
    python -m flows.full --preset gpt2-small --storage s3://bucket/run1
    python -m flows.full --compress wanda:0.5,sparsegpt:0.5,rtn:4
    python -m flows.full --variants transfer,recalibrate,refit_decoder,affine,finetune:0.05,retrain
    python -m flows.full --help
"""

from __future__ import annotations

import logging
import math
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError

from flows.runners import accelerator_request, run_settings
from sae_core.activation_spec import ActivationCacheSpec
from sae_core.config import ExperimentConfig, build_config
from sae_core.model_ref import pre_rename_note
from sae_core.storage import DEFAULT_STORAGE_URL, Storage
from sae_core.study import StepLedger, audit_step, check_experiment, metric_step, progress_line, variant_step
from tasks.activations import cache_activations_task
from tasks.compression import compress_llm, match_compression
from tasks.feature_audit import feature_fidelity, feature_identity, feature_overlap
from tasks.feature_cards import feature_cards
from tasks.controls import dense_patch_control
from tasks.metrics import evaluate_metric
from tasks.report import write_report
from tasks.saes import original_sae, sae_variant_task, variant_task_name
from tasks.world import base_model


def experiment(config: ExperimentConfig, storage_url: str) -> dict[str, Any]:
    """The experiment's steps; run inside ``full`` so that every task shows on its run page."""
    store, on_device = storage_url, (config.device, config.dtype)
    track = StepLedger(Storage(storage_url), config).track  # marks each finished step in storage ("N of M steps done")
    quality = config.quality.model_dump()
    # Every heavy step is submitted: the task runner places it (a thread, or a Ray worker that
    # asks for a GPU), and hand-offs are manifests pointing into storage, never local files.
    with accelerator_request(config.device):
        dense_llm = base_model.submit(config.model, config.toy_world, store)

        # 1. The SAEs trained on the dense model ("original"), one per hook and seed (a released SAE is one for every seed);
        #    a hook's seeds are its layer's (layer_seeds; by default every run seed).
        originals, dense_caches = {}, {}
        for hook in config.hook_names():
            dense_acts = cache_activations_task.submit(dense_llm, train_spec(config, hook), {}, store, *on_device) if config.original_sae.train else None
            dense_caches[hook] = dense_acts
            source = config.original_sae_source(hook)
            seeds = config.hook_seeds(hook)
            for seed in seeds:
                originals[hook, seed] = originals[hook, seeds[0]] if source is not None and seed != seeds[0] else track(original_sae.submit(
                    dense_llm, hook, source, config.original_sae.train and config.original_sae.train.model_dump(), dense_acts, store,
                    config.device, seed), f"original|{hook}|{seed}")

        variants, metric_results, compressed_llms, audits, controls, identities = [], [], [], [], [], []
        cards = []  # one feature-cards task per audit (original SAE x compressed model)
        dense_for_variants: dict[tuple, Any] = {}  # the dense model's caches the variants read, one per (hook, kind)

        def dense_cache(hook: str, kind: str, submit):
            if (hook, kind) not in dense_for_variants:
                dense_for_variants[hook, kind] = submit()
            return dense_for_variants[hook, kind]

        for spec in config.compression:
            # 2. Compress the LLM (WANDA, SparseGPT, magnitude, RTN, ... e.g. "wanda:0.5"); every SAE is then judged on it.
            compressed_llm = track(compress_llm.submit(dense_llm, spec, config.calibration.model_dump(), store, *on_device),
                                   f"compress|{spec.text}")  # spec: a CompressionSpec
            compressed_llms.append(compressed_llm)
            for hook in config.hook_names():
                seeds = config.hook_seeds(hook)
                processing = originals[hook, seeds[0]].result()["processing"]  # the weight processing this SAE family expects
                train_acts = cache_activations_task.submit(compressed_llm, train_spec(config, hook), processing, store, *on_device)
                held_out = cache_activations_task.submit(compressed_llm, held_out_spec(config, hook), processing, store, *on_device)
                # How to read CE-based transfer numbers: the compressed LM reading the dense LM's own activations.
                controls.append(dense_patch_control.submit(dense_llm, compressed_llm, held_out, quality, config.dataset, store, *on_device))
                dense_train = (dense_cache(hook, "train", lambda: dense_train_acts(config, hook, dense_llm, dense_caches[hook], processing, store, on_device))
                               if config.needs_dense_variant_activations() else None)
                measure_identity = config.repair.identity or config.feature_audit.enabled
                dense_held_out = dense_cache(hook, "held_out", lambda: cache_activations_task.submit(
                    dense_llm, held_out_spec(config, hook), processing, store, *on_device)) if measure_identity else None

                for seed in seeds:
                    original = originals[hook, seed]
                    # 3. Every way to get an SAE for the compressed model (config.variants: transfer, retrain, prune:wanda:0.5,
                    #    finetune:0.05, recalibrate, refit_decoder, affine), each one cached task; some fixes also read the
                    #    dense model's activations on the same tokens, and every variant's feature identity is measured.
                    hook_variants = [sae_variant_task.with_options(name=variant_task_name(variant)).submit(
                        variant, original, compressed_llm, train_acts, dense_train, held_out, config.variant_settings(variant), quality,
                        config.dataset, store, *on_device, seed) for variant in config.variants]
                    for spec_v, future in zip(config.variants, hook_variants):
                        track(future, variant_step(hook, spec.text, spec_v.text, seed))
                    if measure_identity:
                        identities += [track(feature_identity.submit(variant, original, dense_held_out, held_out, config.name, store, config.device),
                                             f"identity|{hook}|{spec.text}|{spec_v.text}|{seed}")
                                       for spec_v, variant in zip(config.variants, hook_variants)]
                    variants += hook_variants

                    # 4. Every SAEBench metric, each its own cached task, on the compressed model.
                    for spec_v, variant in zip(config.variants, hook_variants):
                        for metric in config.metrics:
                            metric_results.append(track(evaluate_metric.with_options(name=f"metric-{metric}").submit(
                                metric, variant, config.metric_settings(metric), config.metric_profile, config.name, store, *on_device, seed),
                                metric_step(metric, hook, spec.text, spec_v.text, seed)))

        # 5. The feature audit: what each compression did to each feature of the original SAE, on the audit's compressed
        #    models, layers and seeds (feature_audit.compressions / layers / seeds; by default all the run's). A spec only
        #    the audit names is compressed here, for the audit alone.
        by_spec = {spec.text: llm for spec, llm in zip(config.compression, compressed_llms)}
        if config.feature_audit.enabled:
            for spec in config.audit_only_compressions():
                by_spec[spec.text] = track(compress_llm.submit(dense_llm, spec, config.calibration.model_dump(), store, *on_device),
                                           f"compress|{spec.text}")
                compressed_llms.append(by_spec[spec.text])  # in the report's table of compressed models too
            for spec in config.audit_compressions():
                for hook in config.audit_hooks():
                    for seed in config.audit_seeds(hook):
                        audits.append(track(feature_fidelity.submit(originals[hook, seed], dense_llm, by_spec[spec.text], audit_settings(config, hook),
                                                                    config.dataset, config.name, store, *on_device), audit_step(hook, spec.text, seed)))
                        cards.append(feature_cards.submit(audits[-1], originals[hook, seed], dense_llm, by_spec[spec.text], audit_settings(config, hook),
                                                          config.dataset, store, *on_device))

        # Matched perplexity: tune a method's sparsity until its perplexity matches a reference's, then compare damaged features.
        for match in config.feature_audit.match if config.feature_audit.enabled else []:
            reference = by_spec.get(match.reference.text) or compress_llm.submit(dense_llm, match.reference, config.calibration.model_dump(),
                                                                                 store, *on_device)
            tuned = match_compression.submit(dense_llm, match.model_dump(), reference, config.calibration.model_dump(), store, *on_device)
            for hook in config.audit_hooks():
                original = originals[hook, config.audit_seeds(hook)[0]]
                pair = [feature_fidelity.submit(original, dense_llm, llm, audit_settings(config, hook), config.dataset, config.name, store, *on_device)
                        for llm in (reference, tuned)]
                audits += [*pair, feature_overlap.submit(*pair, config.name, store)]
                cards += [feature_cards.submit(audit, original, dense_llm, llm, audit_settings(config, hook), config.dataset, store, *on_device)
                          for audit, llm in zip(pair, (reference, tuned))]

    # 6. One table, plots and a markdown report, in storage and as Prefect artifacts.
    #    A failed variant or metric does not stop the others; the report shows what finished,
    #    then the run fails loudly, naming what did not.
    done_llms, failed = finished(compressed_llms)
    done_variants, failed_variants = finished(variants)
    failed += failed_variants
    done_metrics, failed_metrics = finished(metric_results)
    done_audits, failed_audits = finished(audits)
    done_audits = list({audit["rows_key"]: audit for audit in done_audits}.values())  # a matched reference is audited twice
    failed_metrics += failed_audits
    done_identities, failed_identities = finished(identities)
    failed_metrics += failed_identities
    done_controls, failed_controls = finished(controls)
    failed += failed_controls
    done_cards, failed_cards = finished(cards)
    done_cards = list({c["cards_key"]: c for c in done_cards}.values())  # a matched reference's cards, twice
    failed_metrics += failed_cards
    report = write_report(config.name, config.model_dump(mode="json"), done_llms, done_variants,
                          done_metrics + done_audits + done_identities + done_cards, store,
                          controls=done_controls, base_model=dense_llm.result())
    if failed or failed_metrics:
        raise RuntimeError(f"{len(failed)} compression / SAE variant task(s) and {len(failed_metrics)} metric task(s) failed "
                           f"(report of the rest: {report['uri']}): " + "; ".join((failed + failed_metrics)[:5]))
    return {"report": report, "n_variants": len(done_variants), "n_metric_results": len(done_metrics), "n_feature_audits": len(done_audits),
            "n_feature_identities": len(done_identities), "n_feature_cards": len(done_cards)}


def _logger():
    """The flow run's logger (its page shows the line), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def finished(futures: list) -> tuple[list[dict], list[str]]:
    """Results of the futures that completed, and a line for each that did not."""
    results, failures = [], []
    for future in futures:
        future.wait()
        if future.state.is_completed():
            results.append(future.result())
        else:
            failures.append(f"{future.state.name}: {future.state.message}")
    return results, failures


def train_spec(config: ExperimentConfig, hook: str) -> ActivationCacheSpec:
    """Activations of ``hook`` for training / calibrating SAEs."""
    return ActivationCacheSpec(hook_name=hook, dataset=config.dataset, **config.activations.model_dump())


def dense_train_acts(config: ExperimentConfig, hook: str, dense_llm, dense_acts, processing: dict, store: str, on_device: tuple):
    """The dense model's activations on the compressed training tokens (same spec, same processing, read in order).
    A trained original's training cache is exactly that when its processing matches: reused, not cached twice."""
    if dense_acts is not None and processing == {}:  # the original's training cache was taken with no processing
        return dense_acts
    return cache_activations_task.submit(dense_llm, train_spec(config, hook), processing, store, *on_device)


def held_out_spec(config: ExperimentConfig, hook: str) -> ActivationCacheSpec:
    """Held-out activations: the windows right after the training ones."""
    acts = config.activations
    after_training = math.ceil(acts.n_tokens / (acts.seq_len - 2)) + acts.shard_sequences
    return ActivationCacheSpec(hook_name=hook, dataset=config.dataset, n_tokens=config.quality.n_tokens, seq_len=acts.seq_len,
                               batch_sequences=acts.batch_sequences, shard_sequences=acts.shard_sequences, skip_sequences=after_training)


def audit_settings(config: ExperimentConfig, hook: str) -> dict:
    """The feature audit's windows: held out too, past every token the training windows used."""
    audit, seq_len = config.feature_audit, config.feature_audit.seq_len or config.activations.seq_len
    used_tokens = held_out_spec(config, hook).skip_sequences * (config.activations.seq_len - 1)
    settings = {"n_tokens": audit.n_tokens, "seq_len": seq_len, "batch_sequences": audit.batch_sequences, "subsets": audit.subsets,
                "skip_sequences": math.ceil(used_tokens / (seq_len - 1))}
    if audit.perplexity_tokens is not None:  # only when set: the settings key the stored audit, which stays valid without it
        settings["perplexity_tokens"] = audit.perplexity_tokens
    return settings


@flow(name="sae-transfer", log_prints=True, result_serializer="json")
def full(preset: str = "toy", overrides: dict[str, Any] | None = None, storage_url: str = DEFAULT_STORAGE_URL,
         runner: str = "threads", allow_mixed_storage: bool = False) -> dict[str, Any]:
    """Compress the LLM (WANDA by default), build the SAE variants (transfer / retrain / prune / cheap fixes), evaluate them with
    SAEBench (and the feature audit) on the compressed model, and write one table and a report.
    Everything is validated before any work starts.

    Args:
        preset: Experiment preset: toy (offline, CPU, minutes), gemma-3-270m (a real model from PyPI, offline, CPU),
            gpt2-small or gemma-2-2b (GPU and model hub).
        overrides: Any config field, nested, applied on top of the preset, e.g.
            {"variants": ["transfer", "affine", "finetune:0.05"], "metrics": ["core"]}. See `python -m flows.full --print-config`.
        storage_url: Storage root for every artifact and cached result: file://PATH (relative to the worker's
            directory) or s3://bucket/prefix. Runs against the same root reuse each other's finished steps.
        runner: threads (one process) or ray (every heavy task a Ray task; see README "Ray runner").
        allow_mixed_storage: run even when the root holds this experiment name with another configuration
            (experiments/<name>/experiment.json; refused otherwise, naming the differing fields).
    """
    config = build_config(preset, overrides)
    storage = Storage(storage_url)
    storage.check_reachable()
    note = pre_rename_note(storage)  # compressed models from before the rename (pruned_models/): not reused
    if note:
        _logger().warning(note)
    check_experiment(storage, config, allow_mixed=allow_mixed_storage)  # one experiment per name: refuse to mix configurations
    _logger().info(progress_line(storage, config))
    with run_settings(storage.url, runner):
        return experiment(config, storage.url)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    sys.exit(main())
