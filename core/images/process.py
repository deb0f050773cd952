"""CRIU's process images for the filesystem half: what ``crit x DIR fds/mems`` reads.

Entries are collected while the tree is read and written in one go at the end. Text that is
not UTF-8 goes into CRIU's string fields escaped (:func:`criu_fw.images.criu_text`).
``inventory.img`` is written last by the engine: it is the mark of a complete dump.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

import attrs

from ..files import OpenFile
from ..proto import (
    core_pb2,
    fdinfo_pb2,
    fown_pb2,
    fs_pb2,
    inventory_pb2,
    mm_pb2,
    pstree_pb2,
    regfile_pb2,
    vma_pb2,
)
from . import criu_text, write_image

if TYPE_CHECKING:  # the dump imports this module: its types only, no import cycle
    from ..dump.maps import Vma
    from ..dump.procs import Process

O_CLOEXEC = 0o2000000
FD_CLOEXEC = 1
O_ACCMODE = 0o3
O_RDONLY, O_RDWR = 0, 2
PROT_WRITE = 2
IMG_VERSION = 2

_FOWN = fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def reg_entry(file_id: int, f: OpenFile | None, *, path: str, flags: int, pos: int,
              mnt_id: int | None, size: int | None = None,
              mode: int | None = None) -> fdinfo_pb2.file_entry:
    reg = regfile_pb2.reg_file_entry(
        id=file_id, flags=flags & ~O_CLOEXEC, pos=pos, fown=_FOWN, name=criu_text(path),
        mnt_id=-1 if mnt_id is None else mnt_id,
    )
    # CRIU records (and checks on restore) the size of regular files only: a directory's
    # size in its image fails CRIU's restore ("File . has bad size").
    if size is not None and (mode is None or stat.S_ISREG(mode)):
        reg.size = size
    if mode is not None:
        reg.mode = mode
    return fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=file_id, reg=reg)


def vma_entry(v: Vma, shmid: int) -> vma_pb2.vma_entry:
    e = vma_pb2.vma_entry(start=v.start, end=v.end, pgoff=v.pgoff, shmid=shmid, prot=v.prot,
                          flags=v.flags, status=v.status, fd=-1)
    if v.file is not None:
        e.fdflags = O_RDWR if v.shared and v.prot & PROT_WRITE else O_RDONLY
    return e


def mapping_flags(v: Vma) -> int:
    return O_RDWR if v.shared and v.prot & PROT_WRITE else O_RDONLY


class ProcessImages:
    """Everything of one process except its files (which go into the shared files.img)."""

    def __init__(self, proc: Process, ns_id: int, files_id: int, kobj_id: int) -> None:
        self.proc = proc
        self.ids = core_pb2.task_kobj_ids_entry(
            vm_id=kobj_id, files_id=files_id, fs_id=kobj_id, sighand_id=kobj_id,
            mnt_ns_id=ns_id,
        )
        self.fdinfo: list[fdinfo_pb2.fdinfo_entry] = []
        self.fs: fs_pb2.fs_entry | None = None
        self.mm: mm_pb2.mm_entry | None = None
        self.shares_table = False

    def add_fd(self, fd: int, file_id: int, flags: int) -> None:
        self.fdinfo.append(fdinfo_pb2.fdinfo_entry(
            id=file_id, flags=FD_CLOEXEC if flags & O_CLOEXEC else 0, type=fdinfo_pb2.REG, fd=fd,
        ))


def mm_entry(stat_fields: list[int], exe_id: int, vmas: list[vma_pb2.vma_entry]) -> mm_pb2.mm_entry:
    """``stat_fields`` are /proc/PID/stat's fields from startcode on (see :func:`mm_fields`)."""
    g = (stat_fields + [0] * 32)
    start_code, end_code, start_stack = g[0], g[1], g[2]
    start_data, end_data, start_brk, arg_start, arg_end, env_start, env_end = g[3:10]
    brk = start_brk
    for v in vmas:
        if v.status & (1 << 5):  # VMA_AREA_HEAP
            brk = v.end
    return mm_pb2.mm_entry(
        mm_start_code=start_code, mm_end_code=end_code, mm_start_data=start_data,
        mm_end_data=end_data, mm_start_stack=start_stack, mm_start_brk=start_brk, mm_brk=brk,
        mm_arg_start=arg_start, mm_arg_end=arg_end, mm_env_start=env_start,
        mm_env_end=env_end, exe_file_id=exe_id, vmas=vmas,
    )


