"""A process's memory mappings: ``/proc/PID/maps`` plus ``map_files`` for the file-backed ones.

Every VMA is kept (crit lists them all), but only file-backed ones become
:class:`~criu_fw.files.FileMapping` records that drivers see. Shared anonymous memory, SysV
shm and memfd show up in maps as paths on the kernel's internal shmem mount (``/dev/zero
(deleted)``, ``/SYSV...``, ``/memfd:...``) whose device no dumped mount has: those are
anonymous shared memory, not files of the namespace.
"""

from __future__ import annotations

import errno
import os

import attrs

from ..files import FileIdentity, FileMapping
from ..kernel import statx_mnt_id
from ..model import Dev
from .files import split_deleted
from .procfs import ProcessGoneError, ProcFS, ProcReadError

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x1, 0x2, 0x20, 0x100

# CRIU's VMA status bits (criu/include/image.h).
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_VVAR = 1 << 12

_SHMEM_NAMES = ("/dev/zero", "/SYSV", "/memfd:")


@attrs.frozen
class Vma:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    pgoff: int
    prot: int
    shared: bool
    dev: Dev
    inode: int
    name: str
    #: The file mapping drivers see, for file-backed VMAs.
    file: FileMapping | None = None
    #: For shared anonymous memory: the shmem inode (CRIU's shmid).
    anon_shared: bool = False

    @property
    def flags(self) -> int:
        f = MAP_SHARED if self.shared else MAP_PRIVATE
        if self.file is None:
            f |= MAP_ANONYMOUS
        if self.name == "[stack]":
            f |= MAP_GROWSDOWN
        return f

    @property
    def status(self) -> int:
        if self.name == "[vsyscall]":
            return VMA_AREA_VSYSCALL  # not VMA_AREA_REGULAR: CRIU never restores it
        s = VMA_AREA_REGULAR
        if self.file is not None:
            return s | (VMA_FILE_SHARED if self.shared else VMA_FILE_PRIVATE)
        if self.anon_shared:
            return s | VMA_ANON_SHARED
        s |= VMA_ANON_PRIVATE
        if self.name == "[stack]":
            s |= VMA_AREA_STACK
        elif self.name == "[heap]":
            s |= VMA_AREA_HEAP
        elif self.name == "[vdso]":
            s = VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE
        elif self.name == "[vvar]":
            s = VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE
        return s


def parse_maps_line(line: bytes) -> tuple[int, int, int, int, bool, Dev, int, str]:
    parts = line.split(None, 5)
    start_s, _, end_s = parts[0].partition(b"-")
    perms = parts[1]
    prot = (
        (PROT_READ if perms[0:1] == b"r" else 0)
        | (PROT_WRITE if perms[1:2] == b"w" else 0)
        | (PROT_EXEC if perms[2:3] == b"x" else 0)
    )
    shared = perms[3:4] == b"s"
    major, _, minor = parts[3].partition(b":")
    name = os.fsdecode(parts[5]) if len(parts) > 5 else ""
    return (int(start_s, 16), int(end_s, 16), int(parts[2], 16), prot, shared,
            Dev(int(major, 16), int(minor, 16)), int(parts[4]), name)


class MapsReader:
    def __init__(self, fs: ProcFS, live: bool) -> None:
        self.fs = fs
        self.live = live

    def vmas(self, pid: int, known_devs: frozenset[Dev] | set[Dev]) -> list[Vma]:
        """Every VMA of ``pid``; ``known_devs`` are the devices of the dumped mounts."""
        data = self.fs.read(pid, "maps")
        assert data is not None
        mf_dir = self.fs.path(pid, "map_files")
        out = []
        for line in data.splitlines():
            if not line:
                continue
            start, end, pgoff, prot, shared, dev, inode, name = parse_maps_line(line)
            if not name.startswith("/") or (inode == 0 and dev == Dev(0, 0)):
                out.append(Vma(start, end, pgoff, prot, shared, dev, inode, name))
                continue
            path, deleted = split_deleted(name)
            if dev not in known_devs and path.startswith(_SHMEM_NAMES):
                out.append(Vma(start, end, pgoff, prot, shared, dev, inode, name,
                               anon_shared=True))
                continue
            link = f"{mf_dir}/{start:x}-{end:x}"
            target = None
            identity = None
            mnt_id = None
            try:
                target = os.readlink(link)
                if self.live:
                    s = os.stat(link)
                    identity = FileIdentity(Dev(os.major(s.st_dev), os.minor(s.st_dev)), s.st_ino)
                    mnt_id = statx_mnt_id(link)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ESRCH) and not self.fs.exists(pid):
                    raise ProcessGoneError(pid, f"map_files/{start:x}-{end:x}") from exc
                if self.live or exc.errno != errno.ENOENT:
                    raise ProcReadError(link, exc) from exc
            if target is not None:
                path, deleted = split_deleted(target)
            if identity is None and not self.live:
                identity = FileIdentity(dev, inode)
            fm = FileMapping(pid, start, end, pgoff, prot, shared, path, mnt_id, identity, deleted)
            out.append(Vma(start, end, pgoff, prot, shared, dev, inode, name, file=fm))
        return out
