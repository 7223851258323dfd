"""Library progress bars, mirrored as Prefect progress artifacts on the running task's page.

    with report_progress():
        cache_activations(...)      # every sae_core.progress bar inside shows up in the UI

One artifact per bar description; updates are throttled (the API is remote and a training loop
ticks hundreds of times a second). Progress is a convenience: an API hiccup is logged once and
never fails the task.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from dataclasses import dataclass
from uuid import UUID

from sae_core.progress import _LISTENER, reporting_to

log = logging.getLogger(__name__)
MIN_INTERVAL_S = 2.0


@dataclass
class _Bar:
    artifact_id: UUID | None
    sent_pct: float
    sent_at: float
    seen_pct: float


class PrefectProgressArtifacts:
    def __init__(self, min_interval_s: float = MIN_INTERVAL_S):
        self.min_interval_s = min_interval_s
        self.bars: dict[str, _Bar] = {}
        self._failed = False

    def __call__(self, description: str, fraction: float) -> None:
        pct, now = round(100.0 * fraction, 1), time.monotonic()
        bar = self.bars.get(description)
        if bar is None:
            self.bars[description] = _Bar(self._create(pct, description), pct, now, pct)
            return
        bar.seen_pct = pct
        if pct != bar.sent_pct and (pct >= 100.0 or now - bar.sent_at >= self.min_interval_s):
            self._send(bar, description, now)

    def flush(self) -> None:
        """Send each bar's last position (a throttled update may be pending)."""
        for description, bar in self.bars.items():
            if bar.seen_pct != bar.sent_pct:
                self._send(bar, description, time.monotonic())

    def _create(self, pct: float, description: str) -> UUID | None:
        from prefect.artifacts import create_progress_artifact

        return self._guard(lambda: create_progress_artifact(pct, description=description))

    def _send(self, bar: _Bar, description: str, now: float) -> None:
        from prefect.artifacts import update_progress_artifact

        if bar.artifact_id is not None:
            self._guard(lambda: update_progress_artifact(bar.artifact_id, bar.seen_pct, description=description))
        bar.sent_pct, bar.sent_at = bar.seen_pct, now

    def _guard(self, call):
        if self._failed:
            return None
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - progress must never fail the work it reports on
            self._failed = True
            log.warning("progress artifacts disabled for this task: %s", exc)
            return None


@contextlib.contextmanager
def report_progress():
    """Inside a Prefect task run: mirror library progress bars as artifacts. Elsewhere: nothing."""
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        yield None
        return
    listener = PrefectProgressArtifacts()
    with reporting_to(listener):
        try:
            yield listener
        finally:
            listener.flush()


# ------------------------------------------------------------------ third-party tqdm bars (SAEBench)
# SAEBench draws plain tqdm bars on the worker's terminal. Inside ``mirror_tqdm``, every bar this
# thread draws also goes to the current progress listener (so to the task's progress artifacts).
_TQDM_PREFIX: contextvars.ContextVar[str | None] = contextvars.ContextVar("tqdm_mirror_prefix", default=None)
_TQDM_PATCH_LOCK = threading.Lock()
_TQDM_PATCHED = False
MAX_MIRRORED_BARS = 12  # per task: a loop that opens a bar per item must not flood the run page


def _install_tqdm_display_hook() -> None:
    global _TQDM_PATCHED
    with _TQDM_PATCH_LOCK:
        if _TQDM_PATCHED:
            return
        from tqdm import std

        original = std.tqdm.display

        def display(self, *args, **kwargs):
            shown = original(self, *args, **kwargs)
            prefix = _TQDM_PREFIX.get()
            if prefix is not None:  # only inside mirror_tqdm, in its thread (tqdm's monitor thread never sees it)
                _mirror(prefix, self)
            return shown

        std.tqdm.display = display
        _TQDM_PATCHED = True


def _mirror(prefix: str, bar) -> None:
    listener = _LISTENER.get()
    if listener is None or not bar.total:
        return
    description = f"{prefix}: {bar.desc or 'progress'}".rstrip(": ")
    seen = getattr(listener, "bars", None)
    if seen is not None and description not in seen and len(seen) >= MAX_MIRRORED_BARS:
        return
    try:
        listener(description, min(1.0, float(bar.n) / float(bar.total)))
    except Exception as exc:  # noqa: BLE001 - progress never fails the work
        log.debug("tqdm mirror: %s", exc)


@contextlib.contextmanager
def mirror_tqdm(prefix: str):
    """Every tqdm bar drawn inside (in this thread) also reports to the current progress listener,
    as ``"<prefix>: <bar description>"``; bars without a known total are left to the terminal."""
    _install_tqdm_display_hook()
    token = _TQDM_PREFIX.set(prefix)
    try:
        yield
    finally:
        _TQDM_PREFIX.reset(token)
