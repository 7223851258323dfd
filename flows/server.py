"""Prefect's temporary API server, bound to the process that needs it.

Without ``PREFECT_API_URL`` a flow run starts Prefect's temporary API server as a child process
(``uvicorn prefect.server.api.server:create_app``) and stops it at exit. A process that is killed
(SIGKILL, the OOM killer) never reaches that exit handler and leaves the server running. So the CLI
starts the server itself, in the main thread, with Linux's parent-death signal set: the kernel sends
it SIGTERM when this process dies, however it dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from unittest import mock

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _PopenDyingWithParent(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        parent = os.getpid()
        kwargs.setdefault("preexec_fn", lambda: _die_with_parent(parent))
        super().__init__(*args, **kwargs)


def start_temporary_server() -> "TemporaryServer | None":
    """Spawn Prefect's temporary server now (if no API URL is configured) as a child that dies with
    this process, without waiting for it: the caller imports its flows while the server boots, then
    calls ``wait()``. Call it from the main thread: the parent-death signal fires when the *thread*
    that started the child ends. Returns None when a server is configured or the platform has no
    parent-death signal (Prefect then starts its server the usual way)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value() or not sys.platform.startswith("linux"):
        return None
    return TemporaryServer()


class TemporaryServer:
    """Prefect's own ``SubprocessASGIServer`` singleton (the instance its client uses), spawned here."""

    def __init__(self):
        import atexit

        from prefect.server.api import server as api_server

        self.server = api_server.SubprocessASGIServer()
        if self.server.running:
            return
        self._spawn()
        self.server.running = True  # Prefect's client now uses it instead of starting another
        atexit.register(self.server.stop)

    def _spawn(self) -> None:
        from prefect.server.api import server as api_server

        self.server.port = self.server.find_available_port()
        with mock.patch.object(api_server.subprocess, "Popen", _PopenDyingWithParent):
            self.server.server_process = self.server._run_uvicorn_command()

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the server answers its health check; its API URL."""
        import time

        import httpx
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        deadline = time.monotonic() + (timeout_s or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while time.monotonic() < deadline:
            process = self.server.server_process
            if process is not None and process.poll() == 3:  # the port was taken meanwhile (as Prefect retries)
                self._spawn()
                continue
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"Prefect's temporary API server exited with code {process.returncode} while starting")
            try:
                if httpx.get(f"{self.server.api_url}/health", timeout=2).status_code == 200:
                    return self.server.api_url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Prefect's temporary API server did not answer on {self.server.api_url} within {timeout_s} s")
