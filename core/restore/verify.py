"""``verify()``: compare a live mount namespace with the images, difference by difference.

Mounts are matched structurally, never by id: the roots, then under each matched parent the
children at the same mountpoint, in stacking order (preferring equal fstype, source and root).
For each matched pair the fstype, source, root, per-mount options and superblock options are
compared; propagation is compared as topology (which mounts are peers of which, which group
each is a slave of), and superblock sharing (which mounts show the same filesystem), so
mount ids, peer-group ids and device numbers, which legitimately change, never count.

Directories named in superblock options (an overlay's layers) are compared by where they lead,
not by how they are spelled: the dump may have seen ``lowerdir=layers/lower`` (relative to a
cwd long gone, or with a prefix that pivot_root made stale) and the restore passes the same
directory by descriptor, which the kernel shows as ``lowerdir+=/layers/lower``. Where the
images hold a driver state that names directories (``DriverState.directories()``: the overlay
driver's layers), the owning driver's own
``parse_mount`` reads the live mount the way a dump would, and the two layer lists are compared
as (role, mount, path inside it); the options that spell those layers are then left out of the
textual comparison. Likewise a source whose name a restore makes anew (a loop device attached
again to the same file) is compared by what both states say it stands for
(``DriverState.source_identity()``).

Keyed filesystems (sysfs, mqueue, cgroup, ...; :mod:`criu_fw.kernel.superblocks`) may come back as
this machine's superblock, which a restore never changes: a read-only one is then restored as
read-only mounts of a writable superblock. For those, whether each mount is read-only (by its
own flag or its superblock's) is compared, not where the flag is set; every other option is
compared as usual, and a difference of superblock options says whose the superblock may be.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from ..api.base import DriverState
from ..api.loader import DriverConfig, DriverManager, resolve_manager
from ..context import DumpContext
from ..errors import CriuFwError, UsageError
from ..fstypes import UNNAMED, fstype
from ..kernel.superblocks import KEYED, sharing
from ..model import Mount, MountTree
from .plans import base_root


@attrs.frozen
class VerifyResult:
    differences: tuple[str, ...]
    matched: int

    @property
    def ok(self) -> bool:
        return not self.differences


def _super_options(m: Mount, also: set[str] | frozenset[str] = frozenset()) -> list[str]:
    skip = fstype(m.fstype).volatile_options | also
    return [o for o in m.super_options if o.partition("=")[0] not in skip]


def _match_children(
    dk: Iterable[Mount], lk: Iterable[Mount]
) -> tuple[list[tuple[Mount, Mount]], list[Mount], list[Mount]]:
    by_place_d: dict[str, list[Mount]] = {}
    by_place_l: dict[str, list[Mount]] = {}
    for m in dk:
        by_place_d.setdefault(m.mountpoint, []).append(m)
    for m in lk:
        by_place_l.setdefault(m.mountpoint, []).append(m)
    pairs: list[tuple[Mount, Mount]] = []
    missing: list[Mount] = []
    extra: list[Mount] = []
    for place, ds in by_place_d.items():
        ls = list(by_place_l.pop(place, ()))
        rest: list[Mount] = []
        for d in ds:
            same = next(
                (x for x in ls if (x.fstype, x.source, x.root) == (d.fstype, d.source, d.root)),
                None,
            )
            if same is not None:
                ls.remove(same)
                pairs.append((d, same))
            else:
                rest.append(d)
        for d in rest:
            if ls:
                pairs.append((d, ls.pop(0)))
            else:
                missing.append(d)
        extra.extend(ls)
    for ls in by_place_l.values():
        extra.extend(ls)
    return pairs, missing, extra


#: A layer as compared: (role, mount id on the live side or None for a host path, path).
LayerKey = tuple[str, int | None, str]


def layer_keys(state: DriverState | None, to_live: Callable[[int], int | None]) -> (
    tuple[LayerKey, ...] | None
):
    """The directories a driver state names, with mount ids mapped by ``to_live``; None when
    the state names none."""
    dirs = state.directories() if state is not None else None
    if dirs is None:
        return None
    return tuple(
        (d.role, None if d.mnt_id is None else to_live(d.mnt_id), d.path) for d in dirs
    )


def _layer_options(state: DriverState | None) -> set[str]:
    names = {"lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir"}
    for d in (state.directories() if state is not None else None) or ():
        names.add(d.option)
    return names


@attrs.frozen
class Side:
    """One namespace to compare: the dumped tree, the live one, and how to name it."""

    dumped: MountTree
    live: MountTree
    #: Driver states, dumped (by dumped id) and live (by live id); see :func:`compare_trees`.
    states: Mapping[int, DriverState | None] | None = None
    live_states: Mapping[int, DriverState | None] | None = None
    #: Prefix of this namespace's lines and names ("" when only one namespace is compared).
    label: str = ""
    #: The restore took the root mount from a directory (``--root``): the live root is that
    #: directory's mount, not the dumped filesystem, and is not compared with the images.
    root_given: bool = False


def compare_trees(
    dumped: MountTree,
    live: MountTree,
    *,
    states: Mapping[int, DriverState | None] | None = None,
    live_states: Mapping[int, DriverState | None] | None = None,
    outside_masters: str = "host",
) -> VerifyResult:
    """Every difference between a dumped tree and a live one, one line each.

    ``states`` (dumped, by dumped id) and ``live_states`` (by live id): driver states whose
    layers are compared instead of the options that spell them. ``outside_masters``: what a
    slave of a group outside the images should be live (see :func:`compare_namespaces`)."""
    return compare_namespaces(
        [Side(dumped, live, states, live_states)], outside_masters=outside_masters
    )


def compare_namespaces(
    sides: Sequence[Side],
    *,
    dumped_groups: Iterable[int] = (),
    outside_masters: str = "host",
) -> VerifyResult:
    """Several namespaces compared each on its own, and together: which mounts share a
    superblock, a peer group or a master is compared across all of them.

    ``dumped_groups``: peer groups of dumped namespaces that are not compared (a master there
    is not outside the images). ``outside_masters``: a mount that was a slave of a group
    outside the images is expected to be a slave of a group outside the restored namespaces
    (``host``: the restore took it from the host) or private (``private``)."""
    diffs: list[str] = []
    entries: list[_Entry] = []
    matched = 0
    for k, side in enumerate(sides):
        pairs, own = _compare_side(side)
        prefix = f"{side.label}: " if side.label else ""
        diffs.extend(prefix + line for line in own)
        entries.extend(_Entry(k, d, lv) for d, lv in pairs)
        matched += len(pairs)
    diffs.extend(_compare_sharing(sides, entries, set(dumped_groups), outside_masters))
    return VerifyResult(tuple(diffs), matched)


@attrs.frozen
class _Entry:
    side: int
    d: Mount
    lv: Mount


def _compare_side(side: Side) -> tuple[list[tuple[Mount, Mount]], list[str]]:
    dumped, live = side.dumped, side.live
    states, live_states = side.states, side.live_states
    diffs: list[str] = []
    d_root = base_root(dumped)
    live_roots = [m for m in live.roots if m.mountpoint == "/"]
    if not live_roots:
        return [], ["the live namespace has no root mount"]
    pairs: list[tuple[Mount, Mount]] = [(d_root, live_roots[0])]
    todo = [(d_root, live_roots[0])]
    while todo:
        d, lv = todo.pop()
        got, missing, extra = _match_children(dumped.children(d), live.children(lv))
        for m in missing:
            diffs.append(f"{m.mountpoint}: missing: {m.fstype} {m.source!r} root {m.root!r}")
            for sub in _descendants(dumped, m):
                diffs.append(f"{sub.mountpoint}: missing (under a missing mount): {sub.fstype}")
        for m in extra:
            diffs.append(f"{m.mountpoint}: extra mount: {m.fstype} {m.source!r} root {m.root!r}")
        pairs.extend(got)
        todo.extend(got)
    to_live = {d.mnt_id: lv.mnt_id for d, lv in pairs}
    for d, lv in pairs:
        if side.root_given and d is d_root:
            continue
        skip: set[str] = set()
        sources = (d.source, lv.source)
        if states is not None and live_states is not None:
            ds, ls = states.get(d.mnt_id), live_states.get(lv.mnt_id)
            d_id = ds.source_identity() if ds is not None else None
            l_id = ls.source_identity() if ls is not None else None
            if d_id is not None and l_id is not None:
                sources = (d_id, l_id)
            dk = layer_keys(ds, to_live.get)
            lk = layer_keys(ls, lambda i: i)
            if dk is not None and lk is not None:
                skip = _layer_options(ds) | _layer_options(ls)
                if dk != lk:
                    diffs.append(
                        f"{d.mountpoint}: layers {_show_layers(dk, live)} in the images, "
                        f"{_show_layers(lk, live)} live"
                    )
        diffs.extend(_compare_mount(d, lv, skip, sources))
    return pairs, diffs


def _show_layers(keys: tuple[LayerKey, ...], live: MountTree) -> str:
    def one(k: LayerKey) -> str:
        role, mnt, path = k
        if mnt is None:
            return f"{role}:host:{path}"
        m = live.find(mnt)
        return f"{role}:{m.mountpoint if m is not None else '<unmatched>'}:{path}"

    return "[" + ", ".join(map(one, keys)) + "]"


def _descendants(tree: MountTree, m: Mount) -> Iterable[Mount]:
    stack = list(tree.children(m))
    while stack:
        x = stack.pop()
        yield x
        stack.extend(tree.children(x))


def _compare_mount(
    d: Mount, lv: Mount, skip: set[str], sources: tuple[str, str] | None = None
) -> list[str]:
    """``sources``: what to compare as the sources (their identities, where the drivers'
    states give them: see :meth:`DriverState.source_identity`)."""
    out = []
    d_source, l_source = sources if sources is not None else (d.source, lv.source)
    where = d.mountpoint
    d_opts, l_opts = list(d.mount_options), list(lv.mount_options)
    keyed = d.fstype in KEYED and d.fstype == lv.fstype
    if keyed:
        # Read-only set on the mount instead of on this machine's superblock (see above).
        d_ro, l_ro = _readonly(d), _readonly(lv)
        if d_ro != l_ro:
            out.append(f"{where}: {'read-only' if d_ro else 'writable'} in the images, "
                       f"{'read-only' if l_ro else 'writable'} live")
        skip = skip | {"ro", "rw"}
        d_opts = [o for o in d_opts if o not in ("ro", "rw")]
        l_opts = [o for o in l_opts if o not in ("ro", "rw")]
    for what, a, b in (
        # CRIU's images may not name it (UNNAMED): nothing to compare.
        ("fstype", d.fstype, d.fstype if d.fstype == UNNAMED else lv.fstype),
        ("source", d_source, l_source),
        ("root", d.root, lv.root),
    ):
        if a != b:
            out.append(f"{where}: {what} {a!r} in the images, {b!r} live")
    if sorted(d_opts) != sorted(l_opts):
        out.append(
            f"{where}: mount options {','.join(d.mount_options)} in the images, "
            f"{','.join(lv.mount_options)} live"
        )
    if sorted(_super_options(d, skip)) != sorted(_super_options(lv, skip)):
        whose, hint = sharing(d.fstype, {})
        why = f" (the {d.fstype} superblock may be shared with {whose}" + (
            f"; {hint})" if hint else ")"
        )
        out.append(
            f"{where}: superblock options {','.join(d.super_options)} in the images, "
            f"{','.join(lv.super_options)} live" + (why if keyed else "")
        )
    if d.propagation.unbindable != lv.propagation.unbindable:
        state = "unbindable" if d.propagation.unbindable else "bindable"
        out.append(f"{where}: {state} in the images, not live")
    return out


def _readonly(m: Mount) -> bool:
    """Whether writes through the mount fail: its own flag or its superblock's."""
    return "ro" in m.mount_options or "ro" in m.super_options


