"""Checking (and where the kernel got it wrong, correcting) open files and mappings on overlays.

Today's kernels report an overlay file on the overlay mount, with the overlay path, so the job
is to *confirm* it in one statx: the path, resolved through the process's root, must land on
that mount and be the same file as the fd. Both sides are looked at through the overlay, so
the per-layer pseudo device that fstat reports when xino is off is on both sides and compares
equal; comparing against mountinfo's device would misfire.

Kernels before 4.2 (and some distribution kernels, for mappings) reported the *layer's* mount
and path; whether this one does is decided per dump and per kind by :mod:`.misreport`. The
driver claims every layer mount in ``parse_mount``, so such files reach it too; the layer index
maps the path back to the overlay that uses that layer directory, and the overlay's view of the
same name must show the same file (:mod:`.identity`: never the device, which is a pseudo
device on the overlay). Files legitimately opened on a layer mount stay as they are.
"""

from __future__ import annotations

import errno
import posixpath
from typing import TypeVar

import attrs
from criu_fw.driver import (
    DumpContext,
    DumpError,
    FileIdentity,
    FileMapping,
    Mount,
    MountTree,
    OpenFile,
    SyscallError,
)

from .identity import has_xattr, same_file
from .index import index_of
from .misreport import misreports
from .options import Role
from .paths import under
from .walk import Stat, statx

_LINKS = {-1: "cwd", -2: "root", -3: "exe"}
_ORIGINS = ("trusted.overlay.origin", "user.overlay.origin")


class OverlayFileError(DumpError):
    """An open file or mapping on an overlay whose mount and path cannot be confirmed."""


@attrs.frozen
class _Target:
    """What both hooks need from an OpenFile or a FileMapping."""

    pid: int
    path: str
    mnt_id: int | None
    identity: FileIdentity | None
    deleted: bool
    #: How messages name it: ``pid 12 fd 3 '/ovl/a'``.
    name: str
    #: The /proc link that stats as the file itself, for a missing identity.
    link: str | None
    #: ``fd`` or ``map``: kernels may misreport one kind and not the other.
    kind: str


def _root(ctx: DumpContext, pid: int, name: str) -> str:
    if ctx.recorded:
        if ctx.root is None:
            raise OverlayFileError(f"{name}: cannot check a recorded overlay file without --root")
        return ctx.root
    return f"{ctx.proc_root}/{pid}/root"


def _stat_path(ctx: DumpContext, t: _Target) -> Stat | None:
    """statx of ``t.path`` through the process's root; None when nothing is there.

    One syscall: the path is canonical (the kernel's d_path: no symlink or ``..`` inside), so
    walking ``/proc/PID/root`` + path cannot leave that root; the last component is not
    followed, like the fd's own stat.
    """
    root = _root(ctx, t.pid, t.name)
    try:
        return statx(root + t.path, follow=False)
    except SyscallError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise OverlayFileError(f"{t.name}: cannot check its path: {e}") from None


def _fd_identity(ctx: DumpContext, t: _Target) -> FileIdentity | None:
    if t.identity is not None:
        return t.identity
    if ctx.recorded or t.link is None:
        return None
    try:
        st = statx(f"{ctx.proc_root}/{t.pid}/{t.link}")
    except SyscallError as e:
        raise OverlayFileError(f"{t.name}: cannot stat the open file: {e}") from None
    return FileIdentity(st.dev, st.ino)


def check(t: _Target, mount: Mount | None, ctx: DumpContext) -> tuple[str, int] | None:
    """``None`` when the kernel's (path, mount) are right, else the corrected pair; raises when
    it cannot tell."""
    if mount is None:
        return _map_by_device(t, ctx)
    tree = ctx.tree_of(mount)
    if mount.fstype == "overlay":
        if t.mnt_id is not None and t.mnt_id != mount.mnt_id:
            # Routed here by its path only: the kernel names a mount that is not in this
            # namespace (an fd inherited from before the container's pivot_root, such as the
            # host's /dev/null over a container whose root is an overlay). Not an overlay
            # file; on a misreporting kernel its device may still name a layer.
            return _map_by_device(t, ctx)
        _confirm(t, mount, ctx)
        return None
    if not misreports(ctx, t.kind):
        return None  # a file really opened on a layer's mount: nothing to fix
    return _map_from_layer(t, mount, tree, ctx)


