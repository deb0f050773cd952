"""Which drivers see which mount, file and mapping, called once each through indexes.

The owner of an fstype is looked up once per fstype; the calls go through the manager's
typed hooks (:mod:`criu_fw.api.hooks`), which skip drivers that do not implement them. A file
is routed by its kernel mount id through the namespace's id index (``MountTree.find``), else by
its path (``MountTree.lookup``, proportional to the path's depth): never a scan of all mounts.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

import attrs

from ..api.hooks import in_context
from ..api.loader import DriverManager
from ..context import DumpContext
from ..errors import DriverError, DumpError, MountNotFoundError
from ..files import FileMapping, OpenFile
from ..model import Mount, MountTree

log = logging.getLogger("criu_fw.dump")

F = TypeVar("F", OpenFile, FileMapping)


class Router:
    def __init__(self, mgr: DriverManager, ctx: DumpContext) -> None:
        self.mgr = mgr
        self.hooks = mgr.hooks
        self.ctx = ctx
        self._owner: dict[str, str] = {}

    def owner(self, fstype: str) -> str:
        name = self._owner.get(fstype)
        if name is None:
            name = self._owner[fstype] = self.mgr.owner(fstype)
        return name

    # -- files and mappings ----------------------------------------------------------------

    def _reachable(self, item: OpenFile | FileMapping) -> bool:
        """Whether the item's path, in its process's root, is the item's own file (by
        device and inode); on a recorded /proc, the filesystem's match has to do."""
        if self.ctx.recorded or getattr(item, "deleted", False) or item.identity is None:
            return True
        try:
            st = os.stat(f"{self.ctx.proc_root}/{item.pid}/root{item.path}")
        except OSError:
            return False
        return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) == (
            item.identity.dev.major, item.identity.dev.minor, item.identity.ino
        )

    def _fix(self, driver: str, item: F, mount: Mount | None) -> F | None:
        got: OpenFile | FileMapping | None = (
            self.hooks.fixup_fd_path(driver, item, mount, self.ctx)
            if isinstance(item, OpenFile)
            else self.hooks.fixup_vma(driver, item, mount, self.ctx)
        )
        # The hooks return what they were given, checked by kind (criu_fw.api.hooks).
        return got if got is None or isinstance(got, type(item)) else None

    def mount_of(self, tree: MountTree, mnt_id: int | None, path: str) -> Mount | None:
        if mnt_id is not None:
            m = tree.find(mnt_id)
            if m is not None:
                return m
        try:
            return tree.lookup(path)
        except (MountNotFoundError, ValueError):
            return None

    def fixup(self, hook: str, item: F, tree: MountTree) -> tuple[F, Mount | None]:
        """The item after its drivers' corrections, and the mount its final mnt_id names.

        Called on the owner of the item's mount and on drivers that claimed the kernel's
        mount id; two drivers that both correct the same item is an error naming both.
        """
        mount = self.mount_of(tree, item.mnt_id, item.path)
        names: list[str] = []
        if mount is not None:
            names.append(self.owner(mount.fstype))
        # Claims are on the kernel's mount id and on the mount the core found: a record
        # without a usable id (a map_files link, a host mount id the namespace lacks) is
        # claimed through the mount its path lands on.
        found = mount.mnt_id if mount is not None else None
        for claimed in dict.fromkeys(i for i in (item.mnt_id, found) if i is not None):
            for extra in self.ctx.claimants(tree.ns_id, claimed):
                if extra not in names:
                    names.append(extra)
        fixed: F | None = None
        by: str | None = None
        for name in names:
            try:
                res = self._fix(name, item, mount)
            except DriverError as err:
                raise in_context(err, hook, describe(item), item.path) from err.__cause__
            if res is None:
                continue
            if fixed is not None and res != fixed:
                raise DumpError(
                    f"drivers {by!r} and {name!r} both correct {describe(item)}; "
                    "block one of them with --block-driver"
                )
            fixed, by = res, name
        if fixed is None:
            if item.mnt_id is not None and mount is not None and mount.mnt_id != item.mnt_id:
                # Opened before the namespace was copied (an inherited /dev/null): the mount
                # its path lands on is right if it is the same filesystem and the path there
                # leads to this very file (a host log file passed in as stdout does not).
                if item.identity is not None and item.identity.dev == mount.dev and (
                    self._reachable(item)
                ):
                    return item, mount
                log.warning(
                    "%s: on mount %d, which is not in mount namespace %d, and not reachable at "
                    "that path there; recorded without a mount (mnt_id -1): a restore must be "
                    "given this file (CRIU's --inherit-fd)", describe(item), item.mnt_id,
                    tree.ns_id,
                )
                return item, None
            return item, mount
        final = tree.find(fixed.mnt_id) if fixed.mnt_id is not None else None
        return fixed, final


def describe(item: OpenFile | FileMapping) -> str:
    if isinstance(item, OpenFile):
        what = {-1: "cwd", -2: "root", -3: "exe"}.get(item.fd, f"fd {item.fd}")
        return f"process {item.pid} {what} {item.path!r}"
    return f"process {item.pid} mapping {item.start:x}-{item.end:x} {item.path!r}"


def evolve_mnt(item: F, mnt_id: int | None) -> F:
    return attrs.evolve(item, mnt_id=mnt_id)
