"""Does this dump's kernel report overlay files on the overlay, or on the layer?

Today's kernels name the overlay mount and the overlay path for an open file and for a
mapping. Kernels before 4.2 named the underlying layer's mount and path for both, and some
distribution kernels after that still do for one kind (mappings: kernels that put the real
file into ``vm_file``). A file really opened on a layer's mount looks exactly the same, so the
decision is made per dump and per kind (``fd``, ``map``) from behaviour, in this order:

1. **probe** (live dumps): a regular file of an overlay is opened and mapped by the dumper
   through the dumped namespace's root; the mount id the kernel gives for that fd (fdinfo) and
   for that mapping (statx of its ``map_files`` link, as the dump reads mappings) is the
   overlay's (right) or a layer's (misreport);
2. **the dumped processes' own reports** (a recording, or no file to probe): a record of that
   kind on an overlay mount (fd mount id; for a mapping, the device in ``maps``) proves the
   kernel right; a record on a layer path whose overlay name the same process also shows on
   the overlay (``exe``, an fd or a mapping: one file reported both ways) proves a misreport.
   When both occur the process opened a layer file directly: the kernel is right;
3. **the kernel release**, as a hint only when nothing was observed: before 4.2 misreports.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import posixpath
import re
from collections.abc import Iterator

from criu_fw.driver import Dev, DumpContext, Mount, MountTree, SyscallError

from .index import OverlayIndex, index_of
from .paths import under
from .walk import RootView, statx

KINDS = ("fd", "map")
_RELEASE = re.compile(r"(\d+)\.(\d+)")
#: Kernels before 4.2 report an overlay file's mount and path as the layer's.
FIXED_IN = (4, 2)
#: Directory entries the probe looks at before giving up (an overlay of empty directories).
_PROBE_ENTRIES = 256
_PROBE_DEPTH = 4


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


# -- 1. the probe ------------------------------------------------------------------------


def _regular_files(view: RootView, top: str) -> Iterator[str]:
    """Non-empty regular files below ``top`` (a namespace path), breadth first, bounded."""
    queue = [(top, 0)]
    budget = _PROBE_ENTRIES
    while queue and budget > 0:
        path, depth = queue.pop(0)
        try:
            dfd = view.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except SyscallError:
            continue
        try:
            with os.scandir(dfd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False), e) for e in it]
        except OSError:
            continue
        finally:
            os.close(dfd)
        for name, is_dir, e in entries:
            budget -= 1
            if budget < 0:
                return
            sub = posixpath.join(path, name)
            if is_dir:
                if depth + 1 < _PROBE_DEPTH:
                    queue.append((sub, depth + 1))
            elif e.is_file(follow_symlinks=False):
                yield sub


def _fdinfo_mnt_id(fd: int) -> int | None:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return None


def _mapping_mnt_id(fd: int) -> int | None:
    """Map one page of ``fd`` privately and stat its ``map_files`` link's mount id."""
    with mmap.mmap(fd, 1, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
        view = ctypes.c_char.from_buffer(m)
        try:
            start = ctypes.addressof(view)
        finally:
            del view  # the mmap refuses to close while a buffer is exported
        with open("/proc/self/maps") as f:
            for line in f:
                lo, _, rest = line.partition("-")
                if int(lo, 16) == start:
                    end = rest.split(" ", 1)[0]
                    return statx(f"/proc/self/map_files/{lo}-{end}").mnt_id
    return None


def probe(view: RootView, overlay: Mount, layers: set[int]) -> dict[str, bool]:
    """``kind -> misreports`` for what one overlay file, opened and mapped here, shows."""
    out: dict[str, bool] = {}
    for path in _regular_files(view, overlay.mountpoint):
        try:
            fd = view.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except SyscallError:
            continue
        try:
            if os.fstat(fd).st_size == 0:
                continue
            seen = {"fd": _fdinfo_mnt_id(fd)}
            with contextlib.suppress(OSError, ValueError, SyscallError):
                seen["map"] = _mapping_mnt_id(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        for kind, mnt_id in seen.items():
            if mnt_id == overlay.mnt_id:
                out[kind] = False
            elif mnt_id in layers:
                out[kind] = True
        return out
    return out


# -- 2. the dumped processes' own reports ------------------------------------------------


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _ppid(proc_root: str, pid: int) -> int | None:
    data = _read(f"{proc_root}/{pid}/stat")
    if data is None:
        return None
    fields = data.rpartition(b")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None


def _pids(proc_root: str, root_pid: int) -> list[int]:
    """The dumped tree: ``root_pid`` and its descendants (by every process's ppid, like the
    dump engine finds them)."""
    kids: dict[int, list[int]] = {}
    for name in _listdir(proc_root):
        if name.isdigit():
            ppid = _ppid(proc_root, int(name))
            if ppid is not None:
                kids.setdefault(ppid, []).append(int(name))
    out = [root_pid]
    for pid in out:
        out.extend(sorted(kids.get(pid, ())))
    return out


def _tree_of(ctx: DumpContext, pid: int) -> MountTree | None:
    if len(ctx.trees) == 1:
        return next(iter(ctx.trees.values()))
    link = _readlink(f"{ctx.proc_root}/{pid}/ns/mnt")
    for ns_id, other in ctx.ns_pids.items():
        if link is not None and _readlink(f"{ctx.proc_root}/{other}/ns/mnt") == link:
            return ctx.trees.get(ns_id)
    return None


def _strip(path: str) -> str:
    return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path


class _Evidence:
    """What one process's records say, per kind."""

    def __init__(self, tree: MountTree, index: OverlayIndex) -> None:
        self.tree = tree
        self.index = index
        self.overlays = {m.mnt_id: m for m in tree.mounts if m.fstype == "overlay"}
        self.overlay_devs = {m.dev for m in self.overlays.values()}
        self.on_overlay: set[str] = set()
        self.on_layer: list[tuple[str, set[str]]] = []
        self.right: set[str] = set()

    def overlay_names(self, mount: Mount, path: str) -> set[str]:
        """The overlay paths under which a layer file at ``path`` on ``mount`` would show."""
        rel = under(path, mount.mountpoint)
        if rel is None:
            return set()
        out = set()
        for rest, use in self.index.find(self.tree.ns_id, mount.mnt_id, rel):
            ovl = self.overlays.get(use.overlay_mnt_id)
            if ovl is not None:
                out.add(posixpath.normpath(ovl.mountpoint.rstrip("/") + "/" + rest.lstrip("/")))
        return out

    def add(self, kind: str, path: str, mount: Mount | None, on_overlay: bool) -> None:
        if on_overlay:
            self.right.add(kind)
            self.on_overlay.add(path)
        elif mount is not None:
            names = self.overlay_names(mount, path)
            if names:
                self.on_layer.append((kind, names))

    def wrong(self) -> set[str]:
        return {kind for kind, names in self.on_layer if names & self.on_overlay}


def _lookup(tree: MountTree, path: str) -> Mount | None:
    try:
        return tree.lookup(path)
    except Exception:  # a path of another root, or nothing mounted there
        return None


def from_processes(ctx: DumpContext, index: OverlayIndex) -> dict[str, bool]:
    """``kind -> misreports`` from the records of the dumped processes (see module doc)."""
    out: dict[str, bool] = {}
    proc = ctx.proc_root
    for pid in _pids(proc, ctx.root_pid):
        tree = _tree_of(ctx, pid)
        if tree is None:
            continue
        ev = _Evidence(tree, index)
        exe = _readlink(f"{proc}/{pid}/exe")
        if exe is not None and exe.startswith("/"):
            mount = _lookup(tree, _strip(exe))
            if mount is not None and mount.fstype == "overlay":
                ev.on_overlay.add(_strip(exe))
        for name in _listdir(f"{proc}/{pid}/fd"):
            target = _readlink(f"{proc}/{pid}/fd/{name}")
            info = _read(f"{proc}/{pid}/fdinfo/{name}") or b""
            m = re.search(rb"^mnt_id:\s*(\d+)", info, re.M)
            if target is None or not target.startswith("/") or m is None:
                continue
            mount = tree.find(int(m.group(1)))
            ev.add("fd", _strip(target), mount, mount is not None and mount.fstype == "overlay")
        for line in (_read(f"{proc}/{pid}/maps") or b"").splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith(b"/"):
                continue
            major, minor = fields[3].split(b":")
            dev = Dev(int(major, 16), int(minor, 16))
            path = _strip(os.fsdecode(fields[5]))
            ev.add("map", path, _lookup(tree, path), dev in ev.overlay_devs)
        for kind in KINDS:
            if kind in ev.right:
                out[kind] = False
            elif kind in ev.wrong():
                out.setdefault(kind, True)
        if len(out) == len(KINDS) and not any(out.values()):
            break
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.EACCES):
            return []
        raise


# -- the decision ----------------------------------------------------------------------------


def misreports(ctx: DumpContext, kind: str) -> bool:
    """Whether this dump's kernel reports overlay files of ``kind`` on the layer's mount."""
    index = index_of(ctx)
    got = index.misreports.get(kind)
    if got is not None:
        return got
    if not index.processes_read:
        index.processes_read = True
        for k, value in from_processes(ctx, index).items():
            index.misreports.setdefault(k, value)
            index.decided_by.setdefault(k, "processes")
    got = index.misreports.get(kind)
    if got is None:
        got = index.misreports[kind] = bool(release_misreports(ctx.proc_root))
        index.decided_by[kind] = "release"
    return got
