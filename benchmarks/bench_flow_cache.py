"""Benchmark: cold vs fully cached re-run of ``python -m flows.full`` (tiny toy config).

Every run is a fresh subprocess with its own temporary ``PREFECT_HOME`` (its own SQLite
database and ephemeral API server, never the developer's), all sharing one fresh ``file://``
storage folder, all running a frozen copy of ``flows/``, ``tasks/``, ``sae_core/`` (edits to the
working tree during the benchmark can neither change the code under test nor invalidate cache
keys, which hash task and library source).

  1. one empty flow, untimed: creates the Prefect database (migrations);
  2. the cold run, then ``--repeats`` cached re-runs, each as a worker process that does what
     ``python -m flows.full ARGS`` does but times its parts: imports; Prefect start-up (first
     flow run: starts the ephemeral server); one more empty flow run (the zero-task baseline
     with the server up); then ``flows.cli.main(ARGS)`` - the experiment flow itself;
  3. with ``--plain-cli``, after each cached worker run the plain ``python -m flows.full ARGS``
     too (process wall; a check that the worker times what a user sees).

Printed: each part for cold and cached; with ``--plain-cli`` the plain CLI's cached wall against
its target (< 20 s on an idle 2-core machine: imports overlap the temporary server's start-up); cached / cold for the whole process (what a user waits)
and for the flow alone (target <= 5%; Python imports + Prefect start-up, ~10-40 s here, are
the same for both and excluded); cached flow minus the empty-flow baseline (= every task's cache
lookup + the report task, which always runs). Under CPU contention wall times stretch; the
flow's process CPU time is printed too.

Example (one repeat: about 2.5 minutes on 2 CPU cores; --repeats 3 for the docs):
    .venv/bin/python benchmarks/bench_flow_cache.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


CACHED_CLI_TARGET_S = 20.0  # a cached re-run of the toy preset, start to exit, as a user waits for it


def worker(argv: list[str]) -> None:
    """``python -m flows.full ARGV`` in this process, with its fixed costs timed separately:
    imports, Prefect start-up (the first flow run starts the ephemeral API server), one more
    empty flow run (the per-flow-run baseline with the server up), then the CLI's ``main``."""
    t_proc = time.perf_counter()
    import flows.cli
    import flows.full  # noqa: F401
    from prefect import flow

    imports_s = time.perf_counter() - t_proc

    @flow(name="empty-baseline")
    def empty():
        return 0

    with C.Timer() as t_start:
        empty()
    with C.Timer() as t_empty:
        empty()
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # main() on the server the empty flows started (its own start-up is timed above; the plain
    # CLI run of --plain-cli times the CLI's overlapped start-up as a user sees it).
    with C.Timer() as t_main, temporary_settings(updates={PREFECT_API_URL: SubprocessASGIServer().api_url}):
        rc = flows.cli.main(argv)
    C.emit({"rc": rc, "imports_s": imports_s, "server_start_s": t_start.wall, "empty_flow_s": t_empty.wall,
            "main_s": t_main.wall, "main_cpu_s": t_main.cpu})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="cached runs and baseline runs (median); the cold run is one run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the subprocesses (torch threads); 0: leave")
    p.add_argument("--metrics", default="",
                   help="comma-separated metrics to include (default: none); 'preset': the preset's own list")
    p.add_argument("--size", choices=("tiny", "preset"), default="tiny",
                   help="tiny: the toy preset shrunk (benchmarks/_common.py TINY_OVERRIDES, default); "
                        "preset: the toy preset as shipped (cold run takes many minutes)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (storage + PREFECT_HOME)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="extra config override passed to the flow (repeatable), e.g. --set device=cuda")
    p.add_argument("--plain-cli", action="store_true",
                   help="after each cached worker run, also time a plain `python -m flows.full` re-run (process wall)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:  # imports come from the frozen copy (cwd + PYTHONPATH), not the working tree
        return worker([x for x in a.cli_args if x != "--"])

    machine = C.print_machine(a.threads or None)
    work = Path(tempfile.mkdtemp(prefix="bench-flow-cache-"))
    src = C.snapshot_source(work / "src")  # frozen copy of flows/, tasks/, sae_core/
    env = {"PREFECT_HOME": str(work / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(src)}
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    overrides = dict(C.TINY_OVERRIDES) if a.size == "tiny" else {}
    if a.metrics != "preset":
        overrides["metrics"] = [m for m in a.metrics.split(",") if m.strip()]
    storage = f"file://{work / 'store'}"
    cli_args = ["--storage", storage] + C.cli_set_args(overrides)
    for item in a.set:
        cli_args += ["--set", item]
    flow_cmd = [sys.executable, "-m", "flows.full"] + cli_args
    worker_cmd = [sys.executable, __file__, "--worker", "--"] + cli_args
    t_start = time.perf_counter()
    try:
        # A first Prefect start in a fresh PREFECT_HOME creates the database (migrations): untimed.
        first = C.run_worker([sys.executable, "-c", "from prefect import flow\n@flow\ndef f(): return 0\nf()"], env=env, cwd=src)
        print(f"first Prefect start in a fresh PREFECT_HOME (DB creation, untimed below): {first['_wall_s']:.1f} s", flush=True)
        cold = C.run_worker(worker_cmd, env=env, cwd=src)
        n_cold = sum(1 for _ in (work / "store").rglob("manifest.json"))
        print(f"cold run: process {cold['_wall_s']:.1f} s, flow {cold['main_s']:.1f} s (load avg {C.load_average()[0]:.2f})", flush=True)
        cached, cli = [], []
        for _ in range(a.repeats):
            cached.append(C.run_worker(worker_cmd, env=env, cwd=src))
            if a.plain_cli:  # the plain CLI, as a user runs it
                cli.append(C.run_worker(flow_cmd, env=env, cwd=src)["_wall_s"])
            print(f"cached run: process {cached[-1]['_wall_s']:.1f} s, flow {cached[-1]['main_s']:.1f} s"
                  + (f"; plain `python -m flows.full` {cli[-1]:.1f} s" if cli else "")
                  + f" (load avg {C.load_average()[0]:.2f})", flush=True)
        n_artifacts = sum(1 for _ in (work / "store").rglob("manifest.json"))
        if n_artifacts != n_cold:
            print(f"WARNING: the cached runs committed {n_artifacts - n_cold} new artifacts: not all cache hits")

        def med(key):
            return C.median(r[key] for r in cached)

        print(f"\n{a.size} toy experiment (metrics: {overrides.get('metrics', 'as in the preset') or 'none'}), {n_cold} committed artifacts; "
              f"cached figures: median of {a.repeats}")
        print(f"{'':44s} {'cold':>8s} {'cached':>8s}")
        for label, key in (("process wall (start to exit)", "_wall_s"), ("  imports", "imports_s"),
                           ("  Prefect start-up (server + 1st flow run)", "server_start_s"),
                           ("  empty flow run, server up (baseline)", "empty_flow_s"),
                           ("  the CLI's main(): the experiment flow", "main_s"), ("    same, process CPU s", "main_cpu_s")):
            print(f"{label:44s} {cold[key]:8.2f} {med(key):8.2f}")
        if cli:
            target = CACHED_CLI_TARGET_S
            print(f"plain `python -m flows.full` cached re-run (process wall): {C.median(cli):.1f} s "
                  f"(target < {target:.0f} s on an idle 2-core machine: {'PASS' if C.median(cli) < target else 'FAIL'}; "
                  f"load avg now {C.load_average()[0]:.2f})")
        ratio_proc = med("_wall_s") / cold["_wall_s"]
        ratio_flow = med("main_s") / cold["main_s"]
        net = (med("main_s") - med("empty_flow_s")) / (cold["main_s"] - cold["empty_flow_s"])
        print(f"\nratio cached / cold, whole process (what a user waits): {100 * ratio_proc:.1f}%")
        print(f"ratio cached / cold, the flow itself (imports + server start excluded): {100 * ratio_flow:.1f}% "
              f"(target <= 5%: {'PASS' if ratio_flow <= 0.05 else 'FAIL'})")
        print(f"cached flow minus an empty flow run: {med('main_s') - med('empty_flow_s'):.2f} s "
              f"(cache lookups of every task + the report task, which always runs); {100 * net:.1f}% of the cold equivalent")
        print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")
        C.emit({"cold": {k: v for k, v in cold.items() if not k.startswith("_stderr")},
                "cached": [{k: v for k, v in r.items() if not k.startswith("_stderr")} for r in cached],
                "cli_cached_s": cli, "ratio_process": ratio_proc, "ratio_flow": ratio_flow, "machine": machine})
    finally:
        C.remove_unless_kept(work, a.keep)


if __name__ == "__main__":
    main()
