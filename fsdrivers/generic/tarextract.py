"""Extracting a content archive in-process, confined to the new filesystem.

The whole archive is parsed before anything is written (:func:`.tarread.members`), so an
archive that is for GNU tar (:class:`NeedsGnuTar`) or that is refused leaves the filesystem
untouched. Then every member is created from a descriptor of its parent directory, which is
opened one component at a time from the filesystem's root with ``O_NOFOLLOW``: no member can
land outside the root, through a link (a symbolic link is only ever created, never followed)
or above it (``..`` is refused, a leading ``/`` is dropped, as GNU tar does). Hard links name
a member made earlier and are resolved the same way; ``linkat`` never follows a symbolic link.

The result is what GNU tar's ``--extract --xattrs --xattrs-include=* --numeric-owner -p``
makes: owners by number, modes (set-id bits after the owner, which clears them), every
extended attribute (after the data and the owner, each of which clears a file capability),
modification times to the nanosecond; directories get their metadata last, once nothing
more is created in them (a default ACL set earlier would be inherited by what comes next).
An extended attribute the kernel refuses is a warning, as in GNU tar.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

from .tarformat import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    BadArchive,
    NeedsGnuTar,
    show,
)
from .tarread import Member, members

log = logging.getLogger("criu_fw.generic")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directory descriptors kept open at once (the rest are opened again when needed).
_OPEN_DIRS = 64
_NODE = {CHRTYPE: stat.S_IFCHR, BLKTYPE: stat.S_IFBLK, FIFOTYPE: stat.S_IFIFO}

Path = tuple[bytes, ...]


class MemberError(Exception):
    """Creating one member failed (the message names it and says why); ``errno`` is the
    system call's error, if one failed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def used_up(st: os.statvfs_result) -> str | None:
    """What a filesystem that said ENOSPC has run out of, as words for a message:
    ``the filesystem is full (1 MiB, all in use)`` (its blocks) or ``... (20 inodes, all in
    use)``; None when neither is (a limit of its own, such as extended attributes' space).
    A filesystem without a limit reports 0 blocks or inodes in all, and is never full. The
    free counts are root's (a restore runs as root: reserved blocks are its own)."""
    if st.f_blocks and not st.f_bfree:
        return f"the filesystem is full ({_size(st.f_blocks * st.f_frsize)}, all in use)"
    if st.f_files and not st.f_ffree:
        return f"the filesystem is full ({st.f_files} inodes, all in use)"
    return None


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            whole = n % (1 << shift) == 0
            return f"{n / (1 << shift):.{0 if whole else 1}f} {unit}"
    return f"{n} bytes"


def _parts(m: Member, name: bytes, what: str) -> Path:
    """``name`` as path components below the root: a leading ``/`` dropped (GNU tar does
    so too), ``..`` refused."""
    if b"\0" in name:
        raise BadArchive(f"member {show(m.name)}: a NUL byte in its {what}")
    parts = tuple(p for p in name.lstrip(b"/").split(b"/") if p and p != b".")
    if b".." in parts:
        raise BadArchive(f"member {show(m.name)}: its {what} contains '..'")
    return parts


def plan(buf: bytes, max_members: int) -> list[tuple[Path, Member, Path | None]]:
    """Every member with its path (and a hard link's target), checked before anything is
    written: names, link targets, and that a hard link names a file made before it. More
    than ``max_members`` members: NeedsGnuTar."""
    out: list[tuple[Path, Member, Path | None]] = []
    files: set[Path] = set()
    for m in members(buf):
        if len(out) >= max_members:
            raise NeedsGnuTar(f"more than {max_members} members")
        path = _parts(m, m.name, "name")
        target = None
        if not path and m.kind != DIRTYPE:
            raise BadArchive(f"member {show(m.name)}: the root is not a directory")
        if m.kind == LNKTYPE:
            target = _parts(m, m.linkname, "link target")
            if target not in files:
                raise BadArchive(f"member {show(m.name)}: a hard link to "
                                 f"{show(m.linkname)}, which the archive did not make before")
        _check_values(m)
        if m.kind == DIRTYPE:
            files.discard(path)
        else:
            files.add(path)
        out.append((path, m, target))
    return out


def _check_values(m: Member) -> None:
    """Numbers and names the system calls would refuse with something other than an
    OSError (an overflow, a NUL byte): refused here, naming the member."""
    bad = None
    if not (0 <= m.uid < 1 << 32 and 0 <= m.gid < 1 << 32):
        bad = f"owner {m.uid}:{m.gid}"
    elif not -(1 << 63) < m.mtime_ns < 1 << 63:
        bad = "modification time"
    elif m.kind in (CHRTYPE, BLKTYPE) and not (0 <= m.devmajor < 1 << 12
                                               and 0 <= m.devminor < 1 << 20):
        bad = f"device {m.devmajor}:{m.devminor}"
    elif b"\0" in m.linkname or any(b"\0" in k for k in m.xattrs):
        bad = "NUL byte in a link target or an extended attribute's name"
    if bad is not None:
        raise BadArchive(f"member {show(m.name)}: an impossible {bad}")