def _compare_sharing(
    sides: Sequence[Side], entries: Sequence[_Entry], other_groups: set[int],
    outside_masters: str,
) -> list[str]:
    """Peer groups, masters and superblocks compared as relations between matched mounts,
    across every namespace compared (group ids and devices are the kernel's, global)."""
    Key = tuple[int, int]  # (side, live mount id)
    to_live: dict[Key, Key] = {(e.side, e.d.mnt_id): (e.side, e.lv.mnt_id) for e in entries}
    place: dict[Key, tuple[int, str]] = {
        (e.side, e.lv.mnt_id): (e.side, e.lv.mountpoint) for e in entries
    }
    d_groups: dict[int, set[Key]] = {}
    l_groups: dict[int, set[Key]] = {}
    for k, side in enumerate(sides):
        for m in side.dumped:
            if m.propagation.shared is not None:
                d_groups.setdefault(m.propagation.shared, set()).add((k, m.mnt_id))
        for m in side.live:
            if m.propagation.shared is not None:
                l_groups.setdefault(m.propagation.shared, set()).add((k, m.mnt_id))

    def names(ids: Iterable[Key], own: int) -> str:
        shown = []
        for i in ids:
            k, where = place.get(i, (i[0], f"<mount {i[1]}>"))
            label = sides[k].label
            shown.append(f"{where} ({label})" if k != own and label else where)
        return ", ".join(sorted(shown)) if shown else "none"

    def d_set(k: int, gid: int | None) -> set[Key] | None:
        if gid is None:
            return None
        return {to_live.get(i, (i[0], -i[1])) for i in d_groups.get(gid, ())}

    def l_set(gid: int | None) -> set[Key] | None:
        return None if gid is None else set(l_groups.get(gid, ()))

    out: list[str] = []
    d_dev: dict[object, set[Key]] = {}
    l_dev: dict[object, set[Key]] = {}
    given = {(k, base_root(s.dumped).mnt_id) for k, s in enumerate(sides) if s.root_given}
    for e in entries:
        d, lv, k = e.d, e.lv, e.side
        me = (k, lv.mnt_id)
        prefix = f"{sides[k].label}: " if sides[k].label else ""
        if (k, d.mnt_id) not in given:  # an operator's directory shares nothing dumped
            d_dev.setdefault(d.dev, set()).add(me)
            l_dev.setdefault(lv.dev, set()).add(me)
        where = prefix + d.mountpoint
        ds, ls = d_set(k, d.propagation.shared), l_set(lv.propagation.shared)
        if ds != ls:
            a = "private" if ds is None else f"shared with {names(ds - {me}, k)}"
            b = "private" if ls is None else f"shared with {names(ls - {me}, k)}"
            out.append(f"{where}: propagation: {a} in the images, {b} live")
        dm, lm = d.propagation.master, lv.propagation.master
        if dm is not None and dm not in d_groups:
            if dm in other_groups:
                if lm is None:
                    out.append(f"{where}: propagation: slave of a group of another namespace "
                               f"in the images, not a slave live")
            elif outside_masters == "private":
                if lm is not None:
                    out.append(f"{where}: propagation: slave of a group outside the images, "
                               f"expected private, a slave live")
            elif lm is None:
                out.append(f"{where}: propagation: slave of a group outside the images, "
                           f"not a slave live")
            elif lm in l_groups:
                out.append(f"{where}: propagation: slave of a group outside the images, a "
                           f"slave of {names(l_groups[lm], k)} live")
            continue
        dms, lms = d_set(k, dm), l_set(lm)
        if dms != lms:
            a = "no master" if dms is None else f"slave of {names(dms, k)}"
            b = "no master" if lms is None else f"slave of {names(lms, k)}"
            out.append(f"{where}: propagation: {a} in the images, {b} live")
    for e in entries:
        me = (e.side, e.lv.mnt_id)
        if (e.side, e.d.mnt_id) in given:
            continue
        if d_dev[e.d.dev] != l_dev[e.lv.dev]:
            prefix = f"{sides[e.side].label}: " if sides[e.side].label else ""
            out.append(
                f"{prefix}{e.d.mountpoint}: shares its filesystem with "
                f"{names(d_dev[e.d.dev] - {me}, e.side)} in the images, with "
                f"{names(l_dev[e.lv.dev] - {me}, e.side)} live"
            )
    return out


