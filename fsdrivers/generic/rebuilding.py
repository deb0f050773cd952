"""Restore side of the generic driver: default superblock plans and tmpfs content.

``rebuild_mount`` asks for a new superblock of the dumped fstype from the dumped source and
superblock options (the mountinfo spelling, which is what the kernel's parsers take back),
minus options that describe the machine rather than the mount (an LSM's ``seclabel``).
Other mounts of the same superblock, external mounts and the ``--root`` bind are the core's
business. ``restore_content`` unpacks ``tmpfs-dev-<kdev>.tar.gz.img`` with GNU tar, keeping
numeric owners, permissions, xattrs and sparse files.
"""

from __future__ import annotations

import os
import re
import subprocess

from criu_fw.context import RestoreContext
from criu_fw.driver import DriverState
from criu_fw.errors import RestoreError
from criu_fw.hookspecs import hookimpl
from criu_fw.model import Mount
from criu_fw.plan import MountPlan, NewSuperblock

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


def extract_archive(archive: str, path: str) -> None:
    """Unpack a content archive into the directory ``path`` (a fresh filesystem's root)."""
    res = subprocess.run(
        [*TAR_EXTRACT, "--file", archive, "--directory", path],
        stdin=subprocess.DEVNULL, capture_output=True, check=False,
    )
    if res.returncode != 0:
        detail = " ".join(res.stderr.decode("utf-8", "replace").split())[:300]
        raise RestoreError(
            f"{os.path.basename(archive)}: tar could not restore the content "
            f"(exit {res.returncode}): {detail}"
        )


class GenericRebuild:
    """Hook implementations used at restore time."""

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        return default_plan(mount)

    @hookimpl
    def restore_content(
        self, mount: Mount, image: str, path: str, ctx: RestoreContext
    ) -> bool | None:
        if not _CONTENT_IMAGE.match(image):
            return None
        archive = os.path.join(ctx.image_dir, image)
        if not os.path.isfile(archive):
            # The core prefixes the mount (mountpoint, fstype, source) and the driver.
            raise RestoreError(f"{archive}: missing content image")
        extract_archive(archive, path)
        return True