class _Tree:
    """Directories of the filesystem being filled, opened without following links."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.fds: dict[Path, int] = {}

    def dir(self, path: Path, member: Member) -> int:
        """The directory ``path``, opened one component at a time from the deepest one
        open already; a missing one is made (GNU tar makes a member's parents too). The
        descriptor stays valid until :meth:`trim`."""
        fd = self.fds.get(path)
        if fd is not None or not path:
            return self.root if fd is None else fd
        have = len(path) - 1
        while have and path[:have] not in self.fds:
            have -= 1
        fd = self.fds[path[:have]] if have else self.root
        for depth in range(have + 1, len(path) + 1):
            child = self._open(fd, path, depth, member)
            if fd != self.root and path[:depth - 1] not in self.fds:
                os.close(fd)  # a step of a long walk, not kept
            if depth == len(path) or len(self.fds) < _OPEN_DIRS:
                self.fds[path[:depth]] = child
            fd = child
        return fd

    def _open(self, parent: int, path: Path, depth: int, member: Member) -> int:
        name = path[depth - 1]
        try:
            return os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise MemberError(
                    f"member {show(member.name)}: {show(b'/'.join(path[:depth]))} is not a "
                    "directory (a member is never created through a link)"
                ) from None
            raise

    def trim(self) -> None:
        """Between members: close what is kept beyond :data:`_OPEN_DIRS`."""
        if len(self.fds) > _OPEN_DIRS:
            self.close()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def extract(buf: bytes, root: int, *, max_members: int) -> None:
    """Fill the directory ``root`` (a descriptor) from the uncompressed archive ``buf``.

    Raises :class:`NeedsGnuTar` or :class:`BadArchive` before writing anything, and
    :class:`MemberError` naming the member that could not be made."""
    todo = plan(buf, max_members)
    tree = _Tree(root)
    delayed: list[tuple[Path, Member]] = []
    try:
        for path, m, target in todo:
            tree.trim()
            try:
                if m.kind == DIRTYPE:
                    _directory(tree, path, m)
                    delayed.append((path, m))
                    continue
                dfd = tree.dir(path[:-1], m)
                if m.kind == LNKTYPE:
                    assert target is not None
                    _link(tree.dir(target[:-1], m), target[-1], dfd, path[-1])
                elif m.kind == REGTYPE:
                    _regular(dfd, path[-1], m)
                else:
                    _other(dfd, path[-1], m)
            except OSError as exc:
                raise _failed(m, exc) from None
        for path, m in reversed(delayed):
            tree.trim()
            try:
                fd = tree.dir(path, m)
                os.fchown(fd, m.uid, m.gid)
                _xattrs(fd, m)
                os.fchmod(fd, m.mode)
                os.utime(fd, ns=(time.time_ns(), m.mtime_ns))
            except OSError as exc:
                raise _failed(m, exc) from None
    finally:
        tree.close()


def _failed(m: Member, exc: OSError) -> MemberError:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return MemberError(f"member {show(m.name)}: {exc.strerror} ({code})", exc.errno)


def _new(dfd: int, name: bytes, make: Callable[[], object]) -> None:
    """Create an entry; one the archive made before under that name is replaced (GNU tar's
    default), unless it is a directory."""
    try:
        make()
    except FileExistsError:
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise
        os.unlink(name, dir_fd=dfd)
        make()


def _link(sfd: int, source: bytes, dfd: int, name: bytes) -> None:
    # linkat without AT_SYMLINK_FOLLOW: a hard link to a symbolic link is to the link itself.
    _new(dfd, name, lambda: os.link(source, name, src_dir_fd=sfd, dst_dir_fd=dfd,
                                    follow_symlinks=False))


def _directory(tree: _Tree, path: Path, m: Member) -> None:
    if not path:
        return
    parent = tree.dir(path[:-1], m)
    try:
        os.mkdir(path[-1], 0o700, dir_fd=parent)
    except FileExistsError:
        st = os.stat(path[-1], dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path[-1], dir_fd=parent)
            os.mkdir(path[-1], 0o700, dir_fd=parent)


def _regular(dfd: int, name: bytes, m: Member) -> None:
    fd = -1

    def make() -> None:
        nonlocal fd
        fd = os.open(name, _NEW, 0o600, dir_fd=dfd)

    _new(dfd, name, make)
    try:
        data = m.data
        if m.sparse is None:
            while data:
                data = data[os.write(fd, data):]
        else:
            # The stored segments in order, each at its offset; the rest stays a hole.
            pos = 0
            for offset, length in m.sparse:
                chunk = data[pos:pos + length]
                pos += length
                while chunk:
                    n = os.pwrite(fd, chunk, offset)
                    chunk, offset = chunk[n:], offset + n
            os.ftruncate(fd, m.size)
        os.fchown(fd, m.uid, m.gid)
        _xattrs(fd, m)
        os.fchmod(fd, m.mode)
        os.utime(fd, ns=(time.time_ns(), m.mtime_ns))
    finally:
        os.close(fd)


def _other(dfd: int, name: bytes, m: Member) -> None:
    """A symbolic link, a device node or a FIFO: made and then changed by name in ``dfd``,
    never followed (and never opened: opening a FIFO would wait for a writer)."""
    if m.kind == SYMTYPE:
        _new(dfd, name, lambda: os.symlink(m.linkname, name, dir_fd=dfd))
    else:
        dev = os.makedev(m.devmajor, m.devminor) if m.kind != FIFOTYPE else 0
        _new(dfd, name, lambda: os.mknod(name, _NODE[m.kind] | 0o600, dev, dir_fd=dfd))
    os.chown(name, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
    # The xattr calls take a path: the directory by descriptor, the entry by its name, which
    # is the last component and so is not followed.
    _xattrs(b"/proc/self/fd/%d/%s" % (dfd, name), m)
    if m.kind != SYMTYPE:
        os.chmod(name, m.mode, dir_fd=dfd)  # a node made just now, not a link
    os.utime(name, ns=(time.time_ns(), m.mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _xattrs(target: int | bytes, m: Member) -> None:
    follow = isinstance(target, int)
    for key, value in m.xattrs.items():
        try:
            os.setxattr(target, key, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            log.warning("member %s: extended attribute %s not restored: %s",
                        show(m.name), show(key), exc.strerror)