def _confirm(t: _Target, mount: Mount, ctx: DumpContext) -> None:
    if t.deleted:
        return  # the name is gone; the kernel's mount id is all there is, and it exists
    st = _stat_path(ctx, t)
    if st is None:
        raise OverlayFileError(
            f"{t.name}: not found through the process's root, although the file is not "
            f"deleted; cannot confirm it is on {mount.describe()}"
        )
    identity = _fd_identity(ctx, t)
    if ctx.recorded:
        return  # a recording: the path exists under --root; ids are the recording's
    if st.mnt_id != mount.mnt_id:
        raise OverlayFileError(
            f"{t.name}: its path lands on mount {st.mnt_id}, not on {mount.describe()} "
            "(overmounted since it was opened?); cannot confirm it"
        )
    if identity is not None and (identity.dev, identity.ino) != (st.dev, st.ino):
        raise OverlayFileError(
            f"{t.name}: the path on {mount.describe()} is another file now "
            f"(dev {st.dev} ino {st.ino}, the open file is dev {identity.dev} ino {identity.ino})"
        )


def _map_from_layer(
    t: _Target, layer_mount: Mount, tree: MountTree, ctx: DumpContext
) -> tuple[str, int] | None:
    rel = under(t.path, layer_mount.mountpoint)
    if rel is None:
        return None
    index = index_of(ctx)
    hits = index.find(tree.ns_id, layer_mount.mnt_id, rel)
    if not hits:
        return None
    real = _stat_path(ctx, t) if not t.deleted else None
    if t.deleted or real is None:
        # Nothing to compare through the overlay's name: keep the kernel's report only if a
        # single overlay could own it, else say we cannot tell.
        owners = {use.overlay_mnt_id for _, use in hits if use.role is not Role.WORK}
        if len(owners) == 1:
            ovl = tree.get(owners.pop())
            rest = next(r for r, use in hits if use.overlay_mnt_id == ovl.mnt_id)
            return _join(ovl.mountpoint, rest), ovl.mnt_id
        raise OverlayFileError(
            f"{t.name}: reported on layer {layer_mount.describe()}, used by "
            f"{len(owners)} overlays; cannot tell which one it was opened through"
        )
    for rest, use in hits:
        if use.role is Role.WORK:
            continue
        found = tree.find(use.overlay_mnt_id)
        if found is None:
            continue
        path = _join(found.mountpoint, rest)
        shown = _stat_path(ctx, attrs.evolve(t, path=path))
        if shown is not None and _same(real, shown, _root(ctx, t.pid, t.name) + t.path):
            return path, found.mnt_id
    return None  # no overlay shows this file under that name: opened on the layer itself


def _map_by_device(t: _Target, ctx: DumpContext) -> tuple[str, int] | None:
    """No mount with the kernel's id: on a misreporting kernel the device names the layer."""
    if t.identity is None or not misreports(ctx, t.kind):
        return None
    for ns_id, mnt_id in index_of(ctx).by_dev.get(t.identity.dev, ()):
        tree = ctx.trees.get(ns_id)
        layer_mount = tree.find(mnt_id) if tree is not None else None
        if layer_mount is None:
            continue
        fixed = _map_from_layer(t, layer_mount, tree, ctx) if tree is not None else None
        if fixed is not None:
            return fixed
    return None


def _same(real: Stat, shown: Stat, real_path: str) -> bool:
    """The layer's file ``real`` is what the overlay shows (a copied-up file shows its
    origin's inode number: :mod:`.identity`)."""

    def has_origin() -> bool:
        return any(has_xattr(real_path, x) for x in _ORIGINS)

    return bool(same_file(real, shown, has_origin))


def _join(mountpoint: str, rest: str) -> str:
    return posixpath.normpath(mountpoint.rstrip("/") + "/" + rest.lstrip("/"))


_R = TypeVar("_R", OpenFile, FileMapping)


def _corrected(record: _R, t: _Target, mount: Mount | None, ctx: DumpContext) -> _R | None:
    """``record`` with the path and mount :func:`check` found, or None when it was right."""
    fixed = check(t, mount, ctx)
    if fixed is None:
        return None
    path, mnt_id = fixed
    return attrs.evolve(record, path=path, mnt_id=mnt_id)


def fixup_file(file: OpenFile, mount: Mount | None, ctx: DumpContext) -> OpenFile | None:
    link = _LINKS.get(file.fd, f"fd/{file.fd}")
    t = _Target(
        file.pid,
        file.path,
        file.mnt_id,
        file.identity,
        file.deleted,
        f"pid {file.pid} {link} {file.path!r}",
        link,
        "fd",
    )
    return _corrected(file, t, mount, ctx)


def fixup_mapping(vma: FileMapping, mount: Mount | None, ctx: DumpContext) -> FileMapping | None:
    link = f"map_files/{vma.start:x}-{vma.end:x}"
    t = _Target(
        vma.pid,
        vma.path,
        vma.mnt_id,
        vma.identity,
        vma.deleted,
        f"pid {vma.pid} mapping {vma.start:#x}-{vma.end:#x} {vma.path!r}",
        link,
        "map",
    )
    return _corrected(vma, t, mount, ctx)
