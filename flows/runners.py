"""Task runners: threads on one machine (default) or a Ray cluster for GPU fan-out."""

from __future__ import annotations

import os

RUNNERS = ("threads", "ray")


def task_runner(name: str):
    from prefect.task_runners import ThreadPoolTaskRunner

    if name == "threads":
        # Torch already uses every core per task; two workers overlap I/O without thrashing.
        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("SAE_TRANSFER_THREADS", "2")))
    if name == "ray":
        return ray_task_runner()
    raise ValueError(f"unknown runner {name!r}; known: {list(RUNNERS)}")


def ray_task_runner():
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ValueError("runner 'ray' needs prefect-ray: `uv sync --extra ray`") from None
    address = os.environ.get("SAE_TRANSFER_RAY_ADDRESS")  # e.g. ray://head:10001; unset = local cluster
    return RayTaskRunner(address=address) if address else RayTaskRunner()
