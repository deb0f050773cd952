"""Layers the namespace's paths no longer lead to: hidden under a later mount, or on a mount
that was moved since the overlay was mounted.

Two more sources of candidates, tried only when the ordinary ones found nothing usable (so
the common case costs nothing extra):

* **hidden**: for a candidate path, every mount of the tree that would hold it if nothing
  covered it (a mount stacked under another at the same place, or one whose directory on the
  way to the layer has a later mount on top). The directory is opened in a detached, childless
  copy of that mount, made by the dump engine's namespace helper
  (:class:`criu_fw.dump.namespaces.FilesystemViews`), in which nothing covers anything; so
  the layer can be checked against the overlay like any other.
* **moved**: the option string is the path the layer had when the overlay was mounted; when
  the mount holding it was moved (``MS_MOVE``) or is now reached through a bind elsewhere,
  the tail of that string is still right below that mount's root. For each tail of the
  string and each mount whose root is a prefix of that tail, the same tail below where the
  mount is now is a candidate. Only a candidate the overlay confirms is taken.

Both are bounded by the depth of the path times the mounts found through two indexes of the
tree (by mountpoint, by root), built once per namespace; no scan of the mount table per layer.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator

import attrs
from criu_fw.driver import FSTYPES, Dev, DumpContext, DumpError, Mount, MountTree, SyscallError

from .paths import ancestors_or_self, tails
from .walk import RootView

#: Filesystems that never hold overlay layers: the moved-mount search skips them (the
#: kernel's own, from the core's per-fstype table, and automount points).
PSEUDO = frozenset(n for n, t in FSTYPES.items() if t.kernel) | {"autofs"}


@attrs.frozen
class TreeIndex:
    """Mounts of one namespace by mountpoint (stacking order, bottom first) and by root, and
    where each superblock first appears in the kernel's listing (creation order)."""

    by_mountpoint: dict[str, tuple[Mount, ...]]
    by_root: dict[str, tuple[Mount, ...]]
    first_seen: dict[Dev, int]

    @classmethod
    def of(cls, tree: MountTree) -> TreeIndex:
        by_mp: dict[str, list[Mount]] = {}
        by_root: dict[str, list[Mount]] = {}
        for m in tree.topo_order():
            by_mp.setdefault(m.mountpoint, []).append(m)
            if m.fstype not in PSEUDO:
                by_root.setdefault(m.root, []).append(m)
        first: dict[Dev, int] = {}
        for i, m in enumerate(tree.mounts):
            first.setdefault(m.dev, i)
        return cls(
            {k: tuple(v) for k, v in by_mp.items()},
            {k: tuple(v) for k, v in by_root.items()},
            first,
        )

    def holders(self, path: str) -> list[Mount]:
        """Every mount whose mountpoint is ``path`` or one of its ancestors, the deepest
        mountpoint first and, at one place, the topmost mount first."""
        out: list[Mount] = []
        cur = path
        while True:
            out.extend(reversed(self.by_mountpoint.get(cur, ())))
            if cur == "/":
                return out
            cur = posixpath.dirname(cur)


def moved_candidates(text: str, index: TreeIndex) -> Iterator[tuple[str, Mount]]:
    """``(namespace path, mount)`` pairs for a layer string whose mount has moved: a tail of
    the string that starts with a mount's root, placed below that mount's mountpoint."""
    if not text.startswith("/"):
        return
    seen: set[str] = set()
    for tail in (text, *tails(text)):
        for root in ancestors_or_self(tail):
            for m in index.by_root.get(root, ()):
                rest = tail[len(root) :] if root != "/" else tail
                path = posixpath.normpath(m.mountpoint.rstrip("/") + "/" + rest.lstrip("/"))
                if path not in seen:
                    seen.add(path)
                    yield path, m


class HiddenViews:
    """Childless copies of mounts of one namespace, made on demand, kept until :meth:`close`.

    Unavailable (every lookup gives None) for a recorded /proc or without a process to enter.
    """

    def __init__(self, pid: int | None, tree: MountTree, ctx: DumpContext) -> None:
        self.pid = pid
        self.ctx = ctx
        self.tree = tree
        self._views: dict[int, RootView | None] = {}
        self._stack = contextlib.ExitStack()

    def view(self, mount: Mount) -> RootView | None:
        """The whole filesystem below ``mount``'s root, nothing covering anything."""
        if mount.mnt_id not in self._views:
            self.prepare([mount])
        return self._views.get(mount.mnt_id)

    def prepare(self, mounts: list[Mount]) -> None:
        """Make copies of ``mounts`` (one helper for all of them)."""
        want = list({m.mnt_id: m for m in mounts if m.mnt_id not in self._views}.values())
        if not want:
            return
        for m in want:
            self._views[m.mnt_id] = None
        if self.pid is None:
            return
        try:
            paths = self._stack.enter_context(self.ctx.filesystem_views(self.tree, want))
        except DumpError:
            return  # no copy: those layers stay unverifiable, like on a recorded /proc
        for m, path in zip(want, paths, strict=True):
            with contextlib.suppress(OSError, SyscallError):
                view = RootView(path)
                self._stack.callback(view.close)
                self._views[m.mnt_id] = view

    def close(self) -> None:
        self._stack.close()
        self._views.clear()
