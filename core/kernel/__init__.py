"""Thin ctypes bindings for the mount-related system calls criu-fw uses (x86_64 numbers).

Every failure raises :class:`criu_fw.errors.SyscallError` with errno, the path concerned and,
for the new mount API, the filesystem context's own message (read from the fs-context fd).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import resource
import struct
from typing import Final

from ..errors import SyscallError

# The interpreter's own libc (dlopen(NULL)): find_library("c") ran ldconfig, 2 ms a call
# at every start, and importing ctypes.util cost more.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
#: libc's syscall(2) with errno kept, for modules that marshal their own structs (statmount).
raw_syscall = _syscall

_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int

SYS_unshare: Final = 272
SYS_setns: Final = 308
SYS_pivot_root: Final = 155
SYS_statx: Final = 332
SYS_open_tree: Final = 428
SYS_move_mount: Final = 429
SYS_fsopen: Final = 430
SYS_fsconfig: Final = 431
SYS_fsmount: Final = 432
SYS_fspick: Final = 433
SYS_pidfd_open: Final = 434
SYS_mount_setattr: Final = 442
SYS_statmount: Final = 457
SYS_listmount: Final = 458

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

#: ioctl on a namespace file (nsfs): returns the namespace's CLONE_NEW* type.
NS_GET_NSTYPE: Final = 0xB703

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_MOVE: Final = 0x2000
MS_REC: Final = 0x4000
MS_UNBINDABLE: Final = 0x20000
MS_PRIVATE: Final = 0x40000
MS_SLAVE: Final = 0x80000
MS_SHARED: Final = 0x100000
MS_RELATIME: Final = 0x200000
MS_STRICTATIME: Final = 0x1000000

MNT_DETACH: Final = 2

OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000
AT_RECURSIVE: Final = 0x8000

MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4
MOVE_MOUNT_T_EMPTY_PATH: Final = 0x40
MOVE_MOUNT_SET_GROUP: Final = 0x100
MOVE_MOUNT_BENEATH: Final = 0x200

FSOPEN_CLOEXEC: Final = 1
FSPICK_CLOEXEC: Final = 1
FSPICK_EMPTY_PATH: Final = 8
FSMOUNT_CLOEXEC: Final = 1
FSCONFIG_SET_FLAG: Final = 0
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_SET_BINARY: Final = 2
FSCONFIG_SET_PATH: Final = 3
FSCONFIG_SET_PATH_EMPTY: Final = 4
FSCONFIG_SET_FD: Final = 5
FSCONFIG_CMD_CREATE: Final = 6
FSCONFIG_CMD_RECONFIGURE: Final = 7
#: Like CMD_CREATE, but EBUSY where the kernel would hand back an existing superblock (6.6+).
FSCONFIG_CMD_CREATE_EXCL: Final = 8

MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8
MOUNT_ATTR__ATIME: Final = 0x70
MOUNT_ATTR_RELATIME: Final = 0x0
MOUNT_ATTR_NOATIME: Final = 0x10
MOUNT_ATTR_STRICTATIME: Final = 0x20
MOUNT_ATTR_NODIRATIME: Final = 0x80
MOUNT_ATTR_NOSYMFOLLOW: Final = 0x200000

#: fsconfig string values longer than this fail with EINVAL (measured on 6.18).
FSCONFIG_STRING_MAX: Final = 255


def _fs(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def _check(ret: int, call: str, path: str | bytes | None = None, detail: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        shown = os.fsdecode(path) if isinstance(path, bytes) else path
        raise SyscallError(call, err or _errno.EIO, shown, detail)
    return ret


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    ret = _mount(_fs(source), _fs(target), _fs(fstype), flags, _fs(data))
    _check(ret, "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_umount2(_fs(target), flags), "umount2", target)


def unshare(flags: int) -> None:
    _check(_syscall(SYS_unshare, ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_syscall(SYS_setns, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def pidfd_open(pid: int) -> int:
    return _check(
        _syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(0)), "pidfd_open", f"pid {pid}"
    )


PR_SET_PDEATHSIG: Final = 1


def parent_death_signal(signum: int) -> None:
    """PR_SET_PDEATHSIG: ``signum`` (0: none) comes when the parent *thread* that forked this
    process ends (a thread of a live process counts), not only the whole parent; kept
    across exec (not for set-user-ID programs)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0), "prctl",
           detail="PR_SET_PDEATHSIG")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(SYS_pivot_root, _fs(new_root), _fs(put_old)), "pivot_root", new_root)


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    return _check(
        _syscall(SYS_open_tree, ctypes.c_int(dirfd), _fs(path), ctypes.c_uint(flags)),
        "open_tree",
        path,
    )


