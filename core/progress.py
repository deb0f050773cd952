"""Progress of a long dump or restore: a line per phase, with counts and the time so far.

The library reports through a callable it is given (``dump(..., progress=print)``); the CLI
passes one that writes to stderr when stderr is a terminal (and not with ``--quiet``), so
a 100,000-mount dump is not a silent minute and scripts see nothing they did not ask for.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Reports phases as ``  1.23 s  read 10,017 mounts of 1 namespace`` lines."""

    def __init__(self, emit: Callable[[str], None] | None) -> None:
        self._emit = emit
        self._start = time.monotonic()

    def __call__(self, what: str) -> None:
        if self._emit is not None:
            self._emit(f"{time.monotonic() - self._start:7.2f} s  {what}")


def count(n: int, what: str) -> str:
    """``10,017 mounts``, ``1 namespace`` (a plain s plural: what this module says)."""
    return f"{n:,} {what}{'' if n == 1 else 's'}"
