"""The mount layer: every mount request of a restore goes through a :class:`MountOps`.

Two implementations:

* :class:`KernelMountOps` issues the real system calls (the new mount API: fsopen/fsconfig/
  fsmount, open_tree, move_mount, mount_setattr), only ever inside the private mount namespace
  of the restoring child process;
* :class:`RecordingMountOps` touches nothing and records every request as a :class:`Call`, for
  tests of drivers (which exact superblock did the AUFS driver ask for?) and for a dry run.

Mounts are referred to by *handles*: small integers (file descriptors of mounts in the kernel
layer, counters in the recording layer). A handle refers to one mount, attached or detached;
paths below are relative to a handle's mount root unless they start with ``/``.

The recording format (what tests assert on) is one :class:`Call` per request, in order:

=====================  =========================================================================
``op``                 fields set
=====================  =========================================================================
``new_superblock``     ``fstype``, ``source``, ``params`` (values: ``str``, ``None`` for a flag,
                       :class:`Fd` for a directory passed by descriptor), ``handle`` (returned),
                       ``owned`` (False: the kernel hands back a superblock that exists
                       already, whose parameters are not applied; see below)
``clone``              ``handle`` (returned), ``other`` (source handle, or None), ``path``
                       (subpath inside ``other``, or an absolute host path when ``other`` is None)
``attach``             ``handle`` (the mount), ``other`` (parent handle, None for a host path),
                       ``path`` (relative to the parent's root, or absolute)
``set_attr``           ``handle``, ``flags`` (MOUNT_ATTR_* set), ``clear`` (MOUNT_ATTR_* cleared)
``set_propagation``    ``handle``, ``flags`` (MS_SHARED / MS_SLAVE / MS_PRIVATE / MS_UNBINDABLE)
``set_group``          ``other`` (from: a member of the group), ``handle`` (to: joins it)
``reconfigure``        ``handle``, ``params``
``attach_loop``        ``handle`` (a number of its own), ``path`` (the host file), ``source``
                       (the device returned), ``params`` (``offset``, ``sizelimit``),
                       ``flags`` (LO_FLAGS_*: read-only, autoclear)
``restore_content``    ``handle``, ``path`` (the image file name)
``close``              ``handle``
=====================  =========================================================================

Superblocks a restore does not own. Some filesystems keep one superblock per key (sysfs per
network namespace, mqueue per IPC namespace, a block device's filesystem per device; see
:mod:`criu_fw.kernel.superblocks`) and hand the existing one back. :class:`KernelMountOps` asks with
FSCONFIG_CMD_CREATE_EXCL: a new superblock is *owned* (recorded by device); where the kernel
would reuse one (EBUSY) it takes that one with no parameter but the source, not owned, unless
its key is a namespace the restore made itself. Kernels without CREATE_EXCL, and mount(2), are
judged by device: a superblock whose device was mounted before the first one this layer made
is not owned. ``reconfigure`` refuses any superblock that is not owned, whoever asks.
:class:`RecordingMountOps` owns everything except the fstypes it is told are ``shared``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager

import attrs

from .. import kernel
from ..errors import CriuFwError, SyscallError
from ..plan import LoopFile
from . import confine
from .superblocks import KEYED, NAMED_BY_OPTIONS, SINGLETONS, fresh_types


class NotOwnedError(CriuFwError, PermissionError):
    """A superblock this restore did not create was to be changed (it is left as it is)."""


@attrs.frozen
class Fd:
    """A superblock parameter passed by file descriptor (FSCONFIG_SET_FD): the directory at
    ``path`` inside restored mount ``handle``; ``mnt_id`` is the dumped id of that mount.
    ``mnt_id`` -1 (and ``handle`` -1) means a host directory: ``path`` inside the directory
    ``base`` the operator granted, or, without ``base``, the operator's own absolute path."""

    mnt_id: int
    path: str
    handle: int = attrs.field(default=-1, eq=False)
    base: str | None = None


ParamArg = str | None | Fd