def move_mount(
    from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int = 0
) -> None:
    _check(
        _syscall(
            SYS_move_mount,
            ctypes.c_int(from_dirfd),
            _fs(from_path),
            ctypes.c_int(to_dirfd),
            _fs(to_path),
            ctypes.c_uint(flags),
        ),
        "move_mount",
        to_path or from_path,
    )


def fs_context_log(fd: int) -> str:
    """Drain the messages a filesystem context left, without the kernel's level prefix.

    The kernel queues lines such as ``e overlay: Bad value for 'lowerdir+'`` (``e``rror,
    ``w``arning, ``i``nfo); users see ``overlay: Bad value for 'lowerdir+'``.
    """
    lines = []
    while True:
        try:
            msg = os.read(fd, 1024)
        except OSError:
            break
        if not msg:
            break
        text = msg.decode("utf-8", "replace").rstrip("\n")
        if text[:2] in ("e ", "w ", "i "):
            text = text[2:]
        lines.append(text)
    return "; ".join(lines)


def fsopen(fstype: str) -> int:
    return _check(
        _syscall(SYS_fsopen, _fs(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), "fsopen", None, fstype
    )


def fspick(path: str, dirfd: int = AT_FDCWD, flags: int = 0) -> int:
    return _check(
        _syscall(
            SYS_fspick, ctypes.c_int(dirfd), _fs(path), ctypes.c_uint(FSPICK_CLOEXEC | flags)
        ),
        "fspick",
        path,
    )


def fsconfig(
    fsfd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0
) -> None:
    ret = _syscall(
        SYS_fsconfig,
        ctypes.c_int(fsfd),
        ctypes.c_uint(cmd),
        _fs(key),
        _fs(value),
        ctypes.c_int(aux),
    )
    if ret < 0:
        err = ctypes.get_errno()
        log = fs_context_log(fsfd)
        what = key if key is not None else {6: "create", 7: "reconfigure"}.get(cmd, str(cmd))
        raise SyscallError("fsconfig", err or _errno.EIO, None, f"{what}: {log}" if log else what)


def fsmount(fsfd: int, attr_flags: int = 0) -> int:
    ret = _syscall(
        SYS_fsmount, ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags)
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise SyscallError("fsmount", err or _errno.EIO, None, fs_context_log(fsfd) or None)
    return int(ret)


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    attr_set: int = 0,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
) -> None:
    attr = struct.pack("<QQQQ", attr_set, attr_clr, propagation, userns_fd)
    buf = ctypes.create_string_buffer(attr, len(attr))
    _check(
        _syscall(
            SYS_mount_setattr,
            ctypes.c_int(dirfd),
            _fs(path),
            ctypes.c_uint(flags),
            buf,
            ctypes.c_size_t(len(attr)),
        ),
        "mount_setattr",
        path or None,
    )


STATX_MNT_ID: Final = 0x1000
STATX_MNT_ID_UNIQUE: Final = 0x4000


def statx_mnt_id(path: str, dirfd: int = AT_FDCWD, flags: int = 0, unique: bool = False) -> int:
    """The mount id of the file at ``path`` (``AT_EMPTY_PATH`` with ``""`` for an fd)."""
    buf = ctypes.create_string_buffer(256)
    mask = STATX_MNT_ID_UNIQUE if unique else STATX_MNT_ID
    _check(
        _syscall(
            SYS_statx, ctypes.c_int(dirfd), _fs(path), ctypes.c_int(flags), ctypes.c_uint(mask), buf
        ),
        "statx",
        path or None,
    )
    (got,) = struct.unpack_from("<I", buf.raw, 0)
    if not got & mask:
        raise SyscallError("statx", _errno.EOPNOTSUPP, path or None, "no mount id returned")
    return int(struct.unpack_from("<Q", buf.raw, 144)[0])


