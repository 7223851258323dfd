"""Prefect's temporary API server for a CLI run: started early, and never outliving the run.

Without ``PREFECT_API_URL`` Prefect's client would start a temporary API server itself (a child
``uvicorn prefect.server.api.server:create_app``) the first time it needs the API, after our
imports, and stop it from an exit handler. A process that is killed (SIGKILL, the OOM killer)
never runs that handler and leaves the server running. So the CLI starts the same server itself:

* with Linux's parent-death signal set, so the kernel sends it SIGTERM when the run's process
  dies, however it dies;
* right after the configuration is validated, so it boots while the flow modules import
  (the parent never imports the server's own modules at all);
* and points Prefect at it with ``temporary_settings`` (as Prefect's own test harness does).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PORT_IN_USE_EXIT_CODE = 3  # uvicorn's exit code when its port was taken meanwhile


def _die_with_parent(parent_pid: int) -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_temporary_server() -> TemporaryServer | None:
    """Spawn the temporary server now, unless an API is configured (then Prefect uses it) or the
    platform has no parent-death signal (then Prefect starts its server the usual way). Call it
    from the main thread: the parent-death signal fires when the *thread* that started the child
    ends. Use the result's ``in_use()`` around the flow call."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value() or not sys.platform.startswith("linux"):
        return None
    return TemporaryServer()


class TemporaryServer:
    def __init__(self):
        self.process: subprocess.Popen | None = None
        self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        from prefect.settings import get_current_settings

        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
        parent = os.getpid()
        # The server's own output goes to a log file: when the run ends it is stopped mid-flush and
        # prints tracebacks of cancelled event writes that say nothing about the run.
        self.log_path = Path(get_current_settings().home) / "temporary-server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        # The command and environment of Prefect's own SubprocessASGIServer (prefect.server.api.server).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            preexec_fn=lambda: _die_with_parent(parent),
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own copy

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the server answers its health check; its API URL."""
        import httpx
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        timeout_s = timeout_s or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == PORT_IN_USE_EXIT_CODE:
                self._spawn()
                continue
            if code is not None:
                raise RuntimeError(f"Prefect's temporary API server exited with code {code} while starting; "
                                   f"its output ({self.log_path}) ends:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self.api_url
            time.sleep(0.1)
        raise RuntimeError(f"Prefect's temporary API server did not answer on {self.api_url} within {timeout_s:.0f} s")

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    @contextlib.contextmanager
    def in_use(self):
        """Prefect's client, its log and event workers inside use this server."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self.wait()
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield self.api_url

    def stop(self) -> None:
        """At exit: SIGTERM, a short grace period, then SIGKILL (nothing of the run is left to save)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
