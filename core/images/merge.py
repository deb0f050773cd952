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
import secrets
import stat
from collections.abc import Callable

import attrs

from ..errors import ImageError, UsageError
from ..proto import fwstate_pb2, pstree_pb2
from . import iter_image, open_image_fd, read_image, write_serialized
from .criu import task_mount_namespace
from .mounts import deleted_root_image, fw_image, mountpoints_image

_MOUNT_IMAGE = re.compile(r"mountpoints-(\d{1,20})\.img")
_ARCHIVE = re.compile(r"tmpfs-dev-\d{1,20}\.tar\.gz\.img")
_DELETED = re.compile(r"fw-deleted-(\d{1,20})-(\d{1,10})\.img")
_TMP = ".criu-fw-merge-"
#: A content image's name as a driver may choose it: one plain file name.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,250}")


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
    out = {p.pid: task_mount_namespace(image_dir, p.pid)
           for p in iter_image(pstree, pstree_pb2.pstree_entry, kind="PSTREE")}
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
    plan: dict[str, Callable[[int], object]] = {}  # name in criu_dir -> what writes it
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
            if e.HasField("mount") and e.mount.HasField("content_image"):
                name = e.mount.content_image
                if not _PLAIN.fullmatch(name) or name.startswith(_TMP):
                    raise ImageError(fw_path, f"content image {name!r} is not a plain image "
                                              "file name", n)
                plan[name] = _copy(os.path.join(fw_dir, name))
        plan[fw_image(theirs)] = functools.partial(_write_fw, entries=entries)
    for name in os.listdir(fw_dir):
        if _ARCHIVE.fullmatch(name):
            plan[name] = _copy(os.path.join(fw_dir, name))
    return _publish(criu_dir, plan, mapping)


def _copy(src: str) -> Callable[[int], object]:
    """Copy the image file ``src`` (a regular file, no link followed: images are untrusted)
    into the open descriptor it is given."""

    def copy(out: int) -> None:
        fd = open_image_fd(src)
        try:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
        except OSError as exc:
            raise ImageError(src, f"cannot copy it: {exc.strerror}") from None
        finally:
            os.close(fd)

    return copy


def _write_fw(out: int, entries: list[fwstate_pb2.fw_entry]) -> None:
    with os.fdopen(os.dup(out), "wb") as f:
        write_serialized("fw-mountpoints", "FW_MNTS",
                         [e.SerializeToString() for e in entries], file=f)


def _publish(
    criu_dir: str, plan: dict[str, Callable[[int], object]], mapping: dict[int, int]
) -> Merged:
    """Write every file under a temporary name (created anew: no link followed), keep CRIU's
    files that are replaced under another, then rename into place; on any failure put CRIU's
    back and remove the rest: the directory is as it was."""
    dfd = os.open(criu_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    staged: list[tuple[str, str]] = []  # (temporary name, final name)
    kept: dict[str, str] = {}  # final name -> CRIU's file, linked under a temporary name
    placed: list[str] = []
    try:
        for name in plan:
            try:
                st = os.lstat(name, dir_fd=dfd)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(os.path.join(criu_dir, name),
                                 "is in the way: not a regular file, it cannot be replaced")
        for name, write in plan.items():
            tmp = f"{_TMP}{secrets.token_hex(8)}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            staged.append((tmp, name))
            try:
                write(out)
                os.fsync(out)
            finally:
                os.close(out)
        for _, name in staged:
            backup = f"{_TMP}{secrets.token_hex(8)}"
            try:
                os.link(name, backup, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kept[name] = backup
        for tmp, name in staged:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            placed.append(name)
        os.fsync(dfd)
    except BaseException:
        for name in reversed(placed):
            with contextlib.suppress(OSError):
                if name in kept:
                    os.rename(kept.pop(name), name, src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    os.unlink(name, dir_fd=dfd)
        for tmp in [t for t, n in staged if n not in placed] + list(kept.values()):
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)
        raise
    for backup in kept.values():
        with contextlib.suppress(OSError):
            os.unlink(backup, dir_fd=dfd)
    os.close(dfd)
    return Merged(dict(mapping), tuple(n for _, n in staged), tuple(kept))
