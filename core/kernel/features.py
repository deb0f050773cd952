"""Which kernel features criu-fw can use on this machine (``criu-fw check``).

Probes that only read run in the caller. Probes that mount run in a forked, single-threaded
child that first calls :func:`criu_fw.kernel.enter_private_namespace`, so nothing is ever
mounted in the caller's namespace; the child reports back through a pipe and is killed by its
PID if it does not answer in time. Everything it mounted dies with its namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import json
import os
import select
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Callable, Iterator

import attrs

from .. import kernel as k
from ..errors import SyscallError
from . import statmount as sm

SYS_open_tree_attr = 467
CLONE_NEWUSER = 0x10000000
MOUNT_ATTR_IDMAP = 0x100000


@attrs.frozen
class Feature:
    """One probed feature: whether criu-fw can use it here, and what the probe saw."""

    name: str
    available: bool
    detail: str
    #: criu-fw works without it (with a fallback or a missing capability of its own).
    optional: bool = False

    def describe(self) -> str:
        mark = "yes" if self.available else "no "
        opt = " (optional)" if self.optional else ""
        return f"{mark}  {self.name}{opt}: {self.detail}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = _errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _probe(name: str, fn: Callable[[], str], optional: bool = False) -> Feature:
    try:
        return Feature(name, True, fn(), optional)
    except Exception as exc:
        return Feature(name, False, _why(exc), optional)


# -- probes in the caller (read-only) ------------------------------------------------------


def _fdinfo_mnt_id() -> str:
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return f"/proc/PID/fdinfo shows mnt_id ({line.split()[1]} for /)"
    finally:
        os.close(fd)
    raise LookupError("no mnt_id line in /proc/self/fdinfo")


def _statx_mnt_id() -> str:
    old = k.statx_mnt_id("/")
    unique = k.statx_mnt_id("/", unique=True)
    return f"STATX_MNT_ID ({old}) and STATX_MNT_ID_UNIQUE ({unique:#x})"


def _statmount() -> str:
    mask = sm.supported_mask()
    if not mask:
        raise OSError(_errno.ENOSYS, "listmount/statmount unavailable (Linux < 6.8?)")
    return f"listmount and statmount, supported mask {mask:#x}"


def _mntns_id() -> str:
    with open("/proc/self/ns/mnt") as f:
        return f"NS_GET_MNTNS_ID: this namespace is {sm.mntns_id(f.fileno())}"


def _pidfd() -> str:
    fd = k.pidfd_open(os.getpid())
    os.close(fd)
    return "pidfd_open (setns by pidfd)"


# -- probes in a private namespace ------------------------------------------------------------


def _mountinfo_line(path: str) -> str:
    """The (last) mountinfo line of the mount at ``path`` in this namespace."""
    found = ""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            if line.split(b" ")[4] == os.fsencode(path):
                found = line.decode("utf-8", "replace").rstrip("\n")
    if not found:
        raise LookupError(f"{path} is not a mount point")
    return found


def _tmpfs(at: str, source: str = "probe") -> None:
    os.makedirs(at, exist_ok=True)
    k.mount(source, at, "tmpfs", 0, None)


def _new_api(top: str) -> str:
    fs = k.fsopen("tmpfs")
    try:
        k.fsconfig(fs, k.FSCONFIG_SET_STRING, "source", "probe-new")
        k.fsconfig(fs, k.FSCONFIG_CMD_CREATE)
        mfd = k.fsmount(fs)
    finally:
        os.close(fs)
    target = os.path.join(top, "new")
    os.mkdir(target)
    k.move_mount(mfd, "", k.AT_FDCWD, target, k.MOVE_MOUNT_F_EMPTY_PATH)
    os.close(mfd)
    _mountinfo_line(target)
    return "fsopen, fsconfig, fsmount, move_mount"


def _mount_setattr(top: str) -> str:
    target = os.path.join(top, "attr")
    _tmpfs(target)
    k.mount_setattr(k.AT_FDCWD, target, 0, attr_set=k.MOUNT_ATTR_RDONLY | k.MOUNT_ATTR_NOSUID)
    opts = _mountinfo_line(target).split(" ")[5].split(",")
    if "ro" not in opts or "nosuid" not in opts:
        raise AssertionError(f"attributes not applied: {opts}")
    return "mount_setattr (ro,nosuid applied)"


def _set_group(top: str) -> str:
    # The kernel copies a peer group only between mounts of one superblock.
    a, b = os.path.join(top, "sg_a"), os.path.join(top, "sg_b")
    _tmpfs(a)
    os.mkdir(b)
    k.mount(a, b, None, k.MS_BIND, None)
    k.mount(None, a, None, k.MS_SHARED, None)
    k.move_mount(k.AT_FDCWD, a, k.AT_FDCWD, b, k.MOVE_MOUNT_SET_GROUP)
    fields_a, fields_b = _mountinfo_line(a).split(" "), _mountinfo_line(b).split(" ")
    shared = [f for f in fields_a if f.startswith("shared:")]
    if not shared or shared[0] not in fields_b:
        raise AssertionError("the peer group was not copied")
    return f"MOVE_MOUNT_SET_GROUP ({shared[0]} copied)"


def _beneath(top: str) -> str:
    t = os.path.join(top, "bn")
    _tmpfs(t, "top")
    fs = k.fsopen("tmpfs")
    k.fsconfig(fs, k.FSCONFIG_CMD_CREATE)
    mfd = k.fsmount(fs)
    os.close(fs)
    k.move_mount(mfd, "", k.AT_FDCWD, t, k.MOVE_MOUNT_F_EMPTY_PATH | k.MOVE_MOUNT_BENEATH)
    os.close(mfd)
    return "MOVE_MOUNT_BENEATH"


def _overlay_dirs(top: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        d = os.path.join(top, f"ovl_l{i}")
        os.makedirs(d, exist_ok=True)
        out.append(d)
    return out


def _overlay(lowers: list[tuple[str, str | None, int]]) -> None:
    fs = k.fsopen("overlay")
    try:
        for key, value, fd in lowers:
            if value is None:
                k.fsconfig(fs, k.FSCONFIG_SET_FD, key, None, fd)
            else:
                k.fsconfig(fs, k.FSCONFIG_SET_STRING, key, value)
        k.fsconfig(fs, k.FSCONFIG_CMD_CREATE)
        os.close(k.fsmount(fs))
    finally:
        os.close(fs)


def _overlay_lowerdir_plus(top: str) -> str:
    _overlay([("lowerdir+", d, 0) for d in _overlay_dirs(top, 2)])
    return "overlay accepts lowerdir+ (one fsconfig per layer, no 4095-byte limit)"


def _overlay_layers_by_fd(top: str) -> str:
    fds = [os.open(d, os.O_PATH | os.O_CLOEXEC) for d in _overlay_dirs(top, 2)]
    try:
        _overlay([("lowerdir+", None, fd) for fd in fds])
    finally:
        for fd in fds:
            os.close(fd)
    return "overlay takes layers as O_PATH fds (FSCONFIG_SET_FD)"


def _open_tree_attr(top: str) -> str:
    src, dst = os.path.join(top, "ota_src"), os.path.join(top, "ota_dst")
    _tmpfs(src)
    os.mkdir(dst)
    attr = ctypes.create_string_buffer(struct.pack("<QQQQ", k.MOUNT_ATTR_RDONLY, 0, 0, 0), 32)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(
        SYS_open_tree_attr, ctypes.c_int(k.AT_FDCWD), os.fsencode(src),
        ctypes.c_uint(k.OPEN_TREE_CLONE | k.OPEN_TREE_CLOEXEC), attr, ctypes.c_size_t(32),
    )
    if fd < 0:
        raise SyscallError("open_tree_attr", ctypes.get_errno(), src)
    k.move_mount(fd, "", k.AT_FDCWD, dst, k.MOVE_MOUNT_F_EMPTY_PATH)
    os.close(fd)
    if "ro" not in _mountinfo_line(dst).split(" ")[5].split(","):
        raise AssertionError("the clone is not read-only")
    return "open_tree_attr (clone with attributes in one call)"


def _idmapped(top: str) -> str:
    src = os.path.join(top, "idm")
    _tmpfs(src)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds a fresh user namespace open until the probe is done
        try:
            os.close(w)
            os.close(ready_r)
            k.unshare(CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError(_errno.EPERM, "cannot create a user namespace")
        for m in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{m}", "w") as f:
                f.write("0 100000 65536\n")
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        tree = k.open_tree(src, k.OPEN_TREE_CLONE | k.OPEN_TREE_CLOEXEC)
        try:
            k.mount_setattr(tree, "", k.AT_EMPTY_PATH, attr_set=MOUNT_ATTR_IDMAP,
                            userns_fd=userns)
        finally:
            os.close(tree)
            os.close(userns)
    finally:
        os.close(ready_r)
        os.close(w)
        os.waitpid(pid, 0)
    return "idmapped mounts (MOUNT_ATTR_IDMAP on tmpfs)"


PRIVATE_PROBES: tuple[tuple[str, Callable[[str], str], bool], ...] = (
    ("new mount API", _new_api, False),
    ("mount_setattr", _mount_setattr, False),
    ("MOVE_MOUNT_SET_GROUP", _set_group, False),
    ("MOVE_MOUNT_BENEATH", _beneath, True),
    ("overlay lowerdir+", _overlay_lowerdir_plus, False),
    ("overlay layers by fd", _overlay_layers_by_fd, False),
    ("open_tree_attr", _open_tree_attr, True),
    ("idmapped mounts", _idmapped, True),
)


def _child(top: str, wfd: int) -> None:
    results = []
    try:
        k.enter_private_namespace()
    except Exception as exc:
        results = [[n, False, f"cannot create a private mount namespace: {_why(exc)}", o]
                   for n, _, o in PRIVATE_PROBES]
    else:
        for name, fn, optional in PRIVATE_PROBES:
            f = _probe(name, lambda fn=fn: fn(top), optional)  # type: ignore[misc]
            results.append([f.name, f.available, f.detail, f.optional])
    os.write(wfd, json.dumps(results).encode())


def _in_private_namespace(timeout: float) -> list[Feature]:
    top = tempfile.mkdtemp(prefix="criu-fw-check-")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            _child(top, w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # by PID: only our own probe child
        os.waitpid(pid, 0)
        # The child's namespace (and every mount in it) is gone: only empty dirs remain here.
        shutil.rmtree(top, ignore_errors=True)
    try:
        return [Feature(n, bool(a), str(d), bool(o)) for n, a, d, o in json.loads(data)]
    except ValueError:
        return [Feature(n, False, "the probe child did not answer", o)
                for n, _, o in PRIVATE_PROBES]


def probe(timeout: float = 20.0) -> list[Feature]:
    """Every feature criu-fw may use, probed on this kernel, in a stable order."""
    features = [
        _probe("mnt_id in fdinfo", _fdinfo_mnt_id),
        _probe("statx mount ids", _statx_mnt_id),
        _probe("listmount/statmount", _statmount, optional=True),
        _probe("NS_GET_MNTNS_ID", _mntns_id, optional=True),
        _probe("pidfd_open", _pidfd),
    ]
    features.extend(_in_private_namespace(timeout))
    return features


def iter_lines(features: list[Feature]) -> Iterator[str]:
    for f in features:
        yield f.describe()