@attrs.frozen
class Call:
    """One recorded mount request (see the table in the module docstring)."""

    op: str
    handle: int | None = None
    other: int | None = None
    path: str | None = None
    fstype: str | None = None
    source: str | None = None
    params: tuple[tuple[str, ParamArg], ...] = ()
    flags: int = 0
    clear: int = 0
    #: ``new_superblock``: the mount(2) data for filesystems the new API cannot create.
    legacy_data: str | None = None
    #: ``new_superblock``: False when the superblock is an existing one (not the restore's).
    owned: bool = True

    def describe(self) -> str:
        """One readable line (``criu-fw restore --dry-run``); handles are shown as ``#N``."""
        h, o = f"#{self.handle}", f"#{self.other}"
        if self.op == "new_superblock" and not self.owned:
            params = ",".join(_show_param(k, v) for k, v in self.params)
            line = f"{h} = existing {self.fstype} superblock, source {self.source!r}, left as it is"
            return line + (f" (options {params} not applied)" if params else "")
        if self.op == "new_superblock":
            params = ",".join(_show_param(k, v) for k, v in self.params)
            line = f"{h} = new {self.fstype} superblock, source {self.source!r}"
            line += f", options {params}" if params else ""
            if self.legacy_data is not None:
                line += f" (mount(2) data if needed: {self.legacy_data!r})"
            return line
        if self.op == "clone":
            where = f"host path {self.path}" if self.other is None else f"{o} at {self.path}"
            return f"{h} = copy of the mount at {where}"
        if self.op == "reopen":
            return f"{h} = the mount at {self.path or '.'} beneath {o}"
        if self.op == "attach":
            if self.other is None:
                return f"attach {h} at host path {self.path}"
            return f"attach {h} to {o} at {self.path or '.'}"
        if self.op == "set_attr":
            return (f"set flags of {h}: {_attr_names(self.flags) or 'rw,relatime'} "
                    f"(clearing {_attr_names(self.clear) or 'nothing'})")
        if self.op == "set_propagation":
            return f"make {h} {_PROPAGATION.get(self.flags, hex(self.flags))}"
        if self.op == "set_group":
            return f"{h} joins the peer group (and master) of {o}"
        if self.op == "reconfigure":
            return f"reconfigure the superblock of {h}: " + ",".join(
                _show_param(k, v) for k, v in self.params
            )
        if self.op == "attach_loop":
            how = ", ".join(f"{k} {v}" for k, v in self.params if v != "0")
            if self.flags & kernel.LO_FLAGS_READ_ONLY:
                how = f"{how}, read-only" if how else "read-only"
            return f"{self.source} = loop device on {self.path}" + (f" ({how})" if how else "")
        if self.op == "restore_content":
            return f"fill {h} from {self.path}"
        return f"{self.op} {h}"


_PROPAGATION = {
    kernel.MS_SHARED: "shared", kernel.MS_SLAVE: "a slave", kernel.MS_PRIVATE: "private",
    kernel.MS_UNBINDABLE: "unbindable",
}
_ATTR_NAMES = (
    (kernel.MOUNT_ATTR_RDONLY, "ro"), (kernel.MOUNT_ATTR_NOSUID, "nosuid"),
    (kernel.MOUNT_ATTR_NODEV, "nodev"), (kernel.MOUNT_ATTR_NOEXEC, "noexec"),
    (kernel.MOUNT_ATTR_NODIRATIME, "nodiratime"), (kernel.MOUNT_ATTR_NOATIME, "noatime"),
    (kernel.MOUNT_ATTR_STRICTATIME, "strictatime"), (kernel.MOUNT_ATTR__ATIME, "atime"),
)


def _attr_names(value: int) -> str:
    names = []
    for bit, name in _ATTR_NAMES:
        if bit == kernel.MOUNT_ATTR__ATIME:
            if value & bit == bit:
                names.append("any atime mode")
        elif value & bit == bit and not (
            bit in (kernel.MOUNT_ATTR_NOATIME, kernel.MOUNT_ATTR_STRICTATIME)
            and value & kernel.MOUNT_ATTR__ATIME == kernel.MOUNT_ATTR__ATIME
        ):
            names.append(name)
    return ",".join(names)


def host_join(base: str, rel: str) -> str:
    """``rel`` (inside a tree) below the absolute host directory ``base``, for messages."""
    rel = rel.strip("/")
    if not rel:
        return base
    return f"{base.rstrip('/')}/{rel}"


def _show_param(key: str, value: ParamArg) -> str:
    if value is None:
        return key
    if isinstance(value, Fd):
        if value.mnt_id >= 0:
            where = f"{value.path} in mount {value.mnt_id}"
        else:
            where = value.path if value.base is None else host_join(value.base, value.path)
        return f"{key}=<dir {where}>"
    return f"{key}={value}"