def mm_fields(stat: bytes | None) -> list[int]:
    """startcode, endcode, startstack, start_data, end_data, start_brk, arg_start, arg_end,
    env_start, env_end from /proc/PID/stat (fields 26-28 and 45-51), zeros if unavailable."""
    if not stat:
        return []
    f = stat.rpartition(b")")[2].split()
    # f[0] is field 3 (state): field n is f[n - 3].
    try:
        return [int(f[n - 3]) for n in (26, 27, 28, 45, 46, 47, 48, 49, 50, 51)]
    except (IndexError, ValueError):
        return []


def write_process_images(image_dir: str, procs: list[ProcessImages],
                         files: list[fdinfo_pb2.file_entry]) -> None:
    pstree = [
        pstree_pb2.pstree_entry(pid=p.proc.pid, ppid=p.proc.ppid, pgid=p.proc.pgid,
                                sid=p.proc.sid, threads=list(p.proc.threads))
        for p in procs
    ]
    write_image(os.path.join(image_dir, "pstree.img"), "PSTREE", pstree)
    for p in procs:
        pid = p.proc.pid
        write_image(os.path.join(image_dir, f"ids-{pid}.img"), "IDS", [p.ids])
        if not p.shares_table:
            write_image(os.path.join(image_dir, f"fdinfo-{p.ids.files_id}.img"), "FDINFO",
                        p.fdinfo)
        if p.fs is not None:
            write_image(os.path.join(image_dir, f"fs-{pid}.img"), "FS", [p.fs])
        if p.mm is not None:
            write_image(os.path.join(image_dir, f"mm-{pid}.img"), "MM", [p.mm])
    write_image(os.path.join(image_dir, "files.img"), "FILES", files)


def write_inventory(image_dir: str, root: ProcessImages) -> None:
    root_ids = core_pb2.task_kobj_ids_entry()
    root_ids.CopyFrom(root.ids)
    inv = inventory_pb2.inventory_entry(
        img_version=IMG_VERSION, fdinfo_per_id=True, ns_per_id=True, root_ids=root_ids,
        lsmtype=inventory_pb2.NO_LSM,
    )
    write_image(os.path.join(image_dir, "inventory.img"), "INVENTORY", [inv])


# --------------------------------------------------------------------------------------------
# reading (criu-fw show): what each dumped process has open or mapped, on which mount

#: CRIU's VMA status bits of a file mapping (criu/include/image.h).
_VMA_FILE = (1 << 6) | (1 << 7)


@attrs.frozen
class DumpedFile:
    """One file a dumped process has open, has as cwd, root or exe, or maps."""

    pid: int
    #: ``fd``, ``cwd``, ``root``, ``exe`` or ``map``.
    use: str
    path: str
    #: The mount the file is on (kernel mount id in the process's namespace); None: none.
    mnt_id: int | None
    #: open(2) flags (a mapping: O_RDONLY or O_RDWR, as CRIU records it).
    flags: int
    #: CRIU's file type (``REG``; a directory written by CRIU may hold PIPE, UNIXSK, ...,
    #: whose path is empty here).
    type: str = "REG"
    fd: int | None = None
    pos: int = 0
    size: int | None = None
    #: A mapping: how many memory areas map the file.
    areas: int = 1
    #: Deleted while open: ``remap-fpath.img`` remaps it (to a ghost file with its bytes).
    deleted: bool = False


