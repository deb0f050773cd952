"""Host files the kernel mount layer opens or makes for a restore: directories passed to a
superblock by descriptor, a loop device's backing file, a deleted bind root made again; and a
temporary process root for parameters given as paths."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from ..errors import CriuFwError, SyscallError
from ..plan import LoopFile
from . import confine
from .ops import Fd, host_join


def open_param(value: Fd) -> int:
    """An O_PATH descriptor of a directory passed by descriptor, resolved where it must stay:
    inside its restored mount, or inside the host directory the operator granted."""
    if value.handle >= 0:
        # Layers may be spelled through the mount's own relative links (a container store's
        # l/<id>), never out of the mount.
        return confine.open_beneath(value.handle, value.path, confine.GRANTED)
    if value.base is None:
        return os.open(value.path, os.O_PATH | os.O_CLOEXEC)  # the operator's own path
    base = os.open(value.base, os.O_PATH | os.O_CLOEXEC)
    try:
        return confine.open_beneath(base, value.path, confine.GRANTED)
    finally:
        os.close(base)


class BackingFileError(CriuFwError):
    """The file a :class:`~criu_fw.plan.LoopFile` names is gone, or not the recorded one."""


def open_loop_file(base: str, path: str, loop: LoopFile, *, follow: bool = False) -> int:
    """The file of a loop device to be, ``path`` inside the granted ``base`` (or ``base``
    itself), opened as the device will use it and checked against what was recorded."""
    what = f"the loop device's backing file {host_join(base, path)!r}"
    try:
        # Looked at before it is opened for real: opening a device node or a FIFO that the
        # images point at could start something (a watchdog) or hang the restore.
        probe = _open_granted(base, path, os.O_PATH, follow)
        try:
            seen = os.fstat(probe)
        finally:
            os.close(probe)
        why = loop.problem(seen)
        if why is not None:
            raise BackingFileError(f"{what}: {why}")
        mode = os.O_RDONLY if loop.read_only else os.O_RDWR
        fd = _open_granted(base, path, mode | os.O_NOCTTY | os.O_NONBLOCK, follow)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise BackingFileError(f"{what} is gone") from None
        raise BackingFileError(f"{what} cannot be opened: {exc}") from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            raise BackingFileError(f"{what} was replaced while the restore opened it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_granted(base: str, path: str, flags: int, follow: bool) -> int:
    if not confine.components(path):
        return os.open(base, flags | os.O_CLOEXEC)  # the operator's own path
    top = os.open(base, os.O_PATH | os.O_CLOEXEC)
    try:
        return confine.open_beneath(top, path, confine.GRANTED if follow else confine.STRICT,
                                    flags)
    finally:
        os.close(top)


@contextlib.contextmanager
def chrooted(path: str | None) -> Iterator[None]:
    """Temporarily make ``path`` the process root; the old root is kept open to come back."""
    if path is None:
        yield
        return
    old_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    old_cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chroot(path)
        try:
            yield
        finally:
            os.fchdir(old_root)
            os.chroot(".")
            os.fchdir(old_cwd)
    finally:
        os.close(old_root)
        os.close(old_cwd)


def make_entry(
    parent: int, name: str, mode: int, owner: tuple[int, int], link: str | None,
    content: int | None, top: int,
) -> str:
    """Make the file or directory ``name`` in ``parent`` (see :meth:`MountOps.recreate`);
    returns the name used: another one in the same directory when a new file took the old
    name since (the bind's root then shows that name)."""
    for attempt in (name, f".criu-fw-deleted.{os.getpid()}.{name}"[:255]):
        try:
            if stat.S_ISDIR(mode):
                os.mkdir(attempt, 0o700, dir_fd=parent)
                os.chown(attempt, *owner, dir_fd=parent, follow_symlinks=False)
                os.chmod(attempt, stat.S_IMODE(mode), dir_fd=parent, follow_symlinks=False)
            elif link is not None:
                src = confine.open_beneath(top, link)
                try:
                    # linkat through the descriptor: the file itself, not a name to re-resolve.
                    os.link(f"/proc/self/fd/{src}", attempt, dst_dir_fd=parent,
                            follow_symlinks=True)
                finally:
                    os.close(src)
            else:
                fd = os.open(attempt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=parent)
                try:
                    if content is not None:
                        while os.sendfile(fd, content, None, 1 << 20):
                            pass
                    os.fchown(fd, *owner)
                    os.fchmod(fd, stat.S_IMODE(mode))
                finally:
                    os.close(fd)
            return attempt
        except FileExistsError:
            continue
    raise SyscallError("recreate", errno.EEXIST, name, "taken, and so is the other name")
