"""Content put back by worker processes forked from the builder, while it makes the mounts.

At 10,000 mounts a restore fills about 5,000 small tmpfs from their archives, each a read, a
gunzip and a few files made: 0.6 s of the builder's 0.97 s build (0.12 ms each), while the
second CPU idled. When a driver says its ``restore_content`` may run so
(``parallel_restore_content = True``), the builder creates a batch of such superblocks ahead
(they depend on nothing), forks one worker per further CPU, and goes on making mounts; the
workers call the same hook on their share, in step order, and report each superblock as it
is filled. The builder waits for one only when a mount is cut from it (as for any
:class:`~criu_fw.plan.ContentJob`): the filling and the mounting overlap.

A worker inherits the superblocks' descriptors with the fork (nothing is handed over) and
is in the same mount namespace. What a hook changes in the context stays in the worker; a
``ContentJob`` it returns (a GNU tar for a big archive) is waited for there, up to
:data:`JOBS_PER_WORKER` at once. A worker dies with the builder (PR_SET_PDEATHSIG) and leads
its own process group, so that a cancel ends it with its tars. Its first error ends it and
is raised here, as its one-line message, when the builder next waits for any superblock of
that worker.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ..api import tracing
from ..errors import RestoreError
from ..forking import fork_reporting, write_all
from ..kernel import parent_death_signal
from ..plan import ContentJob
from .signals import SIGNALS

T = TypeVar("T")

#: Fewer superblocks than this are filled by the builder itself (a fork of the builder,
#: a few ms, is worth it from about this many small archives).
MIN_BATCH = 32
#: Content jobs (GNU tars) one worker keeps running at once. A tar and its gzip are two
#: processes that wait on each other much of the time: four 256 MiB archives restored in
#: 3.9-4.0 s with up to 4 (all of them at once), 4.1-4.3 s with 2 (one run each).
JOBS_PER_WORKER = 4
#: How often a worker with all its jobs running looks for one that ended (seconds).
_POLL = 0.005


class _Worker:
    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd
        self.buf = b""
        self.error: str | None = None
        self.ended = False  # its report reached its end
        self.reaped = False
        self.status = 0
        # poll, not select: the builder holds thousands of descriptors (select stops at 1024).
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)


class FillWorkers(Generic[T]):
    """``FillWorkers(items, fill, n)``: ``fill(item)`` for each item, in ``n`` forked workers
    (item ``i`` in worker ``i % n``). ``fill`` returns ``None`` when done, or a job to wait
    for; it raises :class:`RestoreError` with the whole message (naming the mount).
    ``job_error(item, exc)`` words a job's failure the same way."""

    def __init__(
        self,
        items: Sequence[T],
        fill: Callable[[T], ContentJob | None],
        workers: int,
        job_error: Callable[[T, BaseException], RestoreError],
    ) -> None:
        self.items = items
        self.n = max(1, min(workers, len(items)))
        self._fill = fill
        self._job_error = job_error
        self._done: set[int] = set()
        self._workers: list[_Worker] = []

    def start(self) -> None:
        try:
            for k in range(self.n):
                self._workers.append(self._fork(k))
        except BaseException:
            self.cancel()
            raise

    # -- in the builder ------------------------------------------------------------------

    def done(self, i: int) -> bool:
        """Whether item ``i`` is filled (or its worker failed), reading what the worker
        reported so far without waiting."""
        if i not in self._done:
            w = self._workers[i % self.n]
            while not w.ended and w.error is None and w.poll.poll(0):
                self._read(w)
            return i in self._done or w.error is not None or w.ended
        return True

    def wait(self, i: int) -> None:
        """Until item ``i`` is filled; raises the worker's error (whichever item it was
        about: the restore fails on the first one)."""
        w = self._workers[i % self.n]
        while i not in self._done:
            if w.error is not None:
                raise RestoreError(w.error)
            if w.ended:
                raise RestoreError(self._died(w))
            self._read(w)

    def finish(self) -> None:
        """Every item filled and every worker ended (reaped); raises as :meth:`wait`."""
        for w in self._workers:
            while not w.ended and w.error is None:
                self._read(w)
            if w.error is not None:
                raise RestoreError(w.error)
        for i in range(len(self.items)):
            self.wait(i)
        for w in self._workers:
            self._reap(w)

    def cancel(self) -> None:
        """End every worker and the tars it started (the restore failed); never raises."""
        for w in self._workers:
            if not w.reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                self._reap(w)
            if w.fd >= 0:
                os.close(w.fd)
                w.fd = -1

    def _read(self, w: _Worker) -> None:
        chunk = os.read(w.fd, 1 << 16)
        if not chunk:
            w.ended = True
            return
        w.buf += chunk
        *lines, w.buf = w.buf.split(b"\n")
        for line in lines:
            if line[:1] == b"E":
                w.error = line[1:].decode("utf-8", "replace")
            elif line[:1] == b"T":
                tracing.take_back(bytes.fromhex(line[1:].decode()))
            else:
                self._done.add(int(line))

    def _reap(self, w: _Worker) -> None:
        if w.reaped:
            return
        with contextlib.suppress(ChildProcessError):
            _, w.status = os.waitpid(w.pid, 0)
        w.reaped = True
        if w.fd >= 0:
            os.close(w.fd)
            w.fd = -1

    def _died(self, w: _Worker) -> str:
        self._reap(w)
        code = os.waitstatus_to_exitcode(w.status)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        first = next(i for i in range(self._workers.index(w), len(self.items), self.n)
                     if i not in self._done)
        return f"{self._describe(first)}: the process putting its content back died ({how})"

    def _describe(self, i: int) -> str:
        item = self.items[i]
        mount = getattr(item, "mount", None)
        describe = getattr(mount, "describe", None)
        return describe() if callable(describe) else f"content item {i}"

    # -- in a worker ---------------------------------------------------------------------

    def _fork(self, k: int) -> _Worker:
        pid, r = fork_reporting(lambda w, parent: self._work(k, w, parent),
                                [other.fd for other in self._workers])
        return _Worker(pid, r)

    def _work(self, k: int, out: int, parent: int) -> int:  # pragma: no cover - a worker
        os.setpgid(0, 0)
        parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            return 1
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        tracing.forked()
        running: deque[tuple[int, ContentJob]] = deque()
        i = k
        try:
            for i in range(k, len(self.items), self.n):
                job = self._fill(self.items[i])
                if job is None:
                    write_all(out, b"%d\n" % i)
                else:
                    running.append((i, job))
                # An ended job is reported as soon as it is seen: the builder may be waiting
                # for that filesystem (the root's big archive, say). At the limit, the first
                # job to end makes room, not the oldest: a small tar started after a big one
                # does not wait for it, nor does the next filesystem.
                while running:
                    ended = [e for e in running if e[1].done()]
                    for entry in ended:
                        running.remove(entry)
                        self._finish_job(out, *entry)
                    if len(running) < JOBS_PER_WORKER:
                        break
                    time.sleep(_POLL)
            while running:
                self._finish_job(out, *running.popleft())
        except Exception as exc:
            for _, job in running:
                job.cancel()
            text = str(exc) if isinstance(exc, RestoreError) else (
                f"{self._describe(i)}: {type(exc).__name__}: {exc}")
            _say_traces(out)
            write_all(out, b"E" + text.replace("\n", " ").encode("utf-8", "replace") + b"\n")
            return 0
        _say_traces(out)
        return 0

    def _finish_job(self, out: int, i: int, job: ContentJob) -> None:  # pragma: no cover
        try:
            job.wait()
        except Exception as exc:
            raise self._job_error(self.items[i], exc) from exc
        write_all(out, b"%d\n" % i)


def _say_traces(fd: int) -> None:  # pragma: no cover - a worker
    """The trace records made here, as one ``T<hex>`` line (none: nothing)."""
    data = tracing.handed_back()
    if data:
        write_all(fd, b"T" + data.hex().encode() + b"\n")




__all__ = ["MIN_BATCH", "FillWorkers"]
