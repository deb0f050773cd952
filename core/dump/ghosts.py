"""Files that were deleted while open (or made with O_TMPFILE): recorded the way CRIU does.

The kernel shows such a file as ``PATH (deleted)`` (``/dir/#1234 (deleted)`` for
O_TMPFILE); its ``file_entry`` keeps the old name, and ``remap-fpath.img`` marks it: an entry
(``orig_id`` = the file's id, ``remap_type`` GHOST, ``remap_id`` = the ghost's id) pointing at
``ghost-file-<id>.img``, which holds the inode's owner, mode, times and size and, after that
entry, its bytes, read through ``/proc/PID/fd/N`` (or ``map_files``) while the tree is frozen.
CRIU's own default limit applies to the bytes (:data:`GHOST_LIMIT`): a bigger file is
recorded as a ghost without content (``chunks`` set and no chunk), with a warning.

A memfd (``/memfd:NAME (deleted)``) is not a deleted file of any filesystem and is left out.
"""

from __future__ import annotations

import logging
import os
import stat as st

from ..images import ImageKind, write_image
from ..proto import remap_pb2
from .procfs import ProcFS

log = logging.getLogger("criu_fw.dump")

#: CRIU's default ``--ghost-limit``: the most bytes saved for one deleted file.
GHOST_LIMIT = 1 << 20

REMAP_FPATH = ImageKind("REMAP_FPATH", remap_pb2.remap_file_path_entry, "remap-fpath.img")
GHOST_FILE = ImageKind("GHOST_FILE", remap_pb2.ghost_file_entry, "ghost-file-{}.img")


def is_ghost(path: str, deleted: bool) -> bool:
    return deleted and not path.startswith("/memfd:")


def _timeval(ns: int) -> remap_pb2.timeval:
    return remap_pb2.timeval(tv_sec=ns // 1_000_000_000, tv_usec=ns % 1_000_000_000 // 1000)


class Ghosts:
    """The deleted files of one dump attempt, with their bytes."""

    def __init__(self, fs: ProcFS) -> None:
        self.fs = fs
        self.remaps: list[remap_pb2.remap_file_path_entry] = []
        self.ghosts: list[tuple[remap_pb2.ghost_file_entry, bytes]] = []
        #: (device, inode) -> ghost id: one ghost per deleted inode, as CRIU keeps them,
        #: however many descriptors and mappings hold it.
        self._by_inode: dict[tuple[int, int], int] = {}

    def add(self, file_id: int, what: str, pid: int, rel: str, mode: int) -> None:
        """Record file ``file_id`` (``what`` names it in messages) as deleted; its inode is
        reached through ``/proc/PID/<rel>`` on a live system."""
        inode = self._inode(pid, rel)
        known = self._by_inode.get(inode) if inode is not None else None
        if known is not None:
            log.info("%s: deleted while open; the inode of ghost file %d", what, known)
            self.remaps.append(remap_pb2.remap_file_path_entry(
                orig_id=file_id, remap_id=known, remap_type=remap_pb2.GHOST,
            ))
            return
        ghost_id = len(self.ghosts) + 1
        if inode is not None:
            self._by_inode[inode] = ghost_id
        entry, data, note = self._read(pid, rel, mode)
        log.warning("%s: deleted while open; recorded as ghost file %d (remap-fpath.img)%s",
                    what, ghost_id, note)
        self.remaps.append(remap_pb2.remap_file_path_entry(
            orig_id=file_id, remap_id=ghost_id, remap_type=remap_pb2.GHOST,
        ))
        self.ghosts.append((entry, data))

    def _inode(self, pid: int, rel: str) -> tuple[int, int] | None:
        if not self.fs.live:
            return None
        try:
            s = os.stat(self.fs.path(pid, rel))
        except OSError:
            return None
        return s.st_dev, s.st_ino

    def _read(self, pid: int, rel: str, mode: int) -> tuple[remap_pb2.ghost_file_entry, bytes,
                                                          str]:
        if not self.fs.live:
            return (remap_pb2.ghost_file_entry(uid=0, gid=0, mode=mode, chunks=True), b"",
                    ", without its content (a recording)")
        link = self.fs.path(pid, rel)
        try:
            fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            return (remap_pb2.ghost_file_entry(uid=0, gid=0, mode=mode, chunks=True), b"",
                    f", without its content ({exc.strerror})")
        try:
            s = os.fstat(fd)
            entry = remap_pb2.ghost_file_entry(
                uid=s.st_uid, gid=s.st_gid, mode=s.st_mode, ino=s.st_ino,
                dev=(os.major(s.st_dev) << 20) | os.minor(s.st_dev),
                atim=_timeval(s.st_atime_ns), mtim=_timeval(s.st_mtime_ns), size=s.st_size,
            )
            if not st.S_ISREG(s.st_mode):
                return entry, b"", ""
            if s.st_size > GHOST_LIMIT:
                entry.chunks = True
                return entry, b"", (f", without its content ({s.st_size} bytes, more than the "
                                    f"ghost limit of {GHOST_LIMIT})")
            chunks, got = [], 0
            while got < s.st_size:
                chunk = os.pread(fd, s.st_size - got, got)
                if not chunk:
                    break  # truncated meanwhile (by a process outside the tree)
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
            entry.size = len(data)
            return entry, data, ""
        finally:
            os.close(fd)

    def write(self, image_dir: str) -> None:
        if not self.remaps:
            return
        write_image(os.path.join(image_dir, REMAP_FPATH.filename()), REMAP_FPATH, self.remaps)
        for n, (entry, data) in enumerate(self.ghosts, 1):
            path = os.path.join(image_dir, GHOST_FILE.filename(n))
            write_image(path, GHOST_FILE, [entry])
            if data:
                with open(path, "ab") as f:  # CRIU's layout: the bytes follow the entry
                    f.write(data)
