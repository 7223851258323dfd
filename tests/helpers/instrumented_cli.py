"""``python -m flows.full`` with test instrumentation, for tests/reliability/.

Runs exactly ``flows.cli.main(argv)`` (what ``python -m flows.full`` runs) after optionally:

- RELIABILITY_WRITE_LOG=path      append one JSON line per successful ``Storage.put_bytes``
                                  (every artifact write goes through it): key, sha256, size, pid.
- RELIABILITY_KILL_AFTER=regex    SIGKILL this process right after the first successful write
                                  whose key matches ``regex`` (a crash at a chosen point,
                                  e.g. half-way through uploading a multi-file artifact).
- RELIABILITY_FORBID_UNPICKLE=path  make pickle/cloudpickle/torch loaders record the call
                                  (with a stack) to ``path`` and raise.
- RELIABILITY_BARRIER=regex|dir|n|timeout_s
                                  before the first write whose key matches ``regex``, sign in
                                  ``dir`` and wait (up to ``timeout_s``) until ``n`` processes
                                  have: concurrent runs then really write the same artifact at
                                  the same time, whatever their start-up times were.

Usage: python tests/helpers/instrumented_cli.py [flows.full arguments...]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_lock = threading.Lock()
_barrier_lock = threading.Lock()


def _append(path: str, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with _lock:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def _barrier(spec: str | None, log: str | None):
    """A function that, the first time it sees a key matching the barrier's regex, waits for the
    other processes to reach the same point (see RELIABILITY_BARRIER above)."""
    if not spec:
        return lambda key: None
    regex, folder, parties, timeout_s = spec.split("|")
    pattern, folder, passed = re.compile(regex), Path(folder), threading.Event()

    def wait(key: str) -> None:
        if passed.is_set() or not pattern.search(key):
            return
        with _barrier_lock:
            if passed.is_set():
                return
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(os.getpid())).write_text(key)
            started = time.monotonic()
            while len(list(folder.iterdir())) < int(parties) and time.monotonic() - started < float(timeout_s):
                time.sleep(0.05)
            if log:
                _append(log, {"barrier": key, "waited_s": round(time.monotonic() - started, 2),
                              "arrived": len(list(folder.iterdir())), "parties": int(parties), "pid": os.getpid()})
            passed.set()

    return wait


def _instrument_writes() -> None:
    log = os.environ.get("RELIABILITY_WRITE_LOG")
    kill = os.environ.get("RELIABILITY_KILL_AFTER")
    barrier = _barrier(os.environ.get("RELIABILITY_BARRIER"), log)
    if not log and not kill and not os.environ.get("RELIABILITY_BARRIER"):
        return
    from sae_core.storage import Storage

    pattern = re.compile(kill) if kill else None
    real_put = Storage.put_bytes

    def put_bytes(self, key, data):
        barrier(key.strip("/"))
        uri = real_put(self, key, data)
        if log:
            _append(log, {"key": key.strip("/"), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                          "pid": os.getpid(), "thread": threading.current_thread().name})
        if pattern is not None and pattern.search(key):
            if log:
                _append(log, {"killed_after": key.strip("/"), "pid": os.getpid()})
            os.kill(os.getpid(), signal.SIGKILL)
        return uri

    Storage.put_bytes = put_bytes


def _forbid_unpickling() -> None:
    log = os.environ.get("RELIABILITY_FORBID_UNPICKLE")
    if not log:
        return
    import pickle

    def forbidden(name):
        def refuse(*args, **kwargs):
            _append(log, {"call": name, "pid": os.getpid(), "stack": traceback.format_stack(limit=25)})
            raise RuntimeError(f"reliability test: {name} called (nothing may be unpickled)")

        return refuse

    pickle.load, pickle.loads = forbidden("pickle.load"), forbidden("pickle.loads")
    try:
        import cloudpickle

        cloudpickle.load, cloudpickle.loads = forbidden("cloudpickle.load"), forbidden("cloudpickle.loads")
    except ImportError:  # pragma: no cover
        pass
    import torch
    import torch.serialization

    torch.load = forbidden("torch.load")
    torch.serialization.load = forbidden("torch.serialization.load")


def main() -> int:
    _forbid_unpickling()
    _instrument_writes()
    from flows.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
