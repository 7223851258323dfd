"""Task runners: threads on one machine (default) or a Ray cluster for fan-out across GPUs.

    --runner threads   one process; loaded models are shared, heavy compute takes turns (see
                       tasks.common.compute_lock), two threads overlap storage I/O.
    --runner ray       every heavy task is a Ray task (prefect-ray). Without
                       SAE_TRANSFER_RAY_ADDRESS a local cluster is started; with
                       ``ray://head:10001`` (or ``auto``) an existing one is joined;
                       SAE_TRANSFER_RAY_INIT adds ray.init keywords (JSON). Tasks on a
                       CUDA device ask Ray for SAE_TRANSFER_RAY_GPUS_PER_TASK GPUs (default 1;
                       0.5 packs two small tasks per GPU).

Nothing is handed from task to task through local disk: every task reads its inputs from, and
writes its outputs to, the configured storage, so Ray may place each task on any node.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

RUNNERS = ("threads", "ray")
ROOT = Path(__file__).resolve().parents[1]
# Our own packages travel to the Ray workers; third-party ones must be installed on every node
# (the same `uv sync --frozen` image). Secrets are never shipped: nodes bring their own.
SHIPPED_PACKAGES = ("sae_core", "tasks", "flows")
SHIPPED_ENV = ("SAE_TRANSFER_S3_ENDPOINT", "AWS_ENDPOINT_URL", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
               "TOKENIZERS_PARALLELISM", "SAE_TRANSFER_DATASET_MIRROR")  # Prefect's API URL travels in Prefect's own task context


@contextlib.contextmanager
def run_settings(storage_url: str, runner: str):
    """For the rest of the running flow: tasks keep their results under the storage root and run
    on ``runner``.

    Both depend on the flow's parameters, which exist only once the run has started, so they cannot
    sit on the ``@flow`` decorator. Setting them here (a copy of the run's context, as Prefect's own
    ``with_options`` would build) keeps every task and artifact on the run's own page; a subflow
    would hide them one click away under a generated name.
    """
    from prefect.context import FlowRunContext
    from prefect.results import resolve_result_storage

    from tasks.metrics import discard_sae_bench_run_cache
    from tasks.runtime import result_storage_reference

    context = FlowRunContext.get()
    if context is None:
        raise RuntimeError("run_settings() is for use inside a running flow")
    results = resolve_result_storage(result_storage_reference(storage_url), _sync=True)
    store = context.result_store.model_copy(update={"result_storage": results})
    try:
        with task_runner(runner) as started, context.model_copy(update={"task_runner": started, "result_store": store}):
            yield
    finally:  # SAEBench's per-run caches are this run's alone (tasks.metrics.sae_bench_run_cache);
        # its safe LLM-side caches outlive the run (tasks.metrics.sae_bench_llm_cache)
        discard_sae_bench_run_cache(storage_url, str(context.flow_run.id))


def check_runner(name: str) -> None:
    """What ``task_runner(name)`` would reject, without importing Prefect (the CLI checks this before
    its temporary server starts); the Ray runner is built once to check its settings."""
    if name == "threads":
        threads = os.environ.get("SAE_TRANSFER_THREADS", "2")
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"SAE_TRANSFER_THREADS must be a positive integer, got {threads!r}")
        return
    task_runner(name)


def task_runner(name: str):
    from prefect.task_runners import ThreadPoolTaskRunner

    if name == "threads":
        # Torch already uses every core per task; two workers overlap I/O without thrashing.
        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("SAE_TRANSFER_THREADS", "2")))
    if name == "ray":
        return ray_task_runner()
    raise ValueError(f"unknown runner {name!r}; known: {list(RUNNERS)}")


def ray_task_runner():
    from prefect_ray import RayTaskRunner

    address = os.environ.get("SAE_TRANSFER_RAY_ADDRESS")  # e.g. ray://head:10001; unset = local cluster
    init_kwargs = {"runtime_env": ray_runtime_env()}
    if not address:  # a throwaway local cluster needs no dashboard; a real cluster keeps its own settings
        init_kwargs["include_dashboard"] = False
    init_kwargs.update(ray_init_overrides(os.environ.get("SAE_TRANSFER_RAY_INIT", "")))
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)


def ray_init_overrides(text: str) -> dict:
    """Extra ``ray.init`` keywords as JSON, e.g. '{"num_cpus": 8, "object_store_memory": 2e9}'."""
    if not text.strip():
        return {}
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SAE_TRANSFER_RAY_INIT is not JSON ({exc}): {text!r}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"SAE_TRANSFER_RAY_INIT must be a JSON object of ray.init keywords, got {text!r}")
    return extra


def ray_runtime_env() -> dict:
    env = {k: os.environ[k] for k in SHIPPED_ENV if k in os.environ}
    return {"py_modules": [str(ROOT / p) for p in SHIPPED_PACKAGES], "env_vars": env}


def accelerator_request(device: str):
    """Resource request for the tasks submitted inside it: Ray schedules GPU tasks on GPU nodes.

    Only RayTaskRunner reads it; under the thread runner it changes nothing.
    """
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    # max_calls=1: the worker exits after its task, so models it cached on the GPU are freed
    # instead of sitting in an idle worker while the next task fills the same GPU.
    return remote_options(num_gpus=float(os.environ.get("SAE_TRANSFER_RAY_GPUS_PER_TASK", "1")), max_calls=1)
