"""A second mount-table reader, built on listmount(2)/statmount(2) (Linux 6.8+).

It yields the same :class:`~criu_fw.model.MountTree` as :mod:`criu_fw.kernel.mountinfo` (the test
suite proves both agree on live namespaces) and additionally fills ``Mount.unique_id``, the
64-bit mount id that is never reused. ``Mount.mnt_id``/``parent_id`` stay the 32-bit ids
mountinfo and fdinfo show (statmount's ``mnt_id_old``/``mnt_parent_id_old``).

Another process's namespace is read *without entering it*: listmount/statmount take the
namespace's id (``ioctl(nsfd, NS_GET_MNTNS_ID)``), so this works from a multithreaded caller,
where setns(CLONE_NEWNS) fails.

What the two readers cannot tell each other (why mountinfo stays the default):

* ``propagate_from``: statmount always fills it (it equals ``master`` when no closer dominant
  peer group exists); mountinfo prints it only when it differs. We normalise to mountinfo's
  rule. The dominating group is computed against a *root*: mountinfo uses the root of the
  process read, statmount the caller's root (own namespace) or the namespace's first mount
  (another namespace), so for a chrooted process the two can disagree.
* Paths: mountinfo shows mountpoints relative to the read process's root and hides mounts
  outside it; statmount of another namespace resolves them against that namespace's root
  mount, so for a chrooted process mountpoints differ (and hidden mounts show up).
* A mount without a device name: mountinfo prints ``none``, statmount returns no source; we
  report ``none`` as mountinfo does.
* statmount gives what mountinfo lacks: the unique ids, the superblock magic, idmappings
  (``mnt_uidmap``/``mnt_gidmap``), ``sb_flags`` as a number, and unescaped option values.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import struct
from collections.abc import Iterator
from typing import Final

import attrs

from ..errors import MountinfoError, SyscallError
from ..model import Dev, Mount, MountTree, Propagation
from . import SYS_listmount, SYS_statmount, raw_syscall

_syscall = raw_syscall

STATMOUNT_SB_BASIC: Final = 0x1
STATMOUNT_MNT_BASIC: Final = 0x2
STATMOUNT_PROPAGATE_FROM: Final = 0x4
STATMOUNT_MNT_ROOT: Final = 0x8
STATMOUNT_MNT_POINT: Final = 0x10
STATMOUNT_FS_TYPE: Final = 0x20
STATMOUNT_MNT_NS_ID: Final = 0x40
STATMOUNT_MNT_OPTS: Final = 0x80
STATMOUNT_FS_SUBTYPE: Final = 0x100
STATMOUNT_SB_SOURCE: Final = 0x200
STATMOUNT_OPT_ARRAY: Final = 0x400
STATMOUNT_OPT_SEC_ARRAY: Final = 0x800
STATMOUNT_SUPPORTED_MASK: Final = 0x1000
STATMOUNT_MNT_UIDMAP: Final = 0x2000
STATMOUNT_MNT_GIDMAP: Final = 0x4000

#: What a Mount needs; the subtype is asked for separately because kernels before 6.13
#: reject the whole request when a bit is unknown.
MOUNT_MASK: Final = (
    STATMOUNT_SB_BASIC
    | STATMOUNT_MNT_BASIC
    | STATMOUNT_PROPAGATE_FROM
    | STATMOUNT_MNT_ROOT
    | STATMOUNT_MNT_POINT
    | STATMOUNT_FS_TYPE
    | STATMOUNT_MNT_NS_ID
    | STATMOUNT_MNT_OPTS
)

LSMT_ROOT: Final = 0xFFFF_FFFF_FFFF_FFFF
NS_GET_MNTNS_ID: Final = 0x8008B705
MNT_ID_REQ_SIZE_VER1: Final = 32

# MOUNT_ATTR_* as statmount's mnt_attr reports them.
_ATTR_RDONLY = 0x1
_ATTR_NOSUID = 0x2
_ATTR_NODEV = 0x4
_ATTR_NOEXEC = 0x8
_ATTR__ATIME = 0x70
_ATTR_NOATIME = 0x10
_ATTR_RELATIME = 0x0
_ATTR_NODIRATIME = 0x80
_ATTR_IDMAP = 0x100000
_ATTR_NOSYMFOLLOW = 0x200000

# Propagation (MS_*) as mnt_propagation reports it.
_MS_UNBINDABLE = 0x20000
_MS_SLAVE = 0x80000
_MS_SHARED = 0x100000

# Superblock flags that mountinfo spells after rw/ro (show_sb_opts).
_SB_RDONLY = 0x1
_SB_SB_OPTS = ((0x10, "sync"), (0x80, "dirsync"), (0x40, "mand"), (1 << 25, "lazytime"))

# struct statmount, fixed part (see linux-mount-facts.md section 1).
_FIXED = struct.Struct("<IIQIIQIIQQIIQQQQQIIQIIIIIIQIIII")
_FIXED_SIZE: Final = 512
_INITIAL_BUF: Final = 4096
_MAX_BUF: Final = 16 << 20


@attrs.frozen
class StatMount:
    """One statmount(2) answer, fields as the kernel names them; strings are raw bytes and
    ``None`` where the kernel did not fill them (its ``mask`` says which it did)."""

    mask: int
    sb_dev_major: int
    sb_dev_minor: int
    sb_magic: int
    sb_flags: int
    fs_type: bytes | None
    mnt_id: int
    mnt_parent_id: int
    mnt_id_old: int
    mnt_parent_id_old: int
    mnt_attr: int
    mnt_propagation: int
    mnt_peer_group: int
    mnt_master: int
    propagate_from: int
    mnt_root: bytes | None
    mnt_point: bytes | None
    mnt_ns_id: int
    fs_subtype: bytes | None
    sb_source: bytes | None
    mnt_opts: bytes | None
    opt_array: tuple[bytes, ...]
    supported_mask: int


def _req(mnt_id: int, param: int, mnt_ns_id: int, mnt_ns_fd: int) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(
        struct.pack("<IIQQQ", MNT_ID_REQ_SIZE_VER1, mnt_ns_fd, mnt_id, param, mnt_ns_id),
        MNT_ID_REQ_SIZE_VER1,
    )


def listmount(
    mnt_id: int = LSMT_ROOT, *, mnt_ns_id: int = 0, mnt_ns_fd: int = 0, batch: int = 512
) -> list[int]:
    """Unique ids of every mount below ``mnt_id`` (all descendants, not only children) in
    ascending id order; ``LSMT_ROOT`` lists the whole namespace."""
    out: list[int] = []
    ids = (ctypes.c_uint64 * batch)()
    last = 0
    while True:
        req = _req(mnt_id, last, mnt_ns_id, mnt_ns_fd)
        n = _syscall(SYS_listmount, req, ids, ctypes.c_size_t(batch), ctypes.c_uint(0))
        if n < 0:
            err = ctypes.get_errno()
            where = f"mount {mnt_id:#x} in namespace {mnt_ns_id}"
            raise SyscallError("listmount", err, None, where)
        out.extend(ids[:n])
        if n < batch:
            return out
        last = out[-1]


def _cstr(buf: bytes, offset: int) -> bytes:
    start = _FIXED_SIZE + offset
    end = buf.index(b"\0", start)
    return buf[start:end]


def statmount(
    mnt_id: int, mask: int = MOUNT_MASK, *, mnt_ns_id: int = 0, mnt_ns_fd: int = 0
) -> StatMount:
    """statmount(2) of the mount with unique id ``mnt_id``; the buffer grows on EOVERFLOW."""
    size = _INITIAL_BUF
    req = _req(mnt_id, mask, mnt_ns_id, mnt_ns_fd)
    while True:
        buf = ctypes.create_string_buffer(size)
        ret = _syscall(SYS_statmount, req, buf, ctypes.c_size_t(size), ctypes.c_uint(0))
        if ret == 0:
            break
        err = ctypes.get_errno()
        if err == _errno.EOVERFLOW and size < _MAX_BUF:
            size *= 4
            continue
        raise SyscallError("statmount", err, None, f"mount {mnt_id:#x} in namespace {mnt_ns_id}")
    raw = buf.raw
    (
        _size, o_opts, got, dmaj, dmin, magic, sbflags, o_type, uid, puid, oid, poid, attr,
        prop, peer, master, pfrom, o_root, o_point, ns, o_sub, o_src, opt_num, o_optarr,
        _sec_num, _o_secarr, supported, *_maps,
    ) = _FIXED.unpack_from(raw, 0)

    def s(bit: int, off: int) -> bytes | None:
        return _cstr(raw, off) if got & bit else None

    opts: list[bytes] = []
    if got & STATMOUNT_OPT_ARRAY:
        pos = _FIXED_SIZE + o_optarr
        for _ in range(opt_num):
            end = raw.index(b"\0", pos)
            opts.append(raw[pos:end])
            pos = end + 1
    return StatMount(
        mask=got,
        sb_dev_major=dmaj,
        sb_dev_minor=dmin,
        sb_magic=magic,
        sb_flags=sbflags,
        fs_type=s(STATMOUNT_FS_TYPE, o_type),
        mnt_id=uid,
        mnt_parent_id=puid,
        mnt_id_old=oid,
        mnt_parent_id_old=poid,
        mnt_attr=attr,
        mnt_propagation=prop,
        mnt_peer_group=peer,
        mnt_master=master,
        propagate_from=pfrom,
        mnt_root=s(STATMOUNT_MNT_ROOT, o_root),
        mnt_point=s(STATMOUNT_MNT_POINT, o_point),
        mnt_ns_id=ns,
        fs_subtype=s(STATMOUNT_FS_SUBTYPE, o_sub),
        sb_source=s(STATMOUNT_SB_SOURCE, o_src),
        mnt_opts=s(STATMOUNT_MNT_OPTS, o_opts),
        opt_array=tuple(opts),
        supported_mask=supported,
    )


def mntns_id(nsfd: int) -> int:
    """The 64-bit id of the mount namespace behind an nsfs fd (``/proc/PID/ns/mnt``)."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(nsfd, NS_GET_MNTNS_ID, buf)
    except OSError as exc:
        raise SyscallError("ioctl(NS_GET_MNTNS_ID)", exc.errno or _errno.EINVAL) from None
    return int(struct.unpack("<Q", bytes(buf))[0])


