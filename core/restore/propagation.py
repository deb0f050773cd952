"""Propagation: the dumped peer groups, masters and unbindable mounts, rebuilt in new groups.

Run last, from inside the restored namespace (after pivot_root: the root must not be shared
while it is pivoted), when every mount exists, so nothing the restore mounts propagates
anywhere. Dumped group ids mean nothing here; each dumped group becomes a new group:

* the group's representative (the member whose root contains the others' roots, since
  MOVE_MOUNT_SET_GROUP only copies from a wider root) is made shared, after it was joined to
  its master's group and made a slave if the group was a slave of another;
* every other member joins the representative with MOVE_MOUNT_SET_GROUP, which copies both
  the peer group and the master;
* a slave that is not shared joins a member of its master's group, then becomes MS_SLAVE;
* unbindable mounts get MS_UNBINDABLE.

A master group that is in no restored namespace (the dumped mount was a slave of a mount
elsewhere) cannot be rebuilt from the images: ``outside(m)`` gives a host mount to be a slave
of instead, or None to leave it private (the choice is made before the restore; see
:mod:`.outside`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..errors import RestoreError
from ..kernel import MS_SHARED, MS_SLAVE, MS_UNBINDABLE
from ..kernel.mountops import MountOps
from ..model import Mount

log = logging.getLogger("criu_fw.restore")


def _within(root: str, top: str) -> bool:
    return top == "/" or root == top or root.startswith(top.rstrip("/") + "/")


def needs_propagation(m: Mount) -> bool:
    return not m.propagation.private


def apply_propagation(
    mounts: Sequence[Mount],
    handle: Callable[[Mount], int],
    ops: MountOps,
    enter: Callable[[Mount], None] | None = None,
    outside: Callable[[Mount], int | None] | None = None,
) -> None:
    """Set the propagation of ``mounts`` (parents-first order) through ``ops``.

    ``mounts`` may come from several namespaces (dumped group ids are the kernel's, global):
    ``enter(m)`` is called before a mount's own propagation is changed, because
    mount_setattr only changes mounts of the caller's namespace; joining a group
    (MOVE_MOUNT_SET_GROUP) works across namespaces."""

    def set_propagation(m: Mount, flag: int) -> None:
        if enter is not None:
            enter(m)
        ops.set_propagation(handle(m), flag)
    groups: dict[int, list[Mount]] = {}
    for m in mounts:
        if m.propagation.shared is not None:
            groups.setdefault(m.propagation.shared, []).append(m)
    members: dict[int, list[Mount]] = {}  # group -> members already in the new group
    visiting: set[int] = set()

    def join(src_group: int, m: Mount) -> None:
        """Join ``m`` to the new group of dumped group ``src_group`` (and its master)."""
        for src in members[src_group]:
            if src.dev == m.dev and _within(m.root, src.root):
                ops.set_group(handle(src), handle(m))
                return
        raise RestoreError(
            f"{m.describe()}: no mount of its peer group {src_group} has a root containing "
            f"{m.root!r}, so it cannot be joined to the group"
        )

    def slave_of(master: int | None, m: Mount) -> None:
        if master is None:
            return
        if master not in groups:
            host = outside(m) if outside is not None else None
            if host is None:
                log.info("%s: its master group %d is outside the images; restored private",
                         m.describe(), master)
                return
            # Joins the host mount's group (and master), then becomes a slave of that group.
            ops.set_group(host, handle(m))
            set_propagation(m, MS_SLAVE)
            return
        build(master)
        join(master, m)
        set_propagation(m, MS_SLAVE)

    def build(gid: int) -> None:
        if gid in members:
            return
        if gid in visiting:
            raise RestoreError(f"peer group {gid} is its own master (corrupt images)")
        visiting.add(gid)
        group = sorted(groups[gid], key=lambda x: len(x.root.rstrip("/")))
        rep = group[0]
        slave_of(rep.propagation.master, rep)
        set_propagation(rep, MS_SHARED)
        members[gid] = [rep]
        for m in group[1:]:
            join(gid, m)
            members[gid].append(m)
        visiting.discard(gid)

    for gid in groups:
        build(gid)
    for m in mounts:
        p = m.propagation
        if p.shared is None and p.master is not None:
            slave_of(p.master, m)
        if p.unbindable:
            set_propagation(m, MS_UNBINDABLE)
