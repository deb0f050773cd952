"""Dump side of the generic driver: which mounts can be recreated, which are external, and
the content of tmpfs superblocks.

Restorable without help (CRIU's rules, per superblock of the dumped namespaces):

* kernel filesystems that a new instance recreates (proc, sysfs, devpts, mqueue, cgroup...),
  whatever their root;
* a tmpfs that has a mount of its root (``/``) in the dump: its content is archived;
* a block-device filesystem (major != 0) that has a mount of its root in the dump: mounted
  again from its source;
* a bind whose source directory is reachable from one of the above (another mount of the same
  superblock whose root contains this one's root).

Anything else was bind-mounted from outside the dumped namespaces: it is recorded as external
under the key of ``--external mnt[MOUNTPOINT]:KEY``, or, with ``--external-auto``, under the
host path where the dumper sees the same directory (device and inode checked). Otherwise the
dump fails naming the mount and the options that would help.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import ClassVar

import attrs
from criu_fw.driver import (
    FSTYPES,
    Dev,
    DriverState,
    DumpContext,
    DumpError,
    Mount,
    MountTree,
    StashKey,
    hookimpl,
    read_mountinfo,
)

from . import blockdev, content

log = logging.getLogger("criu_fw.generic")

#: Filesystems whose content is the kernel's: restore makes a new instance (the core's
#: per-fstype table says which).
NEW_INSTANCE: frozenset[str] = frozenset(n for n, t in FSTYPES.items() if t.kernel)
#: Filesystems whose content the dump saves (the only copy lives in memory).
CONTENT_FSTYPES: tuple[str, ...] = tuple(n for n, t in FSTYPES.items() if t.in_memory)


@attrs.frozen
class _Superblocks:
    """Per device: the roots of the dumped mounts of that superblock (built once per dump)."""

    roots: dict[Dev, set[str]]
    #: (dev, root) of the mounts declared external with ``--external mnt[MOUNTPOINT]:KEY``.
    declared: set[tuple[Dev, str]]
    #: The peer groups of the dumped mounts: a master not among them is outside the dump.
    shared: set[int] = attrs.field(factory=set)


_SB_KEY: StashKey[_Superblocks] = StashKey("generic.superblocks")
_HOST_KEY: StashKey[MountTree | None] = StashKey("generic.host_tree")
_DECIDED_KEY: StashKey[dict[tuple[Dev, str], str | None]] = StashKey("generic.entry_groups")


def _ancestors_first(path: str) -> Iterator[str]:
    """``/``, ``/a``, ``/a/b`` for ``/a/b``: the path's prefixes, shortest first."""
    yield "/"
    acc = ""
    for part in path.strip("/").split("/"):
        if part:
            acc = f"{acc}/{part}"
            yield acc


def _superblocks(ctx: DumpContext) -> _Superblocks:
    sb = ctx.stash.get(_SB_KEY, None)
    if sb is None:
        roots: dict[Dev, set[str]] = {}
        declared: set[tuple[Dev, str]] = set()
        shared: set[int] = set()
        for tree in ctx.trees.values():
            for m in tree.mounts:
                roots.setdefault(m.dev, set()).add(m.root)
                if m.mountpoint in ctx.externals:
                    declared.add((m.dev, m.root))
                if m.propagation.shared is not None:
                    shared.add(m.propagation.shared)
        sb = _Superblocks(roots, declared, shared)
        ctx.stash[_SB_KEY] = sb
    return sb


_NO_ROOTS: frozenset[str] = frozenset()


def entry_root(ctx: DumpContext, mount: Mount) -> str:
    """The widest root of ``mount``'s superblock in the dump that contains ``mount.root``."""
    roots = _superblocks(ctx).roots.get(mount.dev, _NO_ROOTS)
    if "/" in roots:
        return "/"  # the widest of all, and the usual answer: no need to walk the path
    for prefix in _ancestors_first(mount.root):
        if prefix in roots:
            return prefix
    return mount.root


def _self_restorable(mount: Mount, root: str) -> bool:
    if mount.fstype in NEW_INSTANCE:
        return True
    if root != "/":
        return False
    return mount.fstype in CONTENT_FSTYPES or mount.dev.major != 0


def _on_block_device(mount: Mount) -> bool:
    return (
        mount.dev.major != 0 and mount.fstype not in NEW_INSTANCE
        and mount.fstype not in CONTENT_FSTYPES
    )


def _host_tree(ctx: DumpContext) -> MountTree | None:
    if _HOST_KEY not in ctx.stash:
        tree = None
        if not ctx.recorded:
            try:
                tree = read_mountinfo("self")
            except OSError as exc:
                log.warning("--external-auto: cannot read the dumper's mounts: %s", exc)
        ctx.stash[_HOST_KEY] = tree
    return ctx.stash[_HOST_KEY]


