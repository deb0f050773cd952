"""Restore side of the generic driver: default superblock plans and tmpfs content.

``rebuild_mount`` asks for a new superblock of the dumped fstype from the dumped source and
superblock options (the mountinfo spelling, which is what the kernel's parsers take back),
minus options that describe the machine rather than the mount (an LSM's ``seclabel``).
Other mounts of the same superblock, external mounts and the ``--root`` bind are the core's
business. ``restore_content`` unpacks ``tmpfs-dev-<kdev>.tar.gz.img`` with GNU tar, keeping
numeric owners, permissions, xattrs and sparse files; it returns the running tar as a
:class:`~criu_fw.plan.ContentJob`, so the core creates other superblocks meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile

from criu_fw.driver import (
    DriverState,
    Mount,
    MountPlan,
    NewSuperblock,
    RestoreContext,
    RestoreError,
    hookimpl,
)

from . import blockdev
from .blockdev import BlockDevState

#: Superblock options that mountinfo shows but that a filesystem does not take back.
_NOT_PARAMETERS = frozenset({"seclabel"})
_CONTENT_IMAGE = re.compile(r"^tmpfs-dev-\d+\.tar\.gz\.img$")

TAR_EXTRACT = (
    "tar", "--extract", "--gzip", "--xattrs", "--xattrs-include=*", "--numeric-owner",
    "--sparse", "-p",
)


def default_plan(mount: Mount) -> NewSuperblock:
    params: list[tuple[str, str | None]] = []
    for opt in mount.super_options:
        if opt == "rw" or opt in _NOT_PARAMETERS:
            continue
        key, sep, value = opt.partition("=")
        params.append((key, value if sep else None))
    return NewSuperblock(mount.fstype, mount.source, tuple(params))


class Extraction:
    """A tar unpacking a content archive, running while the restore goes on (a
    :class:`~criu_fw.plan.ContentJob`). tar's messages go to an unnamed file, not a pipe,
    so a chatty tar never blocks waiting for a reader."""

    def __init__(self, archive: str, fd: int, path: str) -> None:
        # The archive is handed over by descriptor (opened and checked by the core: a
        # regular file of the image directory), never by a name tar would open itself.
        self.archive = archive
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait/cancel
        try:
            self._proc = subprocess.Popen(
                [*TAR_EXTRACT, "--file", "-", "--directory", path],
                stdin=fd, stdout=subprocess.DEVNULL, stderr=self._errors,
            )
        except OSError as exc:
            self._errors.close()
            raise RestoreError(
                f"{os.path.basename(archive)}: cannot run tar: {exc.strerror}"
            ) from exc

    def done(self) -> bool:
        return self._proc.poll() is not None

    def wait(self) -> None:
        code = self._proc.wait()
        with self._errors:
            if code == 0:
                return
            self._errors.seek(0)
            detail = " ".join(self._errors.read(4096).decode("utf-8", "replace").split())
        raise RestoreError(
            f"{os.path.basename(self.archive)}: tar could not restore the content "
            f"(exit {code}): {detail[:300]}"
        )

    def cancel(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        self._errors.close()


class GenericRebuild:
    """Hook implementations used at restore time."""

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
    ) -> Extraction | None:
        if not _CONTENT_IMAGE.match(image):
            return None
        archive = os.path.join(ctx.image_dir, image)
        fd = ctx.open_image(image)  # the core names the mount and the driver on failure
        try:
            # Started, not waited for: the core makes other superblocks while tar works.
            return Extraction(archive, fd, path)
        finally:
            os.close(fd)
