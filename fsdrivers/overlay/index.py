"""Per-dump indexes of the overlay driver, kept on ``ctx.stash``.

* states by (namespace, overlay device): the layers of one superblock are resolved once, every
  other mount of the same overlay reuses them;
* layers by (namespace, layer mount, directory below its mountpoint) and by layer device: a
  file the kernel reports on a layer's mount maps back to its overlay in O(path depth), never
  by looking at every overlay mount;
* whether this kernel reports overlay files on the overlay (every kernel since 4.2) or on the
  layer (older ones, and some distribution kernels), decided once per dump.
"""

from __future__ import annotations

import os
import re

import attrs
from criu_fw.context import DumpContext
from criu_fw.model import Dev
from criu_fw.stash import StashKey

from .hidden import TreeIndex
from .options import Role
from .state import OverlayState


@attrs.frozen
class LayerUse:
    """One layer directory used by one overlay mount."""

    overlay_mnt_id: int
    role: Role


@attrs.define
class OverlayIndex:
    states: dict[tuple[int, Dev], OverlayState] = attrs.field(factory=dict)
    #: (ns_id, layer mount id, path below its mountpoint) -> overlays using it as a layer.
    by_layer: dict[tuple[int, int, str], list[LayerUse]] = attrs.field(factory=dict)
    #: layer superblock device -> (ns_id, layer mount id) holding layers.
    by_dev: dict[Dev, list[tuple[int, int]]] = attrs.field(factory=dict)
    #: True: the kernel reports overlay files on the layer's mount; None: not decided yet.
    misreports: bool | None = None
    #: mount positions per namespace (kernel listing order), computed once.
    positions: dict[int, dict[int, int]] = attrs.field(factory=dict)
    #: mounts by mountpoint and by root per namespace, for hidden and moved layers.
    trees: dict[int, TreeIndex] = attrs.field(factory=dict)

    def add(self, ns_id: int, overlay_mnt_id: int, state: OverlayState) -> None:
        for layer in state.layers:
            if layer.mnt_id is None:
                continue
            key = (ns_id, layer.mnt_id, layer.path)
            uses = self.by_layer.setdefault(key, [])
            use = LayerUse(overlay_mnt_id, layer.spec.role)
            if use not in uses:
                uses.append(use)
            holders = self.by_dev.setdefault(layer.dev, [])
            if (ns_id, layer.mnt_id) not in holders:
                holders.append((ns_id, layer.mnt_id))

    def find(self, ns_id: int, mnt_id: int, rel: str) -> list[tuple[str, LayerUse]]:
        """Layers containing ``rel`` (a path below mount ``mnt_id``'s mountpoint), nearest
        directory first, with the rest of the path below that layer directory."""
        out: list[tuple[str, LayerUse]] = []
        cur = rel
        while True:
            for use in self.by_layer.get((ns_id, mnt_id, cur), ()):
                rest = rel[len(cur) :] if cur != "/" else rel
                out.append((rest or "/", use))
            if cur == "/":
                return out
            cur = cur.rsplit("/", 1)[0] or "/"


KEY: StashKey[OverlayIndex] = StashKey("overlay.index")


def index_of(ctx: DumpContext) -> OverlayIndex:
    return ctx.stash.setdefault(KEY, OverlayIndex())


_RELEASE = re.compile(r"(\d+)\.(\d+)")
#: Kernels before 4.2 report an overlay file's mount and path as the layer's.
FIXED_IN = (4, 2)


def release_misreports(proc_root: str) -> bool | None:
    """From the kernel release under ``proc_root`` (a recording may hold an old one)."""
    try:
        with open(os.path.join(proc_root, "sys/kernel/osrelease")) as f:
            text = f.read()
    except OSError:
        return None
    m = _RELEASE.match(text.strip())
    if m is None:
        return None
    return (int(m.group(1)), int(m.group(2))) < FIXED_IN