def _unescape_opt(opt: bytes) -> str:
    from .mountinfo import unescape  # one definition of the kernel's escaping

    return os.fsdecode(unescape(opt))


def _mount_options(attr: int) -> tuple[str, ...]:
    # Rebuilt in the order show_mnt_opts() prints them, so both readers give equal tuples.
    opts = ["ro" if attr & _ATTR_RDONLY else "rw"]
    for bit, name in ((_ATTR_NOSUID, "nosuid"), (_ATTR_NODEV, "nodev"), (_ATTR_NOEXEC, "noexec")):
        if attr & bit:
            opts.append(name)
    atime = attr & _ATTR__ATIME
    if atime == _ATTR_NOATIME:
        opts.append("noatime")
    if attr & _ATTR_NODIRATIME:
        opts.append("nodiratime")
    if atime == _ATTR_RELATIME:
        opts.append("relatime")
    if attr & _ATTR_NOSYMFOLLOW:
        opts.append("nosymfollow")
    if attr & _ATTR_IDMAP:
        opts.append("idmapped")
    return tuple(opts)


def _super_options(sb_flags: int, mnt_opts: bytes | None) -> tuple[str, ...]:
    opts = ["ro" if sb_flags & _SB_RDONLY else "rw"]
    opts.extend(name for bit, name in _SB_SB_OPTS if sb_flags & bit)
    if mnt_opts:
        # The kernel's show_options() text, escaped as in mountinfo: split, then unescape.
        opts.extend(_unescape_opt(o) for o in mnt_opts.split(b","))
    return tuple(opts)