def live_states(
    pid: int, live: MountTree, places: Iterable[tuple[str, str]], mgr: DriverManager,
    image_dir: str,
) -> tuple[dict[int, DriverState | None], list[str]]:
    """Driver states of the live mounts at ``places`` ((mountpoint, fstype) of the dumped
    mounts that have a state), read by their owning drivers' ``parse_mount`` as a dump would;
    plus a line for every such mount a driver could not read. A mount the images hold no
    state for (one recorded as external) is not read: nothing would be compared."""
    wanted = set(places)
    ctx = DumpContext(
        image_dir=image_dir, root_pid=pid, trees={live.ns_id: live}, ns_pids={live.ns_id: pid}
    )
    out: dict[int, DriverState | None] = {}
    problems: list[str] = []
    for m in live.topo_order():
        if (m.mountpoint, m.fstype) not in wanted:
            continue
        try:
            out[m.mnt_id] = mgr.hooks.parse_mount(mgr.owner(m.fstype), m, live, ctx)
        except CriuFwError as exc:
            problems.append(f"{m.mountpoint}: the live mount cannot be read: {exc}")
    return out, problems


def verify(
    pid: int,
    image_dir: str,
    ns_id: int | None = None,
    manager: DriverManager | None = None,
    *,
    plugins: Iterable[object] = (),
    config: DriverConfig | None = None,
    outside_masters: str = "host",
    root: str | None = None,
) -> VerifyResult:
    """Compare the mount namespace of process ``pid`` with the dumped namespace ``ns_id``
    (default: the root namespace of the images). Drivers: ``manager``, or loaded from
    ``plugins`` and ``config`` (:func:`~criu_fw.api.loader.resolve_manager`). ``root``: the
    directory the restore took the root mount from (``--root``; see
    :func:`verify_namespaces`)."""
    from .engine import image_namespaces

    if ns_id is None:
        ns_id = image_namespaces(image_dir)[0]
    return verify_namespaces(
        {ns_id: pid}, image_dir, resolve_manager(manager, plugins, config),
        outside_masters=outside_masters, root=root,
    )


