"""``python -m flows.full`` with a tiny flow in place of the experiment, for tests/flows/test_console.py.

Runs exactly ``flows.cli.main(argv)`` (the console, Prefect's temporary server, the thread-pool task
runner) with ``flows.full.full`` replaced by a flow whose tasks do what the experiment's noisy
neighbours do: print like SAEBench, write to stderr, warn like scikit-learn, log like a library.

- CONSOLE_TEST_FAIL=1   one task raises ValueError("boom from inside a task").

Usage: python tests/helpers/console_cli.py [flows.full arguments...]
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import INPUTS  # noqa: E402

NOISY_PRINT = "probe 3 of 7: accuracy 0.51 (a SAEBench-like print)"
NOISY_STDERR = "raw stderr text from a library"
NOISY_WARNING = "a scikit-learn-like FutureWarning raised inside a task"
NOISY_LOG = "a library's own logging warning"


@task(name="noisy")
def noisy(n: int) -> dict:
    print(f"{NOISY_PRINT} #{n}")
    sys.stderr.write(f"{NOISY_STDERR} #{n}\n")
    warnings.warn(NOISY_WARNING, FutureWarning)
    logging.getLogger("somelibrary").warning(NOISY_LOG)
    return {"kind": "activations", "n_tokens": 1000 * n}


@task(name="remembered", cache_policy=INPUTS, persist_result=True, result_serializer="json")
def remembered(d_sae: int) -> dict:
    return {"kind": "sae", "d_sae": d_sae}


@task(name="explode")
def explode() -> None:
    raise ValueError("boom from inside a task")


@flow(name="console-test", log_prints=True, result_serializer="json")
def tiny(preset: str = "toy", overrides: dict | None = None, storage_url: str = "", runner: str = "threads",
         allow_mixed_storage: bool = False) -> dict:
    from sae_core.storage import Storage

    futures = [noisy.submit(n) for n in (1, 2)]  # in the thread pool's worker threads
    remembered(64)
    remembered(64)  # the same inputs: Cached
    if os.environ.get("CONSOLE_TEST_FAIL"):
        explode.submit().result()
    for future in futures:
        future.result()
    storage = Storage(storage_url)
    return {"report": {"prefix": "reports/tiny", "uri": storage.uri("reports/tiny"),
                       "html_uri": storage.uri("reports/tiny/report.html")}, "n_variants": 2}


def main() -> int:
    import flows.full
    from flows.cli import main as cli_main

    flows.full.full = tiny
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
