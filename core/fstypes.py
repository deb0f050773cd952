"""What criu-fw knows about each filesystem type, in one table (CRIU keeps one record per
filesystem too: ``struct fstype`` in criu/filesystems.c).

Every per-fstype fact the core and the built-in drivers use is a column here; the sets the
modules test membership in (:data:`KEYED`, :data:`KERNEL_INSTANCE`...) are derived from the
table, so adding a filesystem is one row. A type that is not in the table is a disk-backed
or otherwise ordinary filesystem: no CRIU enum (CRIU's AUTO), not keyed, its content on its
device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from .proto import mnt_pb2


@attrs.frozen
class FsType:
    """One filesystem type."""

    name: str
    #: CRIU's ``fstype`` enum value in ``mnt_entry`` (None: one CRIU has no code for).
    criu: int | None = None
    #: What its superblocks are keyed to: ``net`` or ``ipc`` (a namespace a restore can be
    #: given or make anew), ``cgroup`` or ``kernel`` (one for the machine); None: a new
    #: superblock per mount request.
    keyed: str | None = None
    #: The kernel's content (proc, sysfs...): a restore makes a new instance from the
    #: parameters; nothing of it is saved.
    kernel: bool = False
    #: Its content lives only in memory: the dump saves it (tmpfs).
    in_memory: bool = False
    #: Its whole state is its parameters (plus saved content): a root mount of it is rebuilt
    #: without ``--root``.
    virtual: bool = False
    #: Every mount is the kernel's one instance although FSCONFIG_CMD_CREATE_EXCL reports a
    #: new superblock (devtmpfs hands back its internal mount without asking sget; measured
    #: on 6.18: "new", with the device of the machine's /dev).
    singleton: bool = False
    #: A keyed type whose parameters say *which* existing superblock is meant (a cgroup v1
    #: hierarchy is named by its controllers and ``name=``, and ignores other options when it
    #: exists). No other keyed type gets a parameter with a superblock it hands back: some
    #: apply them to it (cgroup2 its ``nsdelegate``, tracefs and debugfs their mode).
    named_by_options: bool = False
    #: Superblock options that describe the state of a directory, not the mount (overlay
    #: shows ``uuid=on`` only on the first mount of a fresh upper directory): left out when
    #: a restored mount is compared with the dumped one.
    volatile_options: frozenset[str] = frozenset()


def _t(name: str, criu: int | None = None, **kw: object) -> tuple[str, FsType]:
    return name, FsType(name, criu, **kw)  # type: ignore[arg-type]


#: The table, by the name the kernel shows in mountinfo.
FSTYPES: Final[Mapping[str, FsType]] = dict([
    _t("proc", mnt_pb2.PROC, kernel=True, virtual=True),
    _t("sysfs", mnt_pb2.SYSFS, keyed="net", kernel=True, virtual=True),
    _t("devtmpfs", mnt_pb2.DEVTMPFS, keyed="kernel", kernel=True, virtual=True,
       singleton=True),
    _t("binfmt_misc", mnt_pb2.BINFMT_MISC, keyed="kernel", kernel=True),
    _t("tmpfs", mnt_pb2.TMPFS, in_memory=True, virtual=True),
    _t("ramfs", virtual=True),
    _t("devpts", mnt_pb2.DEVPTS, kernel=True, virtual=True),
    _t("simfs", mnt_pb2.SIMFS),
    _t("pstore", mnt_pb2.PSTORE, keyed="kernel", kernel=True),
    _t("securityfs", mnt_pb2.SECURITYFS, keyed="kernel", kernel=True),
    _t("fusectl", mnt_pb2.FUSECTL, keyed="kernel", kernel=True),
    _t("debugfs", mnt_pb2.DEBUGFS, keyed="kernel", kernel=True),
    _t("cgroup", mnt_pb2.CGROUP, keyed="cgroup", kernel=True, virtual=True,
       named_by_options=True),
    _t("cgroup2", mnt_pb2.CGROUP2, keyed="cgroup", kernel=True, virtual=True),
    _t("aufs", mnt_pb2.AUFS),
    _t("mqueue", mnt_pb2.MQUEUE, keyed="ipc", kernel=True, virtual=True),
    _t("fuse", mnt_pb2.FUSE),
    _t("overlay", mnt_pb2.OVERLAYFS, volatile_options=frozenset({"uuid"})),
    _t("autofs", mnt_pb2.AUTOFS),
    _t("tracefs", mnt_pb2.TRACEFS, keyed="kernel", kernel=True),
    _t("configfs", keyed="kernel", kernel=True),
    _t("efivarfs", keyed="kernel", kernel=True),
    _t("selinuxfs", keyed="kernel", kernel=True),
    _t("nfsd", keyed="net", kernel=True),
    _t("rpc_pipefs", keyed="net", kernel=True),
    _t("bpf", kernel=True),
    _t("hugetlbfs", kernel=True),
    _t("nsfs", kernel=True),
])  # fmt: skip


def fstype(name: str) -> FsType:
    """The row of ``name`` (a plain row for a type not in the table)."""
    got = FSTYPES.get(name)
    return got if got is not None else FsType(name)


def _where(**wanted: object) -> frozenset[str]:
    return frozenset(
        n for n, t in FSTYPES.items() if all(getattr(t, k) == v for k, v in wanted.items())
    )


#: fstype -> what its superblocks are keyed to (see :attr:`FsType.keyed`).
KEYED: Final[Mapping[str, str]] = {n: t.keyed for n, t in FSTYPES.items() if t.keyed}
#: fstype -> CRIU's enum, for the types CRIU knows.
CRIU_FSTYPES: Final[Mapping[str, int]] = {
    n: t.criu for n, t in FSTYPES.items() if t.criu is not None
}
#: The fstype of a mount CRIU recorded as FSTYPE__UNSUPPORTED without a name (a filesystem it
#: has no code for, not enabled with --enable-fs: CRIU 4.2 dumps such a mount only as an
#: external one or a bind of one, an ext4 file a runtime binds in). Its name is CRIU's; the
#: real type is not in the images, and verify does not compare it.
UNNAMED: Final = "unsupported"
KERNEL_INSTANCE: Final = _where(kernel=True)
IN_MEMORY: Final = _where(in_memory=True)
VIRTUAL: Final = _where(virtual=True)
SINGLETONS: Final = _where(singleton=True)
NAMED_BY_OPTIONS: Final = _where(named_by_options=True)
