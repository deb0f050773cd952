"""CRIU's process images for the filesystem half: what ``crit x DIR fds/mems`` reads.

Entries are collected while the tree is read and written in one go at the end. Text that is
not UTF-8 goes into CRIU's string fields escaped (:func:`criu_fw.images.criu_text`).
``inventory.img`` is written last by the engine: it is the mark of a complete dump.
"""

from __future__ import annotations

import os
import stat

from ..dump.maps import Vma
from ..dump.procs import Process
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
