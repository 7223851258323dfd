"""``no_grad``: ``@torch.no_grad()`` for modules that load torch only when their functions run.

Config validation, metric settings and fully cached flow runs import those modules but never
call into torch; importing torch costs seconds, which a cached re-run should not pay.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def no_grad(fn: F) -> F:
    """Run ``fn`` under ``torch.no_grad()``; torch is imported on the first call, not at decoration."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
