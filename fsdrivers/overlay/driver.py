"""The overlay driver: layers found where they really are, files on the right mount, exact
rebuild through the new mount API.

The hooks only route; the work is in ``parse`` (options and layers, dump), ``fixups`` (open
files and mappings, dump) and ``rebuild`` (the restore plan).
"""

from __future__ import annotations

from typing import ClassVar

from criu_fw.driver import (
    DriverState,
    DumpContext,
    FileMapping,
    FsDriver,
    Mount,
    MountPlan,
    MountTree,
    OpenFile,
    RestoreContext,
    RestoreError,
    hookimpl,
)

from .fixups import fixup_file, fixup_mapping
from .parse import parse_overlay
from .rebuild import rebuild_overlay
from .state import OverlayState


class OverlayDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("overlay",)
    state_types: ClassVar[tuple[type[DriverState], ...]] = (OverlayState,)
    description = "overlayfs: layer resolution, open-file mount fixes, new-API rebuild"

    @hookimpl
    def parse_mount(self, mount: Mount, tree: MountTree, ctx: DumpContext) -> DriverState | None:
        if mount.fstype != "overlay":
            return None
        return parse_overlay(mount, tree, ctx)

    @hookimpl
    def fixup_fd_path(
        self, file: OpenFile, mount: Mount | None, ctx: DumpContext
    ) -> OpenFile | None:
        return fixup_file(file, mount, ctx)

    @hookimpl
    def fixup_vma(
        self, vma: FileMapping, mount: Mount | None, ctx: DumpContext
    ) -> FileMapping | None:
        return fixup_mapping(vma, mount, ctx)

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        if not isinstance(state, OverlayState):
            # Without resolved layers the option strings would be replayed verbatim, which is
            # exactly what goes stale; refuse before anything is mounted.
            raise RestoreError(
                f"{mount.describe()}: no overlay layer state in the images (CRIU's own images "
                "keep only the option strings, whose paths go stale; dump it with criu-fw)"
            )
        return rebuild_overlay(mount, state, ctx)
