"""How a merge reports progress and is stopped: the caller's callbacks, checked between keys."""
from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class MergeCancelled(RuntimeError):
    """Raised between keys when the caller's stop check says so."""


def stop_if_asked(should_stop: Optional[StopFn]) -> None:
    if should_stop is not None and should_stop():
        raise MergeCancelled("merge cancelled")
