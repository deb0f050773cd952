"""The process tree: finding it through /proc, its threads, and keeping it still (SIGSTOP).

Children are found from the parent pid in ``/proc/PID/stat`` (this kernel has no
``task/TID/children``). On a live system the tree is frozen top-down, the way CRIU seizes it:
a process is stopped *before* its children are listed, so it cannot fork behind our back;
the scan repeats until it finds nobody new. Everything stopped is resumed by
:meth:`Freezer.resume` (the engine calls it in a ``finally``) unless the caller keeps the tree
stopped; processes that were already stopped before the dump are left stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable

import attrs

from ..errors import DumpError, DumpRefusedError
from .procfs import NoSuchProcessError, ProcessGoneError, ProcFS
from .watchdog import Watchdog

log = logging.getLogger("criu_fw.dump")

#: How long to wait for every thread of a process to reach the stopped state.
STOP_TIMEOUT = 10.0


@attrs.frozen
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int


def parse_stat(data: bytes, pid: int) -> ProcStat:
    """One ``/proc/PID/stat`` line; the command name may hold spaces and parentheses."""
    head, sep, tail = data.rpartition(b")")
    if not sep:
        raise DumpError(f"/proc/{pid}/stat: no ')' after the command name")
    comm = head.partition(b"(")[2].decode("utf-8", "surrogateescape")
    f = tail.split()
    try:
        return ProcStat(pid, comm, f[0].decode(), int(f[1]), int(f[2]), int(f[3]))
    except (IndexError, ValueError):
        raise DumpError(f"/proc/{pid}/stat: cannot parse {data[:120]!r}") from None


def _stat_from_status(data: bytes, pid: int) -> ProcStat:
    """Fallback for recordings that hold ``status`` but no ``stat``."""
    fields = {}
    for line in data.splitlines():
        key, _, value = line.partition(b":")
        fields[key.strip()] = value.strip()
    try:
        ppid = int(fields[b"PPid"])
    except (KeyError, ValueError):
        raise DumpError(f"/proc/{pid}/status: no PPid line") from None
    pgid = int(fields.get(b"NSpgid", b"0").split()[0] or 0) if b"NSpgid" in fields else pid
    sid = int(fields.get(b"NSsid", b"0").split()[0] or 0) if b"NSsid" in fields else pid
    state = fields.get(b"State", b"S").decode()[:1] or "S"
    name = fields.get(b"Name", b"").decode("utf-8", "surrogateescape")
    return ProcStat(pid, name, state, ppid, pgid, sid)


def read_stat(fs: ProcFS, pid: int) -> ProcStat:
    data = fs.read(pid, "stat", optional=True)
    if data is not None:
        return parse_stat(data, pid)
    status = fs.read(pid, "status", optional=True)
    if status is None:
        raise DumpError(f"{fs.path(pid)}: neither stat nor status can be read")
    return _stat_from_status(status, pid)


@attrs.frozen
class Process:
    """One dumped process (a thread-group leader) and its threads."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    threads: tuple[int, ...]


