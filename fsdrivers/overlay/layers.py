"""Finding where each layer of an overlay really is now, with identity checks.

The option strings are what the mounter passed (or the d_path of a layer fd at mount time):
they go stale after pivot_root/chroot (an old prefix stays on), they may be relative to the
mounter's cwd, and a layer directory may have been overmounted since. So every layer gets a
short, ordered list of candidate paths (as shown; under the overlay's ancestors for a chroot or
a relative path; with leading components stripped for a stale prefix; finally the same path on
the dumping host, for a container root mounted by a runtime), and each candidate is opened
inside the dumped namespace's root and checked:

* the mount it lands on (statx mount id) must be in the dumped tree; a mount attached *after*
  the overlay right on the layer path means the layer is the directory underneath (its inode is
  read from the parent directory's entry, which readdir reports without crossing the mount);
* identity against the overlay itself: a non-directory entry of the layer that no layer above
  provides must be the very file the overlay shows under that name (inode, size, mtime; the
  overlay reports the real inode, on a per-layer pseudo device when xino is off; after a
  copy-up, the origin's inode number: see :mod:`.identity`). A candidate that contradicts
  this is rejected; one that confirms it wins over one that cannot be checked (empty layer
  directory, data-only layer).

When none of those is confirmed, two wider searches follow (:mod:`.hidden`): the tail of the
string below every mount whose root starts it (a mount moved since), and, if nothing usable
was found at all, the candidate paths in childless copies of the mounts that would hold them
if nothing covered them (a layer under a later mount). An unchecked directory on a filesystem
first mounted after the overlay is only a last resort.

Cost: a few syscalls per candidate, candidates bounded by the depth of the path; no scan of
the mount table; a helper process only for layers nothing else finds.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import posixpath
from collections.abc import Generator, Iterator, Sequence

import attrs
from criu_fw.driver import Dev, DumpError, Mount, MountTree, SyscallError

from .hidden import HiddenViews, TreeIndex, moved_candidates
from .identity import origin_checker, origin_xattr, same_file
from .options import LayerSpec, OverlayOptions, Role
from .paths import candidates, under
from .walk import RootView, Stat, dir_entries, fd_path, statx

#: Open errors that just mean "not this candidate".
_MISS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EACCES, errno.ENAMETOOLONG}
)
#: Contradicting files per layer before a candidate counts as rejected.
_SAMPLES = 3
#: Files looked at per candidate at most (a large directory of files that prove nothing).
_LOOKS = 64


#: A directory entry as :func:`.walk.dir_entries` gives it: (d_ino, is_dir, is_whiteout).
Entry = tuple[int, bool, bool]


class OverlayLayerError(DumpError, LookupError):
    """A layer of an overlay cannot be found (or confirmed) where the dump can reach it."""


class Verdict(enum.IntEnum):
    CONTRADICTED = 0
    UNKNOWN = 1
    CONFIRMED = 2


@attrs.frozen
class ResolvedLayer:
    """Where one layer is: a mount of the dumped namespace and a path below its mountpoint,
    or (``mnt_id is None``) a path on the dumping host."""

    spec: LayerSpec
    mnt_id: int | None
    #: Relative to where mount ``mnt_id`` is mounted (``/`` is its root); a host path otherwise.
    path: str
    dev: Dev
    ino: int
    #: How it was found: ``as shown``, ``relative``, ``chroot``, ``stale prefix``,
    #: ``overmounted`` or ``host``.
    found: str
    verdict: Verdict = Verdict.UNKNOWN

    @property
    def external(self) -> bool:
        return self.mnt_id is None


@attrs.define
class _Probe:
    layer: ResolvedLayer
    fd: int | None  # an O_PATH fd of the directory, for the identity check
    #: Only a confirmed verdict counts (a wide search, where "exists" proves nothing).
    strict: bool = False
    #: On a filesystem first mounted after the overlay: an unchecked directory there is
    #: taken only when nothing else is found (a later tmpfs with an empty decoy directory).
    late: bool = False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LayerResolver:
    """Resolves the layers of one overlay mount of one dumped namespace."""

    def __init__(
        self,
        overlay: Mount,
        tree: MountTree,
        view: RootView,
        *,
        host: RootView | None = None,
        cwd: str | None = None,
        positions: dict[int, int] | None = None,
        index: TreeIndex | None = None,
        hidden: HiddenViews | None = None,
        host_bases: tuple[str, ...] = (),
    ) -> None:
        self.overlay = overlay
        self.tree = tree
        self.view = view
        self.host = host
        self.cwd = cwd
        self.positions = positions if positions is not None else _positions(tree)
        self.index = index
        self.hidden = hidden
        #: Host directories relative layer strings are tried against (see parse.py).
        self.host_bases = host_bases
        self._ovl_fd: int | None = None
        self._origin = origin_xattr(())

    # -- the overlay's own view, for identity checks ------------------------------------

    def _open_overlay(self) -> int | None:
        try:
            fd = self.view.open(self.overlay.mountpoint)
        except SyscallError:
            return None
        if statx("", fd).mnt_id == self.overlay.mnt_id:
            return fd
        os.close(fd)
        # Something covers the overlay: look at it in a childless copy (same superblock, so
        # the same inode numbers), else its layers cannot be checked.
        view = self.hidden.view(self.overlay) if self.hidden is not None else None
        if view is None:
            return None
        try:
            return view.open("/")
        except SyscallError:
            return None

    # -- probing one candidate -------------------------------------------------------------

    def _probe_ns(self, spec: LayerSpec, path: str, how: str) -> tuple[_Probe | None, Mount | None]:
        """The directory ``path`` leads to, and the mount it is the root of (if any): that
        mount may have been put there after the overlay, on top of the real layer."""
        try:
            fd = self.view.open(path)
        except SyscallError as e:
            if e.errno in _MISS:
                return None, None
            raise
        keep = False
        try:
            st = statx("", fd)
            mount = self.tree.find(st.mnt_id)
            if mount is None or not st.is_dir or mount.dev == self.overlay.dev:
                return None, None
            rel = self._rel_in(mount, fd, path, st)
            if rel is None:
                return None, None
            keep = True
            probe = _Probe(ResolvedLayer(spec, mount.mnt_id, rel, st.dev, st.ino, how), fd)
            probe.late = self._late(mount)
            return probe, (mount if rel == "/" else None)
        finally:
            if not keep:
                os.close(fd)

    def _rel_in(self, mount: Mount, fd: int, path: str, st: Stat) -> str | None:
        """The canonical path of ``fd`` below ``mount``'s mountpoint, checked by re-opening."""
        for shown in (fd_path(fd), path):
            rel = under(shown, mount.mountpoint)
            if rel is None:
                continue
            try:
                again = self.view.stat(shown, follow=True)
            except SyscallError:
                continue
            if (again.dev, again.ino, again.mnt_id) == (st.dev, st.ino, mount.mnt_id):
                return rel
        return None

    def _late(self, mount: Mount) -> bool:
        """Whether ``mount``'s filesystem first appears after the overlay in the listing."""
        if self.index is None:
            return False
        first = self.index.first_seen.get(mount.dev, -1)
        return first > self.positions.get(self.overlay.mnt_id, -1)

    def _after_overlay(self, mount: Mount) -> bool:
        return self.positions.get(mount.mnt_id, -1) > self.positions.get(self.overlay.mnt_id, -1)

    def _covered(self, spec: LayerSpec, over: Mount) -> _Probe | None:
        """The directory a later mount ``over`` hides: the layer the overlay was given.

        Opened in a childless copy of the mount below when the namespace can be entered, so
        that it is checked against the overlay like any other; else only its inode is read
        from the parent directory's entry (readdir does not cross mounts), unchecked."""
        below = self.tree.parent(over)
        if below is None:
            return None
        rel = under(over.mountpoint, below.mountpoint)
        if rel is None:
            return None
        view = self.hidden.view(below) if self.hidden is not None else None
        if view is not None:
            try:
                fd = view.open(rel)
            except SyscallError:
                fd = -1
            if fd >= 0:
                st = statx("", fd)
                layer = ResolvedLayer(spec, below.mnt_id, rel, st.dev, st.ino, "overmounted")
                return _Probe(layer, fd)
        if below.mountpoint == over.mountpoint:
            return None  # stacked on the layer mount's root: no entry to read it from
        try:
            pfd = self.view.open(posixpath.dirname(over.mountpoint))
        except SyscallError:
            return None
        try:
            entry = dir_entries(pfd).get(posixpath.basename(over.mountpoint))
        finally:
            os.close(pfd)
        if entry is None or not entry[1]:
            return None
        layer = ResolvedLayer(spec, below.mnt_id, rel, below.dev, entry[0], "overmounted")
        return _Probe(layer, None)

    def _probe_host(self, spec: LayerSpec, path: str) -> _Probe | None:
        if self.host is None or not path.startswith("/"):
            return None
        try:
            fd = self.host.open(path)
        except SyscallError as e:
            if e.errno in _MISS:
                return None
            raise
        st = statx("", fd)
        if not st.is_dir or st.dev == self.overlay.dev:
            os.close(fd)
            return None
        layer = ResolvedLayer(spec, None, fd_path(fd), st.dev, st.ino, "host")
        return _Probe(layer, fd)

    # -- identity against the overlay ----------------------------------------------------

    def _verdict(
        self, probe: _Probe, above: set[str], upper: ResolvedLayer | None
    ) -> tuple[Verdict, dict[str, Entry]]:
        layer = probe.layer
        if layer.spec.role is Role.WORK:
            if upper is None:
                return Verdict.UNKNOWN, {}
            if layer.dev != upper.dev:
                return Verdict.CONTRADICTED, {}
            if probe.fd is None:
                return Verdict.UNKNOWN, {}
            has_work = dir_entries(probe.fd).get("work", (0, False, False))[1]
            return (Verdict.CONFIRMED if has_work else Verdict.UNKNOWN), {}
        if probe.fd is None:
            return Verdict.UNKNOWN, {}
        entries = dir_entries(probe.fd)
        if layer.spec.role is Role.DATA or self._ovl_fd is None or self.overlay.root != "/":
            return Verdict.UNKNOWN, entries
        matched = mismatched = looked = 0
        for name, (_ino, is_dir, special) in entries.items():
            if is_dir or special or name in above:
                continue
            looked += 1
            if looked > _LOOKS:
                break
            try:
                mine = statx(name, probe.fd, follow=False)
                shown = statx(name, self._ovl_fd, follow=False)
            except SyscallError:
                continue  # hidden (opaque upper, whiteout) or racing: no evidence
            same = same_file(mine, shown, origin_checker(probe.fd, name, self._origin))
            if same is None:
                continue
            if same:
                matched += 1
                break
            mismatched += 1
            if mismatched >= _SAMPLES:
                break
        if matched:
            return Verdict.CONFIRMED, entries
        return (Verdict.CONTRADICTED if mismatched else Verdict.UNKNOWN), entries

    # -- the whole overlay ---------------------------------------------------------------

    def resolve(self, options: OverlayOptions) -> tuple[ResolvedLayer, ...]:
        """Every layer (upper, work, lowers topmost first, data-only last), or raise."""
        self._ovl_fd = self._open_overlay()
        self._origin = origin_xattr(options.features)
        try:
            above: set[str] = set()
            out: list[ResolvedLayer] = []
            upper: ResolvedLayer | None = None
            for spec in options.layers:
                layer, entries = self._resolve_one(spec, above, upper)
                if spec.role is Role.UPPER:
                    upper = layer
                if spec.role in (Role.UPPER, Role.LOWER):
                    above.update(entries)
                out.append(layer)
            return tuple(out)
        finally:
            if self._ovl_fd is not None:
                os.close(self._ovl_fd)
                self._ovl_fd = None

    def _probes(self, spec: LayerSpec) -> Generator[_Probe, Verdict, None]:
        """Candidates, most likely first; each probe's verdict is sent back in, so that the
        wider searches run only when needed (the caller stops at the first confirmed one)."""
        usable = False

        def counts(probe: _Probe, verdict: Verdict) -> bool:
            return verdict is Verdict.CONFIRMED or (verdict is Verdict.UNKNOWN and not probe.late)

        tried = candidates(spec, self.overlay.mountpoint, self.cwd)
        for path, how in tried:
            probe, top = self._probe_ns(spec, path, how)
            if probe is None:
                continue
            # A mount right on the layer path: a later one hides the layer (its directory
            # underneath comes first), an earlier one is the layer unless the overlay says no.
            later = top is not None and self._after_overlay(top)
            try:
                if top is not None and later:
                    covered = self._covered(spec, top)
                    if covered is not None:
                        usable |= counts(covered, (yield covered))
                verdict = yield probe
                usable |= counts(probe, verdict)
                if top is not None and not later and verdict is Verdict.CONTRADICTED:
                    covered = self._covered(spec, top)
                    if covered is not None:
                        usable |= counts(covered, (yield covered))
            finally:
                probe.close()  # idempotent; the search may stop before it was looked at
        for text in spec.spellings():
            paths = [text] if text.startswith("/") else [
                posixpath.join(base, text) for base in self.host_bases
            ]
            for path in paths:
                probe = self._probe_host(spec, path)
                if probe is None:
                    continue
                try:
                    usable |= counts(probe, (yield probe))
                finally:
                    probe.close()
        if usable or self.index is None:
            return
        # Nothing usable so far (an unchecked directory, e.g. an empty upper, is usable: the
        # wider searches cost about 30 ms per layer in a namespace of 1,000 mounts). A moved
        # mount first: no process to start, and only what the overlay confirms counts, so
        # data-only layers (never confirmable) skip it.
        if spec.role is not Role.DATA:
            for text in spec.spellings():
                for path, _m in moved_candidates(text, self.index):
                    probe, _top = self._probe_ns(spec, path, "moved")
                    if probe is not None:
                        probe.strict = True
                        try:
                            yield probe
                        finally:
                            probe.close()
        # Directories hidden under later mounts: needs a helper process in the namespace.
        for probe in self._hidden_probes(spec, tried):
            try:
                yield probe
            finally:
                probe.close()

    def _hidden_probes(self, spec: LayerSpec, tried: list[tuple[str, str]]) -> Iterator[_Probe]:
        """The candidate paths again, in copies of the mounts that would hold them if
        nothing covered them."""
        if self.hidden is None or self.index is None:
            return
        pairs = [
            (path, m)
            for path, _how in tried
            for m in self.index.holders(path)
            if m.dev != self.overlay.dev
        ]
        self.hidden.prepare([m for _, m in pairs])
        for path, m in pairs:
            view = self.hidden.view(m)
            rel = under(path, m.mountpoint)
            if view is None or rel is None:
                continue
            try:
                fd = view.open(rel)
            except SyscallError as e:
                if e.errno in _MISS:
                    continue
                raise
            st = statx("", fd)
            if not st.is_dir:
                os.close(fd)
                continue
            yield _Probe(ResolvedLayer(spec, m.mnt_id, rel, st.dev, st.ino, "hidden"), fd)

    def _resolve_one(
        self, spec: LayerSpec, above: set[str], upper: ResolvedLayer | None
    ) -> tuple[ResolvedLayer, dict[str, Entry]]:
        fallback: tuple[ResolvedLayer, dict[str, Entry]] | None = None
        late: tuple[ResolvedLayer, dict[str, Entry]] | None = None
        contradicted: dict[str, None] = {}  # ordered, each directory once
        #: Several routes (as shown, chroot, hidden copy...) often lead to one directory.
        seen: dict[tuple[object, ...], tuple[Verdict, dict[str, Entry]]] = {}
        probes = self._probes(spec)
        probe = next(probes, None)
        while probe is not None:
            layer = probe.layer
            key = (layer.mnt_id, layer.path, layer.dev, layer.ino, probe.fd is None)
            try:
                known = seen.get(key)
                if known is None:
                    known = seen[key] = self._verdict(probe, above, upper)
                verdict, entries = known
            finally:
                probe.close()
            layer = attrs.evolve(probe.layer, verdict=verdict)
            if verdict is Verdict.CONFIRMED:
                probes.close()
                return layer, entries
            if verdict is Verdict.UNKNOWN and not probe.strict:
                if probe.late and late is None:
                    late = (layer, entries)
                elif not probe.late and fallback is None:
                    fallback = (layer, entries)
            elif verdict is Verdict.CONTRADICTED:
                contradicted[_where(layer, self.tree)] = None
            try:
                probe = probes.send(verdict)
            except StopIteration:
                probe = None
        best = fallback if fallback is not None else late
        if best is not None:
            return best
        why = (
            f"directories at {', '.join(contradicted)} are not the layer the overlay shows"
            if contradicted
            else "no candidate path exists in the dumped mount namespace or on this host"
        )
        raise OverlayLayerError(
            f"{self.overlay.describe()}: {spec.option} layer {spec.raw!r} not found ({why}); "
            f"declare the overlay external with --external mnt[{self.overlay.mountpoint}]:KEY"
        )


