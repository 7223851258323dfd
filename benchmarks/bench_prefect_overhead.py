"""Benchmark: the toy pipeline's library work run directly vs through the Prefect flow.

Both sides run the *same code* on the same tiny toy config (``benchmarks/_common.py``
``TINY_OVERRIDES``: toy world build, activation caching, WANDA pruning of the LLM, original SAE
training, SAE pruning + quality; no metrics), each cold into a fresh storage folder, each in its
own subprocess with the same torch thread setting:

  direct  ``flows.full.experiment`` (the flow body, a plain function) with every task
          replaced by its undecorated ``.fn`` and Prefect artifact creation stubbed out: exactly
          the library calls the flow makes, in the same order, with no Prefect at all;
  flow    ``flows.full.full(...)`` as the CLI calls it (own temporary ``PREFECT_HOME``): result
          storage block, task runs, cache-key computation, result persistence, artifacts. The
          ephemeral API server is started first by an empty flow and timed separately.

Overhead = flow - direct, absolute and relative to direct; printed with and without the server
start (a fixed cost per process), in wall time and in process CPU time (robust to other load on
the cores; the API server's own CPU is in another process and not counted). Per-step times of
the direct run are printed too.

Example (one repeat, about 1.5 minutes on 2 busy CPU cores; --repeats 3 for the docs):
    .venv/bin/python benchmarks/bench_prefect_overhead.py --threads 1
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

C.ensure_repo_on_path()


# --------------------------------------------------------------------------- workers
def worker_direct(a) -> None:
    t_proc = time.perf_counter()
    import flows.full as F
    import tasks.report as R
    from sae_core.config import build_config
    from sae_core.storage import Storage

    steps: dict[str, float] = {}
    calls: dict[str, int] = {}

    class _State:
        def __init__(self, error):
            self.error = error
            self.name = "Completed" if error is None else "Failed"
            self.message = "" if error is None else repr(error)

        def is_completed(self):
            return self.error is None

    class _Done:  # a finished "future": what .submit() returns, computed synchronously
        def __init__(self, value, error):
            self.value, self.state = value, _State(error)

        def wait(self, timeout=None):
            return None

        def result(self, *args, **kwargs):
            if self.state.error is not None:
                raise self.state.error
            return self.value

    class _Direct:  # a task without Prefect: call / submit / with_options run ``fn`` in this thread
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __call__(self, *args, **kwargs):
            args = [x.result() if isinstance(x, _Done) else x for x in args]
            with C.Timer() as t:
                try:
                    return self.fn(*args, **kwargs)
                finally:
                    steps[self.name] = steps.get(self.name, 0.0) + time.perf_counter() - t.w0
                    calls[self.name] = calls.get(self.name, 0) + 1

        def submit(self, *args, **kwargs):
            try:
                return _Done(self(*args, **kwargs), None)
            except Exception as err:  # noqa: BLE001 - reported like a failed task run
                return _Done(None, err)

        def with_options(self, **_):
            return self

    from prefect import Task

    for name, obj in list(vars(F).items()):
        if isinstance(obj, Task):
            setattr(F, name, _Direct(name, obj.fn))
    for name in ("create_table_artifact", "create_markdown_artifact", "create_link_artifact"):
        setattr(R, name, lambda *args, **kwargs: None)  # Prefect artifacts: part of the overhead

    overrides = json.loads(a.overrides)
    imports_s = time.perf_counter() - t_proc
    print("direct: tasks replaced:", sorted(k for k, v in vars(F).items() if isinstance(v, _Direct)), flush=True)
    with C.Timer() as t:
        config = build_config("toy", overrides)
        storage = Storage(a.storage)
        storage.check_reachable()
        summary = F.experiment(config, storage.url)  # a plain function: the steps of `full`
    C.emit({"side": "direct", "pipeline_s": t.wall, "pipeline_cpu_s": t.cpu, "imports_s": imports_s, "steps": steps,
            "calls": calls, "n_variants": summary["n_variants"]})


def worker_flow(a) -> None:
    t_proc = time.perf_counter()
    import flows.full as F
    from prefect import flow

    imports_s = time.perf_counter() - t_proc

    @flow(name="server-warmup")
    def warmup():
        return 0

    with C.Timer() as t_server:
        warmup()  # starts the ephemeral API server (fixed per-process cost)
    overrides = json.loads(a.overrides)
    with C.Timer() as t:
        summary = F.full(preset="toy", overrides=overrides, storage_url=a.storage)
    C.emit({"side": "flow", "pipeline_s": t.wall, "pipeline_cpu_s": t.cpu, "server_start_s": t_server.wall,
            "imports_s": imports_s, "n_variants": summary["n_variants"]})


# --------------------------------------------------------------------------- parent
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="pairs of (direct, flow) runs, interleaved; medians reported")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the subprocesses; 0: leave")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--worker", choices=("direct", "flow"), help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    p.add_argument("--overrides", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.src:  # workers import the frozen copy, not the working tree
        sys.path.insert(0, a.src)
        import flows

        assert Path(flows.__file__).resolve().is_relative_to(Path(a.src).resolve()), flows.__file__
    if a.worker == "direct":
        return worker_direct(a)
    if a.worker == "flow":
        return worker_flow(a)

    machine = C.print_machine(a.threads or None)
    work = Path(tempfile.mkdtemp(prefix="bench-prefect-overhead-"))
    src = C.snapshot_source(work / "src")  # both sides run the same frozen copy of the pipeline code
    env = {"PREFECT_HOME": str(work / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(src)}
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    overrides = json.dumps(C.TINY_OVERRIDES)
    t0 = time.perf_counter()
    try:
        # Create the Prefect DB once, untimed (a first run in a fresh PREFECT_HOME runs migrations).
        C.run_worker([sys.executable, "-c", "from prefect import flow\n@flow\ndef f(): return 0\nf()"], env=env, cwd=src)
        res = {"direct": [], "flow": []}
        for r in range(a.repeats):
            for side in ("direct", "flow"):
                cmd = [sys.executable, __file__, "--worker", side, "--storage", f"file://{work / f'{side}-{r}'}",
                       "--overrides", overrides]
                out = C.run_worker(cmd + ["--src", str(src)], env=env, cwd=src)
                res[side].append(out)
                print(f"  {side} run {r}: pipeline {out['pipeline_s']:.1f} s, process {out['_wall_s']:.1f} s "
                      f"(load avg {C.load_average()[0]:.2f})", flush=True)
        d, f = res["direct"], res["flow"]
        assert d[0]["n_variants"] == f[0]["n_variants"], "direct and flow did different work"
        direct_s, flow_s = C.median(x["pipeline_s"] for x in d), C.median(x["pipeline_s"] for x in f)
        server_s = C.median(x["server_start_s"] for x in f)
        proc_d, proc_f = C.median(x["_wall_s"] for x in d), C.median(x["_wall_s"] for x in f)
        print(f"\ntiny toy pipeline, no metrics; median of {a.repeats}")
        print(f"  direct (library calls only)                 {direct_s:7.1f} s   (process incl. imports {proc_d:.1f} s)")
        print(f"  Prefect flow full(...)                      {flow_s:7.1f} s   (process incl. imports + server {proc_f:.1f} s)")
        print(f"  ephemeral server start (before the flow)    {server_s:7.1f} s")
        cpu_d, cpu_f = C.median(x["pipeline_cpu_s"] for x in d), C.median(x["pipeline_cpu_s"] for x in f)
        paired = [y["pipeline_s"] - x["pipeline_s"] for x, y in zip(d, f)]
        paired_cpu = [y["pipeline_cpu_s"] - x["pipeline_cpu_s"] for x, y in zip(d, f)]
        print(f"  process CPU time of the pipeline call: direct {cpu_d:.1f} s, flow {cpu_f:.1f} s -> overhead "
              f"{C.median(paired_cpu):+.1f} s = {100 * C.median(paired_cpu) / cpu_d:+.0f}% (median of paired runs; "
              f"the API server is another process, its CPU is not in this figure)")
        print(f"  paired wall differences flow - direct per repeat: {[round(x, 1) for x in paired]} s")
        over = flow_s - direct_s
        print(f"  overhead inside the flow call: {over:+.1f} s = {100 * over / direct_s:+.0f}% of direct")
        over_all = flow_s + server_s - direct_s
        print(f"  overhead incl. server start:   {over_all:+.1f} s = {100 * over_all / direct_s:+.0f}% of direct")
        print(f"  overhead, whole processes:     {proc_f - proc_d:+.1f} s = {100 * (proc_f - proc_d) / proc_d:+.0f}% of direct process")
        steps, calls = d[len(d) // 2]["steps"], d[len(d) // 2]["calls"]
        n_calls = sum(calls.values())
        print(f"  task calls per run: {n_calls} -> {over / n_calls:.2f} s Prefect overhead per task run (inside the flow call)")
        print("  direct run, per step: " + ", ".join(f"{k} x{calls[k]} {v:.1f}s" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])))
        print(f"total benchmark time {time.perf_counter() - t0:.1f} s")
        C.emit({"direct_s": direct_s, "flow_s": flow_s, "direct_cpu_s": cpu_d, "flow_cpu_s": cpu_f,
                "paired_wall": paired, "paired_cpu": paired_cpu, "server_start_s": server_s, "overhead_s": over,
                "overhead_rel": over / direct_s, "process_direct_s": proc_d, "process_flow_s": proc_f, "steps": steps,
                "machine": machine})
    finally:
        C.remove_unless_kept(work, a.keep)


if __name__ == "__main__":
    main()
