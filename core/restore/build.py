"""Building every dumped namespace of one restore, in one process, one namespace at a time.

The restoring process moves between namespaces (a :class:`Namespaces` does the moving; see
:class:`criu_fw.restore.child.KernelNamespaces`): for each dumped namespace, root first, it
enters a fresh private namespace, runs that namespace's steps under a directory of its own and
makes the result the namespace's root. Because one process builds them all, it holds every
handle at once:

* a superblock made for one namespace is cut into the mounts of the next (a detached mount
  can be cloned and attached in another namespace), so two namespaces that shared a tmpfs
  share the restored one;
* peer groups that spanned namespaces are rebuilt across them (MOVE_MOUNT_SET_GROUP works
  between mounts of two namespaces; mount_setattr only in the mount's own, so the process
  enters it first).

Only when every tree exists are the finishing touches applied, in every namespace: flags of
mounts with children, propagation (nothing mounted afterwards can propagate anywhere), and
superblocks asked for read-only (mountpoints of every namespace had to be made in them first),
those the restore created only (:meth:`criu_fw.kernel.mountops.MountOps.owns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from ..api.loader import DriverManager
from ..context import RestoreContext
from ..errors import CriuFwError, RestoreError
from ..kernel.mountops import MountOps
from ..model import Mount
from .executor import Executor, Superblocks
from .order import Step
from .plans import NamespacePlan
from .propagation import apply_propagation, needs_propagation


class Namespaces(Protocol):
    """Where each namespace is built (the kernel one moves the process; a dry run does not)."""

    def begin(self, ns_id: int) -> str:
        """Enter a fresh, private namespace for ``ns_id``; the directory to build its root at."""
        ...

    def seal(self, ns_id: int, root_path: str) -> None:
        """Make the tree built at ``root_path`` the namespace's root."""
        ...

    def enter(self, ns_id: int) -> None:
        """Enter the (already built) namespace ``ns_id``."""
        ...


class SameNamespace:
    """A dry run: nothing moves, every root is ``/``."""

    def begin(self, ns_id: int) -> str:
        return "/"

    def seal(self, ns_id: int, root_path: str) -> None:
        return None

    def enter(self, ns_id: int) -> None:
        return None


def build_all(
    plans: Sequence[tuple[NamespacePlan, Sequence[Step]]],
    ops: MountOps,
    mgr: DriverManager,
    ctx: RestoreContext,
    spaces: Namespaces,
    *,
    chroot: bool,
    outside: Mapping[tuple[int, int], int] | None = None,
) -> None:
    """Build every namespace (``plans``: root first) and finish them; ends in the root one.

    ``chroot``: pass each namespace's root directory to drivers' superblocks as their root
    (directories given by descriptor are then recorded as the namespace will see them).
    ``outside``: (namespace, mount id) -> a host mount's descriptor, for mounts that are to be
    slaves of a host mount (:mod:`.outside`)."""
    pool = Superblocks([p for p, _ in plans])
    executors: list[Executor] = []
    for plan, steps in plans:
        root_path = spaces.begin(plan.ns_id)
        ex = Executor(
            plan, ops, mgr, attrs.evolve(ctx, tree=plan.tree, ops=ops), root_path=root_path,
            chroot=root_path if chroot else None, pool=pool,
        )
        executors.append(ex)
        ex.run(steps)
        spaces.seal(plan.ns_id, root_path)
    for ex in executors:
        spaces.enter(ex.plan.ns_id)
        ex.finish_attrs()
    _propagation(executors, ops, spaces, outside or {})
    for ex in executors:
        ex.readonly_superblocks()
    for ex in executors:
        ex.close()
    pool.close(ops)
    spaces.enter(plans[0][0].ns_id)


def _propagation(
    executors: Sequence[Executor], ops: MountOps, spaces: Namespaces,
    outside: Mapping[tuple[int, int], int],
) -> None:
    owner: dict[int, Executor] = {}
    mounts: list[Mount] = []
    for ex in executors:
        for m in ex.plan.mounts:
            if needs_propagation(m):
                owner[id(m)] = ex
                mounts.append(m)

    def enter(m: Mount) -> None:
        spaces.enter(owner[id(m)].plan.ns_id)

    try:
        apply_propagation(
            mounts, lambda m: owner[id(m)].mount_handle(m), ops, enter,
            lambda m: outside.get((owner[id(m)].plan.ns_id, m.mnt_id)),
        )
    except RestoreError:
        raise
    except (CriuFwError, OSError) as exc:
        which = ", ".join(str(ex.plan.ns_id) for ex in executors)
        raise RestoreError(f"mount namespace {which}: propagation: {exc}") from exc
