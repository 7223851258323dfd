"""Progress of long loops: a tqdm bar on the terminal, plus whoever listens.

The library never imports Prefect. A caller that wants progress elsewhere (the tasks layer sends
it to Prefect progress artifacts) installs a listener for the duration of a call:

    with reporting_to(lambda description, fraction: ...):
        cache_activations(...)

Every bar opened inside, in this thread, calls ``listener(description, fraction)`` as it moves,
whether or not its terminal bar is shown.

Where the bars are drawn is the caller's too, for the whole process (the CLI's quiet console sends
them to the real terminal while everything else written to stderr goes to the run's log file):

    with bars_on(terminal, leave=False):
        ...                          # every bar opened inside, in any thread, draws on ``terminal``
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

Listener = Callable[[str, float], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("sae_core_progress_listener", default=None)
T = TypeVar("T")


@dataclass(frozen=True)
class _BarPlace:
    file: TextIO | None = None  # None: tqdm's own default, sys.stderr when the bar opens
    leave: bool = True
    shown: bool = True


# Process-wide on purpose: bars open in the task runner's worker threads, which do not see the
# context variables of the thread that set this.
_BAR_PLACE = _BarPlace()


@contextlib.contextmanager
def reporting_to(listener: Listener | None):
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextlib.contextmanager
def bars_on(file: TextIO | None, *, leave: bool = True, shown: bool = True):
    """Every bar opened inside (in any thread) draws on ``file`` (None: sys.stderr); ``leave=False``
    erases a bar when it closes; ``shown=False`` draws none (listeners still hear every bar)."""
    global _BAR_PLACE
    previous, _BAR_PLACE = _BAR_PLACE, _BarPlace(file, leave, shown)
    try:
        yield
    finally:
        _BAR_PLACE = previous


class Progress:
    """A tqdm bar (shown if ``show``) whose position also goes to the current listener."""

    def __init__(self, total: float, description: str, unit: str = "it", show: bool = True):
        self.total, self.description, self.done = float(total), description, 0.0
        place = _BAR_PLACE
        self.bar = tqdm(total=total, desc=description, unit=unit, disable=not (show and place.shown), file=place.file,
                        leave=place.leave)
        self.listener = _LISTENER.get()
        self._tell(0.0)

    def update(self, n: float = 1) -> None:
        self.done += n
        self.bar.update(n)
        self._tell(self.done / self.total if self.total else 1.0)

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _tell(self, fraction: float) -> None:
        if self.listener is not None:
            self.listener(self.description, min(1.0, fraction))


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it", show: bool = True) -> Iterator[T]:
    """``for x in track(items, "what"):`` with a bar and listener updates."""
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(total, description, unit=unit, show=show) as bar:
        for item in items:
            yield item
            bar.update(1)
