"""README's "Deployments" section against a real Prefect server, as a new user follows it.

A real ``prefect server start`` on 127.0.0.1 (free port, temporary PREFECT_HOME), the README's own
commands (read from its bash block, so the test and the README cannot drift apart), then a process
worker runs ``sae-transfer/experiment`` on a tiny toy config and the nightly re-evaluation on the
same storage. Every process started here is killed at the end, also on failure.

What a regression would look like: a README order that deploys before a pool exists (exit 1, the
later deployments missing), a README name that is not ``FLOW/DEPLOYMENT``, tasks hidden in a
subflow (the run page's own task runs and artifacts empty), a re-evaluation whose metric tasks are
Completed rather than Cached.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_FLOW_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The commands of README's Deployments block, one per line, comments and `source` dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Deployments"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith(("source ", "export "))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Long-running processes, each in its own process group, all killed at the end."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, []

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


def wait_for(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_run(client, run_id, timeout: float):
    def final():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish", interval=2.0)


def test_readme_deploys_everything_and_the_experiment_runs_on_a_worker(tmp_path):
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
           "SAE_TRANSFER_CACHE": str(tmp_path / "cache"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        commands = readme_commands()
        server = [c for c in commands if c.startswith("prefect server start")]
        assert server, commands
        procs.start("server", shlex.split(server[0]) + ["--host", "127.0.0.1", "--port", str(port)], env)

        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, "the Prefect server")

        # The README's commands, in its order, exactly as written; every one exits 0.
        worker_cmd = None
        for command in commands:
            if command.startswith("prefect server start"):
                continue
            if command.startswith("prefect worker start"):
                worker_cmd = command
                procs.start("worker", shlex.split(command), env)
                continue
            if command.startswith("prefect deployment run"):
                continue  # run below with the tiny config
            done = subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert worker_cmd and "sae-transfer-cpu" in worker_cmd

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            # Every deployment of the file exists under the full name the README gives it.
            names = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
            readme = (ROOT / "README.md").read_text()
            assert set(names) == {"sae-transfer/experiment", "sae-transfer-reevaluate/nightly-reevaluation",
                                  "sae-transfer/gpt2-small", "sae-transfer/gpt2-small-ray"}, sorted(names)
            for name in names:
                assert f"`{name}`" in readme, f"README does not name {name}"
            nightly = names["sae-transfer-reevaluate/nightly-reevaluation"]
            [schedule] = nightly.schedules
            assert schedule.schedule.cron == "0 3 * * *" and schedule.active
            # The run form shows a description for every parameter.
            experiment = names["sae-transfer/experiment"]
            for param, spec in experiment.parameter_openapi_schema["properties"].items():
                assert spec.get("description"), f"parameter {param} has no description in the UI form"

            # `sae-transfer/experiment` on a tiny toy config, through the process worker.
            storage_url = f"file://{tmp_path / 'store'}"
            run = client.create_flow_run_from_deployment(
                experiment.id, parameters={"preset": "toy", "overrides": TINY_FLOW_OVERRIDES, "storage_url": storage_url})
            run = wait_for_run(client, run.id, 300)
            assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n" + tail(logs)
            # One run page holds everything: its own task runs and artifacts, no subflow.
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            task_names = {t.name.rsplit("-", 1)[0] for t in tasks}
            assert {"metric-core", "prune-sae", "retrain-sae", "report"} <= task_names, task_names
            assert all(t.state.is_final() for t in tasks), [(t.name, t.state.name) for t in tasks if not t.state.is_final()]
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False)))
            assert not subflows, "the experiment still runs as a subflow"
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            keys = {a.key for a in artifacts if a.key}
            assert {"sae-transfer-toy-report", "sae-transfer-toy-headline", "sae-transfer-toy-variants"} <= keys, keys
            assert any(a.type == "progress" for a in artifacts)

            # The nightly re-evaluation on the same storage: every metric is Cached in Prefect's sense.
            config_overrides = TINY_FLOW_OVERRIDES.get("metric_overrides", {})
            run = client.create_flow_run_from_deployment(
                nightly.id, parameters={"storage_url": storage_url, "metrics": ["core"], "metric_overrides": config_overrides})
            run = wait_for_run(client, run.id, 180)
            assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n" + tail(logs)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            metric_states = [t.state.name for t in tasks if t.name.startswith("metric-core")]
            assert metric_states and set(metric_states) == {"Cached"}, metric_states
    finally:
        procs.stop_all()


def tail(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))


if __name__ == "__main__":  # pragma: no cover - handy for a manual look
    print(json.dumps(readme_commands(), indent=2))