def to_mount(sm: StatMount) -> Mount:
    """The :class:`Mount` a statmount answer describes (mountinfo's conventions)."""
    where = f"statmount of mount {sm.mnt_id:#x}"
    if sm.fs_type is None or sm.mnt_point is None or sm.mnt_root is None:
        raise MountinfoError(where, 0, f"kernel did not fill type/point/root (mask {sm.mask:#x})")
    root = sm.mnt_root
    deleted = False
    if root.endswith(b"//deleted") and root != b"//deleted":
        root, deleted = root[: -len(b"//deleted")], True
    fstype = sm.fs_type.decode("ascii", "replace")
    if sm.fs_subtype:
        fstype += "." + sm.fs_subtype.decode("ascii", "replace")
    shared = sm.mnt_peer_group if sm.mnt_propagation & _MS_SHARED else None
    master = sm.mnt_master if sm.mnt_propagation & _MS_SLAVE else None
    pfrom = sm.propagate_from if master is not None else None
    if pfrom == master or pfrom == 0:
        pfrom = None  # mountinfo prints it only when it differs from master
    return Mount(
        mnt_id=sm.mnt_id_old,
        parent_id=sm.mnt_parent_id_old,
        dev=Dev(sm.sb_dev_major, sm.sb_dev_minor),
        root=os.fsdecode(root),
        mountpoint=os.fsdecode(sm.mnt_point),
        fstype=fstype,
        source=os.fsdecode(sm.sb_source) if sm.sb_source is not None else "none",
        mount_options=_mount_options(sm.mnt_attr),
        super_options=_super_options(sm.sb_flags, sm.mnt_opts),
        propagation=Propagation(shared, master, pfrom, bool(sm.mnt_propagation & _MS_UNBINDABLE)),
        root_deleted=deleted,
        unique_id=sm.mnt_id,
    )


