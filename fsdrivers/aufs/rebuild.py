"""Restoring an AUFS mount: one request with the ``br:`` option.

The request is the mount(2) data ``br:<path0>=<perm0>:<path1>=<perm1>...`` in branch order
(br0, the top, first), followed by the superblock options mountinfo showed (``dio``,
``dirperm1``, ``xino=``), minus ``si=`` (assigned by the kernel) and ``rw``/``ro`` (flags, not
options). Older AUFS only parses mount(2) data, hence ``legacy_data``. The same options are
also given as ``params`` (``("br", "<path0>=<perm0>:...")``): fsopen("aufs") succeeds on any
kernel that has aufs (through the kernel's legacy adapter, or aufs >= 5.x's own fs_context,
whose ``br`` parameter takes the same list), and a superblock created that way with no
parameters would have no branches.

Before planning, the running kernel is checked for aufs in ``/proc/filesystems``: without it
the restore fails with that reason, before anything is mounted.
"""

from __future__ import annotations

import os

from criu_fw.driver import Mount, NewSuperblock, RestoreError

from .branches import PERMISSION, Branch
from .state import AufsState

#: Separators of the mount data: ',' between options, ':' between branches, '=' before the
#: permission. A branch path containing one cannot be passed to AUFS at all.
_UNSAYABLE = (",", ":", "=")
_NOT_CARRIED = ("si=", "br:", "br=")


def filesystems(proc_root: str = "/proc") -> frozenset[str]:
    """The filesystem types the running kernel knows (``/proc/filesystems``)."""
    path = os.path.join(proc_root, "filesystems")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RestoreError(f"cannot read {path}: {exc.strerror}") from exc
    names = (line.rsplit(b"\t", 1)[-1].strip() for line in data.splitlines())
    return frozenset(n.decode("ascii", "replace") for n in names if n)


def require_aufs(proc_root: str = "/proc") -> None:
    if "aufs" not in filesystems(proc_root):
        # No mount in the message: the restore engine prefixes every rebuild error with it.
        raise RestoreError(
            f"this kernel has no aufs (not in {os.path.join(proc_root, 'filesystems')}); "
            f"nothing was mounted"
        )


def _branch_option(b: Branch, i: int) -> str:
    for ch in _UNSAYABLE:
        if ch in b.path:
            raise RestoreError(
                f"AUFS branch br{i} {b.path!r} contains {ch!r}, which AUFS's "
                f"br: mount option cannot express"
            )
    if not b.path.startswith("/") or PERMISSION.fullmatch(b.perm) is None:
        raise RestoreError(
            f"AUFS branch br{i} {b.path!r}={b.perm!r} in the images is malformed"
        )
    return f"{b.path}={b.perm}"


def mount_params(mount: Mount, state: AufsState) -> tuple[tuple[str, str | None], ...]:
    """The options that recreate ``state``'s branches, as (key, value) pairs (None: a flag)."""
    if not state.branches:
        raise RestoreError("the images list no AUFS branches")
    branches = ":".join(_branch_option(b, i) for i, b in enumerate(state.branches))
    out: list[tuple[str, str | None]] = [("br", branches)]
    for opt in mount.super_options:
        if opt in ("rw", "ro") or opt.startswith(_NOT_CARRIED):
            continue
        key, sep, value = opt.partition("=")
        out.append((key, value if sep else None))
    return tuple(out)


def mount_data(mount: Mount, state: AufsState) -> str:
    """The mount(2) data string: ``br:<branches>`` then the other options."""
    params = mount_params(mount, state)
    rest = [k if v is None else f"{k}={v}" for k, v in params[1:]]
    return ",".join([f"br:{params[0][1]}", *rest])


def plan(mount: Mount, state: object, proc_root: str = "/proc") -> NewSuperblock:
    """``rebuild_mount`` for an AUFS mount (raises before anything could be mounted)."""
    if not isinstance(state, AufsState):
        raise RestoreError(
            f"the images hold no AUFS branch list for this mount "
            f"(found {type(state).__name__})"
        )
    params = mount_params(mount, state)
    data = mount_data(mount, state)
    require_aufs(proc_root)
    return NewSuperblock("aufs", mount.source, params=params, legacy_data=data)
