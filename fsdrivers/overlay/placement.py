"""Layers the restore can reach before the overlay exists.

A restore makes a mount after the mounts it is attached below, and an overlay after the mounts
holding its layers. A layer whose only mount in the namespace sits *below the overlay itself*
(a container root overlay whose layers' tmpfs is bind-mounted at ``/layers`` inside it, then
the old root dropped) asks for both orders at once: the restore would fail with a dependency
cycle. So, at dump time, such a layer is re-expressed through another mount of the same
filesystem outside the overlay when there is one, and otherwise the dump fails saying what to
do: declare the overlay external (its directory is then given at restore), which needs no
layers at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from criu_fw.driver import Mount, MountTree

from .layers import OverlayLayerError, ResolvedLayer, namespace_path
from .paths import under


def _below(tree: MountTree, mount: Mount, overlay: Mount) -> bool:
    """Whether ``mount`` is attached (at any depth) below a mount of ``overlay``'s superblock:
    the restore can attach it only once that superblock exists."""
    seen = set()
    cur = tree.parent(mount)
    while cur is not None and cur.mnt_id not in seen:
        if cur.dev == overlay.dev:
            return True
        seen.add(cur.mnt_id)
        cur = tree.parent(cur)
    return False


def _elsewhere(
    tree: MountTree, layer: ResolvedLayer, held: Mount, overlay: Mount
) -> ResolvedLayer | None:
    """The same directory through another mount of its filesystem, outside the overlay."""
    in_fs = held.root.rstrip("/") + "/" + layer.path.lstrip("/") if layer.path != "/" else held.root
    for other in tree.mounts:
        if other.dev != held.dev or other.mnt_id == held.mnt_id or other.dev == overlay.dev:
            continue
        rel = under(in_fs or "/", other.root)
        if rel is None or _below(tree, other, overlay):
            continue
        return attrs.evolve(layer, mnt_id=other.mnt_id, path=rel, found=f"{layer.found}, outside")
    return None


def reachable(
    overlay: Mount, tree: MountTree, layers: Iterable[ResolvedLayer]
) -> tuple[ResolvedLayer, ...]:
    """``layers`` with every one the restore could only reach through the overlay itself
    moved to another mount of its filesystem; raises when there is none."""
    out = []
    for layer in layers:
        held = tree.find(layer.mnt_id) if layer.mnt_id is not None else None
        if held is None or not _below(tree, held, overlay):
            out.append(layer)
            continue
        moved = _elsewhere(tree, layer, held, overlay)
        if moved is None:
            where = namespace_path(tree, layer)
            raise OverlayLayerError(
                f"{overlay.describe()}: {layer.spec.option} layer {layer.spec.raw!r} is only "
                f"reachable at {where!r}, on mount {held.mnt_id} below the overlay itself, "
                "so a restore would need the overlay to make its own layer; declare the "
                f"overlay external with --external mnt[{overlay.mountpoint}]:KEY and give "
                "its directory at restore with --external mnt[KEY]:DIR"
            )
        out.append(moved)
    return tuple(out)
