"""The AUFS driver: puts together the superblock id, branches, path fixups and the rebuild.

The branch list of a superblock is read from sysfs once per dump (whatever the number of
namespaces, mounts or files that use it) and kept on ``ctx.stash`` under :data:`SUPERBLOCKS`
together with its path index.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from criu_fw.context import DumpContext, RestoreContext
from criu_fw.driver import DriverState, FsDriver
from criu_fw.files import FileMapping, OpenFile
from criu_fw.hookspecs import hookimpl
from criu_fw.model import Mount, MountTree
from criu_fw.plan import MountPlan
from criu_fw.stash import StashKey

from . import fixups, rebuild
from .branches import Branch, log_branches, read_branches
from .paths import BranchIndex
from .sbid import superblock_id
from .state import AufsState


@attrs.frozen
class Superblock:
    """One AUFS superblock as the dump sees it: id, branches, and their path index."""

    si: str
    branches: tuple[Branch, ...]
    index: BranchIndex

    @property
    def state(self) -> AufsState:
        return AufsState(self.si, self.branches)


#: si -> the superblock, parsed once per dump.
SUPERBLOCKS: StashKey[dict[str, Superblock]] = StashKey("aufs.superblocks")


def superblock(mount: Mount, ctx: DumpContext) -> Superblock:
    """The (cached) branch list of ``mount``'s superblock; reads sysfs on first use only."""
    cache = ctx.stash.setdefault(SUPERBLOCKS, {})
    si = superblock_id(mount)
    sb = cache.get(si)
    if sb is None:
        branches = read_branches(ctx.sys_root, si, mount.describe())
        sb = Superblock(si, branches, BranchIndex.build(branches))
        cache[si] = sb
        log_branches(si, branches)
    return sb


class AufsDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("aufs",)
    state_types: ClassVar[tuple[type[DriverState], ...]] = (AufsState,)
    description = "AUFS: branches, map_files branch paths, host mount ids"

    @hookimpl
    def parse_mount(self, mount: Mount, tree: MountTree, ctx: DumpContext) -> DriverState | None:
        return superblock(mount, ctx).state

    @hookimpl
    def fixup_fd_path(
        self, file: OpenFile, mount: Mount | None, ctx: DumpContext
    ) -> OpenFile | None:
        if mount is None or mount.fstype != "aufs":
            return None
        return fixups.fix_open_file(file, superblock(mount, ctx).index, ctx)

    @hookimpl
    def fixup_vma(
        self, vma: FileMapping, mount: Mount | None, ctx: DumpContext
    ) -> FileMapping | None:
        if mount is None or mount.fstype != "aufs":
            return None
        return fixups.fix_mapping(vma, superblock(mount, ctx).index, ctx)

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        return rebuild.plan(mount, state, ctx.proc_root)