def make_rprivate() -> None:
    """Make every mount of the calling process's namespace private (after unshare)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def enter_private_namespace() -> None:
    """unshare(CLONE_NEWNS) and make / recursively private: mounts made afterwards never
    propagate anywhere else. Only ever called in a child process."""
    unshare(CLONE_NEWNS)
    make_rprivate()


def raise_nofile() -> tuple[int, int]:
    """Raise this process's descriptor limit as far as the kernel allows (``fs.nr_open``;
    root may raise the hard limit too) and return the old (soft, hard) limit.

    A restore holds a descriptor per superblock and per mount still waiting for its children;
    a deep or wide tree of tens of thousands of mounts needs more than a shell's default.
    CRIU does the same for itself and gives the restored tasks their own limit back."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = old[1]
    for limit in ((ceiling, ceiling), (old[1], old[1])):
        if limit[0] <= old[0]:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            break
        except (OSError, ValueError):
            continue  # not root (or a lower ceiling): the hard limit is as far as it goes
    return old


def restore_nofile(old: tuple[int, int]) -> None:
    """Give back the limit :func:`raise_nofile` replaced (soft first: it must fit the hard)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


# Loop devices (linux/loop.h), attached the way ``losetup --find`` does.
LOOP_CLR_FD: Final = 0x4C01
LOOP_CONFIGURE: Final = 0x4C0A
LOOP_CTL_GET_FREE: Final = 0x4C82
LO_FLAGS_READ_ONLY: Final = 1
LO_FLAGS_AUTOCLEAR: Final = 4
LO_NAME_SIZE: Final = 64
#: struct loop_info64: device, inode, rdevice, offset, sizelimit (u64); number,
#: encrypt_type, encrypt_key_size, flags (u32); file_name, crypt_name, encrypt_key; init[2].
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")
#: Another process may take the free device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE
#: (EBUSY); losetup asks again, so do we, a few times.
_LOOP_TRIES = 16


def loop_attach(
    file_fd: int, *, offset: int, sizelimit: int, read_only: bool, name: str
) -> tuple[int, str]:
    """Attach the open file ``file_fd`` to a free loop device in one LOOP_CONFIGURE; returns
    a descriptor of the device and its path (``/dev/loopN``).

    The device has LO_FLAGS_AUTOCLEAR: it detaches itself when its last user closes it, so
    the caller keeps the descriptor until something else holds the device (a superblock
    made from it), and a process that dies midway leaves no device attached."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    info = _LOOP_INFO64.pack(
        0, 0, 0, offset, sizelimit, 0, 0, 0, flags,
        os.fsencode(name)[: LO_NAME_SIZE - 1], b"", b"", 0, 0,
    )
    # struct loop_config: fd, block_size (0: the default), info, __reserved[8].
    config = struct.pack("=II", file_fd, 0) + info + bytes(64)
    mode = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    ctl = _open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_LOOP_TRIES):
            path = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
            dev = _open(path, mode)
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(dev)
                if exc.errno == _errno.EBUSY:
                    continue
                raise SyscallError("LOOP_CONFIGURE", exc.errno or _errno.EIO, path) from None
            return dev, path
    finally:
        os.close(ctl)
    raise SyscallError("LOOP_CONFIGURE", _errno.EBUSY, None,
                       f"every free loop device was taken first, {_LOOP_TRIES} times")


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as exc:
        raise SyscallError("open", exc.errno or _errno.EIO, path) from None


def loop_detach(dev_fd: int) -> None:
    """LOOP_CLR_FD: detach now, or, while something still uses the device (a superblock),
    as soon as it lets go."""
    try:
        fcntl.ioctl(dev_fd, LOOP_CLR_FD, 0)
    except OSError as exc:
        if exc.errno != _errno.ENXIO:  # ENXIO: not attached any more
            raise SyscallError("LOOP_CLR_FD", exc.errno or _errno.EIO, None) from None
