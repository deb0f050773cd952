"""Paths named by images, resolved and created without leaving the tree they belong to.

Images are untrusted input: a mountpoint, a bind root or a layer path in them may spell
``..``, run through a symlink planted in restored tmpfs content, or through a magic link of
the restored proc (``/proc/self/root``). Every such path is resolved here, relative to a
descriptor of the mount (or the operator-given directory) it must stay in, with openat2(2):

* ``RESOLVE_BENEATH``: no component, ``..`` or symlink may leave the starting directory;
* ``RESOLVE_NO_MAGICLINKS``: never through /proc's fd, root, cwd or exe links;
* ``RESOLVE_NO_SYMLINKS`` where a link is never legitimate: mountinfo's mountpoints and roots
  are the kernel's own canonical paths, so a link on the way means the tree was tampered with.

Missing mountpoints are made one component at a time with mkdirat(2) on the descriptor of
the directory above; what was made is recorded as (a descriptor of that directory, the name,
the identity of what was made), so that undoing a failed restore removes exactly those
entries through the same descriptors and never resolves a path again: a directory swapped
for a symlink after it was made is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final

import attrs

from ..errors import SyscallError

_libc = ctypes.CDLL(None, use_errno=True)  # libc, as in criu_fw.kernel
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

SYS_openat2: Final = 437
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10

#: What a path inside a restored tree is resolved with: no link of any kind, nothing above.
STRICT: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
#: Inside a host directory the operator granted: its own relative symlinks are followed (a
#: container store's ``l/<id> -> ../<id>/diff``) as long as they stay inside it.
GRANTED: Final = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS

#: openat2 fails with EAGAIN when a rename or mount raced with ``..`` resolution; retried.
_EAGAIN_TRIES = 8


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) (always O_CLOEXEC); a failure is a SyscallError naming ``path``."""
    how = struct.pack("<QQQ", flags | os.O_CLOEXEC, 0, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    raw = os.fsencode(path)
    for _ in range(_EAGAIN_TRIES):
        ret = _syscall(SYS_openat2, ctypes.c_int(dirfd), raw, buf, ctypes.c_size_t(len(how)))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno() or errno.EIO
        if err != errno.EAGAIN:
            break
    raise SyscallError("openat2", err, path, _why(err))


def _why(err: int) -> str | None:
    if err == errno.EXDEV:
        return "it leads outside the tree it must stay in (.. or a symlink)"
    if err == errno.ELOOP:
        return "a symbolic link or magic link is on the way"
    return None


def components(rel: str) -> list[str]:
    """The components of a relative path inside a tree, refusing ``..``."""
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise SyscallError("resolve", errno.EXDEV, rel, "'..' is not allowed in it")
    return parts


def open_beneath(dirfd: int, rel: str, resolve: int = STRICT, flags: int = os.O_PATH) -> int:
    """A descriptor of ``rel`` inside ``dirfd`` (itself for an empty path or ``/``)."""
    parts = components(rel)
    return openat2(dirfd, "/".join(parts) or ".", flags, resolve)


@attrs.frozen
class Made:
    """One directory entry a restore created: ``name`` in the directory ``parent`` (a
    descriptor held since), with the identity it had when it was made."""

    parent: int
    name: str
    dev: int
    ino: int
    is_dir: bool


class Maker:
    """Creates missing mountpoints inside trees, keeping what it made for :meth:`undo`.

    ``guard``: a context in which each entry is made and recorded, so that nothing cuts the
    two apart (the restore's :func:`~criu_fw.restore.signals.held`: a signal turned into an
    exception waits for its end; an entry made but not recorded would never be undone)."""

    def __init__(
        self, guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    ) -> None:
        self.guard = guard
        self.made: list[Made] = []
        #: One held descriptor per directory something was made in, by identity.
        self._parents: dict[tuple[int, int], int] = {}

    def open_or_make(self, dirfd: int, rel: str, is_dir: bool) -> int:
        """A descriptor (O_PATH) of ``rel`` inside ``dirfd``, created where missing: every
        missing component as a directory, the last one as a directory or an empty file."""
        parts = components(rel)
        if not parts:
            return openat2(dirfd, ".", os.O_PATH, STRICT)
        try:
            return openat2(dirfd, "/".join(parts), os.O_PATH, STRICT)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        cur = os.dup(dirfd)
        try:
            for k, name in enumerate(parts):
                last = k == len(parts) - 1
                try:
                    nxt = openat2(cur, name, os.O_PATH, STRICT)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    self._make(cur, name, is_dir or not last)
                    nxt = openat2(cur, name, os.O_PATH, STRICT)
                os.close(cur)
                cur = nxt
            done, cur = cur, -1
            return done
        finally:
            if cur >= 0:
                os.close(cur)

    def _make(self, parent: int, name: str, is_dir: bool) -> None:
        with self.guard():
            self._make_recorded(parent, name, is_dir)

    def _make_recorded(self, parent: int, name: str, is_dir: bool) -> None:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            fd = os.open(
                name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644, dir_fd=parent,
            )
            os.close(fd)
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        top = os.fstat(parent)
        held = self._parents.get((top.st_dev, top.st_ino))
        if held is None:
            held = self._parents[(top.st_dev, top.st_ino)] = os.dup(parent)
        self.made.append(Made(held, name, st.st_dev, st.st_ino, is_dir))

    def undo(self) -> None:
        """Remove what was made (deepest first), only where it is still what was made.

        Something may still be mounted on it, in a namespace other than the caller's: a
        restored one that a holder keeps alive, or one whose root mount was detached with
        its children connected. The parent's descriptor is a mount of that namespace, so a
        stat through it sees the mount on top; the directory's own entry (readdir's inode)
        then says whether it is ours, and rmdir, which looks at the entry and not what is
        mounted on it, removes it (detaching those mounts: no mountpoint of the caller's)."""
        listings: dict[int, dict[str, int]] = {}
        for m in reversed(self.made):
            try:
                st = os.stat(m.name, dir_fd=m.parent, follow_symlinks=False)
                ours = (st.st_dev, st.st_ino) == (m.dev, m.ino)
                if not ours and os.fstat(m.parent).st_dev == m.dev:
                    ours = _entry_inode(m.parent, m.name, listings) == m.ino
                if not ours:
                    continue  # replaced since: not ours any more
                if m.is_dir:
                    os.rmdir(m.name, dir_fd=m.parent)
                else:
                    os.unlink(m.name, dir_fd=m.parent)
            except OSError:
                continue  # it is not empty, or it is a mountpoint of ours: leave it
        self.forget()

    def forget(self) -> None:
        """Keep what was made (the restore succeeded)."""
        for fd in self._parents.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._parents.clear()
        self.made.clear()


def _entry_inode(parent: int, name: str, listings: dict[int, dict[str, int]]) -> int | None:
    """The inode number of ``name``'s own entry in the directory ``parent`` (an O_PATH
    descriptor), whatever is mounted on it; each directory is read once."""
    listing = listings.get(parent)
    if listing is None:
        # Reopened through its magic link: the same directory, readable, no path walked.
        fd = os.open(f"/proc/self/fd/{parent}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as it:
                listing = listings[parent] = {e.name: e.inode() for e in it}
        finally:
            os.close(fd)
    return listing.get(name)
