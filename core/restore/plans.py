"""Asking the drivers how to rebuild every mount, before anything is mounted.

The outcome is, per dumped namespace, a :class:`NamespacePlan`: one :class:`SuperblockJob` per
superblock that must be created (with the owning driver's plan and the content image to put
back) and one :class:`MountJob` per mount saying where its mount comes from: a clone of a new
superblock's root at the mount's root, or a clone of a host path (``--root``, externals).
Every driver is asked here, so a driver that refuses fails the restore before the first mount
call; a bind chain that loops or names a mount that is not in the images fails here too.

Superblocks are keyed by the dumped device across *all* namespaces (:func:`plan_namespaces`):
a filesystem that two namespaces showed (a tmpfs mounted before ``unshare -m``) is created once,
by the first namespace that has it, and every later namespace's mounts of it are cut from that
same superblock, so a write in one restored namespace is seen in the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import attrs

from ..api.hooks import on_mount
from ..api.loader import DriverManager
from ..context import RestoreContext
from ..errors import CriuFwError, DriverError, MountNotFoundError, RestoreError
from ..fstypes import IN_MEMORY, VIRTUAL
from ..images import check as imagecheck
from ..kernel.mountops import host_join
from ..model import Dev, Mount, MountTree
from ..plan import BindExternal, BindFrom, ExternalRef, LoopFile, MountPlan, NewSuperblock, PathRef
from ..records import DeletedRoot, DumpedNamespace
from .grants import HostSource, check_there, granted_device, host_source

log = logging.getLogger("criu_fw.restore")

@attrs.frozen
class SuperblockJob:
    """Create one filesystem instance (once per dumped device)."""

    key: int
    mount: Mount  # the first mount of the superblock (names it in errors)
    driver: str
    plan: NewSuperblock
    content: str | None = None
    #: The plan asked for a read-only superblock: it is created writable so its content and
    #: mountpoints can be written, and reconfigured read-only at the end.
    readonly: bool = False


@attrs.frozen
class MountJob:
    """Where one mount comes from: ``path`` inside superblock ``sb``'s root, or, when ``sb``
    is None, the absolute host path ``path``. ``bind_of`` names the dumped mount a driver's
    BindFrom plan bound from (an ordering dependency)."""

    mount: Mount
    sb: int | None
    path: str
    bind_of: int | None = None
    #: With ``sb`` None: the host directory the operator gave (``--root``, ``--external``,
    #: ``--allow-host``) that ``path`` is resolved inside (:mod:`criu_fw.restore.grants`).
    base: str | None = None
    #: Whether ``path`` may run through ``base``'s own links (only under ``--allow-host``).
    follow: bool = False
    #: The mount's root was deleted: made again at ``path`` in ``sb`` for the bind.
    deleted: DeletedRoot | None = None

    @property
    def host_path(self) -> str:
        """The host path, for messages (``path`` below ``base``)."""
        return host_join(self.base, self.path) if self.base is not None else self.path

    def below(self, rel: str, mount: Mount) -> MountJob:
        """The same source, ``rel`` further down, for ``mount``."""
        if self.sb is not None:
            return MountJob(mount, self.sb, _join(self.path, rel))
        return MountJob(mount, None, _join(self.path, rel), base=self.base, follow=self.follow)


@attrs.frozen
class NamespacePlan:
    ns_id: int
    tree: MountTree
    root: Mount
    mounts: tuple[Mount, ...]  # parents first
    jobs: Mapping[int, MountJob]
    #: The superblocks this namespace creates; its jobs may also use superblocks created by
    #: an earlier namespace (keys are unique across one restore).
    superblocks: Mapping[int, SuperblockJob]


@attrs.define
class SharedDevices:
    """What earlier namespaces of one restore made of each dumped device."""

    #: device -> (namespace, its first mount there, that mount's resolved job).
    first: dict[Dev, tuple[int, Mount, MountJob]] = attrs.field(factory=dict)
    #: device -> content image, from every namespace.
    content: dict[Dev, str] = attrs.field(factory=dict)
    next_key: int = 1


def plan_namespaces(
    spaces: Sequence[DumpedNamespace], mgr: DriverManager, ctx: RestoreContext
) -> list[NamespacePlan]:
    """Plan every namespace (root first), sharing superblocks across them by device."""
    shared = SharedDevices()
    for ns in spaces:
        for rec in ns.records.values():
            if rec.content is not None:
                shared.content.setdefault(rec.mount.dev, rec.content)
    return [plan_namespace(ns, mgr, ctx, shared) for ns in spaces]


def default_superblock(mount: Mount) -> NewSuperblock:
    """The core's default: a new superblock of the mount's fstype from its source and its
    superblock options as they were shown (``rw`` is the default and is left out)."""
    params: list[tuple[str, str | None]] = []
    for opt in mount.super_options:
        if opt == "rw":
            continue
        key, sep, value = opt.partition("=")
        params.append((key, value if sep else None))
    return NewSuperblock(mount.fstype, mount.source, tuple(params))


def restorable_options() -> frozenset[str]:
    """The per-mount options a restore sets (mount_setattr flags) or that are defaults."""
    from .executor import FLAG_ATTRS, PER_MOUNT_DEFAULTS  # the executor imports this module

    return frozenset(FLAG_ATTRS) | PER_MOUNT_DEFAULTS


def _check_tree(tree: MountTree) -> None:
    """The image reader's path and tree checks, again for trees a program hands in directly
    (``restore(namespaces=...)``): every path used below is absolute and normalised."""
    for m in tree:
        for field in ("mountpoint", "root"):
            why = imagecheck.path_problem(field, getattr(m, field))
            if why is not None:
                raise RestoreError(f"{m.describe()}: {why} (mount namespace {tree.ns_id})")
    known = restorable_options()  # once: it imports (20,000 calls were 10 ms)
    for m in tree:
        for opt in m.mount_options:
            if opt not in known:
                raise RestoreError(
                    f"{m.describe()}: per-mount option {opt!r} cannot be restored by this "
                    f"criu-fw (it restores {', '.join(sorted(known))})"
                )
    bad = imagecheck.tree_problem(list(tree))
    if bad is not None:
        mnt_id, why = bad
        where = f", mount {mnt_id}" if mnt_id is not None else ""
        raise RestoreError(f"mount namespace {tree.ns_id}{where}: {why}")


def base_root(tree: MountTree) -> Mount:
    """The bottom mount at ``/`` (mounts stacked on ``/`` are overmounts of it)."""
    roots = tree.roots
    at_slash = [m for m in roots if m.mountpoint == "/"]
    if not at_slash:
        raise RestoreError(f"mount namespace {tree.ns_id}: the images have no root mount")
    strays = [m for m in roots if m.mountpoint != "/"]
    if strays:
        raise RestoreError(
            f"{strays[0].describe()}: its parent is not in the images of mount namespace "
            f"{tree.ns_id}, so it has no place in the restored tree"
        )
    return at_slash[0]


def _under(path: str, top: str) -> str | None:
    """``path`` relative to ``top`` (both absolute), or None if it is not below it."""
    if top == "/" or path == top:
        return path if top == "/" else "/"
    if path.startswith(top.rstrip("/") + "/"):
        return path[len(top.rstrip("/")) :]
    return None


def _join(base: str, rel: str) -> str:
    rel = rel.strip("/")
    if not rel:
        return base
    return f"{base.rstrip('/')}/{rel}" if base != "/" else f"/{rel}"


def _driver(ns: DumpedNamespace, m: Mount, mgr: DriverManager) -> str:
    """The driver the registry picks for the mount's fstype; images only say which one it
    was (a crafted image must not route an overlay to a driver that passes its options on)."""
    owner = mgr.owner(m.fstype)
    named = ns.record(m.mnt_id).driver
    if named is not None and named != owner:
        raise RestoreError(
            f"{m.describe()}: the images name driver {named!r} for it, but {owner!r} handles "
            f"{m.fstype!r} here"
        )
    return owner


#: cgroup v1 super options that are not controllers.
_CGROUP_FLAGS = frozenset({"rw", "ro", "noprefix", "xattr", "cpuset_v2_mode", "clone_children"})


def cgroup_controllers(mount: Mount) -> frozenset[str]:
    """The names ``--cgroup-root CONTROLLER:PATH`` matches for a cgroup mount: its v1
    controllers (``memory``, ``name=systemd``...), or ``cgroup2`` and ``unified`` for v2."""
    if mount.fstype == "cgroup2":
        return frozenset({"cgroup2", "unified"})
    return frozenset(
        o for o in mount.super_options
        if o not in _CGROUP_FLAGS and not o.startswith("release_agent=")
    )


def cgroup_path(mount: Mount, tree: MountTree, roots: Mapping[str, str]) -> str:
    """Where in its hierarchy a cgroup mount is restored from: its dumped root, or with
    ``--cgroup-root`` the new directory in place of the namespace's top cgroup.

    A runtime gives a restored container a new cgroup (the old one went with the container):
    the mounts of one hierarchy whose roots were ``B`` and ``B/sub`` (``B`` the shortest root
    of that hierarchy in the namespace) come back at ``PATH`` and ``PATH/sub``. A
    ``CONTROLLER:PATH`` applies to the hierarchies with that controller, a plain ``PATH`` to
    the others."""
    if mount.fstype not in ("cgroup", "cgroup2") or not roots:
        return mount.root
    names = cgroup_controllers(mount)
    new = next((roots[c] for c in sorted(names) if c in roots), roots.get(""))
    if new is None:
        return mount.root
    base = min((m.root for m in tree.by_dev(mount.dev)), key=len)
    rel = _under(mount.root, base)
    return new if rel is None or rel == "/" else _join(new, rel)


def _host_job(src: HostSource, mount: Mount) -> MountJob:
    return MountJob(mount, None, src.path, base=src.base, follow=src.follow)


def plan_namespace(
    ns: DumpedNamespace,
    mgr: DriverManager,
    ctx: RestoreContext,
    shared: SharedDevices | None = None,
) -> NamespacePlan:
    """Ask every driver for its plan and resolve every mount's source (no mount calls).

    ``shared``: what earlier namespaces of the same restore made of each device (updated)."""
    tree = ns.tree
    _check_tree(tree)
    root = base_root(tree)
    mounts = tree.topo_order()
    ctx.tree = tree
    if shared is None:
        shared = SharedDevices()
    content_by_dev = shared.content
    for rec in ns.records.values():
        if rec.content is not None:
            content_by_dev.setdefault(rec.mount.dev, rec.content)

    superblocks: dict[int, SuperblockJob] = {}
    jobs: dict[int, MountJob] = {}
    first_of_dev: dict[Dev, Mount] = {}
    binds: dict[int, PathRef] = {}  # mounts whose source is another mount (resolved below)

    def ask(m: Mount) -> MountPlan | None:
        driver = _driver(ns, m, mgr)
        try:
            state = ns.record(m.mnt_id).state
            plan = mgr.hooks.rebuild_mount(driver, m, state, ctx)
        except CriuFwError as exc:
            if isinstance(exc, DriverError):
                raise RestoreError(on_mount(m.describe(), exc)) from exc
            raise
        return plan

    def new_sb(m: Mount, plan: NewSuperblock) -> int:
        key = shared.next_key
        shared.next_key += 1
        readonly = ("ro", None) in plan.params
        if isinstance(plan.source, LoopFile) and plan.source.read_only:
            # A read-only device gives only a read-only superblock: made so at once.
            readonly = False
            if ("ro", None) not in plan.params:
                plan = attrs.evolve(plan, params=(*plan.params, ("ro", None)))
        if readonly:
            plan = attrs.evolve(plan, params=tuple(p for p in plan.params if p != ("ro", None)))
        driver = _driver(ns, m, mgr)
        superblocks[key] = SuperblockJob(key, m, driver, plan, content_by_dev.get(m.dev), readonly)
        return key

    for m in mounts:
        ext_key = ns.record(m.mnt_id).external
        if ext_key is not None:
            src = host_source(ExternalRef(key=ext_key), m, ctx)
            check_there(src, m)
            path = src.shown
            if tree.children(m) and os.path.exists(path) and not os.path.isdir(path):
                raise RestoreError(
                    f"{m.describe()}: external {ext_key!r} is mapped to {path!r}, a file, but "
                    f"the dumped mount was a directory (mounts were made under it)"
                )
            jobs[m.mnt_id] = _host_job(src, m)
            continue
        first = first_of_dev.get(m.dev)
        earlier = shared.first.get(m.dev) if first is None else None
        if earlier is not None:
            # Made by an earlier namespace: the same superblock (or host directory) again.
            e_ns, e_mount, e_job = earlier
            if e_job.sb is not None:
                jobs[m.mnt_id] = MountJob(m, e_job.sb, cgroup_path(m, tree, ctx.cgroup_roots))
            elif (rel := _under(m.root, e_mount.root)) is not None:
                jobs[m.mnt_id] = e_job.below(rel, m)
            else:
                raise RestoreError(
                    f"{m.describe()}: its root {m.root!r} is outside {e_mount.describe()} of "
                    f"mount namespace {e_ns}, "
                    f"the only source of that filesystem; declare it external"
                )
            continue
        if first is not None:
            fj = jobs.get(first.mnt_id)
            if fj is not None and fj.sb is not None:
                jobs[m.mnt_id] = MountJob(m, fj.sb, cgroup_path(m, tree, ctx.cgroup_roots))
            elif fj is not None and (rel := _under(m.root, first.root)) is not None:
                jobs[m.mnt_id] = fj.below(rel, m)
            elif first.mnt_id in binds:
                binds[m.mnt_id] = PathRef(first.mnt_id, _under(m.root, first.root) or "/")
            else:
                raise RestoreError(
                    f"{m.describe()}: its root {m.root!r} is outside {first.describe()}, the "
                    f"only source of that filesystem; declare it external"
                )
            continue
        first_of_dev[m.dev] = m
        try:
            plan = ask(m)
        except RestoreError as exc:
            if m is not root or ctx.root is None or not isinstance(exc.__cause__, DriverError):
                raise
            # Its driver cannot rebuild the root from these images (an overlay from CRIU's
            # own images: no layers recorded): the tree the operator gave stands for it, as
            # in CRIU's restore, which always takes the root from --root.
            log.warning("%s; the root is taken from --root %s", exc, ctx.root)
            jobs[m.mnt_id] = MountJob(m, None, "/", base=ctx.root)
            continue
        if m is root and not isinstance(plan, BindFrom | BindExternal):
            rebuildable = m.dev in content_by_dev or (
                plan is not None and mgr.owner(m.fstype) != "generic"
            ) or m.fstype in VIRTUAL
            # A root tmpfs without its archive (CRIU never archives the root of a dump): its
            # content is not in the images, so --root's tree stands for it, as in CRIU's
            # restore; without --root it comes back empty.
            if m.fstype in IN_MEMORY and m.dev not in content_by_dev and ctx.root is not None:
                rebuildable = False
            if not rebuildable:
                if ctx.root is None:
                    raise RestoreError(
                        f"{m.describe()}: the root mount cannot be rebuilt from the images; "
                        f"give --root DIR"
                    )
                jobs[m.mnt_id] = MountJob(m, None, "/", base=ctx.root)
                continue
            elif ctx.root is not None:
                log.info("%s is rebuilt from the images, not taken from --root", m.describe())
        if plan is None:
            plan = default_superblock(m)
        if isinstance(plan, NewSuperblock):
            granted_device(plan, m, ctx)
            for key, value in plan.params:
                if isinstance(value, ExternalRef):
                    # Refused here, early: not granted, or gone.
                    src = host_source(value, m, ctx, what=f"{key} directory")
                    if not os.path.isdir(src.shown):
                        raise RestoreError(
                            f"{m.describe()}: its {key} directory {src.shown!r} is not on this "
                            f"machine (a runtime deletes a container's layers when it removes "
                            f"the container: restore before removing it)"
                        )
            path = cgroup_path(m, tree, ctx.cgroup_roots)
            jobs[m.mnt_id] = MountJob(m, new_sb(m, plan), path)
        elif isinstance(plan, BindExternal):
            src = host_source(plan.source, m, ctx)
            check_there(src, m)
            jobs[m.mnt_id] = _host_job(src, m)
        else:
            binds[m.mnt_id] = plan.source

    _resolve_binds(tree, jobs, binds)
    for rec in ns.records.values():
        if rec.deleted is not None:
            made = jobs[rec.mount.mnt_id]
            if made.sb is None:
                raise RestoreError(
                    f"{rec.mount.describe()}: its root {rec.mount.root!r} was deleted, and its "
                    f"filesystem is not one this restore makes (it comes from "
                    f"{made.host_path!r}); a deleted file or directory is made again only in "
                    f"a filesystem rebuilt from the images"
                )
            jobs[rec.mount.mnt_id] = attrs.evolve(made, deleted=rec.deleted)
    for dev, first in first_of_dev.items():
        job = jobs.get(first.mnt_id)
        if job is not None and dev not in shared.first:
            shared.first[dev] = (ns.ns_id, first, job)
    return NamespacePlan(ns.ns_id, tree, root, mounts, jobs, superblocks)


def _resolve_binds(tree: MountTree, jobs: dict[int, MountJob], binds: dict[int, PathRef]) -> None:
    """Turn bind-from-mount plans into sources, following chains; report loops and strays."""
    for mnt_id in list(binds):
        chain = [mnt_id]
        ref = binds[mnt_id]
        rel = ref.path
        while True:
            src = tree.find(ref.mnt_id)
            if src is None:
                m = tree.get(mnt_id)
                raise MountNotFoundError(
                    f"{m.describe()}: it is bound from mount {ref.mnt_id}, which is not in "
                    f"the images of mount namespace {tree.ns_id}"
                )
            if ref.mnt_id in chain:
                names = ", ".join(tree.get(i).describe() for i in chain)
                raise RestoreError(f"bind sources form a cycle: {names}")
            job = jobs.get(ref.mnt_id)
            if job is not None:
                origin = binds[mnt_id].mnt_id
                if job.sb is None:
                    made = job.below(rel, tree.get(mnt_id))
                else:
                    made = MountJob(tree.get(mnt_id), job.sb, _join(src.root, rel))
                jobs[mnt_id] = attrs.evolve(made, bind_of=origin)
                break
            chain.append(ref.mnt_id)
            nxt = binds[ref.mnt_id]
            rel = _join(nxt.path, rel)
            ref = nxt
