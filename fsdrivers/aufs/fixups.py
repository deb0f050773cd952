"""Correcting what the kernel reports for files and mappings of an AUFS mount.

AUFS maps the branch's own file into memory, so /proc/PID/map_files (and fds opened through
them) show the branch path, the branch file's device and inode, and a mount id of the *host*
(the mount holding the branch directories) that does not exist in the container. We rewrite:

* the path: the path below the branch, i.e. from the container's root (``/bin/nginx``);
* the identity: stat of that path under the container's root directory (``--root``), which is
  what restore will open and compare against;
* the mount id: ``None`` (CRIU's -1, "find the mount by path"), instead of the host's id.

A path outside every branch is left alone. A deleted file keeps its deleted flag; it has no
path under the root to take an identity from, and the branch file's identity is not the AUFS
one, so its identity is dropped (``None``) rather than left wrong.
"""

from __future__ import annotations

import errno
import os

import attrs
from criu_fw.driver import Dev, DumpContext, DumpError, FileIdentity, FileMapping, OpenFile

from .paths import BranchIndex, Resolved

DELETED_SUFFIX = " (deleted)"
_FD_NAMES = {-1: "cwd", -2: "root", -3: "exe"}


def _describe_fd(file: OpenFile) -> str:
    return f"pid {file.pid} {_FD_NAMES.get(file.fd, f'fd {file.fd}')}"


def _describe_vma(vma: FileMapping) -> str:
    return f"pid {vma.pid} mapping {vma.start:x}-{vma.end:x}"


def container_root(ctx: DumpContext, pid: int, what: str) -> str:
    """Where the container's files can be stat'ed: ``--root``, else the live /proc/PID/root."""
    if ctx.root is not None:
        return ctx.root
    if ctx.recorded:
        # A recorded /proc/PID/root is a plain symlink to a path of the recording host.
        raise DumpError(
            f"{what}: an AUFS file needs the container's root directory (--root) "
            f"when /proc is a recording"
        )
    return os.path.join(ctx.proc_root, str(pid), "root")


def stat_under(root: str, path: str) -> os.stat_result:
    """lstat ``path`` (from the container's root) inside ``root`` without leaving it.

    Walks one component at a time with O_NOFOLLOW, so an absolute symlink in the container
    (``/lib -> /usr/lib``) can never make us stat a file of the host instead.
    """
    parts = [p for p in path.split("/") if p]
    if any(p == ".." for p in parts):
        raise OSError(errno.EINVAL, "'..' in path", path)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
        if not parts:
            return os.fstat(fd)
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def _identity(root: str, where: Resolved, what: str) -> FileIdentity:
    try:
        st = stat_under(root, where.path)
    except OSError as exc:
        why = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise DumpError(
            f"{what}: {where.path!r} (in AUFS branch br{where.index} {where.branch.path!r}) "
            f"cannot be checked under root {root!r}: {why} ({exc.strerror})"
        ) from exc
    return FileIdentity(Dev.from_kdev(st.st_dev), st.st_ino)


def _rewrite(
    path: str, deleted: bool, pid: int, index: BranchIndex, ctx: DumpContext, what: str
) -> tuple[str, FileIdentity | None] | None:
    """The container path and identity for a host path, or None if it is in no branch."""
    where = index.resolve(path)
    if where is None:
        return None
    if deleted or where.path.endswith(DELETED_SUFFIX):
        return where.path, None
    return where.path, _identity(container_root(ctx, pid, what), where, what)


def fix_open_file(file: OpenFile, index: BranchIndex, ctx: DumpContext) -> OpenFile | None:
    """``fixup_fd_path`` for a file the core found on an AUFS mount."""
    out = _rewrite(file.path, file.deleted, file.pid, index, ctx, _describe_fd(file))
    if out is None:
        return None
    return attrs.evolve(file, path=out[0], mnt_id=None, identity=out[1])


def fix_mapping(vma: FileMapping, index: BranchIndex, ctx: DumpContext) -> FileMapping | None:
    """``fixup_vma`` for a mapping the core found on an AUFS mount."""
    out = _rewrite(vma.path, vma.deleted, vma.pid, index, ctx, _describe_vma(vma))
    if out is None:
        return None
    return attrs.evolve(vma, path=out[0], mnt_id=None, identity=out[1])
