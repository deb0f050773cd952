"""Dumps at the same time never share a process.

Two dumps that stop and resume the same process corrupt each other: the first to finish
resumes it while the other still reads it (that one's images describe a process that ran
meanwhile), or one takes the other's stop for "already stopped" and leaves it stopped. The
trees may overlap without having the same root (``-t PARENT`` and ``-t CHILD``), so a dump
locks every process of its tree: one exclusive ``flock`` per process, on a file named after
its pid and start time (a reused pid is another lock), held until the dump is over.

Deadlocks are avoided by ordering. The tree is listed without stopping anything
(:func:`tree_of`) and locked lowest pid first, waiting for whichever dump holds a lock;
every dump does the same, so no two wait for each other. The tree is then collected again
while it is frozen (:func:`~.procs.collect_tree`) and each process is locked just before it
is stopped (:class:`_LockingFreezer`): one locked already, fine; a new one (the tree grew,
or a pid was reused) is locked without waiting, since waiting out of order could deadlock.
If another dump holds it, the dump resumes what it stopped, lets go of every lock, waits for
that one lock alone and starts again from the listing (:func:`locked_tree`). A dump waits
for another one saying so once; nothing is ever stopped by two dumps.

The lock files live in ``/run/lock`` (a tmpfs, empty after a boot) or the temporary
directory. A dump's own are left in place, since removing a lock file races with a waiter
that has it open; each dump removes those of processes that are gone (:func:`prune`). A
recorded /proc stops nothing and is not locked (the engine does not call this module then).
Not covered: a dumper killed with SIGKILL lets go of its locks at once, while its watchdog
resumes the processes a moment later; a dump that was waiting may meet them still stopped in
between.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import resource
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import CriuFwError, DumpError
from .procfs import ProcFS
from .procs import Freezer, check_target
from .watchdog import Watchdog

#: Where the lock files go, first writable one wins (tests may point elsewhere).
LOCK_DIRS = ("/run/lock", tempfile.gettempdir())

T = TypeVar("T")


class LockBusy(Exception):
    """A process met while the tree was frozen is locked by another dump: the dump resumes
    what it stopped, waits for that process's lock and starts again (see :func:`locked_tree`).
    Never a :class:`~criu_fw.errors.CriuFwError`, so that nothing reports it as a failure."""

    def __init__(self, pid: int, started: str) -> None:
        super().__init__(f"process {pid} is locked by another criu-fw dump")
        self.pid = pid
        self.started = started


def _stat(proc_root: str, pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid``; ``None`` once it is gone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            stat = f.read()
        # After the parenthesised command name (which may hold spaces): field 4 is the
        # parent, field 22 the start time.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return int(fields[1]), fields[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int, proc_root: str) -> str:
    st = _stat(proc_root, pid)
    if st is None:
        raise ProcessLookupError(pid)
    return st[1]


def tree_of(fs: ProcFS, root: int) -> dict[int, str]:
    """The tree of ``root`` as it is now, pid -> start time, from one pass over /proc and
    without stopping anything; empty when the dump will refuse it anyway (no such process,
    the dumper or one of its ancestors, a kernel thread), so that nothing is locked for it."""
    me = os.getpid()
    try:
        check_target(fs, root, me)
    except CriuFwError:
        return {}
    kids: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for pid in fs.pids():
        st = _stat(fs.root, pid)
        if st is not None:
            kids.setdefault(st[0], []).append(pid)
            started[pid] = st[1]
    tree: dict[int, str] = {}
    todo = [root] if root in started else []
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree[pid] = started[pid]
            todo.extend(kids.get(pid, ()))
    return {} if me in tree else tree


def _lock_dir() -> str:
    for d in LOCK_DIRS:
        if os.access(d, os.W_OK | os.X_OK):
            return d
    return tempfile.gettempdir()


def _more_files() -> bool:
    """Raise the soft open-file limit to the hard one (a lock is one descriptor per process,
    and a soft limit of 1,024 is common); whether that gave more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return False  # RLIM_INFINITY above the kernel's nr_open
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] > soft


