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

import heapq
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..errors import MountNotFoundError, RestoreError
from ..model import Mount, MountTree
from .plans import NamespacePlan

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
    """Every step of one namespace's restore, dependencies first."""
    tree = plan.tree
    rank = {m.mnt_id: i for i, m in enumerate(plan.mounts)}
    deps: dict[Step, set[Step]] = {}

    def need(step: Step, dep: Step) -> None:
        deps.setdefault(step, set()).add(dep)

    def placed(mnt_id: int, who: Mount) -> Iterable[Step]:
        """The steps after which mount ``mnt_id`` is in the final tree under the root."""
        m = tree.find(mnt_id)
        if m is None or mnt_id not in rank:
            raise MountNotFoundError(
                f"{who.describe()}: needs mount {mnt_id}, which is not in the images of mount "
                f"namespace {tree.ns_id}"
            )
        cur: Mount | None = m
        while cur is not None:
            yield Step(ATTACH, cur.mnt_id)
            cur = None if cur is plan.root else tree.parent(cur)

    for sbk, sb in plan.superblocks.items():
        step = Step(SB, sbk)
        deps.setdefault(step, set())
        for dep in sb.plan.dependencies():
            for d in placed(dep, sb.mount):
                need(step, d)
    for m in plan.mounts:
        job = plan.jobs[m.mnt_id]
        create, attach = Step(CREATE, m.mnt_id), Step(ATTACH, m.mnt_id)
        deps.setdefault(create, set())
        if job.sb is not None:
            need(create, Step(SB, job.sb))
        if job.bind_of is not None:
            need(create, Step(CREATE, job.bind_of))
        need(attach, create)
        if m is not plan.root:
            need(attach, Step(CREATE, m.parent_id))
    for cover_id, covered in tree.overmounts().items():
        if cover_id not in rank:
            continue
        cover = tree.get(cover_id)
        own = {x.mnt_id for x in _subtree(tree, cover)}
        for hidden in covered:
            for x in _subtree(tree, hidden):
                if x.mnt_id not in own and x.mnt_id in rank:
                    need(Step(ATTACH, cover_id), Step(ATTACH, x.mnt_id))

    def prio(step: Step) -> tuple[int, int]:
        if step.kind == SB:
            return (rank[plan.superblocks[step.key].mount.mnt_id], SB)
        return (rank[step.key], step.kind)

    return _toposort(deps, prio, plan, tree)


def _toposort(
    deps: dict[Step, set[Step]],
    key: Callable[[Step], tuple[int, int]],
    plan: NamespacePlan,
    tree: MountTree,
) -> list[Step]:
    waiting = {s: len(d) for s, d in deps.items()}
    users: dict[Step, list[Step]] = {}
    for s, ds in deps.items():
        for d in ds:
            if d not in deps:
                deps[d] = set()
                waiting[d] = 0
            users.setdefault(d, []).append(s)
    heap = [(key(s), s) for s, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    out: list[Step] = []
    while heap:
        _, s = heapq.heappop(heap)
        out.append(s)
        for u in users.get(s, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, (key(u), u))
    if len(out) != len(waiting):
        raise RestoreError(_describe_cycle(deps, waiting, plan, tree))
    return out


def _describe_cycle(
    deps: dict[Step, set[Step]], waiting: dict[Step, int], plan: NamespacePlan, tree: MountTree
) -> str:
    stuck = {s for s, n in waiting.items() if n > 0}
    # Walk dependencies inside the stuck set until a step repeats: that loop is the cycle.
    s = min(stuck)
    seen: list[Step] = []
    while s not in seen:
        seen.append(s)
        s = min(d for d in deps[s] if d in stuck)
    loop = seen[seen.index(s) :]

    def name(st: Step) -> str:
        m = plan.superblocks[st.key].mount if st.kind == SB else tree.get(st.key)
        return f"{KIND_NAMES[st.kind]} {m.describe()}"

    return "restore steps depend on each other in a cycle: " + " -> ".join(map(name, loop))
