"""The AUFS driver: puts together the superblock id, branches, path fixups and the rebuild.

The branch list of a superblock is read from sysfs once per dump (whatever the number of
namespaces, mounts or files that use it) and kept on ``ctx.stash`` under :data:`SUPERBLOCKS`
together with its path index.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from criu_fw.driver import (
    DriverState,
    DumpContext,
    FileMapping,
    FsDriver,
    Mount,
    MountNotFoundError,
    MountPlan,
    MountTree,
    OpenFile,
    RestoreContext,
    StashKey,
    hookimpl,
)

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
#: (namespace, mount id) of a mount that a branch path lands on in the container (a volume at
#: /var holds /var/lib/docker/aufs/... there) -> the superblocks whose branches lie on it.
CLAIMED: StashKey[dict[tuple[int, int], list[Superblock]]] = StashKey("aufs.claimed")


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


def _indexes(mount: Mount | None, ctx: DumpContext) -> list[BranchIndex]:
    """The branch indexes that apply to a file found on ``mount``: its own superblock's for
    an AUFS mount, those of the superblocks that claimed it for any other mount."""
    if mount is None:
        return []
    if mount.fstype == "aufs":
        return [superblock(mount, ctx).index]
    claimed = ctx.stash.get(CLAIMED, {})
    return [
        sb.index
        for (ns_id, mnt_id), sbs in claimed.items()
        if mnt_id == mount.mnt_id
        and ctx.trees.get(ns_id, None) is not None
        and ctx.trees[ns_id].find(mnt_id) is mount
        for sb in sbs
    ]


class AufsDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("aufs",)
    state_types: ClassVar[tuple[type[DriverState], ...]] = (AufsState,)
    description = "AUFS: branches, map_files branch paths, host mount ids"

    @hookimpl
    def parse_mount(self, mount: Mount, tree: MountTree, ctx: DumpContext) -> DriverState | None:
        sb = superblock(mount, ctx)
        # A branch link (map_files) is routed by its path, which lands on whatever the
        # container has mounted there: usually the AUFS root itself, but a volume at /var
        # would take /var/lib/docker/aufs/diff/... away from us. Claim such mounts.
        claimed = ctx.stash.setdefault(CLAIMED, {})
        for branch in sb.branches:
            try:
                under = tree.lookup(branch.path)
            except (MountNotFoundError, ValueError):
                continue
            if under.mnt_id == mount.mnt_id:
                continue
            sbs = claimed.setdefault((tree.ns_id, under.mnt_id), [])
            if sb not in sbs:
                sbs.append(sb)
                ctx.claim_files(under)
        return sb.state

    @hookimpl
    def fixup_fd_path(
        self, file: OpenFile, mount: Mount | None, ctx: DumpContext
    ) -> OpenFile | None:
        for index in _indexes(mount, ctx):
            fixed = fixups.fix_open_file(file, index, ctx)
            if fixed is not None:
                return fixed
        return None

    @hookimpl
    def fixup_vma(
        self, vma: FileMapping, mount: Mount | None, ctx: DumpContext
    ) -> FileMapping | None:
        for index in _indexes(mount, ctx):
            fixed = fixups.fix_mapping(vma, index, ctx)
            if fixed is not None:
                return fixed
        return None

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        return rebuild.plan(mount, state, ctx.proc_root)
