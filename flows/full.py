"""The paper's experiment as one Prefect flow.

For each hook: the original SAE (trained on the dense model) -> compress the LLM (each spec of
``compression``: WANDA, SparseGPT, magnitude, RTN, GPTQ) -> cache the compressed model's
activations -> the SAE variants (original, retrained, pruned at each rule x sparsity) -> every
SAEBench metric on the compressed model -> one table and a report.

    python -m flows.full                     # toy preset, offline, ./artifacts
    python -m flows.full --preset gpt2-small --storage s3://bucket/run1
    python -m flows.full --compress wanda:0.5,sparsegpt:0.5,rtn:4
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
from tasks.activations import cache_activations_task
from tasks.compression import compress_llm
from tasks.feature_audit import feature_fidelity, feature_overlap, match_compression
from tasks.controls import dense_patch_control
from tasks.metrics import evaluate_metric
from tasks.report import write_report
from tasks.saes import original_sae, prune_sae_task, retrain_sae, transfer_sae
from tasks.world import base_model


def experiment(config: ExperimentConfig, storage_url: str) -> dict[str, Any]:
    """The experiment's steps; run inside ``full`` so that every task shows on its run page."""
    c, store, dev = config, storage_url, (config.device, config.dtype)
    # Every heavy step is submitted: the task runner places it (a thread, or a Ray worker that
    # asks for a GPU), and hand-offs are manifests pointing into storage, never local files.
    with accelerator_request(c.device):
        dense = base_model.submit(c.model, c.toy_world, store)

        # 1. The SAEs trained on the dense model ("original"), one per hook.
        originals = {}
        for hook in c.hook_names():
            dense_acts = cache_activations_task.submit(dense, train_spec(c, hook), {}, store, *dev) if c.original_sae.train else None
            originals[hook] = original_sae.submit(dense, hook, c.original_sae_source(hook), c.original_sae.train and c.original_sae.train.model_dump(),
                                                  dense_acts, store, c.device, c.seed)

        variants, metric_results, compressed_llms, audits, controls = [], [], [], [], []
        for spec in c.compression:
            # 2. Compress the LLM (WANDA, SparseGPT, magnitude, RTN, ... e.g. "wanda:0.5"); every SAE is then judged on it.
            llm = compress_llm.submit(dense, spec, c.calibration.model_dump(), store, *dev)  # spec: a CompressionSpec
            compressed_llms.append(llm)
            for hook, original in originals.items():
                processing = original.result()["processing"]  # the weight processing this SAE family expects
                acts = cache_activations_task.submit(llm, train_spec(c, hook), processing, store, *dev)
                held_out = cache_activations_task.submit(llm, held_out_spec(c, hook), processing, store, *dev)
                q = c.quality.model_dump()

                # 3. The three ways to get an SAE for the compressed model.
                hook_variants = [transfer_sae.submit(original, llm, held_out, q, c.dataset, store, *dev)]
                if c.retrained_sae.enabled:
                    hook_variants.append(retrain_sae.submit(original, llm, acts, held_out, c.retrained_sae.model_dump(), q, c.dataset,
                                                            store, *dev, c.seed))
                for rule in c.pruned_sae.rules:
                    for sae_sparsity in c.pruned_sae.sparsities:
                        hook_variants.append(prune_sae_task.submit(original, llm, acts, held_out, rule, sae_sparsity,
                                                                   c.pruned_sae.calibration_tokens, q, c.dataset, store, *dev))
                variants += hook_variants
                if c.feature_audit.enabled:  # what compression did to each feature of the original SAE
                    audits.append(feature_fidelity.submit(original, dense, llm, audit_settings(c, hook), c.dataset, c.name, store, *dev))
                # How to read CE-based transfer numbers: the compressed LM reading the dense LM's own activations.
                controls.append(dense_patch_control.submit(dense, llm, held_out, q, c.dataset, store, *dev))

                # 4. Every SAEBench metric, each its own cached task, on the compressed model.
                for variant in hook_variants:
                    for metric in c.metrics:
                        metric_results.append(evaluate_metric.with_options(name=f"metric-{metric}").submit(
                            metric, variant, c.metric_settings(metric), c.metric_profile, c.name, store, *dev, c.seed))

        # Matched perplexity: tune a method's sparsity until its perplexity matches a reference's, then compare damaged features.
        by_spec = {spec.text: llm for spec, llm in zip(c.compression, compressed_llms)}
        for match in c.feature_audit.match if c.feature_audit.enabled else []:
            reference = by_spec.get(match.reference.text) or compress_llm.submit(dense, match.reference, c.calibration.model_dump(),
                                                                                 store, *dev)
            tuned = match_compression.submit(dense, match.model_dump(), reference, c.calibration.model_dump(), store, *dev)
            for hook, original in originals.items():
                pair = [feature_fidelity.submit(original, dense, m, audit_settings(c, hook), c.dataset, c.name, store, *dev) for m in (reference, tuned)]
                audits += [*pair, feature_overlap.submit(*pair, c.name, store)]

    # 5. One table, plots and a markdown report, in storage and as Prefect artifacts.
    #    A failed variant or metric does not stop the others; the report shows what finished,
    #    then the run fails loudly, naming what did not.
    done_llms, failed = finished(compressed_llms)
    done_variants, failed_variants = finished(variants)
    failed += failed_variants
    done_metrics, failed_metrics = finished(metric_results)
    done_audits, failed_audits = finished(audits)
    done_audits = list({a["rows_key"]: a for a in done_audits}.values())  # a matched reference is audited twice
    failed_metrics += failed_audits
    done_controls, failed_controls = finished(controls)
    failed += failed_controls
    report = write_report(c.name, c.model_dump(mode="json"), done_llms, done_variants, done_metrics + done_audits, store,
                          controls=done_controls, base_model=dense.result())
    if failed or failed_metrics:
        raise RuntimeError(f"{len(failed)} compression / SAE variant task(s) and {len(failed_metrics)} metric task(s) failed "
                           f"(report of the rest: {report['uri']}): " + "; ".join((failed + failed_metrics)[:5]))
    return {"report": report, "n_variants": len(done_variants), "n_metric_results": len(done_metrics), "n_feature_audits": len(done_audits)}


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


