"""Benchmark: the same cold experiment under the thread runner and under Ray (a local cluster).

Each run is ``python -m flows.full --runner R`` in a fresh subprocess, on fresh ``file://``
storage (cold: nothing cached), from a frozen copy of the code, sharing one ``PREFECT_HOME``
whose database was created beforehand (untimed). Ray's local cluster gets
``--ray-cpus`` CPUs (default: every core); its start-up (~10 s) is inside the Ray figure.

What to expect: the thread runner runs heavy compute one task at a time (tasks.common.compute_lock:
hooks and SAEBench state are per process), so Ray, one task per worker process, can overlap
independent tasks (SAE variants, metrics) across cores and GPUs, at the price of its start-up,
per-process model loads and shipping the code to its workers. Printed: wall per runner (median
of --repeats) and Ray / threads.

Example (about 4 minutes on 2 CPU cores):
    .venv/bin/python benchmarks/bench_runners.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (torch threads); 0: leave")
    p.add_argument("--ray-cpus", type=int, default=0, help="CPUs of the local Ray cluster (0: every core)")
    p.add_argument("--metrics", default="core", help="comma-separated metrics to include")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="extra config override for the flow (repeatable), e.g. --set device=cuda")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)

    machine = C.print_machine(a.threads or None)
    work = Path(tempfile.mkdtemp(prefix="bench-runners-"))
    src = C.snapshot_source(work / "src")
    env = {"PREFECT_HOME": str(work / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(src),
           "SAE_TRANSFER_RAY_INIT": json.dumps({"num_cpus": a.ray_cpus or C.machine_info()["nproc"],
                                                "object_store_memory": 256 * 2**20})}
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    overrides = dict(C.TINY_OVERRIDES)
    overrides["metrics"] = [m for m in a.metrics.split(",") if m.strip()]
    try:
        C.run_worker([sys.executable, "-c", "from prefect import flow\n@flow\ndef f(): return 0\nf()"], env=env, cwd=src)
        walls: dict[str, list[float]] = {"threads": [], "ray": []}
        for repeat in range(a.repeats):
            for runner in walls:
                storage = f"file://{work / f'store-{runner}-{repeat}'}"
                cmd = [sys.executable, "-m", "flows.full", "--storage", storage, "--runner", runner] + C.cli_set_args(overrides)
                for item in a.set:
                    cmd += ["--set", item]
                result = C.run_worker(cmd, env=env, cwd=src)
                walls[runner].append(result["_wall_s"])
                print(f"{runner:8s} cold run: {result['_wall_s']:.1f} s (load avg {C.load_average()[0]:.2f})", flush=True)
        threads, ray = C.median(walls["threads"]), C.median(walls["ray"])
        print(f"\ntiny toy experiment (metrics: {overrides['metrics'] or 'none'}), cold, process wall, median of {a.repeats}")
        print(f"threads {threads:.1f} s | ray {ray:.1f} s | ray / threads {ray / threads:.2f}x")
        C.emit({"threads_s": walls["threads"], "ray_s": walls["ray"], "ratio": ray / threads, "machine": machine})
    finally:
        C.remove_unless_kept(work, a.keep)


if __name__ == "__main__":
    main()
