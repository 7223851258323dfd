"""The paper's experiment as one Prefect flow.

For each hook: the original SAE (trained on the dense model) -> WANDA-prune the LLM (each
sparsity) -> cache the pruned model's activations -> the SAE variants (original, retrained,
pruned at each rule x sparsity) -> every SAEBench metric on the pruned model -> one table and a
report.

    python -m flows.full                     # toy preset, offline, ./artifacts
    python -m flows.full --preset gpt2-small --storage s3://bucket/run1
    python -m flows.full --help
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow

from flows.runners import accelerator_request, task_runner
from sae_core.activations import ActivationCacheSpec
from sae_core.config import ExperimentConfig, build_config
from sae_core.storage import DEFAULT_STORAGE_URL, Storage
from sae_core.wanda import PruneConfig
from tasks.activations import cache_activations_task
from tasks.controls import dense_patch_control
from tasks.llm_pruning import prune_llm
from tasks.metrics import evaluate_metric
from tasks.report import write_report
from tasks.runtime import result_storage_reference
from tasks.saes import original_sae, prune_sae_task, retrain_sae, transfer_sae
from tasks.world import base_model


@flow(name="sae-transfer-experiment", log_prints=True, result_serializer="json")
def experiment(config: ExperimentConfig, storage_url: str) -> dict[str, Any]:
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

        variants, metric_results, pruned_llms, controls = [], [], [], []
        for sparsity in c.llm_pruning.sparsities:
            # 2. Prune the LLM with WANDA; every SAE is then judged on this pruned model.
            llm = prune_llm.submit(dense, prune_config(c, sparsity), c.llm_pruning.calibration_dataset, store, *dev)
            pruned_llms.append(llm)
            for hook, original in originals.items():
                processing = original.result()["processing"]  # the weight processing this SAE family expects
                acts = cache_activations_task.submit(llm, train_spec(c, hook), processing, store, *dev)
                held_out = cache_activations_task.submit(llm, held_out_spec(c, hook), processing, store, *dev)
                q = c.quality.model_dump()

                # 3. The three ways to get an SAE for the pruned model.
                hook_variants = [transfer_sae.submit(original, llm, held_out, q, c.dataset, store, *dev)]
                if c.retrained_sae.enabled:
                    hook_variants.append(retrain_sae.submit(original, llm, acts, held_out, c.retrained_sae.model_dump(), q, c.dataset,
                                                            store, *dev, c.seed))
                for rule in c.pruned_sae.rules:
                    for sae_sparsity in c.pruned_sae.sparsities:
                        hook_variants.append(prune_sae_task.submit(original, llm, acts, held_out, rule, sae_sparsity,
                                                                   c.pruned_sae.calibration_tokens, q, c.dataset, store, *dev))
                variants += hook_variants
                # How to read CE-based transfer numbers: the pruned LM reading the dense LM's own activations.
                controls.append(dense_patch_control.submit(dense, llm, held_out, q, c.dataset, store, *dev))

                # 4. Every SAEBench metric, each its own cached task, on the pruned model.
                for variant in hook_variants:
                    for metric in c.metrics:
                        metric_results.append(evaluate_metric.with_options(name=f"metric-{metric}").submit(
                            metric, variant, c.metric_settings(metric), c.metric_profile, c.name, store, *dev, c.seed))

    # 5. One table, plots and a markdown report, in storage and as Prefect artifacts.
    #    A failed variant or metric does not stop the others; the report shows what finished,
    #    then the run fails loudly, naming what did not.
    done_llms, failed = finished(pruned_llms)
    done_variants, failed_variants = finished(variants)
    failed += failed_variants
    done_metrics, failed_metrics = finished(metric_results)
    done_controls, failed_controls = finished(controls)
    failed += failed_controls
    report = write_report(c.name, c.model_dump(mode="json"), done_llms, done_variants, done_metrics, store,
                          controls=done_controls, base_model=dense.result())
    if failed or failed_metrics:
        raise RuntimeError(f"{len(failed)} pruning / SAE variant task(s) and {len(failed_metrics)} metric task(s) failed "
                           f"(report of the rest: {report['uri']}): " + "; ".join((failed + failed_metrics)[:5]))
    return {"report": report, "n_variants": len(done_variants), "n_metric_results": len(done_metrics)}


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


def prune_config(c: ExperimentConfig, sparsity: float) -> PruneConfig:
    p = c.llm_pruning
    return PruneConfig(method=p.method, sparsity=sparsity, structure=p.structure, module_groups=tuple(p.module_groups),
                       n_calibration_samples=p.n_calibration_samples, seq_len=p.seq_len, seed=p.seed)


@flow(name="sae-transfer", log_prints=True, result_serializer="json")
def full(preset: str = "toy", overrides: dict[str, Any] | None = None, storage_url: str = DEFAULT_STORAGE_URL,
         runner: str = "threads") -> dict[str, Any]:
    """Entry point for the CLI and deployments: validate everything, then run the experiment."""
    config = build_config(preset, overrides)
    storage = Storage(storage_url)
    storage.check_reachable()
    results_ref = result_storage_reference(storage.url)
    return experiment.with_options(result_storage=results_ref, task_runner=task_runner(runner))(config, storage.url)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    sys.exit(main())