_supported: int | None = None


def supported_mask() -> int:
    """The STATMOUNT_* bits this kernel knows; 0 when statmount is missing (before 6.8)."""
    global _supported
    if _supported is None:
        try:
            ids = listmount(batch=1)
            sm = statmount(ids[0], STATMOUNT_SUPPORTED_MASK) if ids else None
            # 6.8-6.10 have no SUPPORTED_MASK: assume the 6.8 set.
            _supported = (sm.supported_mask if sm and sm.supported_mask else 0xFF) if ids else 0
        except OSError:
            _supported = 0
    return _supported


def available() -> bool:
    """Whether listmount/statmount work here (kernel 6.8+ and not filtered by seccomp)."""
    return bool(supported_mask())


def iter_statmount(mnt_ns_id: int = 0, mnt_ns_fd: int = 0) -> Iterator[StatMount]:
    mask = MOUNT_MASK | (supported_mask() & (STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE))
    for uid in listmount(mnt_ns_id=mnt_ns_id, mnt_ns_fd=mnt_ns_fd):
        try:
            yield statmount(uid, mask, mnt_ns_id=mnt_ns_id, mnt_ns_fd=mnt_ns_fd)
        except SyscallError as exc:
            if exc.errno == _errno.ENOENT:
                continue  # unmounted between listmount and statmount
            raise


def read_statmount(pid: int | str = "self", proc_root: str = "/proc", ns_id: int = 0) -> MountTree:
    """The mount tree of a process's mount namespace, read with listmount/statmount.

    Same signature and result as :func:`criu_fw.kernel.mountinfo.read_mountinfo`, plus unique ids.
    """
    path = os.path.join(proc_root, str(pid), "ns", "mnt")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns = mntns_id(fd)
        mounts = [to_mount(sm) for sm in iter_statmount(mnt_ns_id=ns)]
    finally:
        os.close(fd)
    return MountTree(tuple(mounts), ns_id)