class MountOps:
    """The operations a restore needs. Subclasses implement every method."""

    #: Whether the restore may fork workers that use these operations' handles (the kernel's
    #: descriptors; not a recording).
    forks_workers: bool = False

    def new_superblock(
        self,
        fstype: str,
        source: str,
        params: Sequence[tuple[str, ParamArg]],
        *,
        legacy_data: str | None = None,
        chroot: str | None = None,
    ) -> int:
        """Create a new filesystem instance; returns a handle of its detached root mount.

        ``chroot``: a directory to use as the process root while the parameters are applied,
        so that directories passed by descriptor are recorded relative to the restored root
        (overlay d_paths its layers against the caller's root)."""
        raise NotImplementedError

    def clone(self, src: int | None, path: str) -> int:
        """A detached copy of one mount (no children): ``path`` inside handle ``src``, or the
        mount at absolute host ``path`` when ``src`` is None."""
        raise NotImplementedError

    def recreate(
        self, src: int, path: str, mode: int, owner: tuple[int, int], *,
        link: str | None = None, content: int | None = None,
    ) -> tuple[int, Callable[[], None]]:
        """A detached bind of a file or directory made again at ``path`` inside handle
        ``src`` (a bind whose root had been deleted): a directory, a hard link to ``link`` (a
        path inside ``src``), or a file with the bytes read from descriptor ``content``;
        missing parent directories are made too. Returns the handle and what unlinks it all
        again, to be called once the bind is attached (the kernel refuses to attach a
        detached mount whose root is already unlinked: ENOENT)."""
        raise NotImplementedError

    def clone_host(self, base: str, path: str, *, follow: bool = False) -> int:
        """A detached copy of the host directory ``path`` inside ``base``, a directory the
        operator gave (``--root``, ``--external``, ``--allow-host``): resolved beneath it,
        through no link (``follow``: through its own links that stay inside it)."""
        raise NotImplementedError

    def attach(self, handle: int, parent: int | None, path: str) -> None:
        """Attach a detached mount at ``path`` inside ``parent`` (or at absolute ``path``),
        creating the mountpoint (a directory, or an empty file for a file mount) if needed."""
        raise NotImplementedError

    def set_attr(self, handle: int, attr_set: int, attr_clr: int) -> None:
        raise NotImplementedError

    def set_propagation(self, handle: int, flag: int) -> None:
        raise NotImplementedError

    def set_group(self, src: int, dst: int) -> None:
        """Make ``dst`` join ``src``'s peer group and master (MOVE_MOUNT_SET_GROUP)."""
        raise NotImplementedError

    def reconfigure(self, handle: int, params: Sequence[tuple[str, ParamArg]]) -> None:
        """Change superblock parameters of a mount's filesystem (fspick + reconfigure).

        Raises :class:`NotOwnedError` for a superblock that :meth:`owns` does not own."""
        raise NotImplementedError

    def owns(self, handle: int) -> bool:
        """Whether the superblock of a mount handle was created by this restore (only such
        superblocks are reconfigured; the others belong to this machine)."""
        raise NotImplementedError

    def existing_options(self, handle: int) -> tuple[str, ...] | None:
        """The superblock options of a superblock this restore did not create, as this
        machine's mount table showed them before the restore; None when not known."""
        raise NotImplementedError

    def restore_content(self, handle: int, image: str, fill: Callable[[str], object]) -> None:
        """Run ``fill(path)`` with a path through which the mount's whole root is writable."""
        raise NotImplementedError

    def attach_loop(self, base: str, path: str, loop: LoopFile, *, follow: bool = False) -> str:
        """Attach the file ``path`` inside the granted directory ``base`` (resolved as
        :meth:`clone_host` does) to a new loop device, once it is checked to be the file
        ``loop`` recorded; returns the device's path, a superblock's source. The device goes
        away by itself once nothing uses it, and is detached by a failed restore."""
        raise NotImplementedError

    def fsid(self, handle: int) -> int | None:
        """The filesystem identity (statfs ``f_fsid``) of a mount, None if unknown."""
        raise NotImplementedError

    def reopen(self, base: int, path: str) -> int:
        """A handle of the mount at ``path`` beneath the attached mount ``base`` (the topmost
        mount there), resolved through no link and no ``..``; for propagation changes."""
        raise NotImplementedError

    def mode_of(self, handle: int, path: str) -> int | None:
        """``st_mode`` of ``path`` inside the mount ``handle`` (through no link and no
        ``..``), None if nothing is there."""
        raise NotImplementedError

    def close(self, handle: int) -> None:
        raise NotImplementedError


