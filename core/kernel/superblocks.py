"""Filesystems whose superblock is not made per mount: what they are keyed to.

Most filesystem types give a new superblock for every fsopen + create (tmpfs, proc since 5.8,
overlay, devpts). These do not: the kernel keeps one superblock per *key* and hands the
existing one back, so a restore that changed it (reconfigured it read-only, passed options)
would change it for everyone who uses it, this machine's own ``/sys`` included:

=============  ========================================================================
``sysfs``      one per network namespace (so are ``nfsd`` and ``rpc_pipefs``)
``mqueue``     one per IPC namespace (made with the namespace itself)
``cgroup``     one per hierarchy (set of controllers), for the whole machine
``cgroup2``    one for the whole machine (a cgroup namespace only changes the root shown)
others here    one for the whole kernel (``devtmpfs`` even bypasses the kernel's check)
=============  ========================================================================

Block-device filesystems are keyed by their device (the same ext4 mounted twice is one
superblock); no list can name them, the mount layer (:mod:`criu_fw.kernel.mountops`) finds them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from .. import fstypes as _fstypes

# The facts per fstype live in the one table (criu_fw.fstypes); these are its views.
KEYED = _fstypes.KEYED
SINGLETONS = _fstypes.SINGLETONS
NAMED_BY_OPTIONS = _fstypes.NAMED_BY_OPTIONS

#: Namespace kinds a restore can be given (``restore(netns=..., ipcns=...)``).
NAMESPACE_NAMES: Final[Mapping[str, str]] = {"net": "network", "ipc": "IPC"}

#: What a namespace kind's option is called on the command line.
OPTION: Final[Mapping[str, str]] = {"net": "--netns", "ipc": "--ipcns"}


def keyed_to(fstype: str) -> str | None:
    """``net``, ``ipc``, ``cgroup``, ``kernel``, or None for a type not in :data:`KEYED`."""
    return KEYED.get(fstype)


def fresh_types(fresh: Iterable[str]) -> frozenset[str]:
    """The keyed fstypes whose superblock a restore into new namespaces of kinds ``fresh``
    owns: there the namespace (made by the restore) is the key."""
    kinds = set(fresh)
    return frozenset(t for t, k in KEYED.items() if k in kinds)


def predicted_shared(namespaces: Mapping[str, str]) -> frozenset[str]:
    """The keyed fstypes a restore into ``namespaces`` (kind -> ``new`` or a path) will get
    as an existing superblock (a dry run's guess: a given namespace may not have one yet)."""
    fresh = fresh_types(k for k, v in namespaces.items() if v == "new")
    return frozenset(KEYED) - fresh


def sharing(fstype: str, namespaces: Mapping[str, str]) -> tuple[str, str]:
    """Whose superblock an existing ``fstype`` superblock is, and what would rebuild it, for
    messages: (``"this machine's network namespace"``, ``"restore with --netns new to
    rebuild it"``); the second part is empty where nothing can."""
    kind = KEYED.get(fstype)
    if kind in NAMESPACE_NAMES:
        assert kind is not None
        name = NAMESPACE_NAMES[kind]
        given = namespaces.get(kind)
        whose = f"this machine's {name} namespace" if given is None else (
            f"the new {name} namespace" if given == "new" else f"the {name} namespace {given}"
        )
        hint = "" if given == "new" else f"restore with {OPTION[kind]} new to rebuild it"
        return whose, hint
    if kind == "cgroup":
        return "this machine's cgroup hierarchy (one for the whole machine)", ""
    if kind == "kernel":
        return f"this machine (the kernel has one {fstype})", ""
    return "this machine (the kernel handed back a filesystem already mounted here)", ""
