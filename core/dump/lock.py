"""One dump of a process tree at a time.

Two dumps of the same tree would each stop and resume its processes: the first to finish
resumes them while the other still reads, and that one's images would describe processes
that ran meanwhile. A dump therefore holds an exclusive ``flock`` named after its root
process (pid and start time, so that a reused pid is another lock) for as long as it may
stop anything; a second dump of the same root waits for it, saying so once.

The lock files live in ``/run/lock`` (a tmpfs, empty after a boot) or the temporary
directory; they are left in place, since removing a lock file races with a waiter that has
it open. Overlapping trees with different roots are not detected (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator

#: Where the lock files go, first writable one wins (tests may point elsewhere).
LOCK_DIRS = ("/run/lock", tempfile.gettempdir())


def _start_time(pid: int, proc_root: str) -> str:
    with open(f"{proc_root}/{pid}/stat", "rb") as f:
        stat = f.read()
    # Field 22, after the parenthesised command name (which may hold spaces).
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def _lock_dir() -> str:
    for d in LOCK_DIRS:
        if os.access(d, os.W_OK | os.X_OK):
            return d
    return tempfile.gettempdir()


@contextlib.contextmanager
def dump_lock(pid: int, proc_root: str, say: Callable[[str], None]) -> Iterator[None]:
    """Held while the tree of ``pid`` is dumped; waits for another dump of it first."""
    try:
        started = _start_time(pid, proc_root)
    except (OSError, ValueError, IndexError):
        yield  # no such process: the dump itself says so
        return
    path = os.path.join(_lock_dir(), f"criu-fw-dump-{pid}-{started}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another criu-fw dump of process {pid} is running; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
