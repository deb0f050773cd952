"""Running a dump's per-filesystem content work in forked worker processes, one per CPU.

At 10,000 mounts a dump archives about 5,000 small tmpfs, each a walk, a gzip and a new file
in the image directory: about 0.2 ms of this process's time each, one CPU busy and the
other idle while the processes stay frozen. The items are dealt round-robin to this process
and ``workers - 1`` children forked from it, each calling the same hook on its share; the
children send back what each call returned.

Only for drivers that say their ``dump_content`` may run so (``parallel_content = True``):
what a call changes in the dump's context, other than the jobs it leaves running
(``ctx.in_background``, which the child waits for itself), stays in the child.

A worker dies with this process (PR_SET_PDEATHSIG) and leads its own process group, so that
a failure here ends it together with a GNU tar it started. A worker that fails sends its
error back (as its type and attributes); the first error in item order is raised here once
every worker has ended. An error in this process's own share ends the workers at once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ..api import tracing
from ..errors import EXIT_FAILURE, EXIT_INTERNAL, CriuFwError, DumpError
from ..forking import fork_reporting, write_all
from ..kernel import parent_death_signal

T = TypeVar("T")
R = TypeVar("R")

#: Fewer items than this are not worth a fork (a few ms for a process of 60 MiB).
MIN_ITEMS = 32


class WorkerError(DumpError):
    """An error out of a worker that could not travel as itself (its type cannot be made
    again from its message); keeps the message and the exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: An exception as it travels: its type, args and attributes.
_Packed = tuple[type[BaseException], tuple[object, ...], dict[str, object]]


def _packed(exc: BaseException) -> _Packed:
    """``exc`` as (type, args, attributes): made again by :func:`_unpacked` without calling
    its ``__init__`` (criu-fw's errors take other arguments than the message they keep)."""
    packed = (type(exc), exc.args, dict(vars(exc)))
    try:
        pickle.dumps(packed)
    except Exception:
        code = getattr(exc, "exit_code", EXIT_INTERNAL)
        text = str(exc) if isinstance(exc, CriuFwError) else f"{type(exc).__name__}: {exc}"
        return (WorkerError, (text,), {"exit_code": code if isinstance(code, int) else 70})
    return packed


def _unpacked(cls: type[BaseException], args: tuple[object, ...],
              attrs: dict[str, object]) -> BaseException:
    exc = cls.__new__(cls)
    BaseException.__init__(exc, *args)
    exc.__dict__.update(attrs)
    return exc


def forks(n_items: int, workers: int) -> bool:
    """Whether a :class:`Pool` of ``n_items`` items and ``workers`` workers forks."""
    return workers > 1 and n_items >= MIN_ITEMS


class _Child:
    def __init__(self, pid: int, fd: int, first: int) -> None:
        self.pid, self.fd, self.first = pid, fd, first
        self.reaped = False  # its PID may be another process's from then on


class Pool(Generic[T, R]):
    """``Pool(items, call, workers).run(started)``: ``[call(i) for i in items]``, shared out.

    ``child_setup`` runs first in each worker (forget the parent's jobs, say), ``child_done``
    last (wait for the worker's own jobs), ``child_abort`` after a failure there (stop them);
    ``started`` runs here once the workers are forked (a thread may start then: nothing is
    forked after it)."""

    def __init__(self, items: Sequence[T], call: Callable[[T], R], workers: int,
                 child_setup: Callable[[], None] = lambda: None,
                 child_done: Callable[[], None] = lambda: None,
                 child_abort: Callable[[], None] = lambda: None) -> None:
        self.items = items
        self.call = call
        self.n = workers if forks(len(items), workers) else 1
        self.child_setup = child_setup
        self.child_done = child_done
        self.child_abort = child_abort

    def run(self, started: Callable[[], None] = lambda: None) -> list[R]:
        results: list[R | None] = [None] * len(self.items)
        children: list[_Child] = []
        try:
            for k in range(1, self.n):
                children.append(self._fork(k))
            started()
            for i in range(0, len(self.items), self.n):
                results[i] = self.call(self.items[i])
            errors = []
            while children:
                errors.append(self._collect(children[0], results))
                children.pop(0)
        except BaseException:
            for c in children:
                self._kill(c)
            raise
        first = min((e for e in errors if e is not None), key=lambda e: e[0], default=None)
        if first is not None:
            raise first[1]
        return results  # type: ignore[return-value]  # every slot filled above

    def _fork(self, k: int) -> _Child:
        pid, r = fork_reporting(lambda w, parent: self._child(k, w, parent))
        return _Child(pid, r, k)

    def _child(self, k: int, w: int, parent: int) -> int:
        os.setpgid(0, 0)
        parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        tracing.forked()
        out: list[tuple[int, object]] = []
        failed: tuple[int, _Packed] | None = None
        i = k
        try:
            self.child_setup()
            for i in range(k, len(self.items), self.n):
                out.append((i, self.call(self.items[i])))
            i = len(self.items)
            self.child_done()
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                self.child_abort()
            failed = (i, _packed(exc))
        traces = tracing.handed_back()
        try:
            data = pickle.dumps((out, failed, traces))
        except Exception as exc:  # a result that does not travel: said, not lost
            data = pickle.dumps(([], (i, _packed(WorkerError(
                f"a content worker's result cannot be sent back: {exc}", EXIT_INTERNAL))),
                traces))
        write_all(w, data)
        return 0

    def _collect(self, c: _Child, results: list[R | None]) -> tuple[int, BaseException] | None:
        chunks = []
        try:
            while chunk := os.read(c.fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(c.fd)
            c.fd = -1
        _, status = os.waitpid(c.pid, 0)
        c.reaped = True
        if not chunks or os.waitstatus_to_exitcode(status) != 0:
            code = os.waitstatus_to_exitcode(status)
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            return (c.first, WorkerError(f"a content worker died ({how})", EXIT_FAILURE))
        out, failed, traces = pickle.loads(b"".join(chunks))
        tracing.take_back(traces)
        for i, value in out:
            results[i] = value
        return None if failed is None else (failed[0], _unpacked(*failed[1]))

    @staticmethod
    def _kill(c: _Child) -> None:
        if c.reaped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(c.pid, 0)
        if c.fd >= 0:
            os.close(c.fd)
