"""Image directories CRIU wrote alone (no ``fw-mountpoints``): a namespace from CRIU's
``mnt_entry`` fields, each read as CRIU 4.2 means it.

What CRIU's images say rebuilds a generic mount: fstype (CRIU's code, or AUTO and the
name), per-mount flags, superblock options and flags, peer groups, unbindable, a deleted
root, an external key. What they cannot say is missing, and said so where it matters: driver
state (an overlay's resolved layers: the overlay driver refuses), ``propagate_from``, the
fstype's subtype (``fuse.sshfs`` is FUSE), per-mount options CRIU keeps no flag for.

Content: CRIU archives every tmpfs but the root of the dump (``tmpfs-dev-<dev>.tar.gz.img``);
a root tmpfs comes back empty, as CRIU restores it; another tmpfs without its archive is an
error naming the mount and the archive.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ..api.loader import DriverManager
from ..errors import ImageError
from ..fstypes import CRIU_FSTYPES, UNNAMED
from ..model import Dev, Mount, MountTree, Propagation
from ..proto import core_pb2, mnt_pb2, pstree_pb2
from ..records import DeletedRoot, DumpedNamespace, MountRecord
from . import check as imagecheck
from . import iter_image, read_image, text_of

_NAMES = {code: name for name, code in CRIU_FSTYPES.items()}
_KDEV_MINOR_MASK = (1 << 20) - 1

# mnt_entry.flags -> the per-mount option mountinfo shows (relatime unless noatime or
# strictatime: the kernel's default, which CRIU writes as MS_RELATIME).
_MNT_FLAGS = (
    (0x1, "ro"), (0x2, "nosuid"), (0x4, "nodev"), (0x8, "noexec"), (0x400, "noatime"),
    (0x800, "nodiratime"), (0x200000, "relatime"),
)  # fmt: skip
_MS_UNBINDABLE = 0x20000
# mnt_entry.sb_flags -> superblock option. CRIU writes msync's MS_SYNC (4) for ``sync``
# where the mount flag is MS_SYNCHRONOUS (16): both are read as ``sync`` (criu-fw writes 16).
_SB_FLAGS = ((0x10, "sync"), (0x4, "sync"), (0x40, "mand"), (0x80, "dirsync"),
             (0x2000000, "lazytime"))  # fmt: skip


def root_task_namespace(image_dir: str) -> int | None:
    """The mount namespace of the dump's root task (``pstree.img``'s first process, its
    ``ids-<pid>.img``), or None where there are no process images (a directory of mount
    images alone). CRIU's ``inventory.root_ids`` are the dumper's own namespaces, not the
    dumped tree's. A ``pstree.img`` whose root task has no ids image is a damaged set,
    refused as ``show`` and ``verify`` refuse it (not read around)."""
    pstree = os.path.join(image_dir, "pstree.img")
    if not os.path.lexists(pstree):
        return None
    first = next(iter(iter_image(pstree, pstree_pb2.pstree_entry, kind="PSTREE")), None)
    if first is None:
        raise ImageError(pstree, "no process: the dump's root task is missing")
    return task_mount_namespace(image_dir, first.pid)


def task_mount_namespace(image_dir: str, pid: int) -> int:
    """The mount namespace id of process ``pid`` of ``pstree.img`` (its ``ids-<pid>.img``)."""
    ids_path = os.path.join(image_dir, f"ids-{pid}.img")
    if not os.path.lexists(ids_path):
        raise ImageError(ids_path, f"missing: process {pid} of pstree.img has no ids image")
    ids = read_image(ids_path, core_pb2.task_kobj_ids_entry, kind="IDS")
    if len(ids) != 1 or not ids[0].HasField("mnt_ns_id"):
        raise ImageError(ids_path, "expected one entry with a mount namespace id")
    return int(ids[0].mnt_ns_id)


def read_criu_namespace(
    image_dir: str, ns_id: int, mgr: DriverManager, root_ns: bool
) -> DumpedNamespace:
    """Mount namespace ``ns_id`` from CRIU's ``mountpoints-<ns_id>.img`` alone."""

    path = os.path.join(image_dir, f"mountpoints-{ns_id}.img")
    records: dict[int, MountRecord] = {}
    entry_of: dict[int, int] = {}
    for n, e in enumerate(iter_image(path, mnt_pb2.mnt_entry, kind="MNTS")):
        if e.mnt_id in records:
            raise ImageError(path, f"mount id {e.mnt_id} appears twice", n)
        mount = mount_of(e)
        for field in ("mountpoint", "root"):
            why = imagecheck.path_problem(field, getattr(mount, field))
            if why is not None:
                raise ImageError(path, f"mount {e.mnt_id}: {why}", n)
        ext = text_of(e.ext_key) if e.HasField("ext_key") and e.ext_key else None
        why = imagecheck.text_problem(mount, ext, None)
        if why is not None:
            raise ImageError(path, f"mount {e.mnt_id}: {why}", n)
        # A deleted root: CRIU's restore makes it again as its mountpoint is.
        gone = DeletedRoot(0, like_mountpoint=True) if mount.root_deleted else None
        records[e.mnt_id] = MountRecord(mount, mgr.owner(mount.fstype), external=ext,
                                        deleted=gone)
        entry_of[e.mnt_id] = n
    # CRIU writes them in reverse mountinfo order: parents after their children.
    mounts = [r.mount for r in reversed(records.values())]
    bad = imagecheck.tree_problem(mounts)
    if bad is not None:
        mnt_id, why = bad
        raise ImageError(path, f"mount {mnt_id}: {why}" if mnt_id is not None else why,
                         entry_of[mnt_id] if mnt_id is not None else None)
    tree = MountTree(tuple(mounts), ns_id)
    _content(image_dir, path, tree, records, entry_of, root_ns)
    return DumpedNamespace(ns_id, tree, records)


