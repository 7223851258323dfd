"""A killed run leaves nothing behind: Prefect's temporary API server dies with the CLI process.

Without the parent-death signal set in ``flows/server.py``, SIGKILL of ``python -m flows.full``
leaves ``uvicorn ... prefect.server.api.server:create_app`` running forever (checked: the
assertion below then times out with the server still alive).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_sigkilled_run_leaves_no_prefect_server(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.full", "--storage", f"file://{tmp_path}/store", "--metrics", "core"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 120
        while server is None and time.monotonic() < deadline and proc.poll() is None:
            children = psutil.Process(proc.pid).children(recursive=True)
            server = next((c for c in children if "prefect.server.api.server:create_app" in " ".join(c.cmdline())), None)
            time.sleep(0.2)
        assert server is not None, "the run never started Prefect's temporary server"
        proc.send_signal(signal.SIGKILL)  # as the OOM killer would
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert not alive, "Prefect's temporary server outlived the killed run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None and server.is_running():
            server.kill()
