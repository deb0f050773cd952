"""What a driver's ``rebuild_mount`` returns: how one dumped mount is recreated.

A plan names its dependencies explicitly (through :class:`PathRef`), so the restore engine can
order the work and report a cycle or a missing dependency; drivers never issue mount calls
themselves, the core's mount layer does (which is what lets tests record the calls).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Protocol, TypeGuard, runtime_checkable

import attrs


@attrs.frozen
class PathRef:
    """A path inside an already restored mount: ``mnt_id`` is the *dumped* mount id and
    ``path`` is relative to where that mount is mounted (``"/"`` is the mount's own root
    dentry, i.e. ``mount.root`` inside its filesystem)."""

    mnt_id: int
    path: str = "/"


@attrs.frozen
class ExternalRef:
    """A path outside the restored tree: resolved from ``--external mnt[KEY]:PATH`` or given."""

    key: str | None = None
    path: str | None = None


def _file_offset(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    # The kernel takes a signed 64-bit offset (loff_t); a state read from an image may hold
    # anything.
    if not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{attribute.name} must be a file offset (0 to 2**63-1), not {value!r}")


@attrs.frozen
class LoopFile:
    """A superblock's source that is a regular file on the host, attached to a new loop
    device (a squashfs or erofs image): ``NewSuperblock(fstype, LoopFile(...))``.

    ``path`` is used only as the operator grants it (``--allow-host DIR`` above the file, or
    ``--external mnt[KEY]:PATH`` for a keyed reference). The core opens it beneath the
    granted directory, checks that it is still the file the driver recorded (``size`` and
    ``mtime_ns``; ``dev`` and ``ino`` only inform, a restore may run on another machine),
    attaches it to a free loop device (``offset``, ``sizelimit`` as losetup's; read-only as
    recorded; cleared automatically once nothing uses it) and makes the superblock from that
    device; no ``--external dev[...]`` is needed for a device the restore attached itself.
    A read-only loop device gives a read-only superblock. If the restore fails, the device
    is detached again.
    """

    path: ExternalRef
    offset: int = attrs.field(default=0, validator=_file_offset)
    #: Bytes of the file the device shows from ``offset`` on (0: up to the end).
    sizelimit: int = attrs.field(default=0, validator=_file_offset)
    read_only: bool = True
    #: What the file was at dump time; None: not checked.
    size: int | None = None
    mtime_ns: int | None = None
    #: The file's device (``st_dev``) and inode at dump time: logged when they differ.
    dev: int | None = None
    ino: int | None = None

    def problem(self, st: os.stat_result) -> str | None:
        """Why the file ``st`` describes is not the recorded one, or None."""
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if self.size is not None and st.st_size != self.size:
            return f"changed since the dump ({st.st_size} bytes, {self.size} when dumped)"
        if self.mtime_ns is not None and st.st_mtime_ns != self.mtime_ns:
            return (
                f"changed since the dump (modified {_when(st.st_mtime_ns)}, "
                f"{_when(self.mtime_ns)} when dumped)"
            )
        return None


def _when(ns: int) -> str:
    secs, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs)) + f".{rest:09d} UTC"


#: A value of a superblock parameter: plain text, or a directory the core opens and passes
#: by file descriptor (FSCONFIG_SET_FD) once it exists.
ParamValue = str | PathRef | ExternalRef | None


@attrs.frozen
class NewSuperblock:
    """Create a new filesystem instance (fsopen/fsconfig/fsmount, or mount(2) as fallback).

    ``params`` are given in order, as repeated fsconfig calls: ``("size", "8m")``, a flag as
    ``("ro", None)``, or a layer as ``("lowerdir+", PathRef(...))``.
    """

    fstype: str
    #: The source string (a device path, a name such as ``tmpfs``), or a :class:`LoopFile`
    #: the core attaches to a loop device whose path becomes the source.
    source: str | LoopFile
    params: tuple[tuple[str, ParamValue], ...] = ()
    #: Extra mounts (dumped ids) that must exist first, beyond those named by PathRefs.
    needs: tuple[int, ...] = ()
    #: Legacy mount(2) data, used only where the new API is not available for this fstype.
    legacy_data: str | None = None
    #: The identity the new filesystem must have (statfs ``f_fsid``): the core checks it
    #: once the superblock exists and fails the restore if it is another filesystem.
    fsid: int | None = None

    def dependencies(self) -> tuple[int, ...]:
        refs = tuple(v.mnt_id for _, v in self.params if isinstance(v, PathRef))
        return tuple(dict.fromkeys(refs + self.needs))


@attrs.frozen
class BindFrom:
    """Bind ``root`` (a path inside the source filesystem) of an already restored mount."""

    source: PathRef

    def dependencies(self) -> tuple[int, ...]:
        return (self.source.mnt_id,)


@attrs.frozen
class BindExternal:
    """Bind a path from outside the dumped namespaces (an external mount)."""

    source: ExternalRef

    def dependencies(self) -> tuple[int, ...]:
        return ()


MountPlan = NewSuperblock | BindFrom | BindExternal


@runtime_checkable
class ContentJob(Protocol):
    """Content being put back while the restore goes on (what ``restore_content`` may return
    instead of ``True``: a started extraction).

    The core creates other superblocks meanwhile and calls :meth:`wait` before anything is
    cut from, mounted on or named inside the filesystem being filled, and before the
    namespace becomes the restored one; on a failure elsewhere it calls :meth:`cancel`.
    """

    def done(self) -> bool:
        """Whether the job has ended (well or not), without waiting."""
        ...

    def wait(self) -> None:
        """Wait for the end; raise :class:`~criu_fw.errors.RestoreError` saying why if it
        failed (the core adds the mount and the driver)."""
        ...

    def cancel(self) -> None:
        """Stop the job and wait for it to be gone (the restore failed); never raises."""
        ...


_JOB_TYPES: set[type] = set()


def is_content_job(value: object) -> TypeGuard[ContentJob]:
    """``isinstance(value, ContentJob)``, remembered per type: a Protocol's isinstance walks
    its members each time (30 us), and a restore asks once per filesystem."""
    kind = type(value)
    if kind in _JOB_TYPES:
        return True
    if isinstance(value, ContentJob):
        _JOB_TYPES.add(kind)
        return True
    return False
