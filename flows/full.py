"""The paper's experiment as one Prefect flow.

For each hook: cache activations -> WANDA-prune the LLM (each sparsity) -> build the SAE
variants (original, retrained, pruned at each rule x sparsity) -> every SAEBench metric on the
pruned model -> one table and a report.

    python -m flows.full                     # toy preset, offline, ./artifacts
    python -m flows.full --preset gpt2-small --storage s3://bucket/run1
    python -m flows.full --help
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from sae_core.activations import ActivationCacheSpec
from sae_core.config import ExperimentConfig, build_config
from sae_core.storage import DEFAULT_STORAGE_URL, Storage
from tasks.activations import cache_activations_task
from flows.runners import task_runner
from tasks.runtime import result_storage_reference
from tasks.world import base_model


@flow(name="sae-transfer-experiment", log_prints=True)
def experiment(config: ExperimentConfig, storage_url: str) -> dict[str, Any]:
    dense = base_model(config.model, config.toy_world, storage_url)
    processing: dict = {}
    caches = {}
    for hook in config.hook_names():
        spec = ActivationCacheSpec(hook_name=hook, dataset=config.dataset, **config.activations.model_dump())
        caches[hook] = cache_activations_task(dense, spec, processing, storage_url, config.device, config.dtype)
    return {"base_model": dense, "activations": caches}


@flow(name="sae-transfer", log_prints=True)
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
