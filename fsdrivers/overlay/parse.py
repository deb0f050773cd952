"""Dump side of the overlay driver: options parsed, layers resolved, layer mounts claimed."""

from __future__ import annotations

import contextlib
import os

from criu_fw.driver import DumpContext, DumpError, Mount, MountTree, read_mountinfo

from .hidden import HiddenViews, TreeIndex
from .index import OverlayIndex, index_of
from .layers import LayerResolver, OverlayLayerError, ResolvedLayer, open_views
from .misreport import KINDS, probe
from .options import OverlayOptionError, OverlayOptions, parse_options
from .paths import ancestors_or_self
from .placement import reachable
from .state import OverlayState
from .walk import RootView

#: The driver's stable name (its entry point), used to claim layer mounts.


def external_key(mount: Mount, tree: MountTree, ctx: DumpContext) -> str | None:
    key = ctx.externals.get(mount.mountpoint)
    if key is None:
        key = ctx.external_mounts.get((tree.ns_id, mount.mnt_id))
    return key


def root_of(tree: MountTree, ctx: DumpContext) -> tuple[str, int | None]:
    """The directory standing for the namespace's root, and the pid it belongs to."""
    if ctx.recorded:
        if ctx.root is None:
            raise DumpError(
                f"mount namespace {tree.ns_id}: overlay layers cannot be checked on a recorded "
                "/proc without --root (the directory that stands for the namespace's root)"
            )
        return ctx.root, None
    pid = ctx.ns_pids.get(tree.ns_id) or ctx.root_pid
    if not pid:
        raise DumpError(f"mount namespace {tree.ns_id}: no process known to read it through")
    return f"{ctx.proc_root}/{pid}/root", pid


def parse_overlay(mount: Mount, tree: MountTree, ctx: DumpContext) -> OverlayState:
    """The state of one overlay mount; mounts of the same superblock share one state."""
    try:
        options = parse_options(mount.super_options)
    except OverlayOptionError as e:
        raise DumpError(f"{mount.describe()}: {e}") from None
    index = index_of(ctx)
    key = (tree.ns_id, mount.dev)
    state = index.states.get(key)
    if state is None:
        state = _resolve(mount, tree, ctx, options, index)
        index.states[key] = state
    index.add(tree.ns_id, mount.mnt_id, state)
    for layer in state.layers:
        if layer.mnt_id is not None:
            ctx.claim_files(tree.get(layer.mnt_id))
    return state


def _resolve(
    mount: Mount, tree: MountTree, ctx: DumpContext, options: OverlayOptions, index: OverlayIndex
) -> OverlayState:
    ext = external_key(mount, tree, ctx)
    root, pid = root_of(tree, ctx)
    cwd = None
    if pid is not None:
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"{ctx.proc_root}/{pid}/cwd")
    host_root = None if ctx.recorded else "/"
    positions = index.positions.get(tree.ns_id)
    if positions is None:
        positions = {m.mnt_id: i for i, m in enumerate(tree.mounts)}
        index.positions[tree.ns_id] = positions
    tree_index = index.trees.get(tree.ns_id)
    if tree_index is None:
        tree_index = index.trees[tree.ns_id] = TreeIndex.of(tree)
    view, host = open_views(root, host_root)
    bases = _host_bases(mount, index, ctx) if host is not None and _relative(options) else ()
    hidden = HiddenViews(pid, tree, ctx)
    try:
        resolver = LayerResolver(
            mount,
            tree,
            view,
            host=host,
            cwd=cwd,
            positions=positions,
            index=tree_index,
            hidden=hidden,
            host_bases=bases,
        )
        layers: tuple[ResolvedLayer, ...]
        try:
            layers = reachable(mount, tree, resolver.resolve(options))
        except OverlayLayerError:
            if ext is None:
                raise
            layers = ()  # declared external: restore binds it from outside, layers unneeded
        if not ctx.recorded and any(k not in index.misreports for k in KINDS):
            _probe(index, view, mount, layers)
    finally:
        hidden.close()
        view.close()
        if host is not None:
            host.close()
    return OverlayState(
        layers=layers,
        features=options.features,
        readonly=options.readonly and options.upper is not None,
        new_api=options.new_api,
        external_key=ext,
    )


def _relative(options: OverlayOptions) -> bool:
    return any(not text.startswith("/") for spec in options.layers for text in spec.spellings())


def _host_bases(mount: Mount, index: OverlayIndex, ctx: DumpContext) -> tuple[str, ...]:
    """Host directories that relative layer strings may be relative to: the directories
    above every other place this overlay's superblock is mounted in the dumper's namespace.

    containers/storage mounts with layers relative to its graph root (``l/ID``, ``ID/diff``)
    once absolute ones would pass the 4 KiB option limit; it mounts the overlay at
    ``GRAPH/ID/merged`` on the host too, so ``GRAPH`` is two levels up. Each candidate is still
    checked against the overlay's own files before it is taken."""
    if index.host_mounts is None:
        try:
            index.host_mounts = read_mountinfo("self", ctx.proc_root)
        except (OSError, ValueError):
            return ()
    out: dict[str, None] = {}
    for other in index.host_mounts.by_dev(mount.dev):
        if other.fstype != mount.fstype or other.root != "/":
            continue
        for base in ancestors_or_self(other.mountpoint):
            out.setdefault(base, None)
    return tuple(out)


def _probe(
    index: OverlayIndex, view: RootView, mount: Mount, layers: tuple[ResolvedLayer, ...]
) -> None:
    """Open and map one file of this overlay to see where the kernel reports it."""
    if mount.root != "/":
        return  # a bind of a subdirectory: its layer mounts are the superblock's all the same
    found = probe(view, mount, {x.mnt_id for x in layers if x.mnt_id is not None})
    for kind, value in found.items():
        if kind not in index.misreports:
            index.misreports[kind] = value
            index.decided_by[kind] = "probe"
