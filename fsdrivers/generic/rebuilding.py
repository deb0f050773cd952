"""Restore side of the generic driver: default superblock plans and tmpfs content.

``rebuild_mount`` asks for a new superblock of the dumped fstype from the dumped source and
superblock options (the mountinfo spelling, which is what the kernel's parsers take back),
minus options that describe the machine rather than the mount (an LSM's ``seclabel``).
Other mounts of the same superblock, external mounts and the ``--root`` bind are the core's
business. ``restore_content`` unpacks ``tmpfs-dev-<kdev>.tar.gz.img`` keeping numeric owners,
permissions, xattrs and sparse files (:mod:`.content` decides how): a small archive in-process
before it returns, a bigger one with GNU tar, returned running as a
:class:`~criu_fw.plan.ContentJob`, so the core creates other superblocks meanwhile.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

from criu_fw.driver import (
    ContentJob,
    DriverState,
    Mount,
    MountPlan,
    NewSuperblock,
    RestoreContext,
    hookimpl,
)

from . import blockdev, content
from .blockdev import BlockDevState

#: Superblock options that mountinfo shows but that a filesystem does not take back.
_NOT_PARAMETERS = frozenset({"seclabel"})
_CONTENT_IMAGE = re.compile(r"^tmpfs-dev-\d+\.tar\.gz\.img$")

def default_plan(mount: Mount) -> NewSuperblock:
    params: list[tuple[str, str | None]] = []
    for opt in mount.super_options:
        if opt == "rw" or opt in _NOT_PARAMETERS:
            continue
        key, sep, value = opt.partition("=")
        params.append((key, value if sep else None))
    return NewSuperblock(mount.fstype, mount.source, tuple(params))


class GenericRebuild:
    """Hook implementations used at restore time."""

    #: ``restore_content`` unpacks into the path it is given and changes nothing else (a
    #: GNU tar it starts is a ContentJob): it can run in the restore's fill workers.
    parallel_restore_content: ClassVar[bool] = True

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        if isinstance(state, BlockDevState):
            return blockdev.rebuild(mount, state, default_plan(mount), ctx)
        return default_plan(mount)

    @hookimpl
    def restore_content(
        self, mount: Mount, image: str, path: str, ctx: RestoreContext
    ) -> ContentJob | bool | None:
        if not _CONTENT_IMAGE.match(image):
            return None
        archive = os.path.join(ctx.image_dir, image)
        fd = ctx.open_image(image)  # the core names the mount and the driver on failure
        try:
            # Done, or started and not waited for: the core makes other superblocks while
            # a tar works.
            return content.restore(fd, archive, path)
        finally:
            os.close(fd)
