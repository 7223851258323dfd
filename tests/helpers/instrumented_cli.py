"""``python -m flows.full`` with test instrumentation, for tests/test_reliability.py.

Runs exactly ``flows.cli.main(argv)`` (what ``python -m flows.full`` runs) after optionally:

- RELIABILITY_WRITE_LOG=path      append one JSON line per successful ``Storage.put_bytes``
                                  (every artifact write goes through it): key, sha256, size, pid.
- RELIABILITY_KILL_AFTER=regex    SIGKILL this process right after the first successful write
                                  whose key matches ``regex`` (a crash at a chosen point,
                                  e.g. half-way through uploading a multi-file artifact).
- RELIABILITY_FORBID_UNPICKLE=path  make pickle/cloudpickle/torch loaders record the call
                                  (with a stack) to ``path`` and raise.

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
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_lock = threading.Lock()


def _append(path: str, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with _lock:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def _instrument_writes() -> None:
    log = os.environ.get("RELIABILITY_WRITE_LOG")
    kill = os.environ.get("RELIABILITY_KILL_AFTER")
    if not log and not kill:
        return
    from sae_core.storage import Storage

    pattern = re.compile(kill) if kill else None
    real_put = Storage.put_bytes

    def put_bytes(self, key, data):
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
