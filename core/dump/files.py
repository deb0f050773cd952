"""A process's open files, cwd, root and exe, as /proc shows them.

Per fd: the ``fd/N`` link (the path from the process's root), ``fdinfo/N`` (pos, flags,
mnt_id) and, on a live system, ``stat`` through the link (identity, size, mode). Only files
with a path are dumped (regular files, directories, device nodes); sockets, pipes, FIFOs and
anonymous inodes belong to the rest of a checkpointer, not to the filesystem half.

On a recording, nothing is stat'ed (the links point at paths of the recorded machine);
identity stays ``None`` and drivers that need it read it under ``ctx.root``.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections import Counter

from ..errors import DumpError
from ..files import FileIdentity, OpenFile
from ..kernel import statx_mnt_id
from ..model import Dev
from .procfs import ProcessGoneError, ProcFS, ProcReadError

FD_CWD, FD_ROOT, FD_EXE = -1, -2, -3
_DELETED = " (deleted)"
_KEEP = frozenset((st.S_IFREG, st.S_IFDIR, st.S_IFCHR, st.S_IFBLK))


def split_deleted(path: str) -> tuple[str, bool]:
    if path.endswith(_DELETED):
        return path[: -len(_DELETED)], True
    return path, False


def parse_fdinfo(data: bytes) -> tuple[int, int, int | None]:
    """``pos``, ``flags`` (octal in the text) and ``mnt_id`` of one fdinfo file."""
    pos = flags = 0
    mnt_id: int | None = None
    for line in data.split(b"\n", 4)[:4]:
        key, _, value = line.partition(b":")
        if key == b"pos":
            pos = int(value)
        elif key == b"flags":
            flags = int(value, 8)
        elif key == b"mnt_id":
            mnt_id = int(value)
    return pos, flags, mnt_id


def fd_kind(target: str) -> str:
    """What an fd that is no file of a mount is, from its link: ``socket:[12]`` -> socket,
    ``pipe:[3]`` -> pipe, ``anon_inode:[eventfd]`` -> eventfd, ``net:[4026531840]`` -> net."""
    kind, _, rest = target.partition(":")
    if kind == "anon_inode":
        kind = rest.strip("[]") or kind
    return kind[:32] or "unknown"


class FileReader:
    """Reads the files of processes under one ProcFS (live: with stat and statx).

    fds that are no file of a mount (pipes, sockets, anonymous inodes, FIFOs) are left to
    the process checkpointer; :attr:`skipped` counts them by kind, for the dump's summary."""

    def __init__(self, fs: ProcFS, live: bool) -> None:
        self.fs = fs
        self.live = live
        self.skipped: Counter[str] = Counter()

    def _identity(self, path: str) -> tuple[FileIdentity | None, int, int]:
        """(identity, size, mode) by stat'ing through a /proc magic link."""
        s = os.stat(path)
        dev = Dev(os.major(s.st_dev), os.minor(s.st_dev))
        return FileIdentity(dev, s.st_ino), s.st_size, s.st_mode

    def fds(self, pid: int) -> list[OpenFile]:
        fs = self.fs
        names = fs.listdir(pid, "fd")
        assert names is not None
        fd_dir = fs.path(pid, "fd")
        info_dir = fs.path(pid, "fdinfo")
        out = []
        for name in names:
            fd = int(name)
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError as exc:
                if exc.errno == errno.ENOENT and fs.exists(pid):
                    continue  # closed meanwhile (only possible when not frozen)
                raise self._fail(pid, f"fd/{name}", exc) from exc
            if not target.startswith("/"):
                self.skipped[fd_kind(target)] += 1  # socket:[..], pipe:[..], anon_inode:..
                continue
            try:
                ifd = os.open(f"{info_dir}/{name}", os.O_RDONLY)
                try:
                    info = os.read(ifd, 4096)
                finally:
                    os.close(ifd)
            except OSError as exc:
                if exc.errno == errno.ENOENT and not self.live and fs.exists(pid):
                    info = b""  # a recording without this fdinfo
                else:
                    raise self._fail(pid, f"fdinfo/{name}", exc) from exc
            pos, flags, mnt_id = parse_fdinfo(info)
            path, deleted = split_deleted(target)
            identity, size, mode = None, 0, 0
            if self.live:
                try:
                    identity, size, mode = self._identity(f"{fd_dir}/{name}")
                except OSError as exc:
                    raise self._fail(pid, f"fd/{name}", exc) from exc
                if st.S_IFMT(mode) not in _KEEP:
                    # A FIFO or socket that has a path.
                    self.skipped["fifo" if st.S_ISFIFO(mode) else "socket"] += 1
                    continue
            out.append(OpenFile(pid, fd, path, flags, pos, mnt_id, size, mode, identity, deleted))
        out.sort(key=lambda f: f.fd)
        return out

    def special(self, pid: int, which: int) -> OpenFile | None:
        """cwd (-1), root (-2) or exe (-3); ``None`` where a recording or a kernel thread
        has no such link."""
        rel = {FD_CWD: "cwd", FD_ROOT: "root", FD_EXE: "exe"}[which]
        target = self.fs.readlink(pid, rel, optional=True)
        if target is None or not target.startswith("/"):
            return None
        path, deleted = split_deleted(target)
        identity, size, mode, mnt_id = None, 0, 0, None
        link = self.fs.path(pid, rel)
        if self.live:
            try:
                identity, size, mode = self._identity(link)
                mnt_id = statx_mnt_id(link)
            except OSError as exc:
                raise self._fail(pid, rel, exc) from exc
        # No open flags: none were given (CRIU 4.2 writes 0 for cwd, root and exe too).
        return OpenFile(pid, which, path, 0, 0, mnt_id, size, mode, identity, deleted)

    def _fail(self, pid: int, rel: str, exc: OSError) -> DumpError:
        if exc.errno in (errno.ENOENT, errno.ESRCH) and not self.fs.exists(pid):
            return ProcessGoneError(pid, rel)
        return ProcReadError(self.fs.path(pid, rel), exc)
