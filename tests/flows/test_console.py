"""The CLI's quiet console (flows/console.py): task lines, the run's link, a summary with the report's
path; warnings, library prints and logs in the run's log file under the storage; ``--verbose`` shows
everything; a task's error reaches the console in full.

The CLI runs in its own process, exactly as ``python -m flows.full`` does, with a tiny flow in place
of the experiment (tests/helpers/console_cli.py): its tasks print like SAEBench, warn like
scikit-learn and log like a library, in the thread pool's worker threads.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sae_core.storage import Storage
from tests.helpers.console_cli import NOISY_LOG, NOISY_PRINT, NOISY_STDERR, NOISY_WARNING

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "helpers" / "console_cli.py"
MAX_QUIET_LINES = 20


def run_cli(tmp_path: Path, storage_url: str, *args: str, api_url: str | None = None, fail: bool = False):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO",
           "PYTHONWARNINGS": "default", "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    env.pop("CONSOLE_TEST_FAIL", None)
    if api_url:  # the session's test server: no temporary server to boot
        env["PREFECT_API_URL"] = api_url
    if fail:
        env["CONSOLE_TEST_FAIL"] = "1"
    return subprocess.run([sys.executable, str(HELPER), "--storage", storage_url, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def the_log(storage_url: str) -> str:
    storage = Storage(storage_url)
    [key] = [k for k in storage.list("logs") if k.endswith(".log")]
    return storage.get_bytes(key).decode()


@pytest.fixture(scope="module")
def api_url(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def test_quiet_console_shows_task_lines_and_the_report_and_logs_the_rest(tmp_path, api_url):
    url = f"file://{tmp_path}/store"
    done = run_cli(tmp_path, url, api_url=api_url)
    assert done.returncode == 0, done.stderr[-4000:]
    console = done.stdout + done.stderr
    lines = console.splitlines()
    assert len(lines) <= MAX_QUIET_LINES, console
    # One finish line per task, with its key figures; the repeated call is served from the cache.
    assert sum(" done    noisy-" in line for line in lines) == 2 and "1,000 tokens" in console, console
    assert any(" cached  remembered-" in line and "d_sae 64" in line for line in lines), console
    assert any(line.startswith("Prefect UI: http") and "/runs/flow-run/" in line for line in lines), console
    # The summary ends the output; the report's location (its HTML page when there is one) is the last line.
    assert any(line.startswith("finished in ") and "3 done, 1 cached" in line for line in lines), console
    assert lines[-1] == f"report: {url}/reports/tiny/report.html", console
    # Nothing of the noise on the console; all of it in the log file under the storage.
    for noise in (NOISY_PRINT, NOISY_STDERR, NOISY_WARNING, NOISY_LOG, "Finished in state"):
        assert noise not in console, noise
    log = the_log(url)
    for noise in (NOISY_PRINT, NOISY_STDERR, f"FutureWarning: {NOISY_WARNING}", NOISY_LOG, "Finished in state Completed()"):
        assert noise in log, noise
    assert f"log:    {tmp_path}/store/logs/" in console
    assert done.stdout == ""  # the summary as JSON only with --json


def test_verbose_shows_everything_and_still_writes_the_log(tmp_path, api_url):
    url = f"file://{tmp_path}/store"
    done = run_cli(tmp_path, url, "--verbose", "--json", api_url=api_url)
    assert done.returncode == 0, done.stderr[-4000:]
    for noise in (NOISY_PRINT, NOISY_STDERR, f"FutureWarning: {NOISY_WARNING}", NOISY_LOG, "Finished in state"):
        assert noise in done.stdout + done.stderr, noise
    assert f"FutureWarning: {NOISY_WARNING}" in the_log(url)
    assert done.stderr.splitlines()[-1] == f"report: {url}/reports/tiny/report.html"
    assert '"html_uri": ' in done.stdout.split("\n{\n")[-1]  # --json: the summary on stdout, last


def test_a_task_error_reaches_the_console_in_full_and_the_log_is_uploaded(tmp_path, s3_bucket):
    """On s3 storage (and Prefect's temporary server, as `make run` starts it) a failing task: its
    traceback and message on the console, exit code 1, and the log uploaded all the same."""
    done = run_cli(tmp_path, s3_bucket, fail=True)
    assert done.returncode == 1, done.stderr[-4000:]
    console = done.stderr
    assert "Traceback (most recent call last):" in console and 'raise ValueError("boom from inside a task")' in console
    assert any(" FAILED  explode-" in line and "boom from inside a task" in line for line in console.splitlines()), console
    assert "error: ValueError: boom from inside a task" in console
    assert "temporary API server" in console
    assert NOISY_WARNING not in console
    log = the_log(s3_bucket)
    assert NOISY_WARNING in log and "boom from inside a task" in log
    assert f"log:    {s3_bucket}/logs/" in console


# ------------------------------------------------------------------ the parts, in process
def test_the_log_keeps_each_threads_lines_whole_and_a_bars_last_drawing(tmp_path):
    from flows.console import RunLog

    log = RunLog(Storage(f"file://{tmp_path}"))
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        barrier.wait()
        for i in range(200):
            log.write_stream(f"{name} ")
            log.write_stream(f"line {i}\n")

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.write_stream("\rbar  10%\rbar  50%\x1b[A\rbar 100%\n")
    log.write_stream("unfinished")
    assert log.close() is None
    lines = log.path.read_text().splitlines()
    assert sorted(lines[:-2]) == sorted(f"{n} line {i}" for n in ("alpha", "beta") for i in range(200))
    assert lines[-2:] == ["bar 100%", "unfinished"]


def test_key_figures_of_task_results():
    from flows.console import _figures

    assert _figures({"kind": "activations", "n_tokens": 20000, "d_in": 640}) == "20,000 tokens"
    assert _figures({"kind": "model", "perplexity": {"dense": 25.3021, "compressed": 51.9597}}) == "perplexity 25.3 -> 51.96"
    assert _figures({"kind": "sae_variant", "row": {"l0": 8.0, "explained_variance_centred": 0.91346, "ce_loss_score": 0.97}}) \
        == "L0 8, EV 0.9135, CE score 0.97"
    assert _figures({"kind": "metric", "status": "ok", "headline": {"mean_absorption_score": 0.25, "n": 3}}) \
        == "mean_absorption_score 0.25, n 3"
    assert _figures({"kind": "feature_cards", "status": "empty"}) == "empty"
    assert _figures(None) == "" and _figures("text") == ""


def test_library_bars_draw_where_the_caller_says_and_still_report():
    from sae_core.progress import Progress, bars_on, reporting_to

    heard, terminal = [], io.StringIO()
    with reporting_to(lambda d, f: heard.append(f)), bars_on(terminal, leave=False):
        with Progress(4, "toy LM training") as bar:
            for _ in range(4):
                bar.update(1)
    assert "toy LM training" in terminal.getvalue() and heard[-1] == 1.0
    hidden = io.StringIO()
    with reporting_to(lambda d, f: heard.append(f)), bars_on(hidden, shown=False):
        with Progress(2, "caching") as bar:
            bar.update(2)
    assert hidden.getvalue() == "" and heard[-1] == 1.0


def test_run_console_routes_the_streams_and_hands_them_back(tmp_path, monkeypatch):
    """In process, no flow: prints and library log records inside go to the log, the summary to the
    terminal; a stream a library kept past the run writes to the terminal again; an error is shown,
    exit code 1. (Warnings: the CLI tests above; pytest records them here before any stream sees them.)"""
    import logging

    from flows.console import run_console

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    url = f"file://{tmp_path}/store"
    with run_console(Storage(url), argv=["--storage", url]) as console:
        print("a library's print")
        logging.getLogger("somelibrary").warning("a library's warning")
        kept = sys.stderr
        console.finished({"report": {"uri": f"{url}/reports/r"}, "n_variants": 3})
    kept.write("after the run\n")
    assert out.getvalue() == "" and "a library's" not in err.getvalue()
    assert err.getvalue().splitlines()[-2:] == [f"report: {url}/reports/r", "after the run"]
    log = the_log(url)
    assert "a library's print" in log and "somelibrary - a library's warning" in log and "3 variants" in log

    err.seek(0)
    err.truncate()
    with run_console(Storage(f"file://{tmp_path}/other"), argv=[]) as console:
        raise ValueError("broken before any task")
    assert console.exit_code == 1
    assert "Traceback" in err.getvalue() and "error: ValueError: broken before any task" in err.getvalue()
