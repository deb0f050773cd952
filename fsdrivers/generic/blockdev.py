"""Filesystems on block devices: recorded by device and identity, mounted again only from a
device the operator names.

A dumped mount's source (``/dev/loop3``) is a path in the dumped namespace's /dev; resolved in
the restorer's it can name any device, the host's root disk included. So the dump records
the device number and the filesystem's identity (statfs ``f_fsid``, which ext4, xfs and btrfs
derive from the filesystem's UUID), and a restore mounts it only with
``--external dev[MAJ:MIN]:DEVICE``: the core checks the grant (:mod:`criu_fw.restore.plans`)
and, after the superblock exists, that it is the same filesystem.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Self

import attrs
from criu_fw.driver import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    DriverState,
    DumpContext,
    Mount,
    NewSuperblock,
    RestoreContext,
    openat2,
)
from criu_fw.proto import generic_pb2
from google.protobuf.message import Message

log = logging.getLogger("criu_fw.generic")


@attrs.frozen
class BlockDevState(DriverState):
    """The device a filesystem was on and its identity."""

    MESSAGE: ClassVar[type[Message]] = generic_pb2.blockdev_state

    major: int
    minor: int
    source: str
    fsid: int | None = None

    @property
    def device(self) -> str:
        return f"{self.major}:{self.minor}"

    def to_message(self) -> generic_pb2.blockdev_state:
        msg = generic_pb2.blockdev_state(
            major=self.major, minor=self.minor, source=os.fsencode(self.source)
        )
        if self.fsid is not None:
            msg.fsid = self.fsid
        return msg

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(
            int(message.major), int(message.minor), os.fsdecode(message.source),
            int(message.fsid) if message.HasField("fsid") else None,
        )


def record(mount: Mount, ctx: DumpContext, ns_id: int) -> BlockDevState:
    """The state of a block-device filesystem mounted at ``mount`` (dump side)."""
    state = BlockDevState(mount.dev.major, mount.dev.minor, mount.source, _fsid(mount, ctx, ns_id))
    # INFO, not WARNING: nearly every dump holds one (a container's bind mounts from the host's
    # disk), and the restore's refusal already names the grant it needs.
    log.info(
        "%s: a filesystem on block device %s; a restore mounts it again only from a device "
        "the operator names: --external dev[%s]:DEVICE",
        mount.describe(), state.device, state.device,
    )
    return state


def _fsid(mount: Mount, ctx: DumpContext, ns_id: int) -> int | None:
    pid = ctx.ns_pids.get(ns_id)
    if ctx.recorded or pid is None:
        return None
    try:
        root = os.open(f"{ctx.proc_root}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # Inside the dumped namespace's root, through no link: the container's own files
        # must not point the dumper at another filesystem.
        fd = openat2(
            root, mount.mountpoint.lstrip("/") or ".", os.O_PATH,
            RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        )
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        st = os.fstat(fd)
        if (os.major(st.st_dev), os.minor(st.st_dev)) != (mount.dev.major, mount.dev.minor):
            return None  # covered or moved since the table was read
        return int(os.fstatvfs(fd).f_fsid)
    finally:
        os.close(fd)


def rebuild(mount: Mount, state: BlockDevState, plan: NewSuperblock,
            ctx: RestoreContext) -> NewSuperblock:
    """The plan with the operator's device as its source (restore side). Without a grant the
    dumped source stays, and the core refuses it naming the option (unless the mount is not
    rebuilt at all: a root taken from ``--root``)."""
    device = ctx.devices.get(state.device)
    if device is None:
        return plan
    return attrs.evolve(plan, source=device, fsid=state.fsid)
