"""The kernel mount layer: :class:`KernelMountOps` issues the real system calls (the new
mount API: fsopen/fsconfig/fsmount, open_tree, move_mount, mount_setattr), only ever inside
the private mount namespace of the restoring child process. Which superblocks it owns is
described in :mod:`criu_fw.kernel.mountops`."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager

from .. import kernel
from ..errors import SyscallError
from ..plan import LoopFile
from . import confine
from .hostfiles import chrooted, make_entry, open_loop_file, open_param
from .ops import Fd, MountOps, NotOwnedError, ParamArg, host_join
from .superblocks import KEYED, NAMED_BY_OPTIONS, SINGLETONS, fresh_types

#: mount(2) data longer than this is cut by the kernel without an error (one page, with NUL).
LEGACY_DATA_MAX = 4095


def _mounted_devices() -> dict[int, tuple[str, tuple[str, ...]]]:
    """Device -> (fstype, superblock options) of every mount this process sees."""
    with open("/proc/self/mountinfo", "rb") as f:
        text = f.read()
    out: dict[int, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        # Escaped fields (\040) never hold " - ", the separator before the fstype.
        head, sep, tail = line.partition(b" - ")
        fields = head.split(b" ")
        after = tail.decode("utf-8", "replace").split(" ")
        if not sep or len(fields) < 3 or len(after) < 3:
            continue
        major, _, minor = fields[2].partition(b":")
        out[os.makedev(int(major), int(minor))] = (after[0], tuple(after[2].split(",")))
    return out


def _as_create(exc: SyscallError) -> SyscallError:
    """A failure of CMD_CREATE_EXCL worded as one of create (what the user asked for)."""
    detail = exc.detail or ""
    if detail == str(kernel.FSCONFIG_CMD_CREATE_EXCL) or detail.startswith(
        f"{kernel.FSCONFIG_CMD_CREATE_EXCL}: "
    ):
        detail = "create" + detail[1:]
    return SyscallError(exc.call, exc.errno or errno.EIO, exc.filename, detail or None)


class KernelMountOps(MountOps):
    """Real system calls. Only for use inside a private mount namespace of a child process.

    ``scratch`` is an empty directory used by the legacy mount(2) fallback (a filesystem type
    the new mount API cannot create is mounted there, cloned detached, and unmounted again).
    ``fresh``: the kinds of namespace (``net``, ``ipc``) the restore made itself, whose keyed
    superblocks (sysfs, mqueue) are its own even when the kernel hands back an existing one.
    ``guard``: what each mountpoint is made and recorded in (see :class:`.confine.Maker`).
    """

    forks_workers = True

    def __init__(
        self, scratch: str | None = None, *, fresh: Iterable[str] = (),
        guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self.scratch = scratch
        #: Devices (st_dev of their root) of the superblocks this layer created: the only
        #: ones it reconfigures.
        self.owned: set[int] = set()
        self._fstype: dict[int, str] = {}  # every superblock handed out, by device (messages)
        self._fresh = fresh_types(fresh)
        #: Devices mounted before the first superblock this layer made: device -> (fstype,
        #: superblock options).
        self._before: dict[int, tuple[str, tuple[str, ...]]] | None = None
        #: Whether the kernel knows FSCONFIG_CMD_CREATE_EXCL (None: not asked yet).
        self._exclusive: bool | None = None
        #: Mountpoints this restore created in existing trees (a --root directory), so a
        #: failed restore removes exactly those.
        self.maker = confine.Maker(guard)
        #: Descriptors of the loop devices this restore attached, held until it ends: each
        #: clears itself on its last close, so it must outlive the making of its superblock.
        self.loops: list[int] = []

    def new_superblock(
        self,
        fstype: str,
        source: str,
        params: Sequence[tuple[str, ParamArg]],
        *,
        legacy_data: str | None = None,
        chroot: str | None = None,
    ) -> int:
        strings = [("source", source)] + [(k, v) for k, v in params if isinstance(v, str)]
        too_long = next(
            ((k, v) for k, v in strings if len(os.fsencode(v)) > kernel.FSCONFIG_STRING_MAX),
            None,
        )
        can_legacy = legacy_data is not None and self.scratch is not None
        if too_long is not None:
            if can_legacy:
                # fsconfig takes at most 255 bytes a string; mount(2) takes a page.
                return self._legacy(fstype, source, params, legacy_data)
            long_key, long_value = too_long
            raise SyscallError(
                "fsconfig", errno.EINVAL, None,
                f"value of {long_key!r} is {len(os.fsencode(long_value))} bytes, the kernel "
                f"takes at most {kernel.FSCONFIG_STRING_MAX}; pass it by descriptor instead",
            )
        self._mounted_before()
        try:
            fsfd = kernel.fsopen(fstype)
        except SyscallError as exc:
            # ENOSYS: no new mount API; ENODEV/EINVAL: this type cannot be opened by it.
            fallback = exc.errno == errno.ENOSYS or (
                can_legacy and exc.errno in (errno.ENODEV, errno.EINVAL)
            )
            if not fallback or self.scratch is None:
                raise
            return self._legacy(fstype, source, params, legacy_data)
        if fstype in SINGLETONS:
            os.close(fsfd)
            return self._existing(fstype, source, params, chroot)
        exclusive = self._exclusive is not False
        try:
            cmd = kernel.FSCONFIG_CMD_CREATE_EXCL if exclusive else kernel.FSCONFIG_CMD_CREATE
            h = self._create(fsfd, source, params, chroot, cmd)
        except SyscallError as exc:
            if not exclusive:
                raise
            if exc.errno == errno.EBUSY:
                return self._existing(fstype, source, params, chroot)
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and not self._has_exclusive():
                # An older kernel: created as before, judged by device (below).
                fsfd = kernel.fsopen(fstype)
                h = self._create(fsfd, source, params, chroot, kernel.FSCONFIG_CMD_CREATE)
                return self._record(h, fstype, new=True)
            raise _as_create(exc) from exc
        self._exclusive = True
        return self._record(h, fstype, new=True)

    def _create(
        self, fsfd: int, source: str, params: Sequence[tuple[str, ParamArg]],
        chroot: str | None, cmd: int,
    ) -> int:
        """Configure the context ``fsfd`` (closed afterwards), run ``cmd``, mount it."""
        opened: list[int] = []
        try:
            for _key, value in params:
                if isinstance(value, Fd):
                    opened.append(open_param(value))
            with chrooted(chroot if opened else None):
                if source:
                    kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_STRING, "source", source)
                fds = iter(opened)
                for key, value in params:
                    if value is None:
                        kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_FLAG, key)
                    elif isinstance(value, Fd):
                        kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_FD, key, None, next(fds))
                    else:
                        kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_STRING, key, value)
                kernel.fsconfig(fsfd, cmd)
            return kernel.fsmount(fsfd)
        finally:
            for fd in opened:
                os.close(fd)
            os.close(fsfd)

    def _existing(
        self, fstype: str, source: str, params: Sequence[tuple[str, ParamArg]],
        chroot: str | None,
    ) -> int:
        """The superblock the kernel hands back for ``fstype`` here (the failed exclusive
        context cannot be used again: new ones), not owned. A keyed type (sysfs, mqueue...)
        gets no parameter but its source: some apply them to what they hand back (see
        :data:`~criu_fw.kernel.superblocks.NAMED_BY_OPTIONS`). Where parameters say which one is
        meant (a cgroup v1 hierarchy's controllers, a block device's or an NFS export's
        options) they are passed, not applied to one that exists; read-only first, since a
        writable request flips an existing read-only btrfs to read-write, and a read-only
        ext4 is handed out only read-only. Owned only when its key is a namespace this
        restore made: an mqueue is made with its IPC namespace, so EBUSY, yet it is nobody
        else's."""
        ours = fstype in self._fresh
        attempts: list[Sequence[tuple[str, ParamArg]]] = [()]
        if ours:
            attempts = [params]
        elif fstype in NAMED_BY_OPTIONS or fstype not in KEYED:
            attempts = [[*params, ("ro", None)], params]
        first: SyscallError | None = None
        for wanted in attempts:
            try:
                h = self._create(
                    kernel.fsopen(fstype), source, wanted, chroot, kernel.FSCONFIG_CMD_CREATE
                )
            except SyscallError as exc:
                # The error worth showing is the one with the dumped parameters.
                first = exc if first is None or wanted is params else first
                continue
            return self._record(h, fstype, new=ours)
        assert first is not None
        raise first

    def _record(self, h: int, fstype: str, *, new: bool) -> int:
        """Note a superblock's device; owned when new and not one mounted before this layer
        made any (that comparison alone decides for mount(2) and kernels without
        CREATE_EXCL, and catches a type that bypasses the kernel's check)."""
        try:
            dev = os.fstat(h).st_dev
        except OSError:
            os.close(h)
            raise
        self._fstype.setdefault(dev, fstype)
        if new and dev not in self._mounted_before() and fstype not in SINGLETONS:
            self.owned.add(dev)
        return h

    def _mounted_before(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        if self._before is None:
            self._before = _mounted_devices()
        return self._before

    def existing_options(self, handle: int) -> tuple[str, ...] | None:
        dev = os.fstat(handle).st_dev
        if dev in self.owned:
            return None
        seen = self._mounted_before().get(dev)
        return None if seen is None else seen[1]

    def _has_exclusive(self) -> bool:
        """Whether the kernel knows FSCONFIG_CMD_CREATE_EXCL (6.6+), asked once of a tmpfs
        context: EINVAL from it may be the filesystem's own refusal, an unknown command is
        refused before the context is looked at."""
        if self._exclusive is None:
            fd = kernel.fsopen("tmpfs")
            try:
                kernel.fsconfig(fd, kernel.FSCONFIG_CMD_CREATE_EXCL)
                self._exclusive = True
            except SyscallError as exc:
                self._exclusive = exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP)
            finally:
                os.close(fd)
        return self._exclusive

    def owns(self, handle: int) -> bool:
        return os.fstat(handle).st_dev in self.owned

    def _legacy(
        self, fstype: str, source: str, params: Sequence[tuple[str, ParamArg]],
        legacy_data: str | None,
    ) -> int:
        assert self.scratch is not None
        data = legacy_data
        if data is None:
            data = ",".join(
                k if v is None else f"{k}={v}" for k, v in params if not isinstance(v, Fd)
            )
        size = len(os.fsencode(data))
        if size > LEGACY_DATA_MAX:
            # mount(2) copies one page and cuts the rest without a word: refuse instead.
            raise SyscallError(
                "mount", errno.E2BIG, None,
                f"mount data is {size} bytes, the kernel takes at most {LEGACY_DATA_MAX} "
                f"and would cut the rest silently",
            )
        self._mounted_before()
        kernel.mount(source, self.scratch, fstype, 0, data or None)
        try:
            h = kernel.open_tree(
                self.scratch, kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC
            )
        finally:
            kernel.umount2(self.scratch, kernel.MNT_DETACH)
        # mount(2) cannot ask for a new superblock only: the device tells whose it is.
        return self._record(h, fstype, new=True)

    def clone(self, src: int | None, path: str) -> int:
        flags = kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC
        if src is None:
            # Only the core's own absolute paths come here; image-named paths go through
            # clone_host (a granted directory) or a handle (a restored mount).
            return kernel.open_tree(path, flags)
        if not confine.components(path):
            return kernel.open_tree("", flags | kernel.AT_EMPTY_PATH, dirfd=src)
        # A bind root named by the images: resolved inside the source mount, no link, no '..'.
        fd = confine.open_beneath(src, path)
        try:
            return kernel.open_tree("", flags | kernel.AT_EMPTY_PATH, dirfd=fd)
        finally:
            os.close(fd)

    def recreate(
        self, src: int, path: str, mode: int, owner: tuple[int, int], *,
        link: str | None = None, content: int | None = None,
    ) -> tuple[int, Callable[[], None]]:
        parts = confine.components(path)
        if not parts:
            raise SyscallError("recreate", errno.EINVAL, path, "a filesystem's root")
        held: list[int] = []
        made: list[tuple[int, str]] = []  # directories made on the way, to remove again
        cur, name = src, None

        def remove() -> None:
            try:
                if name is not None:
                    if stat.S_ISDIR(mode):
                        os.rmdir(name, dir_fd=cur)
                    else:
                        os.unlink(name, dir_fd=cur)
                for parent, made_name in reversed(made):
                    with contextlib.suppress(OSError):  # a mountpoint made in it since
                        os.rmdir(made_name, dir_fd=parent)
            finally:
                for fd in held:
                    os.close(fd)
                held.clear()

        try:
            # Its own descriptor of the root: ``src`` may be closed before remove() runs
            # (its last mount made), and a root directly under it is removed through this.
            cur = confine.open_beneath(src, "")
            held.append(cur)
            for part in parts[:-1]:
                try:
                    nxt = confine.open_beneath(cur, part)
                except SyscallError as e:
                    if e.errno != errno.ENOENT:
                        raise
                    os.mkdir(part, 0o700, dir_fd=cur)
                    made.append((cur, part))
                    nxt = confine.open_beneath(cur, part)
                held.append(nxt)
                cur = nxt
            name = make_entry(cur, parts[-1], mode, owner, link, content, src)
            fd = confine.open_beneath(cur, name)
            try:
                h = kernel.open_tree(
                    "", kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC | kernel.AT_EMPTY_PATH,
                    dirfd=fd,
                )
            finally:
                os.close(fd)
        except BaseException:
            remove()
            raise
        return h, remove

    def clone_host(self, base: str, path: str, *, follow: bool = False) -> int:
        fd = os.open(base, os.O_PATH | os.O_CLOEXEC)
        try:
            if not confine.components(path):
                return kernel.open_tree(
                    "", kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC
                    | kernel.AT_EMPTY_PATH, dirfd=fd,
                )
            inner = confine.open_beneath(fd, path, confine.GRANTED if follow else confine.STRICT)
            try:
                return kernel.open_tree(
                    "", kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC
                    | kernel.AT_EMPTY_PATH, dirfd=inner,
                )
            finally:
                os.close(inner)
        finally:
            os.close(fd)

    def attach(self, handle: int, parent: int | None, path: str) -> None:
        if parent is None:
            # The root of a namespace being built, at the restore's own directory.
            kernel.move_mount(handle, "", kernel.AT_FDCWD, path, kernel.MOVE_MOUNT_F_EMPTY_PATH)
            return
        try:
            target = confine.open_beneath(parent, path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # Missing only in a tree that lacks it (a --root directory, a tmpfs restored
            # without its archive): a tmpfs restored from its archive has every mountpoint.
            is_dir = stat.S_ISDIR(os.fstat(handle).st_mode)
            target = self.maker.open_or_make(parent, path, is_dir)
        try:
            kernel.move_mount(
                handle, "", target, "",
                kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH,
            )
        except SyscallError as exc:
            if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EINVAL):
                self._check_types(handle, target, path, exc)
            raise
        finally:
            os.close(target)

    def _check_types(self, handle: int, target: int, path: str, exc: SyscallError) -> None:
        """A directory mounted on a file (or a file on a directory): say so."""
        try:
            source_dir = stat.S_ISDIR(os.fstat(handle).st_mode)
            target_dir = stat.S_ISDIR(os.fstat(target).st_mode)
        except OSError:
            return
        if source_dir != target_dir:
            kinds = ("a directory", "a file")
            raise SyscallError(
                "move_mount", exc.errno or errno.EINVAL, path,
                f"its source is {kinds[not source_dir]} but its mountpoint is "
                f"{kinds[not target_dir]}",
            ) from exc

    def undo(self) -> None:
        """Remove the mountpoints this restore created (deepest first), after a failure,
        through the descriptors held since they were made (see :mod:`criu_fw.kernel.confine`), and
        detach the loop devices it attached (at once, or when their superblocks go)."""
        self.maker.undo()
        self._let_go_of_loops(detach=True)

    def forget(self) -> None:
        """Keep what was created (the restore succeeded): the loop devices stay attached as
        long as their superblocks exist."""
        self.maker.forget()
        self._let_go_of_loops(detach=False)

    def attach_loop(self, base: str, path: str, loop: LoopFile, *, follow: bool = False) -> str:
        fd = open_loop_file(base, path, loop, follow=follow)
        try:
            dev, device = kernel.loop_attach(
                fd, offset=loop.offset, sizelimit=loop.sizelimit, read_only=loop.read_only,
                name=host_join(base, path),
            )
        finally:
            os.close(fd)  # the device holds the file now
        self.loops.append(dev)
        return device

    def _let_go_of_loops(self, *, detach: bool) -> None:
        loops, self.loops = self.loops, []
        for dev in loops:
            try:
                if detach:
                    with contextlib.suppress(SyscallError):
                        kernel.loop_detach(dev)
            finally:
                os.close(dev)

    def set_attr(self, handle: int, attr_set: int, attr_clr: int) -> None:
        kernel.mount_setattr(handle, "", kernel.AT_EMPTY_PATH, attr_set, attr_clr)

    def set_propagation(self, handle: int, flag: int) -> None:
        kernel.mount_setattr(handle, "", kernel.AT_EMPTY_PATH, propagation=flag)

    def set_group(self, src: int, dst: int) -> None:
        kernel.move_mount(
            src, "", dst, "",
            kernel.MOVE_MOUNT_SET_GROUP | kernel.MOVE_MOUNT_F_EMPTY_PATH
            | kernel.MOVE_MOUNT_T_EMPTY_PATH,
        )

    def reconfigure(self, handle: int, params: Sequence[tuple[str, ParamArg]]) -> None:
        # Here, the lowest layer, so that no caller (a driver included) can change a
        # superblock this restore did not create: this machine's /sys, mqueue, cgroups.
        dev = os.fstat(handle).st_dev
        if dev not in self.owned:
            fstype = self._fstype.get(dev) or _mounted_devices().get(dev, ("filesystem",))[0]
            raise NotOwnedError(
                f"refusing to reconfigure the {fstype} superblock on device "
                f"{os.major(dev)}:{os.minor(dev)}: this restore did not create it (the kernel "
                f"handed back one that was there already), so it is left as it is"
            )
        # By descriptor: the restored namespace need not have /proc.
        fsfd = kernel.fspick("", handle, kernel.FSPICK_EMPTY_PATH)
        try:
            for key, value in params:
                if value is None:
                    kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_FLAG, key)
                elif isinstance(value, str):
                    kernel.fsconfig(fsfd, kernel.FSCONFIG_SET_STRING, key, value)
            kernel.fsconfig(fsfd, kernel.FSCONFIG_CMD_RECONFIGURE)
        finally:
            os.close(fsfd)

    def restore_content(self, handle: int, image: str, fill: Callable[[str], object]) -> None:
        # /proc/PID (not /proc/self): the path must also work for a helper process (tar).
        fill(f"/proc/{os.getpid()}/fd/{handle}")

    def fsid(self, handle: int) -> int | None:
        return int(os.fstatvfs(handle).f_fsid)

    def reopen(self, base: int, path: str) -> int:
        return confine.open_beneath(base, path)

    def mode_of(self, handle: int, path: str) -> int | None:
        try:
            fd = confine.open_beneath(handle, path)
        except SyscallError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        try:
            return os.fstat(fd).st_mode
        finally:
            os.close(fd)

    def close(self, handle: int) -> None:
        os.close(handle)