def _where(layer: ResolvedLayer, tree: MountTree) -> str:
    if layer.mnt_id is None:
        return f"host:{layer.path}"
    mount = tree.find(layer.mnt_id)
    base = mount.mountpoint if mount is not None else f"mount {layer.mnt_id}:"
    rest = layer.path.strip("/")
    return (base.rstrip("/") + "/" + rest) if rest else base


def _positions(tree: MountTree) -> dict[int, int]:
    """Kernel listing order (= creation order for mounts of one namespace)."""
    return {m.mnt_id: i for i, m in enumerate(tree.mounts)}


def namespace_path(tree: MountTree, layer: ResolvedLayer) -> str:
    """The layer as an absolute path of the dumped namespace (host path for external ones)."""
    return _where(layer, tree)


def open_views(root: str, host_root: str | None) -> tuple[RootView, RootView | None]:
    """The dumped namespace's root and, when it is not the same namespace, the dumper's."""
    view = RootView(root)
    host = None
    if host_root is not None:
        try:
            host = RootView(host_root)
        except OSError:
            host = None
        if host is not None and _same_root(view, host):
            host.close()
            host = None
    return view, host


def _same_root(a: RootView, b: RootView) -> bool:
    with contextlib.suppress(SyscallError):
        sa, sb = statx("", a.fd), statx("", b.fd)
        return (sa.dev, sa.ino, sa.mnt_id) == (sb.dev, sb.ino, sb.mnt_id)
    return False


__all__: Sequence[str] = (
    "LayerResolver",
    "OverlayLayerError",
    "ResolvedLayer",
    "Verdict",
    "candidates",
    "namespace_path",
    "open_views",
)
