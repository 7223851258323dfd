"""The CLI's console: a readable screen of progress, and everything else in the run's log file.

    with run_console(storage, verbose=False) as console:
        summary = full(...)
        console.finished(summary)

Quiet (the default) the terminal shows:

* one line per task start and finish: its name, its duration and a few key figures of its result;
  a cached task says ``cached``, a failed one ``FAILED`` with its message (from the task engine's
  own state changes, so every task of the run, the report included);
* the library's progress bars (``sae_core.progress``), drawn on the terminal and erased when done
  (only on a terminal: piped output gets the lines alone);
* the flow run's UI link (or that the run's temporary API server has no UI);
* errors in full: every ERROR log record with its traceback (a failing task's included), and the
  warnings of our own code;
* a final summary: what ran, the log file, the report's location (last line).

Everything else goes to the run's log file, ``<storage>/logs/<UTC start>-<pid>.log``: third-party
warnings (``warnings``: scikit-learn's FutureWarning, ...), what SAEBench and other libraries print
to stdout/stderr from inside the tasks, Prefect's and the libraries' logging, and the console's own
lines. On s3:// storage the log is written to a local temporary file and uploaded when the run ends,
also when it fails. ``verbose=True`` (``--verbose``) leaves the terminal as it always was (every
log line, print and warning) and still writes the log file.

Deployments and served flows never pass through here: they keep Prefect's own logging, and the
Prefect UI gets every task's logs either way (Prefect's API log handler is left alone).

Thread safety. Tasks run in Prefect's worker threads and write while the main thread waits on
them. ``contextlib.redirect_stdout`` swaps ``sys.stdout`` for every thread, and nested swaps from
several threads restore each other's streams in the wrong order. So the main thread replaces
``sys.stdout`` / ``sys.stderr`` once, for the whole run, by proxies that write under one lock and
buffer partial lines per thread (two threads' prints never mix within a line). The console's own
lines and bars never pass through the proxies: they go to the terminal stream saved before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from sae_core.progress import bars_on
from sae_core.storage import Storage

LOGS_PREFIX = "logs"
# Loggers whose warnings are the run's own news (our packages, and the run loggers our tasks use).
OWN_LOGGERS = ("flows", "tasks", "sae_core", "prefect.flow_runs", "prefect.task_runs")
# Prefect's "Finished in state Failed(...)" repeats the FAILED line the console already printed.
_REPEATS = re.compile(r"^Finished in state ")
_RETRY = re.compile(r"^Task run failed with .* - Retry ", re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_PARTIAL_LINE = 1 << 16
START_LINE_AFTER_S = 0.5
# Key figures of a task's result manifest (at most three shown): its measured quality first (in the
# manifest's ``row`` / ``headline``), then what it holds.
QUALITY_FIGURES = (("l0", "L0"), ("explained_variance_centred", "EV"), ("ce_loss_score", "CE score"),
                   ("kl_div_score", "KL score"), ("mean_r", "mean r"))
SIZE_FIGURES = (("delta_ce_dense_patch", "dCE patch"), ("n_tokens", "tokens"), ("d_sae", "d_sae"), ("n_metric_rows", "rows"))


# ------------------------------------------------------------------ the log file
class RunLog:
    """``<storage>/logs/<UTC start>-<pid>[-N].log``: written in place on file:// storage, through a local
    temporary file uploaded by ``close()`` on s3://."""

    def __init__(self, storage: Storage, started: dt.datetime | None = None):
        started = started or dt.datetime.now(dt.timezone.utc)
        self.storage = storage
        stem = f"{LOGS_PREFIX}/{started.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
        self.key, n = f"{stem}.log", 1
        while storage.exists(self.key):  # two runs of one process in one second: never append to another run's log
            n += 1
            self.key = f"{stem}-{n}.log"
        self.uri = storage.uri(self.key)
        local = storage.local_path(self.key)
        self.uploads = local is None
        if local is None:
            fd, name = tempfile.mkstemp(prefix="sae-transfer-run-", suffix=".log")
            os.close(fd)
            local = Path(name)
        local.parent.mkdir(parents=True, exist_ok=True)
        self.path = local
        self._file = open(local, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # line-buffered: a killed run keeps its lines
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}

    @property
    def shown_as(self) -> str:
        """Where a reader finds it: the file (local storage) or its storage URI (uploaded at the end)."""
        return self.uri if self.uploads else str(self.path)

    def fileno(self) -> int:
        return self._file.fileno()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write_line(self, text: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(text.rstrip("\n") + "\n")

    def write_stream(self, text: str) -> None:
        """Raw stream text from any thread; lines are completed per thread, and a line redrawn with
        carriage returns (a progress bar) keeps only what it showed last."""
        with self._lock:
            if self._file.closed:
                return
            ident = threading.get_ident()
            *lines, rest = (self._partial.pop(ident, "") + text).split("\n")
            for line in lines:
                self._file.write(_last_drawn(line) + "\n")
            cut = rest.rfind("\r", 0, len(rest) - 1)
            rest = rest[cut + 1:]
            if len(rest) > MAX_PARTIAL_LINE:
                self._file.write(_last_drawn(rest) + "\n")
            elif rest:
                self._partial[ident] = rest

    def close(self) -> str | None:
        """Flush and close; on s3:// upload it. The error, if the upload failed (the local file is kept)."""
        with self._lock:
            if self._file.closed:
                return None
            for rest in self._partial.values():
                if _last_drawn(rest):
                    self._file.write(_last_drawn(rest) + "\n")
            self._partial.clear()
            self._file.close()
        if not self.uploads:
            return None
        try:
            self.storage.put_bytes(self.key, self.path.read_bytes())
        except Exception as err:  # noqa: BLE001 - the log is never lost: it stays on local disk
            return f"could not upload the log to {self.uri} ({err}); it is kept at {self.path}"
        self.path.unlink(missing_ok=True)
        return None


def _last_drawn(line: str) -> str:
    line = _ANSI.sub("", line.removesuffix("\r"))
    return line.rsplit("\r", 1)[-1]


class _StreamProxy:
    """What ``sys.stdout`` / ``sys.stderr`` are during a run: everything to the log file, and to the
    terminal too when ``shown``. Safe from any thread."""

    def __init__(self, log: RunLog, terminal: TextIO, shown: bool):
        self._log, self._terminal, self._shown = log, terminal, shown

    def write(self, text: str) -> int:
        if self._shown or self._log.closed:  # after the run (a handler that kept this stream): the terminal
            self._terminal.write(text)
        self._log.write_stream(text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._shown or self._log.closed:
            self._terminal.flush()

    def isatty(self) -> bool:
        return self._shown and self._terminal.isatty()

    def fileno(self) -> int:  # code that writes to the descriptor (a subprocess's output) lands where the text does
        return self._terminal.fileno() if self._shown or self._log.closed else self._log.fileno()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._terminal, "encoding", None) or "utf-8"

    def __getattr__(self, name: str):  # anything else a library asks a stream for (errors, closed, ...)
        return getattr(self._terminal, name)


# ------------------------------------------------------------------ what the terminal shows
class Console:
    def __init__(self, log: RunLog, terminal: TextIO, verbose: bool, temporary_server: bool):
        self.log, self.terminal, self.verbose, self.temporary_server = log, terminal, verbose, temporary_server
        self.started = time.monotonic()
        self.states: Counter[str] = Counter()
        self.exit_code = 0
        self._lock = threading.RLock()
        self._running: dict[Any, tuple[float, threading.Timer]] = {}  # task run id -> its attempt's start, its start line
        self._flow_run_told = False
        self._shown_errors: set[str] = set()

    # -------------------------------------------------------------- output
    def line(self, text: str, *, quiet_only: bool = False, logged: bool = True) -> None:
        """A line on the terminal (above any bar) and, unless ``logged`` is False, in the log."""
        if logged:
            self.log.write_line(text)
        if quiet_only and self.verbose:
            return
        from tqdm import tqdm

        with self._lock:
            tqdm.write(text, file=self.terminal)  # clears the bars drawn on the terminal, writes, redraws them
            self.terminal.flush()

    def header(self, storage: Storage, argv: list[str]) -> None:
        self.log.write_line(f"sae-transfer run, started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
                            f"pid {os.getpid()}, storage {storage.url}")
        self.log.write_line("command: " + " ".join([Path(sys.executable).name, "-m", "flows.full", *argv]))
        where = "" if self.verbose else "  (warnings, library output, Prefect logs; --verbose shows them here)"
        self.line(f"log: {self.log.shown_as}{where}")

    # -------------------------------------------------------------- task state changes (any thread)
    def task_state(self, task_run, state) -> None:
        if task_run is None or state is None:
            return
        self._tell_flow_run(getattr(task_run, "flow_run_id", None))
        name = task_run.name
        if state.type.value == "RUNNING":
            # Its start line only if it is still running a moment later: a cached task (Prefect enters
            # Running, then finds the cached result) or a quick one gets its one finish line.
            timer = threading.Timer(START_LINE_AFTER_S, self._started_line, (task_run.id, name))
            timer.daemon = True
            with self._lock:
                previous = self._running.pop(task_run.id, None)
                self._running[task_run.id] = (time.monotonic(), timer)
            if previous is not None:
                previous[1].cancel()
            timer.start()
            return
        if not state.is_final() or state.name == "RolledBack":
            return
        with self._lock:
            began, timer = self._running.pop(task_run.id, (None, None))
        if timer is not None:
            timer.cancel()
        cached = state.name == "Cached"
        took = f"{_duration(time.monotonic() - began):>7}" if began is not None and not cached else " " * 7
        status = ("cached" if cached else "done") if state.is_completed() else "failed"
        with self._lock:
            self.states[status] += 1
        if state.is_completed():
            self.line(f"{_clock()}  {status:<7} {name:<32} {took}  {_figures(_result_of(state))}".rstrip(), quiet_only=True)
        else:
            self.line(f"{_clock()}  {state.name.upper():<7} {name:<32} {took}  {_first_line(state.message)}".rstrip(),
                      quiet_only=True)

    def _started_line(self, task_run_id, name: str) -> None:
        with self._lock:  # (re-entrant: line() takes it too) a finish line cannot come between the check and this line
            if task_run_id in self._running:
                self.line(f"{_clock()}  start   {name}", quiet_only=True)

    def _tell_flow_run(self, flow_run_id) -> None:
        if flow_run_id is None or self._flow_run_told:
            return
        with self._lock:
            if self._flow_run_told:
                return
            self._flow_run_told = True
        name = ""
        with contextlib.suppress(Exception):
            from prefect.context import FlowRunContext

            context = FlowRunContext.get()
            if context is not None and context.flow_run is not None and context.flow_run.id == flow_run_id:
                name = f" '{context.flow_run.name}'"
        if self.temporary_server:
            self.line(f"Prefect: flow run{name} ({flow_run_id}) on this run's temporary API server, which has no UI "
                      "(PREFECT_API_URL: use a server with one)", quiet_only=True)
            return
        url = None
        with contextlib.suppress(Exception):
            from prefect.utilities.urls import url_for

            url = url_for("flow-run", obj_id=flow_run_id)
        self.line(f"Prefect UI: {url}" if url else f"Prefect: flow run{name} {flow_run_id}", quiet_only=True)

    # -------------------------------------------------------------- errors (any thread)
    def error_record(self, text: str, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self._shown_errors.add(_error_key(record.exc_info[1]))
        self.line(text, logged=False)  # the log file's own handler has the record

    # -------------------------------------------------------------- the end
    def finished(self, summary: dict[str, Any]) -> None:
        self.log.write_line("summary: " + _json(summary))
        counts = ", ".join(f"{value} {key[2:].replace('_', ' ')}" for key, value in summary.items()
                           if key.startswith("n_") and isinstance(value, int))
        self.line(f"finished in {_duration(time.monotonic() - self.started)}: {self._tasks_told()}" + (f"; {counts}" if counts else ""))
        report = summary.get("report") or {}
        self._closing_lines(report)

    def failed(self, err: BaseException) -> None:
        self.exit_code = 1
        if self.verbose or _error_key(err) not in self._shown_errors:
            self.line("".join(traceback.format_exception(err)).rstrip())
        else:
            self.log.write_line("".join(traceback.format_exception(err)).rstrip())
        self.line(f"FAILED after {_duration(time.monotonic() - self.started)}: {self._tasks_told()}")
        self.line(f"error: {type(err).__name__}: {_first_line(str(err))}")

    def _tasks_told(self) -> str:
        told = ", ".join(f"{self.states[k]} {k}" for k in ("done", "cached", "failed") if self.states[k])
        return f"tasks {told}" if told else "no task finished"

    def _closing_lines(self, report: dict) -> None:
        self.line(f"log:    {self.log.shown_as}")
        where = report.get("html_uri") or report.get("uri")
        if where:
            self.line(f"report: {where}")


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _first_line(text: str | None, width: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _error_key(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _result_of(state) -> Any:
    data = getattr(state, "data", None)
    return getattr(data, "result", data)  # a persisted result arrives as its ResultRecord


def _figures(result: Any) -> str:
    """A few key figures of a task's result manifest, e.g. ``20,000 tokens`` or ``L0 8, EV 0.913, CE score 0.97``."""
    if not isinstance(result, dict):
        return ""
    parts = []
    if result.get("status") not in (None, "ok"):
        parts.append(str(result["status"]))
    perplexity = result.get("perplexity")
    if isinstance(perplexity, dict) and _is_number(perplexity.get("dense")) and _is_number(perplexity.get("compressed")):
        parts.append(f"perplexity {perplexity['dense']:.4g} -> {perplexity['compressed']:.4g}")
    nested = [p for p in (result.get("row"), result.get("headline")) if isinstance(p, dict)]
    for key, label in QUALITY_FIGURES:
        value = next((p[key] for p in nested if _is_number(p.get(key))), None)
        if value is not None:
            parts.append(f"{label} {_number(value)}")
    for key, label in SIZE_FIGURES:
        if _is_number(result.get(key)):
            value = result[key]
            parts.append(f"{int(value):,} {label}" if key == "n_tokens" else f"{label} {_number(value)}")
    headline = result.get("headline")
    if not parts and isinstance(headline, dict):  # another metric family: its first headline figures
        parts += [f"{k} {_number(v)}" for k, v in headline.items() if _is_number(v)][:2]
    return ", ".join(parts[:3])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


# ------------------------------------------------------------------ logging
class _RecordFormatter(logging.Formatter):
    """``17:02:03 WARNING tasks.metrics (task 'metric-core-0') - message``, traceback included."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(run)s - %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        task, flow_run = getattr(record, "task_run_name", None), getattr(record, "flow_run_name", None)
        record.run = f" (task '{task}')" if task else f" (flow run '{flow_run}')" if flow_run else ""
        return super().format(record)


class _LogFileHandler(logging.Handler):
    def __init__(self, log: RunLog):
        super().__init__()
        self.log = log
        self.setFormatter(_RecordFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write_line(self.format(record))
        except Exception:  # noqa: BLE001
            self.handleError(record)


class _ConsoleErrorHandler(logging.Handler):
    """ERROR records of any logger, WARNING records of our own, a task's retry notice: on the
    terminal, in full."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console
        self.setFormatter(_RecordFormatter())

    def filter(self, record: logging.LogRecord) -> bool:
        if _RETRY.match(str(record.msg)):  # "Task run failed with exception: ... - Retry 1/3 will start ..." (INFO)
            return True
        if record.levelno < logging.WARNING or (record.levelno < logging.ERROR and not record.name.startswith(OWN_LOGGERS)):
            return False
        return not _REPEATS.match(str(record.msg))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.error_record(self.format(record), record)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _loggers() -> list[logging.Logger]:
    return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]


def _terminal_handlers(streams: tuple) -> list[tuple[logging.Logger, logging.Handler]]:
    """(logger, handler) for every handler that writes to the terminal (Prefect's console handler, ...)."""
    found = []
    for logger in _loggers():
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                    and any(getattr(handler, "stream", None) is s for s in streams):
                found.append((logger, handler))
    return found


@contextlib.contextmanager
def _logging_to(log: RunLog, console: Console, terminal_streams: tuple):
    """Every log record also goes to the log file; quiet, the handlers that write to the terminal
    (Prefect's console handler, ...) step aside for the console's error handler. Prefect's API
    handler, which feeds the UI, is never touched."""
    to_file, to_console = _LogFileHandler(log), _ConsoleErrorHandler(console)
    on_terminal = _terminal_handlers(terminal_streams)
    root = logging.getLogger()
    # Loggers that do not propagate to the root (and write to the terminal) get the handlers themselves.
    targets = [root, *{id(lg): lg for lg, _ in on_terminal if lg is not root and not lg.propagate}.values()]
    added = [(logger, handler) for logger in targets for handler in ((to_file,) if console.verbose else (to_file, to_console))]
    moved = [] if console.verbose else on_terminal
    for logger, handler in added:
        logger.addHandler(handler)
    for logger, handler in moved:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
        for logger, handler in moved:
            logger.addHandler(handler)


# ------------------------------------------------------------------ task state changes
@contextlib.contextmanager
def _watching_task_states(on_change):
    """``on_change(task_run, state)`` after every state change of every task run of this process.

    Prefect's task engine reports each change through ``emit_task_run_state_change_event`` (the
    event the UI shows); it is wrapped here for the duration of the run. A console problem never
    reaches the task: ``on_change`` errors are logged to the log file only."""
    import prefect.task_engine as engine

    original = engine.emit_task_run_state_change_event
    signature = inspect.signature(original)

    @functools.wraps(original)
    def emit(*args, **kwargs):
        event = original(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
            on_change(bound.arguments.get("task_run"), bound.arguments.get("validated_state"))
        except Exception as err:  # noqa: BLE001 - the console never fails the work it reports on
            logging.getLogger(__name__).debug("console: %s", err)
        return event

    engine.emit_task_run_state_change_event = emit
    try:
        yield
    finally:
        engine.emit_task_run_state_change_event = original


# ------------------------------------------------------------------ the whole
@contextlib.contextmanager
def run_console(storage: Storage, *, verbose: bool = False, temporary_server: bool = False, argv: list[str] | None = None):
    """The console of one CLI run (see the module's docstring). A failed run prints its error in
    full, then the summary, and sets ``console.exit_code`` to 1 (the exception does not propagate);
    the log file is closed (uploaded) in every case."""
    terminal_out, terminal_err = sys.stdout, sys.stderr
    log = RunLog(storage)
    console = Console(log, terminal_err, verbose, temporary_server)
    console.header(storage, sys.argv[1:] if argv is None else argv)
    show_bars = verbose or terminal_err.isatty()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_watching_task_states(console.task_state))
        stack.enter_context(_logging_to(log, console, (terminal_out, terminal_err, sys.__stdout__, sys.__stderr__)))
        # Bars: quiet, on the terminal itself (past the proxies), erased when done; verbose, as always.
        stack.enter_context(bars_on(None) if verbose else bars_on(terminal_err, leave=False, shown=show_bars))
        sys.stdout, sys.stderr = _StreamProxy(log, terminal_out, verbose), _StreamProxy(log, terminal_err, verbose)
        try:
            yield console
        except Exception as err:  # noqa: BLE001 - shown in full, then the exit code says it
            sys.stdout, sys.stderr = terminal_out, terminal_err
            console.failed(err)
            console._closing_lines({})
        except BaseException:  # KeyboardInterrupt, SystemExit: still say where the log is
            sys.stdout, sys.stderr = terminal_out, terminal_err
            console.line(f"interrupted; log: {log.shown_as}")
            raise
        finally:
            sys.stdout, sys.stderr = terminal_out, terminal_err
            problem = log.close()
            if problem:
                print(f"warning: {problem}", file=terminal_err)
