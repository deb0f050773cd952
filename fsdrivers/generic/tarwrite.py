"""Archiving a small filesystem in-process: the uncompressed tar of a directory tree, as GNU
tar would write it with the tmpfs archive options (see :mod:`.tarformat`).

The walk works on descriptors (``openat`` of one name at a time, never following a link) and
reads every file once. Whatever it cannot write exactly the way GNU tar would raises
:class:`NeedsGnuTar` and the caller archives the whole filesystem with GNU tar instead: a
sparse file (GNU tar keeps its holes), a file that changes while it is read (GNU tar's own
warnings and padding apply), an entry that vanishes, a tree deeper than :data:`MAX_DEPTH`, or
more bytes or members than the caller's limits. Nothing is ever left out silently; sockets,
which no tar can archive, are skipped as GNU tar skips them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from .tarformat import (
    ACL_ACCESS,
    ACL_DEFAULT,
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    PAX_LOCAL,
    RECORD,
    REGTYPE,
    SYMTYPE,
    XATTR_ACL_ACCESS,
    XATTR_ACL_DEFAULT,
    XATTR_PREFIX,
    NeedsGnuTar,
    acl_text,
    encode_xattr_name,
    header,
    minimal_acl_text,
    octal,
    pax_record,
    pax_time,
)

log = logging.getLogger("criu_fw.generic")

#: Deeper trees go to GNU tar (each level holds one descriptor while its entries are read).
MAX_DEPTH = 128
_ZEROS = bytes(BLOCK)
_XATTR_KEY = XATTR_PREFIX.encode()
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Walk:
    def __init__(self, dev: int, max_bytes: int, max_members: int) -> None:
        self.out = bytearray()
        self.dev = dev
        self.bytes_left = max_bytes
        self.members_left = max_members
        self.links: dict[int, bytes] = {}  # inode -> first member name (hard links)
        # O_NOATIME: archiving should not change what it archives (needs ownership or
        # CAP_FOWNER; dropped after the first EPERM).
        self.noatime = os.O_NOATIME

    # -- members ---------------------------------------------------------------------------

    def member(
        self, name: bytes, st: os.stat_result, kind: bytes, *, size: int = 0,
        linkname: bytes = b"", xattrs: dict[bytes, bytes] | None = None,
        device: bool = False,
    ) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise NeedsGnuTar("more members than the in-process limit")
        recs = [
            pax_record(b"mtime", pax_time(st.st_mtime_ns)),
            pax_record(b"atime", pax_time(st.st_atime_ns)),
            pax_record(b"ctime", pax_time(st.st_ctime_ns)),
        ]
        if len(name) > 100 or not name.isascii():
            recs.append(pax_record(b"path", name))
        if len(linkname) > 100 or not linkname.isascii():
            recs.append(pax_record(b"linkpath", linkname))
        for key, value in ((b"size", size), (b"uid", st.st_uid), (b"gid", st.st_gid)):
            if octal(value, 12 if key == b"size" else 8) is None:
                recs.append(pax_record(key, b"%d" % value))
        if xattrs:
            recs.extend(_acl_records(st, xattrs))
            recs.extend(pax_record(_XATTR_KEY + encode_xattr_name(k), v)
                        for k, v in xattrs.items())
        pax = b"".join(recs)
        base = name.rstrip(b"/").rpartition(b"/")[2] or b"."
        mtime = st.st_mtime_ns // 1_000_000_000
        out = self.out
        out += header(b"./PaxHeaders/" + base, 0o644, 0, 0, len(pax), mtime, PAX_LOCAL)
        out += pax
        out += _ZEROS[: -len(pax) % BLOCK]
        major, minor = (os.major(st.st_rdev), os.minor(st.st_rdev)) if device else (0, 0)
        out += header(name, st.st_mode, st.st_uid, st.st_gid, size, mtime, kind, linkname,
                      major, minor)

    # -- the walk ----------------------------------------------------------------------------

    def directory(self, fd: int, name: bytes, st: os.stat_result, depth: int) -> None:
        self.member(name, st, DIRTYPE, xattrs=_xattrs(fd, None))
        if st.st_dev != self.dev:
            return  # --one-file-system: the directory, not what is mounted there
        if depth > MAX_DEPTH:
            raise NeedsGnuTar(f"deeper than {MAX_DEPTH} directories")
        with os.scandir(fd) as it:
            names = [os.fsencode(e.name) for e in it]
        for entry in names:
            self.entry(fd, entry, name + entry, depth)

    def entry(self, dfd: int, entry: bytes, name: bytes, depth: int) -> None:
        st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(entry, _DIR_FLAGS, dir_fd=dfd)
            try:
                self.directory(fd, name + b"/", _same(os.fstat(fd), st, name), depth + 1)
            finally:
                os.close(fd)
            return
        if stat.S_ISSOCK(mode):
            log.info("%r: socket ignored (as GNU tar does)", name)
            return
        if st.st_nlink > 1:
            first = self.links.get(st.st_ino)
            if first is not None:
                self.member(name, st, LNKTYPE, linkname=first)
                return
            self.links[st.st_ino] = name
        if stat.S_ISREG(mode):
            self.regular(dfd, entry, name, st)
        elif stat.S_ISLNK(mode):
            target = os.readlink(entry, dir_fd=dfd)
            self.member(name, st, SYMTYPE, linkname=os.fsencode(target),
                        xattrs=_xattrs(dfd, entry))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            kind = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE if stat.S_ISBLK(mode) else FIFOTYPE
            self.member(name, st, kind, xattrs=_xattrs(dfd, entry), device=kind != FIFOTYPE)
        else:
            raise NeedsGnuTar(f"{name!r}: a kind of file tar archives its own way")

    def regular(self, dfd: int, entry: bytes, name: bytes, st: os.stat_result) -> None:
        size = st.st_size
        # GNU tar's test for a sparse file: fewer blocks than the size needs.
        if st.st_blocks * 512 < size:
            raise NeedsGnuTar(f"{name!r} is sparse")
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise NeedsGnuTar("more bytes than the in-process limit")
        try:
            fd = os.open(entry, _READ_FLAGS | self.noatime, dir_fd=dfd)
        except PermissionError:
            if not self.noatime:
                raise
            self.noatime = 0
            fd = os.open(entry, _READ_FLAGS, dir_fd=dfd)
        try:
            _same(os.fstat(fd), st, name)
            chunks = []
            left = size
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            if left or os.read(fd, 1):
                raise NeedsGnuTar(f"{name!r} changed size while it was read")
            xattrs = _xattrs(fd, None)
        finally:
            os.close(fd)
        self.member(name, st, REGTYPE, size=size, xattrs=xattrs)
        for chunk in chunks:
            self.out += chunk
        self.out += _ZEROS[: -size % BLOCK]


def _same(now: os.stat_result, listed: os.stat_result, name: bytes) -> os.stat_result:
    if (now.st_ino, now.st_mode) != (listed.st_ino, listed.st_mode):
        raise NeedsGnuTar(f"{name!r} was replaced while it was archived")
    return now


def _xattrs(fd: int, entry: bytes | None) -> dict[bytes, bytes]:
    """Every extended attribute of an open file (``entry`` None) or of ``entry`` in the
    directory ``fd`` (not followed: the path names the directory by descriptor, and only
    its last component, which is never followed, is a name)."""
    target: int | bytes = fd if entry is None else b"/proc/self/fd/%d/%s" % (fd, entry)
    follow = entry is None
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for key in names:
        try:
            out[os.fsencode(key)] = os.getxattr(target, key, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
            raise NeedsGnuTar("an extended attribute vanished while it was read") from None
    return out


def _acl_records(st: os.stat_result, xattrs: dict[bytes, bytes]) -> list[bytes]:
    """GNU tar --acls's text form, next to the xattrs that hold the same ACLs: a file with
    an access ACL, or a directory with a default one, gets ``SCHILY.acl.access`` (for the
    latter, the ACL its mode bits make), and ``SCHILY.acl.default`` if it has one."""
    access = xattrs.get(XATTR_ACL_ACCESS)
    default = xattrs.get(XATTR_ACL_DEFAULT)
    if access is None and default is None:
        return []
    try:
        text = acl_text(access) if access is not None else minimal_acl_text(st.st_mode)
        recs = [pax_record(ACL_ACCESS.encode(), text)]
        if default is not None:
            recs.append(pax_record(ACL_DEFAULT.encode(), acl_text(default)))
    except ValueError as exc:
        raise NeedsGnuTar(f"an ACL this writer does not know: {exc}") from None
    return recs


def write_tree(path: str, *, max_bytes: int, max_members: int) -> bytearray:
    """The uncompressed tar of the tree at ``path`` (members ``./``, ``./a``, ...).

    Raises :class:`NeedsGnuTar` where GNU tar must do it, and :class:`OSError` where the
    tree could not be read (the caller leaves that to GNU tar as well: its warnings and
    errors are the reference)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        walk = _Walk(st.st_dev, max_bytes, max_members)
        walk.directory(fd, b"./", st, 0)
    finally:
        os.close(fd)
    out = walk.out
    out += bytes(2 * BLOCK)
    out += bytes(-len(out) % RECORD)
    return out
