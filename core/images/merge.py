"""criu-fw's mount images put into an image directory CRIU wrote for the same processes.

CRIU numbers mount namespaces with its own counter (shared by every kind of namespace it
finds), criu-fw 1, 2, ... in dump order; each names the ``mountpoints-<ns>.img`` files by its
own numbers and says in ``ids-<pid>.img`` which namespace each process is in. So criu-fw's
mount images are only CRIU's once renamed to CRIU's numbers: :func:`merge` finds, through the
processes both dumps hold, which of CRIU's namespaces each of criu-fw's is, and writes into
CRIU's directory

* ``mountpoints-<criu ns>.img``: criu-fw's entries (they mean what CRIU's do, docs/criu-compat.md),
* ``fw-mountpoints-<criu ns>.img``: criu-fw's own image, its header renumbered,
* ``fw-deleted-<criu ns>-<mnt>.img``: a deleted bind root's bytes, renamed with its reference,
* ``tmpfs-dev-<dev>.tar.gz.img``: criu-fw's content archives (CRIU's name and format; every
  tmpfs, the root one too, and their xattrs),

replacing CRIU's files of the same names. CRIU's process images, ``inventory.img`` and its own
numbering are left as they are. Everything is written under temporary names first and
renamed into place at the end: a failure leaves CRIU's directory as it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
from collections.abc import Callable

import attrs

from ..errors import ImageError, UsageError
from ..proto import core_pb2, fwstate_pb2, pstree_pb2
from . import iter_image, read_image, write_image
from .mounts import deleted_root_image, fw_image, mountpoints_image

_MOUNT_IMAGE = re.compile(r"mountpoints-(\d{1,20})\.img")
_ARCHIVE = re.compile(r"tmpfs-dev-\d{1,20}\.tar\.gz\.img")
_DELETED = re.compile(r"fw-deleted-(\d{1,20})-(\d{1,10})\.img")
_TMP = ".criu-fw-merge-"


@attrs.frozen
class Merged:
    """What :func:`merge` wrote: criu-fw's namespace id -> CRIU's, and the files."""

    namespaces: dict[int, int]
    written: tuple[str, ...]
    replaced: tuple[str, ...]


def task_namespaces(image_dir: str) -> dict[int, int]:
    """pid -> mount namespace id, for every process of ``pstree.img`` (its ``ids-<pid>.img``)."""
    pstree = os.path.join(image_dir, "pstree.img")
    if not os.path.lexists(pstree):
        raise ImageError(pstree, "missing: the processes are needed to match the namespaces")
    out: dict[int, int] = {}
    for n, p in enumerate(iter_image(pstree, pstree_pb2.pstree_entry, kind="PSTREE")):
        ids_path = os.path.join(image_dir, f"ids-{p.pid}.img")
        if not os.path.lexists(ids_path):
            raise ImageError(ids_path, f"missing: process {p.pid} of pstree.img (entry {n}) "
                                       "has no ids image")
        ids = read_image(ids_path, core_pb2.task_kobj_ids_entry, kind="IDS")
        if len(ids) != 1 or not ids[0].HasField("mnt_ns_id"):
            raise ImageError(ids_path, "expected one entry with a mount namespace id")
        out[p.pid] = int(ids[0].mnt_ns_id)
    if not out:
        raise ImageError(pstree, "no process")
    return out


def _ours(fw_dir: str) -> list[int]:
    found = [int(m.group(1)) for name in os.listdir(fw_dir)
             if (m := _MOUNT_IMAGE.fullmatch(name))]  # fmt: skip
    if not found:
        raise ImageError(fw_dir, "no mountpoints-<ns>.img: not a criu-fw dump")
    for ns in found:
        if not os.path.lexists(os.path.join(fw_dir, fw_image(ns))):
            raise ImageError(os.path.join(fw_dir, fw_image(ns)),
                             "missing: not a criu-fw dump (CRIU's images alone?)")
    return sorted(found)


def match(fw_dir: str, criu_dir: str) -> dict[int, int]:
    """criu-fw's namespace id -> CRIU's, through the processes both dumps hold."""
    ours, theirs = task_namespaces(fw_dir), task_namespaces(criu_dir)
    root_ours, root_theirs = next(iter(ours)), next(iter(theirs))
    if root_ours != root_theirs:
        raise UsageError(
            f"{fw_dir} and {criu_dir} are dumps of different process trees (root process "
            f"{root_ours} and {root_theirs})"
        )
    mapping: dict[int, int] = {}
    back: dict[int, int] = {}
    for pid, ns in ours.items():
        other = theirs.get(pid)
        if other is None:
            continue
        if mapping.setdefault(ns, other) != other or back.setdefault(other, ns) != ns:
            raise UsageError(
                f"process {pid} is in criu-fw's mount namespace {ns} and CRIU's {other}, "
                f"but other processes pair those namespaces differently: not the same dump"
            )
    for ns in _ours(fw_dir):
        if ns not in mapping:
            raise UsageError(
                f"{fw_dir}: no process of CRIU's pstree.img is in criu-fw's mount namespace "
                f"{ns}: its mount images cannot be numbered as CRIU's"
            )
    return mapping


def merge(fw_dir: str, criu_dir: str) -> Merged:
    """Write criu-fw's mount images and archives from ``fw_dir`` into ``criu_dir`` under
    CRIU's namespace numbers (see the module's docstring)."""
    mapping = match(fw_dir, criu_dir)
    plan: dict[str, Callable[[str], object]] = {}  # name in criu_dir -> what writes it
    for ours, theirs in mapping.items():
        if not os.path.lexists(os.path.join(fw_dir, mountpoints_image(ours))):
            continue  # a namespace of processes only (no mount images: not dumped here)
        plan[mountpoints_image(theirs)] = _copy(os.path.join(fw_dir, mountpoints_image(ours)))
        fw_path = os.path.join(fw_dir, fw_image(ours))
        entries = read_image(fw_path, fwstate_pb2.fw_entry, kind="FW_MNTS")
        for n, e in enumerate(entries):
            if n == 0 and e.HasField("header"):
                e.header.ns_id = theirs
            elif e.HasField("mount") and e.mount.HasField("deleted_root"):
                d = e.mount.deleted_root
                if d.HasField("content_image"):
                    m = _DELETED.fullmatch(d.content_image)
                    if m is None or int(m.group(1)) != ours:
                        raise ImageError(fw_path, f"deleted root content {d.content_image!r} "
                                                  f"is not fw-deleted-{ours}-<mount>.img", n)
                    new = deleted_root_image(theirs, int(m.group(2)))
                    plan[new] = _copy(os.path.join(fw_dir, d.content_image))
                    d.content_image = new
        plan[fw_image(theirs)] = functools.partial(_write_fw, entries=entries)
    for name in os.listdir(fw_dir):
        if _ARCHIVE.fullmatch(name):
            plan[name] = _copy(os.path.join(fw_dir, name))
    return _publish(criu_dir, plan, mapping)


def _copy(src: str) -> Callable[[str], object]:
    def copy(dst: str) -> None:
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise ImageError(src, f"cannot copy it: {exc.strerror}") from None

    return copy


def _write_fw(path: str, entries: list[fwstate_pb2.fw_entry]) -> None:
    write_image(path, "FW_MNTS", entries)


def _publish(
    criu_dir: str, plan: dict[str, Callable[[str], object]], mapping: dict[int, int]
) -> Merged:
    staged: list[tuple[str, str]] = []
    try:
        for name, write in plan.items():
            tmp = os.path.join(criu_dir, f"{_TMP}{name}")
            staged.append((tmp, name))
            write(tmp)
        replaced = tuple(n for _, n in staged if os.path.lexists(os.path.join(criu_dir, n)))
        for tmp, name in staged:
            os.replace(tmp, os.path.join(criu_dir, name))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return Merged(dict(mapping), tuple(n for _, n in staged), replaced)
