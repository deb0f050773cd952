"""The mount layer's interface: every mount request of a restore goes through a
:class:`MountOps` (the kernel's, :mod:`.kernelops`, or a recording, :mod:`.recording`;
both, and the recording format, are described in :mod:`criu_fw.kernel.mountops`).

Mounts are referred to by *handles*: small integers (file descriptors of mounts in the kernel
layer, counters in the recording layer). A handle refers to one mount, attached or detached;
paths below are relative to a handle's mount root unless they start with ``/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from ..errors import CriuFwError
from ..plan import LoopFile


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


def host_join(base: str, rel: str) -> str:
    """``rel`` (inside a tree) below the absolute host directory ``base``, for messages."""
    rel = rel.strip("/")
    if not rel:
        return base
    return f"{base.rstrip('/')}/{rel}"


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