def verify_namespaces(
    pids: Mapping[int, int],
    image_dir: str,
    manager: DriverManager | None = None,
    *,
    plugins: Iterable[object] = (),
    config: DriverConfig | None = None,
    outside_masters: str = "host",
    root: str | None = None,
) -> VerifyResult:
    """Compare several live namespaces (dumped namespace id -> a PID in the live one) with
    the images, each on its own and together (superblocks and peer groups shared across
    namespaces; see :func:`compare_namespaces`). With more than one namespace every line
    starts with ``mount namespace ID: ``.

    ``root``: the directory the restore took the root namespace's root mount from
    (``restore --root``, where the images cannot rebuild it: CRIU's never hold the root
    tmpfs). The live root must then be that directory; it is not compared with the
    images."""
    from ..images.mounts import read_mount_namespace
    from ..kernel.mountinfo import process_gone, read_mountinfo
    from .engine import image_namespaces

    root_ns, ids = image_namespaces(image_dir)
    for ns_id in pids:
        if ns_id not in ids:
            raise UsageError(f"--ns {ns_id}: no mount namespace {ns_id} in {image_dir} (it "
                             f"has {', '.join(map(str, ids))})")
    mgr = resolve_manager(manager, plugins, config)
    sides: list[Side] = []
    problems: list[str] = []
    others: set[int] = set()
    several = len(pids) > 1
    for ns_id in ids:
        dumped = read_mount_namespace(image_dir, ns_id, mgr)
        if ns_id not in pids:
            others.update(m.propagation.shared for m in dumped.tree
                          if m.propagation.shared is not None)
            continue
        pid = pids[ns_id]
        try:
            live = read_mountinfo(pid)
        except OSError:
            # Exited meanwhile (a zombie's mountinfo is EINVAL): the process, not an errno.
            why = process_gone(pid)
            if why is None:
                raise
            raise UsageError(why) from None
        dumped_states = {
            i: r.state for i, r in dumped.records.items() if r.state is not None
        }
        with_state = {(r.mount.mountpoint, r.mount.fstype)
                      for r in dumped.records.values() if r.state is not None}  # fmt: skip
        states, trouble = live_states(pid, live, with_state, mgr, image_dir)
        label = f"mount namespace {ns_id}" if several else ""
        problems.extend(f"{label}: {t}" if label else t for t in trouble)
        given = root is not None and ns_id == root_ns
        if given:
            assert root is not None
            problems.extend(f"{label}: {t}" if label else t for t in _root_is(pid, root))
        sides.append(Side(dumped.tree, live, dumped_states, states, label, given))
    res = compare_namespaces(sides, dumped_groups=others, outside_masters=outside_masters)
    return attrs.evolve(res, differences=tuple(problems) + res.differences)


def _root_is(pid: int, root: str) -> list[str]:
    """A difference unless process ``pid``'s root directory is ``root``."""
    try:
        want = os.stat(root)
    except OSError as exc:
        raise UsageError(f"--root {root}: {exc.strerror}") from None
    got = os.stat(f"/proc/{pid}/root")
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        return [f"/: the live root is not --root's directory {root}"]
    return []
