"""Per-dump indexes of the overlay driver, kept on ``ctx.stash``.

* states by (namespace, overlay device): the layers of one superblock are resolved once, every
  other mount of the same overlay reuses them;
* layers by (namespace, layer mount, directory below its mountpoint) and by layer device: a
  file the kernel reports on a layer's mount maps back to its overlay in O(path depth), never
  by looking at every overlay mount;
* whether this kernel reports overlay files on the overlay or on the layer, per kind (``fd``,
  ``map``), decided once per dump by :mod:`.misreport`.
"""

from __future__ import annotations

import attrs
from criu_fw.driver import Dev, DumpContext, MountTree, StashKey

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
    #: kind (``fd``/``map``) -> True when the kernel reports overlay files on the layer's
    #: mount; a kind not in it is not decided yet.
    misreports: dict[str, bool] = attrs.field(factory=dict)
    #: kind -> what decided it: ``probe``, ``processes`` or ``release``.
    decided_by: dict[str, str] = attrs.field(factory=dict)
    #: The dumped processes' own reports were read (once per dump, only when needed).
    processes_read: bool = False
    #: mount positions per namespace (kernel listing order), computed once.
    positions: dict[int, dict[int, int]] = attrs.field(factory=dict)
    #: mounts by mountpoint and by root per namespace, for hidden and moved layers.
    trees: dict[int, TreeIndex] = attrs.field(factory=dict)
    #: The dumper's own mount table (its namespace is the host's), read once when an overlay
    #: needs it: where else its superblock is mounted.
    host_mounts: MountTree | None = None

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
