"""Binds whose root was unlinked after they were mounted (mountinfo's ``//deleted``).

The kernel keeps such a bind working: a directory stays an empty directory (it could only be
removed empty, and nothing can be created in it since), a file keeps its bytes. The path is
gone from its filesystem, so a restore cannot bind it as it binds any other subdirectory:
CRIU makes the path again, binds it and unlinks it; criu-fw does the same
(:meth:`criu_fw.kernel.mountops.MountOps.recreate`) and records here what that needs, read
through the bind itself while the processes are frozen:

* a directory: its mode and owner;
* a regular file with another name left (a hard link): that name, found by walking the
  filesystem through a mount of it, so that both names stay one file after the restore;
* a regular file without one: its bytes, in ``fw-deleted-<ns>-<mount>.img``.

Other kinds of bound files (device nodes, FIFOs, sockets) are refused, naming the mount.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat

from ..errors import DumpError
from ..images.mounts import deleted_root_image
from ..kernel import AT_EMPTY_PATH, statx_mnt_id
from ..model import Mount, MountTree
from ..records import DeletedRoot
from .namespaces import Namespace

log = logging.getLogger("criu_fw.dump")

#: At most this many directory entries are looked at for another name of one file.
WALK_LIMIT = 200_000


def deleted_roots(
    namespaces: list[Namespace], external: set[tuple[int, int]], proc_root: str, image_dir: str
) -> dict[int, dict[int, DeletedRoot]]:
    """What each bind of a deleted root needs at restore, by namespace and mount id; the
    bytes of deleted files are written into ``image_dir``. External mounts are left out:
    their source is the host's business."""
    out: dict[int, dict[int, DeletedRoot]] = {}
    for ns in namespaces:
        for m in ns.tree.mounts:
            if m.root_deleted and (ns.ns_id, m.mnt_id) not in external:
                root = f"{proc_root}/{ns.pid}/root"
                out.setdefault(ns.ns_id, {})[m.mnt_id] = _record(ns, root, m, image_dir)
    return out


def _record(ns: Namespace, root: str, m: Mount, image_dir: str) -> DeletedRoot:
    try:
        fd = os.open(root + m.mountpoint, os.O_PATH | os.O_NOFOLLOW)
    except OSError as e:
        raise DumpError(f"{m.describe()}: its deleted root cannot be opened: {e.strerror}") from e
    try:
        if statx_mnt_id("", fd, AT_EMPTY_PATH) != m.mnt_id:
            raise DumpError(
                f"{m.describe()}: its root was deleted and another mount covers it; a "
                "covered bind of a deleted file or directory cannot be read"
            )
        st = os.fstat(fd)
        kind = stat.S_IFMT(st.st_mode)
        mode = kind | stat.S_IMODE(st.st_mode)
        if kind == stat.S_IFDIR:
            return DeletedRoot(mode, st.st_uid, st.st_gid)
        if kind != stat.S_IFREG:
            raise DumpError(
                f"{m.describe()}: its root was a {_kind(kind)} that was deleted since; only "
                "deleted directories and regular files can be made again"
            )
        if st.st_nlink > 0:
            other = _other_name(ns.tree, root, m, st)
            if other is not None:
                return DeletedRoot(mode, st.st_uid, st.st_gid, link=other)
            log.warning(
                "%s: its deleted root file has %d other name(s), none under a mount of its "
                "filesystem in namespace %d; its bytes are kept, the link is not",
                m.describe(), st.st_nlink, ns.ns_id,
            )
        name = deleted_root_image(ns.ns_id, m.mnt_id)
        _copy(fd, os.path.join(image_dir, name))
        return DeletedRoot(mode, st.st_uid, st.st_gid, content=name)
    finally:
        os.close(fd)


def _kind(kind: int) -> str:
    return {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
            stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}.get(kind, "special file")


def _copy(fd: int, dest: str) -> None:
    with open(f"/proc/self/fd/{fd}", "rb") as src, open(dest, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _other_name(tree: MountTree, root: str, m: Mount, st: os.stat_result) -> str | None:
    """Another name of the file ``st``, from its filesystem's root, seen through a mount of
    the same filesystem whose root still exists (the widest first), or None."""
    holders = sorted(
        (o for o in tree.by_dev(m.dev) if not o.root_deleted),
        key=lambda o: o.root.count("/") if o.root != "/" else 0,
    )
    # A mountpoint shows the mount on it, not the file of this filesystem underneath (the
    # deleted bind itself may sit under the holder): never taken, never walked into.
    points = {o.mountpoint for o in tree.mounts}
    seen = 0
    for holder in holders:
        top = root + holder.mountpoint
        for path, dirs, files in os.walk(top):
            below = path[len(top) :].lstrip("/")
            here = posixpath.normpath(posixpath.join(holder.mountpoint, below))
            for name in files:
                seen += 1
                if posixpath.join(here, name) in points:
                    continue
                try:
                    other = os.lstat(os.path.join(path, name))
                except OSError:
                    continue
                if other.st_ino == st.st_ino and other.st_dev == st.st_dev:
                    rel = posixpath.relpath(os.path.join(path, name), top)
                    return posixpath.normpath(posixpath.join(holder.root, rel))
            dirs[:] = [d for d in dirs if posixpath.join(here, d) not in points]
            if seen > WALK_LIMIT:
                return None
    return None