def host_path(ctx: DumpContext, mount: Mount, tree: MountTree) -> str | None:
    """Where the dumper sees ``mount``'s root directory, checked by device and inode."""
    host = _host_tree(ctx)
    if host is None:
        return None
    for h in host.by_dev(mount.dev):
        hroot = h.root.rstrip("/")
        if not (mount.root == h.root or h.root == "/" or mount.root.startswith(hroot + "/")):
            continue
        if host.lookup(h.mountpoint) is not h:
            continue  # covered in the dumper's own namespace
        rest = mount.root[len(hroot):] if h.root != "/" else mount.root
        path = os.path.normpath(h.mountpoint.rstrip("/") + "/" + rest.lstrip("/"))
        try:
            s = os.stat(path)
        except OSError:
            continue
        if Dev.from_kdev(s.st_dev) != mount.dev:
            continue
        pid = ctx.ns_pids.get(tree.ns_id)
        if pid is not None and tree.lookup(mount.mountpoint) is mount:
            try:
                inner = os.stat(f"{ctx.proc_root}/{pid}/root{mount.mountpoint}")
            except OSError:
                continue
            if (inner.st_dev, inner.st_ino) != (s.st_dev, s.st_ino):
                continue
        return path
    return None


def unrestorable_message(mount: Mount, root: str) -> str:
    where = f"mount {mount.mnt_id} at {mount.mountpoint} ({mount.fstype} {mount.source})"
    if root == "/":
        why = "a filesystem that cannot be recreated from the images"
    else:
        why = f"bind of {root} from a filesystem outside the dumped namespaces"
    hint = f"use --external mnt[{mount.mountpoint}]:KEY or --external-auto"
    if mount.mountpoint == "/":
        # Said for the dump that failed: --root is the restore's answer to a root recorded
        # as external, not a way to make this dump work.
        hint += " (its restore then takes the root from --root PATH or the key's mapping)"
    return f"{where}: {why}; {hint}"


class GenericDump:
    """Hook implementations used at dump time."""

    #: The fstypes whose superblocks get a ``dump_content`` call (the engine reads this).
    content_fstypes: ClassVar[tuple[str, ...] | None] = CONTENT_FSTYPES
    #: ``dump_content`` reads the filesystem, writes its archive and may leave a GNU tar
    #: running (``ctx.in_background``): it can run in the dump's content workers.
    parallel_content: ClassVar[bool] = True

    @hookimpl
    def parse_mount(self, mount: Mount, tree: MountTree, ctx: DumpContext) -> DriverState | None:
        declared = ctx.externals.get(mount.mountpoint)
        if declared is not None:
            ctx.mark_external(tree.ns_id, mount.mnt_id, declared)
            return None
        root = entry_root(ctx, mount)
        if ctx.auto_external and self._host_slave(mount, ctx):
            # A slave of a mount outside the dump (the machine's cgroup hierarchies or its
            # /sys/fs/cgroup tmpfs, bound into a container on a host with shared
            # propagation): a new instance could not be that mount's slave again; the host
            # mount itself can be bound and followed (--outside-masters host).
            key = host_path(ctx, mount, tree)
            if key is not None:
                ctx.mark_external(tree.ns_id, mount.mnt_id, key)
                return None
        if _self_restorable(mount, root):
            if _on_block_device(mount) and mount.root == "/":
                return blockdev.record(mount, ctx, tree.ns_id)
            return None
        if root != mount.root:
            return None  # a bind of a directory of an entry mount: restored from that one
        # An entry point of a superblock from outside: one external mount per (dev, root)
        # suffices, the other mounts of the same directory are binds of it.
        decided = ctx.stash.setdefault(_DECIDED_KEY, {})
        group = (mount.dev, root)
        if group in decided or group in _superblocks(ctx).declared:
            return None
        key = None
        if ctx.auto_external:
            key = host_path(ctx, mount, tree)
        if key is None:
            raise DumpError(unrestorable_message(mount, root))
        decided[group] = key
        ctx.mark_external(tree.ns_id, mount.mnt_id, key)
        return None

    @staticmethod
    def _host_slave(mount: Mount, ctx: DumpContext) -> bool:
        master = mount.propagation.master
        return master is not None and master not in _superblocks(ctx).shared

    @hookimpl
    def dump_content(self, mount: Mount, path: str, ctx: DumpContext) -> str | None:
        if mount.fstype not in CONTENT_FSTYPES:
            return None
        name = f"tmpfs-dev-{mount.dev.kdev}.tar.gz.img"
        content.dump(path, os.path.join(ctx.image_dir, name), mount.describe(), ctx)
        return name