def _make(
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


class RecordingMountOps(MountOps):
    """Records every request in :attr:`calls`; touches neither the kernel nor any file.

    ``shared``: fstypes whose superblocks it takes as handed back by the kernel (not owned),
    as a real restore would get them (a dry run passes
    :func:`~criu_fw.kernel.superblocks.predicted_shared`); every other superblock is owned."""

    def __init__(self, shared: Iterable[str] = ()) -> None:
        self.calls: list[Call] = []
        self._next = 100
        self.shared = frozenset(shared)
        self._owner: dict[int, bool] = {}  # handle -> whether its superblock is owned
        self._indexed = 0

    def _new(self) -> int:
        self._next += 1
        return self._next

    def of(self, op: str) -> list[Call]:
        """The recorded calls of one kind, in order."""
        return [c for c in self.calls if c.op == op]

    def new_superblock(
        self,
        fstype: str,
        source: str,
        params: Sequence[tuple[str, ParamArg]],
        *,
        legacy_data: str | None = None,
        chroot: str | None = None,
    ) -> int:
        h = self._new()
        self.calls.append(
            Call(
                "new_superblock", handle=h, fstype=fstype, source=source, params=tuple(params),
                legacy_data=legacy_data, owned=fstype not in self.shared,
            )
        )
        return h

    def owns(self, handle: int) -> bool:
        # Handles are never reused here: a clone's superblock is its source's (indexed from
        # the calls recorded since the last question, so a dry run of 10,000 mounts stays
        # linear).
        for c in self.calls[self._indexed :]:
            if c.op == "new_superblock" and c.handle is not None:
                self._owner[c.handle] = c.owned
            elif c.op == "clone" and c.handle is not None:
                # A copy of a host mount (no source) is never the restore's.
                self._owner[c.handle] = False if c.other is None else self._owner.get(
                    c.other, False
                )
        self._indexed = len(self.calls)
        return self._owner.get(handle, False)

    def existing_options(self, handle: int) -> tuple[str, ...] | None:
        return None

    def clone(self, src: int | None, path: str) -> int:
        h = self._new()
        self.calls.append(Call("clone", handle=h, other=src, path=path))
        return h

    def recreate(
        self, src: int, path: str, mode: int, owner: tuple[int, int], *,
        link: str | None = None, content: int | None = None,
    ) -> tuple[int, Callable[[], None]]:
        h = self._new()
        self.calls.append(Call("recreate", handle=h, other=src, path=path))
        return h, lambda: None

    def clone_host(self, base: str, path: str, *, follow: bool = False) -> int:
        h = self._new()
        self.calls.append(Call("clone", handle=h, other=None, path=host_join(base, path)))
        return h

    def attach(self, handle: int, parent: int | None, path: str) -> None:
        self.calls.append(Call("attach", handle=handle, other=parent, path=path))

    def set_attr(self, handle: int, attr_set: int, attr_clr: int) -> None:
        self.calls.append(Call("set_attr", handle=handle, flags=attr_set, clear=attr_clr))

    def set_propagation(self, handle: int, flag: int) -> None:
        self.calls.append(Call("set_propagation", handle=handle, flags=flag))

    def set_group(self, src: int, dst: int) -> None:
        self.calls.append(Call("set_group", handle=dst, other=src))

    def reconfigure(self, handle: int, params: Sequence[tuple[str, ParamArg]]) -> None:
        if not self.owns(handle):
            raise NotOwnedError(
                f"refusing to reconfigure the superblock of #{handle}: this restore did not "
                f"create it, so it is left as it is"
            )
        self.calls.append(Call("reconfigure", handle=handle, params=tuple(params)))

    def restore_content(self, handle: int, image: str, fill: Callable[[str], object]) -> None:
        self.calls.append(Call("restore_content", handle=handle, path=image))

    def attach_loop(self, base: str, path: str, loop: LoopFile, *, follow: bool = False) -> str:
        # The file itself was checked when the restore was planned; nothing is opened here.
        h = self._new()
        device = f"<loop #{h}>"
        flags = kernel.LO_FLAGS_AUTOCLEAR | (kernel.LO_FLAGS_READ_ONLY if loop.read_only else 0)
        self.calls.append(Call(
            "attach_loop", handle=h, path=host_join(base, path), source=device, flags=flags,
            params=(("offset", str(loop.offset)), ("sizelimit", str(loop.sizelimit))),
        ))
        return device

    def fsid(self, handle: int) -> int | None:
        return None

    def reopen(self, base: int, path: str) -> int:
        h = self._new()
        self.calls.append(Call("reopen", handle=h, other=base, path=path))
        return h

    def mode_of(self, handle: int, path: str) -> int | None:
        return stat.S_IFDIR | 0o755  # what a recorded plan's mountpoints are

    def close(self, handle: int) -> None:
        self.calls.append(Call("close", handle=handle))


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
def _chrooted(path: str | None) -> Iterator[None]:
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
            with _chrooted(chroot if opened else None):
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
            name = _make(cur, parts[-1], mode, owner, link, content, src)
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