def mount_of(e: mnt_pb2.mnt_entry) -> Mount:
    """A mount as CRIU's entry describes it."""
    if e.fstype in (mnt_pb2.AUTO, mnt_pb2.UNSUPPORTED) and e.fsname:
        fstype = text_of(e.fsname)
    elif e.fstype == mnt_pb2.UNSUPPORTED:
        fstype = UNNAMED
    else:
        fstype = _NAMES.get(e.fstype, "")
    if not fstype:
        fstype = f"criu-fstype-{e.fstype}"  # refused by the registry or the planner, named
    flags = [name for bit, name in _MNT_FLAGS[1:] if e.flags & bit]
    mount_options = ("ro" if e.flags & 0x1 else "rw", *flags)
    sb = e.sb_flags if e.HasField("sb_flags") else 0
    sb_names = dict.fromkeys(name for bit, name in _SB_FLAGS if sb & bit)
    opts = [o for o in text_of(e.options).split(",") if o]
    if fstype == "devpts":
        # CRIU adds it to a devpts that is not the machine's first (the kernel hides it, and
        # every devpts mount is a new instance since Linux 4.7): not an option it showed.
        opts = [o for o in opts if o != "newinstance"]
    super_options = ("ro" if sb & 0x1 else "rw", *sb_names, *opts)
    return Mount(
        mnt_id=e.mnt_id,
        parent_id=e.parent_mnt_id,
        dev=Dev(e.root_dev >> 20, e.root_dev & _KDEV_MINOR_MASK),
        root=text_of(e.root),
        mountpoint=text_of(e.mountpoint),
        fstype=fstype,
        source=text_of(e.source),
        mount_options=mount_options,
        super_options=super_options,
        propagation=Propagation(
            shared=e.shared_id or None,
            master=e.master_id or None,
            unbindable=bool(e.flags & _MS_UNBINDABLE),
        ),
        root_deleted=e.deleted,
    )


def _content(
    image_dir: str, path: str, tree: MountTree, records: dict[int, MountRecord],
    entry_of: dict[int, int], root_ns: bool,
) -> None:
    for dev, mounts in _by_device(tree.mounts).items():
        first = mounts[0]
        if first.fstype != "tmpfs" or all(records[m.mnt_id].external for m in mounts):
            continue
        name = f"tmpfs-dev-{dev.kdev}.tar.gz.img"
        archive = os.path.join(image_dir, name)
        try:
            is_file = stat.S_ISREG(os.lstat(archive).st_mode)
        except FileNotFoundError:
            is_file = False
        if is_file:
            for m in mounts:
                old = records[m.mnt_id]
                records[m.mnt_id] = old._replace(content=name)
        elif not (root_ns and any(m is tree.root for m in mounts)):
            raise ImageError(
                path, f"{first.describe()}: its content archive {name} is missing (CRIU "
                f"archives every tmpfs but the root of the dump)", entry_of[first.mnt_id],
            )


def _by_device(mounts: Iterable[Mount]) -> dict[Dev, list[Mount]]:
    out: dict[Dev, list[Mount]] = {}
    for m in mounts:
        out.setdefault(m.dev, []).append(m)
    return out
