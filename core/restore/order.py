"""The order of the work: a topological sort of small steps, with the tree split for overmounts.

Three kinds of step: ``SB`` creates a superblock (and puts its content back), ``CREATE`` makes
a mount's detached copy, ``ATTACH`` attaches it to its parent. Every mount is attached relative
to its parent's own mount (never through a path from the root), so a mount can be built while
its parent is still detached: a mount that covers others (:meth:`MountTree.overmounts`) is
built with its whole subtree on the side and attached only after everything it covers exists,
which is how files hidden under overmounts come back.

Dependencies: a mount's parent; the superblock it is cloned from; the mount a driver said it is
bound from; the mounts a superblock's parameters name (an overlay's layers, which must be
placed in the final tree so the kernel records their in-namespace paths); and, for a covering
mount, every mount of the subtrees it covers. Among the steps that are ready, the kernel's
order wins, so the result is deterministic. A cycle is reported with the mounts in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..errors import MountNotFoundError, RestoreError
from ..model import Mount, MountTree
from ..plan import PathRef
from .plans import NamespacePlan, _join

SB, CREATE, ATTACH = 0, 1, 2
KIND_NAMES = ("create superblock of", "create", "attach")


class Step(NamedTuple):
    """One step; a plain tuple, because the sort hashes hundreds of thousands of them."""

    kind: int
    key: int  # superblock key for SB, dumped mount id otherwise


def _subtree(tree: MountTree, mount: Mount) -> Iterable[Mount]:
    stack = [mount]
    while stack:
        m = stack.pop()
        yield m
        stack.extend(tree.children(m))


def order_steps(plan: NamespacePlan) -> list[Step]:
    """Every step of one namespace's restore, dependencies first.

    Linear in the number of steps: the steps are visited in the kernel's order (which is also
    the order of the mounts' ranks, so no sort is needed) and each one is emitted after its
    dependencies, found by an iterative depth-first walk. A heap of ready steps gave the same
    guarantees but cost O(n log n) plus a hash of every step per edge, which at 10,000 mounts
    was a fifth of the restore's own work. Inside, a step is the int ``key << 2 | kind``:
    making a named tuple per edge was two thirds of the ordering's time.
    """
    tree = plan.tree
    rank = {m.mnt_id: i for i, m in enumerate(plan.mounts)}
    deps: dict[int, list[int]] = {}

    def need(step: int, dep: int) -> None:
        lst = deps.get(step)
        if lst is None:
            deps[step] = [dep]
        else:
            lst.append(dep)

    def placed(mnt_id: int, who: Mount) -> Iterable[int]:
        """The steps after which mount ``mnt_id`` is in the final tree under the root."""
        m = tree.find(mnt_id)
        if m is None or mnt_id not in rank:
            raise MountNotFoundError(
                f"{who.describe()}: needs mount {mnt_id}, which is not in the images of mount "
                f"namespace {tree.ns_id}"
            )
        cur: Mount | None = m
        while cur is not None:
            yield cur.mnt_id << 2 | ATTACH
            cur = None if cur is plan.root else tree.parent(cur)

    sb_of_first: dict[int, list[int]] = {}
    for sbk, sb in plan.superblocks.items():
        sb_of_first.setdefault(sb.mount.mnt_id, []).append(sbk)
        step = sbk << 2 | SB
        for dep in sb.plan.dependencies():
            for d in placed(dep, sb.mount):
                need(step, d)
        for _, value in sb.plan.params:
            if isinstance(value, PathRef) and value.mnt_id in rank:
                # The directory is opened through its mount's own root: a mount attached on
                # the way to it (a tmpfs mounted over a layer after the overlay was made)
                # must come afterwards, or the walk would open the cover instead.
                ref = tree.get(value.mnt_id)
                target = _join(ref.mountpoint, value.path)
                for kid in tree.children(ref):
                    if target == kid.mountpoint or target.startswith(
                        kid.mountpoint.rstrip("/") + "/"
                    ):
                        need(kid.mnt_id << 2 | ATTACH, step)
    jobs = plan.jobs
    root = plan.root
    superblocks = plan.superblocks
    for m in plan.mounts:
        job = jobs[m.mnt_id]
        create, attach = m.mnt_id << 2 | CREATE, m.mnt_id << 2 | ATTACH
        if job.sb is not None and job.sb in superblocks:
            # (A superblock of an earlier namespace exists before this namespace starts.)
            need(create, job.sb << 2 | SB)
        if job.bind_of is not None:
            need(create, job.bind_of << 2 | CREATE)
        if job.deleted is not None and job.deleted.like_mountpoint and m is not root:
            # Made again as its mountpoint is, looked up in the parent's own copy.
            need(create, m.parent_id << 2 | CREATE)
        need(attach, create)
        if m is not root:
            need(attach, m.parent_id << 2 | CREATE)
    for cover_id, covered in tree.overmounts().items():
        if cover_id not in rank:
            continue
        cover = tree.get(cover_id)
        own = {x.mnt_id for x in _subtree(tree, cover)}
        for hidden in covered:
            for x in _subtree(tree, hidden):
                if x.mnt_id not in own and x.mnt_id in rank:
                    need(cover_id << 2 | ATTACH, x.mnt_id << 2 | ATTACH)

    every: list[int] = []
    for m in plan.mounts:
        every.extend(k << 2 | SB for k in sb_of_first.get(m.mnt_id, ()))
        every.append(m.mnt_id << 2 | CREATE)
        every.append(m.mnt_id << 2 | ATTACH)
    new = tuple.__new__
    return [new(Step, (n & 3, n >> 2)) for n in _toposort(every, deps, plan, tree)]


_DONE, _ACTIVE = 1, 2


def _toposort(
    every: list[int], deps: dict[int, list[int]], plan: NamespacePlan, tree: MountTree
) -> list[int]:
    state: dict[int, int] = {}
    out: list[int] = []
    for start in every:
        if start in state:
            continue
        # Iterative DFS: (step, index of the next dependency to look at).
        stack: list[tuple[int, int]] = [(start, 0)]
        state[start] = _ACTIVE
        while stack:
            step, i = stack[-1]
            ds = deps.get(step, ())
            while i < len(ds):
                d = ds[i]
                i += 1
                st = state.get(d)
                if st is None:
                    stack[-1] = (step, i)
                    state[d] = _ACTIVE
                    stack.append((d, 0))
                    break
                if st == _ACTIVE:
                    loop = [s for s, _ in stack[[s for s, _ in stack].index(d):]]
                    raise RestoreError(_describe_cycle(loop, plan, tree))
            else:
                stack.pop()
                state[step] = _DONE
                out.append(step)
    return out


def _describe_cycle(loop: list[int], plan: NamespacePlan, tree: MountTree) -> str:
    def name(node: int) -> str:
        kind, key = node & 3, node >> 2
        m = plan.superblocks[key].mount if kind == SB else tree.get(key)
        return f"{KIND_NAMES[kind]} {m.describe()}"

    names = [name(st) for st in loop]
    return "restore steps depend on each other in a cycle: " + " needs ".join(
        [*names, names[0]]
    )