class Freezer:
    """Stops processes with SIGSTOP and resumes exactly those it stopped."""

    def __init__(self, fs: ProcFS, enabled: bool, watchdog: Watchdog | None = None) -> None:
        self.fs = fs
        self.enabled = enabled
        self.stopped: list[int] = []
        self.watchdog = watchdog

    def stop(self, pid: int, state: str) -> None:
        if not self.enabled:
            return
        if state in "Tt":
            log.debug("process %d was already stopped; it stays stopped", pid)
            return
        # Recorded (here and by the watchdog) before the signal: whatever interrupts the
        # dumper after this, the process is resumed; a SIGCONT it did not need is harmless.
        self.stopped.append(pid)
        if self.watchdog is not None:
            self.watchdog.stopping(pid)
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            self.stopped.remove(pid)
            raise ProcessGoneError(pid, "SIGSTOP") from None
        self._wait_stopped(pid)

    def _wait_stopped(self, pid: int) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        delay = 0.0002
        while True:
            pending = []
            for tid in self.fs.listdir(pid, "task") or ():
                data = self.fs.read(pid, f"task/{tid}/stat", optional=True)
                if data is None:
                    continue  # the thread exited meanwhile
                state = parse_stat(data, int(tid)).state
                if state not in "TtZX":
                    pending.append(tid)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise DumpError(
                    f"process {pid}: threads {', '.join(pending[:5])} did not stop within "
                    f"{STOP_TIMEOUT:.0f}s (uninterruptible sleep?)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def resume(self) -> None:
        """SIGCONT everything this freezer stopped; a process that is gone is skipped."""
        for pid in reversed(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()
        if self.watchdog is not None:
            self.watchdog.forget()

    def leave(self) -> list[int]:
        """Forget the stopped processes without resuming them (``--leave-stopped``)."""
        out, self.stopped = self.stopped, []
        if self.watchdog is not None:
            self.watchdog.forget()
        return out


def _threads(fs: ProcFS, pid: int) -> tuple[int, ...]:
    names = fs.listdir(pid, "task", optional=True)
    if not names:
        return (pid,)
    tids = sorted(int(n) for n in names if n.isdigit())
    # The leader first, as CRIU lists it.
    return (pid, *(t for t in tids if t != pid))


def _scan(fs: ProcFS, skip: Iterable[int]) -> dict[int, ProcStat]:
    """Every process's stat (ppid), ignoring those that vanish during the scan."""
    known = set(skip)
    out = {}
    for pid in fs.pids():
        if pid in known:
            continue
        try:
            out[pid] = read_stat(fs, pid)
        except (ProcessGoneError, DumpError):
            continue
    return out


#: ``PF_KTHREAD`` in the flags field (9) of /proc/PID/stat.
PF_KTHREAD = 0x00200000


def stat_flags(fs: ProcFS, pid: int) -> int:
    """The task flags (``PF_*``) of ``/proc/PID/stat``; 0 where a recording lacks them."""
    data = fs.read(pid, "stat", optional=True) or b""
    f = data.rpartition(b")")[2].split()
    try:
        return int(f[6])  # f[0] is field 3 (state): field 9 is f[6]
    except (IndexError, ValueError):
        return 0


def check_target(fs: ProcFS, root_pid: int, me: int) -> None:
    """Refuse, before anything is stopped, a tree that cannot be frozen from here: the
    dumper itself or one of its ancestors (``-t $$`` would stop the calling shell, ``-t 1``
    everything), or a kernel thread (SIGSTOP does nothing to it)."""
    if root_pid == me:
        raise DumpRefusedError(f"process {root_pid} is the dumper itself")
    if stat_flags(fs, root_pid) & PF_KTHREAD:
        raise DumpRefusedError(
            f"process {root_pid} ({read_stat(fs, root_pid).comm}) is a kernel thread: it has "
            "no mounts, files or mappings of its own to dump"
        )
    pid, seen = me, set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        try:
            pid = read_stat(fs, pid).ppid
        except DumpError:
            return  # an ancestor exited meanwhile: nothing above it can be in the tree
        if pid == root_pid:
            raise DumpRefusedError(
                f"the dumper (pid {me}) is inside the tree of process {root_pid} (one of "
                "its ancestors), which would stop the dumper too; dump it from outside"
            )


def collect_tree(fs: ProcFS, root_pid: int, freezer: Freezer) -> list[Process]:
    """The tree rooted at ``root_pid``, parents before children, frozen on a live system."""
    if not fs.exists(root_pid):
        raise NoSuchProcessError(root_pid, fs.root)
    me = os.getpid()
    stats: dict[int, ProcStat] = {root_pid: read_stat(fs, root_pid)}
    order = [root_pid]
    if fs.live:
        check_target(fs, root_pid, me)
    freezer.stop(root_pid, stats[root_pid].state)
    while True:
        found = []
        for _pid, st in sorted(_scan(fs, stats).items()):
            if st.ppid in stats:
                found.append(st)
        if not found:
            break
        # Parents before children within one round too: a round may find several levels.
        found.sort(key=lambda s: (s.pid,))
        for st in found:
            if fs.live and st.pid == me:
                raise DumpError(
                    f"the dumper (pid {me}) is inside the tree of process {root_pid}; "
                    "dump it from outside"
                )
            stats[st.pid] = st
            order.append(st.pid)
            freezer.stop(st.pid, st.state)
    procs = []
    for pid in order:
        # Re-read after the freeze: pgid/sid may have changed before the process stopped.
        st = read_stat(fs, pid) if freezer.enabled else stats[pid]
        procs.append(Process(pid, stats[pid].ppid if pid != root_pid else 0,
                             st.pgid, st.sid, st.comm, _threads(fs, pid)))
    return _parents_first(procs)


def _parents_first(procs: list[Process]) -> list[Process]:
    by_pid = {p.pid: p for p in procs}
    kids: dict[int, list[Process]] = {}
    for p in procs:
        if p.ppid in by_pid:
            kids.setdefault(p.ppid, []).append(p)
    out: list[Process] = []
    stack = [procs[0]]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(sorted(kids.get(p.pid, ()), key=lambda q: -q.pid))
    return out
