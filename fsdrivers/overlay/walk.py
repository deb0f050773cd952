"""Looking at paths of another mount namespace without entering it.

Everything goes through a directory fd of ``/proc/PID/root``: ``openat2(RESOLVE_IN_ROOT)``
keeps absolute symlinks and ``..`` inside that root (a plain ``/proc/PID/root/a/b`` walk would
follow an absolute symlink into the *dumper's* root), and one ``statx`` gives device, inode and
mount id together.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import attrs
from criu_fw.driver import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, Dev, SyscallError, openat2

_libc = ctypes.CDLL(None, use_errno=True)  # libc, as in criu_fw.kernel
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

SYS_statx = 332
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
STATX_BASIC = 0x7FF
STATX_MNT_ID = 0x1000


@attrs.frozen
class Stat:
    """The parts of one statx answer that identity checks use."""

    dev: Dev
    ino: int
    mode: int
    size: int
    mtime_ns: int
    mnt_id: int
    #: Set by the kernel only (no utimes for it): after a copy-up the overlay shows the
    #: upper's, which tells the upper file apart from another copy of the same origin.
    ctime_ns: int = 0

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


def statx(path: str, dirfd: int = AT_FDCWD, follow: bool = True) -> Stat:
    """statx with the mount id; ``path=""`` stats ``dirfd`` itself."""
    buf = ctypes.create_string_buffer(256)
    flags = (0 if follow else AT_SYMLINK_NOFOLLOW) | (AT_EMPTY_PATH if path == "" else 0)
    ret = _syscall(
        SYS_statx,
        ctypes.c_int(dirfd),
        os.fsencode(path),
        ctypes.c_int(flags),
        ctypes.c_uint(STATX_BASIC | STATX_MNT_ID),
        buf,
    )
    if ret < 0:
        err = ctypes.get_errno() or errno.EIO
        raise SyscallError("statx", err, path or f"fd {dirfd}")
    raw = buf.raw
    mode = struct.unpack_from("<H", raw, 28)[0]
    ino, size = struct.unpack_from("<QQ", raw, 32)
    ctime_s, ctime_ns = struct.unpack_from("<qI", raw, 96)
    mtime_s, mtime_ns = struct.unpack_from("<qI", raw, 112)
    dev_major, dev_minor = struct.unpack_from("<II", raw, 136)
    mnt_id = struct.unpack_from("<Q", raw, 144)[0]
    return Stat(
        Dev(dev_major, dev_minor),
        ino,
        mode,
        size,
        mtime_s * 1_000_000_000 + mtime_ns,
        mnt_id,
        ctime_s * 1_000_000_000 + ctime_ns,
    )


class RootView:
    """One namespace's root (``/proc/PID/root``, or a directory standing for it), held open.

    Paths given to its methods are absolute paths *of that namespace*.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open(self, path: str, flags: int = os.O_PATH) -> int:
        """Open ``path`` with symlinks and ``..`` confined to this root."""
        rel = path.lstrip("/") or "."
        return openat2(self.fd, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)

    def stat(self, path: str, follow: bool = False) -> Stat:
        """statx of a canonical path (as /proc's fd links show them: no symlinks inside)."""
        return statx(path.lstrip("/") or ".", self.fd, follow=follow)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fd_path(fd: int) -> str:
    """The kernel's d_path of an fd; for a namespace we did not enter, from that namespace's
    root (the walk never meets our root)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def dir_entries(fd: int) -> dict[str, tuple[int, bool, bool]]:
    """``name -> (d_ino, is_dir, is_whiteout)`` of an O_PATH directory fd (reopened for reading)."""
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    out: dict[str, tuple[int, bool, bool]] = {}
    try:
        with os.scandir(rfd) as it:
            for e in it:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    is_chr = (
                        not is_dir and not e.is_file(follow_symlinks=False) and (not e.is_symlink())
                    )
                except OSError:
                    is_dir, is_chr = False, False
                out[e.name] = (e.inode(), is_dir, is_chr)
    finally:
        os.close(rfd)
    return out
