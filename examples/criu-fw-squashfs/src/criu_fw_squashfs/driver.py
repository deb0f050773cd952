"""The driver: squashfs and erofs mounts whose source is a loop device with a file attached.

Dump: which file the loop device shows (sysfs), what that file is (its identity), and the
superblock options, in a :class:`~.state.LoopState`. Restore: a new superblock whose source
is a :class:`~criu_fw.driver.LoopFile`; the core attaches the file to a new loop device,
but only when the operator granted the file's directory (``--allow-host DIR``) and only if
the file is still the one dumped. The driver itself never opens a host path at restore.
"""

from __future__ import annotations

import logging
import os

from criu_fw.driver import (
    DriverState,
    DumpContext,
    DumpError,
    ExternalRef,
    FsDriver,
    LoopFile,
    Mount,
    NewSuperblock,
    RestoreError,
    hookimpl,
)

from . import options
from .loopdev import DELETED, LoopDevice, read_loop_device
from .state import FileIdentity, LoopState

log = logging.getLogger("criu_fw_squashfs")


class SquashfsDriver(FsDriver):
    name = "squashfs"
    description = "squashfs and erofs images on loop devices, attached again at restore"
    fstypes = ("squashfs", "erofs")
    state_types = (LoopState,)
    # LoopFile came with driver API 1.1.
    api_version = (1, 1)

    @hookimpl
    def parse_mount(self, mount: Mount, ctx: DumpContext) -> LoopState:
        try:
            loop = read_loop_device(ctx.sys_root, mount.dev)
        except (OSError, ValueError) as exc:
            raise DumpError(f"{mount.describe()}: cannot read its device in sysfs: {exc}") from exc
        if loop is None:
            raise DumpError(
                f"{mount.describe()}: device {mount.dev} is not a loop device with a file "
                f"attached; only images on loop devices can be restored"
            )
        for opt in options.kept(mount.super_options):
            why = options.problem(mount.fstype, opt)
            if why is not None:
                raise DumpError(f"{mount.describe()}: {why}")
        if ctx.recorded:
            # A recorded /sys: the file is on a machine this process does not see; the
            # restore then checks nothing but that it is there.
            if loop.backing_file.endswith(DELETED):
                raise _deleted(mount, loop)
            identity = None
        else:
            identity = _identify(mount, loop)
        return LoopState(
            backing_file=loop.backing_file, offset=loop.offset, sizelimit=loop.sizelimit,
            read_only=loop.read_only, identity=identity,
            options=options.kept(mount.super_options), device=loop.name,
        )

    @hookimpl
    def rebuild_mount(self, mount: Mount, state: DriverState | None) -> NewSuperblock:
        if not isinstance(state, LoopState):
            raise RestoreError(f"{mount.describe()}: the images hold no loop device state for it")
        for opt in state.options:
            why = options.problem(mount.fstype, opt)
            if why is not None:
                raise RestoreError(f"{mount.describe()}: {why}")
        ident = state.identity
        loop = LoopFile(
            ExternalRef(path=state.backing_file), offset=state.offset,
            sizelimit=state.sizelimit, read_only=state.read_only,
            size=ident.size if ident else None, mtime_ns=ident.mtime_ns if ident else None,
            dev=ident.dev if ident else None, ino=ident.ino if ident else None,
        )
        return NewSuperblock(mount.fstype, loop, options.as_params(state.options))


def _identify(mount: Mount, loop: LoopDevice) -> FileIdentity:
    """The backing file's identity, checked against what the loop device shows."""
    path = loop.backing_file
    what = f"the backing file {path!r} of {loop.name}"
    try:
        st = os.stat(path)
    except OSError as exc:
        if path.endswith(DELETED):
            raise _deleted(mount, loop) from None
        raise DumpError(f"{mount.describe()}: {what} cannot be looked at: {exc.strerror}") from None
    if loop.expected_size(st.st_size) != loop.size:
        # Another file at that path (sysfs names it as this process's root sees it), or one
        # that changed under the device.
        raise DumpError(
            f"{mount.describe()}: {what} would give a device of "
            f"{loop.expected_size(st.st_size)} bytes, the device has {loop.size}: not the "
            f"file attached, or it changed since"
        )
    log.debug("%s: %s, inode %d, %d bytes", mount.describe(), path, st.st_ino, st.st_size)
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _deleted(mount: Mount, loop: LoopDevice) -> DumpError:
    gone = loop.backing_file[: -len(DELETED)]
    return DumpError(
        f"{mount.describe()}: the backing file {gone!r} of {loop.name} was deleted; a restore "
        f"could not attach it again"
    )
