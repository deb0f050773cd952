"""Ids of file descriptions and fd tables, the way CRIU shares them.

Each distinct open file description gets one id in files.img: two fds (in one process after
dup(), or in a parent and a child after fork()) that share a description share the id. The
kernel says so through ``kcmp(KCMP_FILE)``; it is asked only for fds whose path, mount,
flags, position and identity already agree, so the cost stays one syscall per candidate, not
per pair of fds. Processes that share an fd table (CLONE_FILES) share a ``files_id``
(``kcmp(KCMP_FILES)``). A recording cannot be asked: every fd gets its own id there.
"""

from __future__ import annotations

import ctypes

from ..files import FileIdentity, OpenFile

SYS_kcmp = 312
KCMP_FILE = 0
KCMP_FILES = 2

_libc = ctypes.CDLL(None, use_errno=True)  # libc, as in criu_fw.kernel
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """0 if equal, 1/2 for an order, -1 when the kernel cannot compare (errors included)."""
    ret = _syscall(SYS_kcmp, ctypes.c_int(pid1), ctypes.c_int(pid2), ctypes.c_int(kind),
                   ctypes.c_ulong(idx1), ctypes.c_ulong(idx2))
    return int(ret)


_FileKey = tuple[str, int | None, int, int, FileIdentity | None]


class FileIds:
    """Hands out ids for files.img: one per open file description, starting at 1."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.next_id = 1
        self._seen: dict[_FileKey, list[tuple[int, int, int]]] = {}
        self._maps: dict[tuple[str, int | None, int, FileIdentity | None], int] = {}

    def new(self) -> int:
        n = self.next_id
        self.next_id += 1
        return n

    def for_fd(self, f: OpenFile, mnt_id: int | None) -> tuple[int, bool]:
        """(id, new?) for an open fd; ``new`` is False when it shares an earlier description.

        A bucket of same-looking fds is kept in the kernel's order of their descriptions
        (kcmp orders them), so finding a match is a binary search: O(log n) kcmp calls even
        when one file is open thousands of times.
        """
        key = (f.path, mnt_id, f.flags, f.pos, f.identity)
        bucket = self._seen.get(key)
        if bucket is None:
            n = self.new()
            self._seen[key] = [(f.pid, f.fd, n)]
            return n, True
        if not self.live:
            return self.new(), True
        lo, hi = 0, len(bucket)
        while lo < hi:
            mid = (lo + hi) // 2
            pid, fd, n = bucket[mid]
            r = kcmp(f.pid, pid, KCMP_FILE, f.fd, fd)
            if r == 0:
                return n, False
            if r == 1:
                hi = mid
            elif r == 2:
                lo = mid + 1
            else:  # no order available (3) or an error: compare one by one
                for pid, fd, n in bucket:
                    if kcmp(f.pid, pid, KCMP_FILE, f.fd, fd) == 0:
                        return n, False
                n = self.new()
                bucket.append((f.pid, f.fd, n))
                return n, True
        n = self.new()
        bucket.insert(lo, (f.pid, f.fd, n))
        return n, True

    def for_mapping(
        self, path: str, mnt_id: int | None, flags: int, identity: FileIdentity | None
    ) -> tuple[int, bool]:
        """One id per mapped file (and open mode): the VMAs of one file share it."""
        key = (path, mnt_id, flags, identity)
        n = self._maps.get(key)
        if n is not None:
            return n, False
        n = self.new()
        self._maps[key] = n
        return n, True


class TableIds:
    """``files_id`` per process: equal for processes that share one fd table."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self._tables: list[tuple[int, int]] = []

    def files_id(self, pid: int) -> int:
        if self.live:
            for other, n in self._tables:
                if kcmp(pid, other, KCMP_FILES) == 0:
                    return n
        n = len(self._tables) + 1
        self._tables.append((pid, n))
        return n
