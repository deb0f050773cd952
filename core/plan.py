"""What a driver's ``rebuild_mount`` returns: how one dumped mount is recreated.

A plan names its dependencies explicitly (through :class:`PathRef`), so the restore engine can
order the work and report a cycle or a missing dependency; drivers never issue mount calls
themselves, the core's mount layer does (which is what lets tests record the calls).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
    source: str
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
