"""Forking a worker that reports to its parent through a pipe (the dump's content workers,
the restore's fill workers)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def fork_reporting(work: Callable[[int, int], int], close: Iterable[int] = ()) -> tuple[int, int]:
    """Fork a child that closes ``close`` (descriptors of earlier workers), runs
    ``work(w, parent_pid)`` with ``w`` the write end of a new pipe and exits with what it
    returns, never coming back into the caller's stack. Returns (pid, read end)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    try:
        pid = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # pragma: no cover - the child; its work is checked by the parent
        code = 1
        try:
            os.close(r)
            for fd in close:
                os.close(fd)
            code = work(w, parent)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a report pipe: a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