def train_spec(c: ExperimentConfig, hook: str) -> ActivationCacheSpec:
    """Activations of ``hook`` for training / calibrating SAEs."""
    return ActivationCacheSpec(hook_name=hook, dataset=c.dataset, **c.activations.model_dump())


def held_out_spec(c: ExperimentConfig, hook: str) -> ActivationCacheSpec:
    """Held-out activations: the windows right after the training ones."""
    a = c.activations
    after_training = math.ceil(a.n_tokens / (a.seq_len - 2)) + a.shard_sequences
    return ActivationCacheSpec(hook_name=hook, dataset=c.dataset, n_tokens=c.quality.n_tokens, seq_len=a.seq_len,
                               batch_sequences=a.batch_sequences, shard_sequences=a.shard_sequences, skip_sequences=after_training)


def audit_settings(c: ExperimentConfig, hook: str) -> dict:
    """The feature audit's windows: held out too, past every token the training windows used."""
    a, seq_len = c.feature_audit, c.feature_audit.seq_len or c.activations.seq_len
    used_tokens = held_out_spec(c, hook).skip_sequences * (c.activations.seq_len - 1)
    return {"n_tokens": a.n_tokens, "seq_len": seq_len, "batch_sequences": a.batch_sequences, "subsets": a.subsets,
            "skip_sequences": math.ceil(used_tokens / (seq_len - 1))}


@flow(name="sae-transfer", log_prints=True, result_serializer="json")
def full(preset: str = "toy", overrides: dict[str, Any] | None = None, storage_url: str = DEFAULT_STORAGE_URL,
         runner: str = "threads") -> dict[str, Any]:
    """Compress the LLM (WANDA by default), build original / retrained / pruned SAEs, evaluate them with
    SAEBench (and the feature audit) on the compressed model, and write one table and a report.
    Everything is validated before any work starts.

    Args:
        preset: Experiment preset: toy (offline, CPU, minutes), gemma-3-270m (a real model from PyPI, offline, CPU),
            gpt2-small or gemma-2-2b (GPU and model hub).
        overrides: Any config field, nested, applied on top of the preset, e.g.
            {"pruned_sae": {"sparsities": [0.25, 0.5]}, "metrics": ["core"]}. See `python -m flows.full --print-config`.
        storage_url: Storage root for every artifact and cached result: file://PATH (relative to the worker's
            directory) or s3://bucket/prefix. Runs against the same root reuse each other's finished steps.
        runner: threads (one process) or ray (every heavy task a Ray task; see README "Ray runner").
    """
    config = build_config(preset, overrides)
    storage = Storage(storage_url)
    storage.check_reachable()
    note = pre_rename_note(storage)  # compressed models from before the rename (pruned_models/): not reused
    if note:
        _logger().warning(note)
    with run_settings(storage.url, runner):
        return experiment(config, storage.url)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    sys.exit(main())