@attrs.frozen
class DumpedProcess:
    """One process of ``pstree.img`` with the files its images name."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]
    #: Its mount namespace (``ids-<pid>.img``), None where the image does not say.
    mnt_ns: int | None
    #: fds (listed once per fd table: see :attr:`fd_table_of`), cwd, root, exe, mappings.
    files: tuple[DumpedFile, ...]
    #: The process whose fd table this one shares (its fds are listed there), or None.
    fd_table_of: int | None = None


def _file_type(value: int) -> str:
    ev = fdinfo_pb2.fd_types.DESCRIPTOR.values_by_number.get(value)
    return ev.name if ev is not None else str(value)


def read_processes(image_dir: str) -> list[DumpedProcess]:
    """The processes of an image directory (``pstree.img`` order) with their files, read
    and checked as untrusted: a missing image the others need, an id that names no entry
    of ``files.img`` or a pid given twice is an ImageError naming the file (and entry). A
    directory without ``pstree.img`` has no processes."""
    from ..errors import ImageError
    from . import iter_image, read_image, text_of

    pstree_path = os.path.join(image_dir, "pstree.img")
    if not os.path.lexists(pstree_path):
        return []
    pstree = read_image(pstree_path, pstree_pb2.pstree_entry, kind="PSTREE")
    files_path = os.path.join(image_dir, "files.img")
    files: dict[int, fdinfo_pb2.file_entry] = {}
    if os.path.lexists(files_path):
        for n, e in enumerate(iter_image(files_path, fdinfo_pb2.file_entry, kind="FILES")):
            if e.id in files:
                raise ImageError(files_path, f"file id {e.id} appears twice", n)
            files[e.id] = e

    remapped: set[int] = set()
    remap_path = os.path.join(image_dir, "remap-fpath.img")
    if os.path.lexists(remap_path):
        from ..proto import remap_pb2

        remapped = {e.orig_id for e in iter_image(remap_path, remap_pb2.remap_file_path_entry)}

    def one(path: str, kind: str, message: type[Any]) -> Any:
        if not os.path.lexists(path):
            return None
        entries = read_image(path, message, kind=kind)
        if len(entries) != 1:
            raise ImageError(path, f"expected one entry, found {len(entries)}")
        return entries[0]

    def named(pid: int, use: str, file_id: int, where: str, n: int | None,
              fd: int | None = None) -> DumpedFile:
        e = files.get(file_id)
        if e is None:
            what = use if fd is None else f"fd {fd}"
            raise ImageError(where, f"{what} of process {pid}: file id {file_id} is not in "
                             "files.img", n)  # fmt: skip
        if not e.HasField("reg"):
            return DumpedFile(pid, use, "", None, 0, _file_type(e.type), fd)
        r = e.reg
        return DumpedFile(
            pid, use, text_of(r.name), None if r.mnt_id < 0 else r.mnt_id, r.flags,
            _file_type(e.type), fd, r.pos, r.size if r.HasField("size") else None,
            deleted=file_id in remapped,
        )

    out: list[DumpedProcess] = []
    seen: set[int] = set()
    tables: dict[int, int] = {}  # files_id -> the first process with that fd table
    for n, p in enumerate(pstree):
        pid = p.pid
        if pid <= 0 or pid in seen:
            why = "appears twice" if pid in seen else "is not a process id"
            raise ImageError(pstree_path, f"pid {pid} {why}", n)
        seen.add(pid)
        ids_path = os.path.join(image_dir, f"ids-{pid}.img")
        ids = one(ids_path, "IDS", core_pb2.task_kobj_ids_entry)
        if ids is None:
            raise ImageError(ids_path, f"missing: process {pid} of pstree.img has no ids image")
        mnt_ns = ids.mnt_ns_id if ids.HasField("mnt_ns_id") else None
        found: list[DumpedFile] = []
        shares = tables.get(ids.files_id) if ids.HasField("files_id") else None
        if ids.HasField("files_id") and shares is None:
            tables[ids.files_id] = pid
            fdinfo_path = os.path.join(image_dir, f"fdinfo-{ids.files_id}.img")
            if os.path.lexists(fdinfo_path):
                for k, fi in enumerate(iter_image(fdinfo_path, fdinfo_pb2.fdinfo_entry,
                                                  kind="FDINFO")):  # fmt: skip
                    found.append(named(pid, "fd", fi.id, fdinfo_path, k, fi.fd))
        fs_path = os.path.join(image_dir, f"fs-{pid}.img")
        fs = one(fs_path, "FS", fs_pb2.fs_entry)
        if fs is not None:
            found.append(named(pid, "cwd", fs.cwd_id, fs_path, 0))
            if fs.HasField("root_id"):
                found.append(named(pid, "root", fs.root_id, fs_path, 0))
        mm_path = os.path.join(image_dir, f"mm-{pid}.img")
        mm = one(mm_path, "MM", mm_pb2.mm_entry)
        if mm is not None:
            if mm.HasField("exe_file_id") and mm.exe_file_id:
                found.append(named(pid, "exe", mm.exe_file_id, mm_path, 0))
            areas: dict[int, int] = {}
            for v in mm.vmas:
                if v.status & _VMA_FILE:
                    areas[v.shmid] = areas.get(v.shmid, 0) + 1
            for file_id, count in areas.items():
                f = named(pid, "map", file_id, mm_path, 0)
                found.append(attrs.evolve(f, areas=count))
        out.append(DumpedProcess(pid, p.ppid, p.pgid, p.sid, tuple(p.threads), mnt_ns,
                                 tuple(found), shares))  # fmt: skip
    return out