def _open(lock_dir: str, pid: int, started: str) -> int:
    path = os.path.join(lock_dir, f"criu-fw-dump-{pid}-{started}.lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.EMFILE and _more_files():
            return _open(lock_dir, pid, started)
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise DumpError(f"cannot open the dump lock {path}: {name} ({exc.strerror})") from exc


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class TreeLocks:
    """The locks one dump holds: one per process of its tree, pid -> (start time, fd)."""

    def __init__(self, fs: ProcFS, root: int, say: Callable[[str], None]) -> None:
        self.fs = fs
        self.root = root
        self.say = say
        self.dir = _lock_dir()
        self.held: dict[int, tuple[str, int]] = {}
        self._said = False

    def acquire(self) -> None:
        """Lock the tree as it is now, lowest pid first, waiting for other dumps."""
        for pid, started in sorted(tree_of(self.fs, self.root).items()):
            fd = _open(self.dir, pid, started)
            self.held[pid] = (started, fd)  # closed by release() whatever happens next
            if not _try_lock(fd):
                self._waiting(pid)
                fcntl.flock(fd, fcntl.LOCK_EX)

    def take(self, pid: int) -> None:
        """Lock ``pid`` before it is stopped. Never waits: out of pid order that could
        deadlock; raises :class:`LockBusy` instead when another dump holds it."""
        st = _stat(self.fs.root, pid)
        if st is None:
            return  # gone: stopping it fails and says so
        started = st[1]
        if self.held.get(pid, ("",))[0] == started:
            return
        self._drop(pid)  # the pid was reused since it was locked
        fd = _open(self.dir, pid, started)
        if not _try_lock(fd):
            os.close(fd)
            raise LockBusy(pid, started)
        self.held[pid] = (started, fd)

    def wait_for(self, busy: LockBusy) -> None:
        """Let go of every lock, then wait until the dump holding ``busy`` is done: waiting
        while holding nothing, nobody can be waiting for us."""
        self.release()
        fd = _open(self.dir, busy.pid, busy.started)
        try:
            if not _try_lock(fd):
                self._waiting(busy.pid)
                fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)

    def release(self) -> None:
        held, self.held = self.held, {}
        for _, fd in held.values():
            os.close(fd)

    def freezer(self, watchdog: Watchdog | None) -> Freezer:
        """A freezer that locks each process before it stops it."""
        return _LockingFreezer(self.fs, self, watchdog)

    def _drop(self, pid: int) -> None:
        old = self.held.pop(pid, None)
        if old is not None:
            os.close(old[1])

    def _waiting(self, pid: int) -> None:
        if self._said:
            return
        self._said = True
        if pid == self.root:
            self.say(f"another criu-fw dump of process {pid} is running; waiting for it")
        else:
            self.say(f"another criu-fw dump holds process {pid} of the tree of process "
                     f"{self.root}; waiting for it")


class _LockingFreezer(Freezer):
    """Locks every process before stopping it, those already stopped included (another dump
    may be the one that stopped them)."""

    def __init__(self, fs: ProcFS, locks: TreeLocks, watchdog: Watchdog | None) -> None:
        super().__init__(fs, enabled=True, watchdog=watchdog)
        self.locks = locks

    def stop(self, pid: int, state: str) -> None:
        self.locks.take(pid)
        super().stop(pid, state)


def locked_tree(fs: ProcFS, root: int, say: Callable[[str], None],
                run: Callable[[TreeLocks], T]) -> T:
    """``run(locks)`` with the tree of ``root`` locked; ``run`` freezes through
    ``locks.freezer`` and, on :class:`LockBusy`, has resumed everything it stopped: the
    listing and locking start again once the other dump is done. Every lock is let go of
    when ``run`` returns or fails."""
    prune(_lock_dir(), fs.root)
    locks = TreeLocks(fs, root, say)
    try:
        while True:
            locks.acquire()
            try:
                return run(locks)
            except LockBusy as busy:
                locks.wait_for(busy)
    finally:
        locks.release()


_LOCK_NAME = re.compile(r"criu-fw-dump-(\d{1,10})-(\d{1,20})\.lock")


def prune(lock_dir: str, proc_root: str = "/proc") -> int:
    """Remove the lock files of processes that are gone (their pid is free or another
    process's: the start time differs), so that one empty file per process ever dumped does
    not pile up. Safe: no dump locks a process that is gone, and a file someone holds
    (locked, or waited on: then someone holds it) is left. Returns how many went."""
    gone = 0
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return 0
    for name in names:
        m = _LOCK_NAME.fullmatch(name)
        if m is None:
            continue
        st = _stat(proc_root, int(m.group(1)))
        if st is not None and st[1] == m.group(2):
            continue
        try:
            fd = os.open(os.path.join(lock_dir, name),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                os.unlink(os.path.join(lock_dir, name))
                gone += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return gone


@contextlib.contextmanager
def dump_lock(pid: int, proc_root: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock a dump holds on process ``pid`` while it may stop it (a dump of any
    tree that holds ``pid`` waits meanwhile); waits for another holder first. An flock is
    per open file: a dump in the same process as the holder waits for it too."""
    try:
        started = _start_time(pid, proc_root)
    except ProcessLookupError:
        yield  # no such process: nothing to lock
        return
    fd = _open(_lock_dir(), pid, started)
    try:
        if not _try_lock(fd):
            say(f"another criu-fw dump of process {pid} is running; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
