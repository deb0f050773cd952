"""The mount model: one frozen record per mount, one tree per mount namespace.

Paths are ``str`` decoded with ``os.fsdecode`` (surrogateescape), so names that are not UTF-8
survive byte for byte: ``os.fsencode(mount.mountpoint)`` gives back the kernel's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import attrs

from .errors import MountNotFoundError

# Per-mount flags as mount(2) knows them; mountinfo's per-mount options map onto these.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

PER_MOUNT_FLAGS: Mapping[str, int] = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


class Dev(NamedTuple):
    """A device number as mountinfo shows it (``major:minor``); ordered by (major, minor).

    A named tuple, like :class:`Mount`: hashed in C, which the dump does per mount and per
    open file (indexes by device)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Dev:
        major, sep, minor = text.partition(":")
        if not sep:
            raise ValueError(f"device {text!r} is not major:minor")
        return cls(int(major), int(minor))

    @classmethod
    def from_kdev(cls, value: int) -> Dev:
        """From a kernel/userspace ``dev_t`` (``os.stat().st_dev``)."""
        import os

        return cls(os.major(value), os.minor(value))

    @property
    def kdev(self) -> int:
        """The in-kernel encoding CRIU stores in ``root_dev`` and image names (MKKDEV)."""
        return (self.major << 20) | self.minor

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


@attrs.frozen
class Propagation:
    """Propagation state of one mount; peer-group ids are those of the dumped kernel."""

    shared: int | None = None
    master: int | None = None
    propagate_from: int | None = None
    unbindable: bool = False

    @property
    def private(self) -> bool:
        return self.shared is None and self.master is None and not self.unbindable

    def describe(self) -> str:
        """The mountinfo optional-fields spelling (``shared:1 master:2``), or ``private``."""
        parts = []
        if self.shared is not None:
            parts.append(f"shared:{self.shared}")
        if self.master is not None:
            parts.append(f"master:{self.master}")
        if self.propagate_from is not None:
            parts.append(f"propagate_from:{self.propagate_from}")
        if self.unbindable:
            parts.append("unbindable")
        return " ".join(parts) or "private"


class Mount(NamedTuple):
    """One mount as the kernel reports it (mountinfo or statmount).

    Immutable like every record here, but a named tuple rather than an attrs class: a table
    makes one per mount, and a tuple is built in C (``tuple.__new__(Mount, fields)``, what
    the mountinfo parser does) in a sixth of the time of a frozen attrs ``__init__``, with
    fields read as fast as slots. ``mount._replace(...)`` makes a changed copy.
    """

    mnt_id: int
    parent_id: int
    dev: Dev
    root: str
    mountpoint: str
    fstype: str
    source: str
    mount_options: tuple[str, ...] = ()
    super_options: tuple[str, ...] = ()
    propagation: Propagation = Propagation()
    #: The root field carried `` (deleted)``: the mounted file or directory was unlinked.
    root_deleted: bool = False
    #: statmount's 64-bit unique id, where the reader had it.
    unique_id: int | None = None

    @property
    def flags(self) -> int:
        """Per-mount flags (``MS_*``) from the per-mount options."""
        value = 0
        for opt in self.mount_options:
            value |= PER_MOUNT_FLAGS.get(opt, 0)
        return value

    @property
    def readonly(self) -> bool:
        return "ro" in self.mount_options

    def super_option(self, key: str) -> str | None:
        """Value of a superblock option ``key=value`` (``""`` for a bare flag), or None."""
        for opt in self.super_options:
            name, sep, value = opt.partition("=")
            if name == key:
                return value if sep else ""
        return None

    def describe(self) -> str:
        """How error messages name a mount: mountpoint, fstype and source."""
        return f"mount {self.mnt_id} at {self.mountpoint!r} ({self.fstype}, source {self.source!r})"


def _parent_paths(path: str) -> Iterator[str]:
    """Proper ancestors of an absolute path, nearest first: /a/b/c -> /a/b, /a, /."""
    while path != "/":
        head = path.rsplit("/", 1)[0]
        if head == path:
            return  # a relative path (a crafted image): no ancestor, never a loop
        path = head or "/"
        yield path


def _components_prefixes(path: str) -> Iterator[str]:
    """Prefixes of an absolute path, shortest first: /a/b -> /, /a, /a/b."""
    yield "/"
    if path == "/":
        return
    acc = ""
    for part in path.strip("/").split("/"):
        if not part:
            continue
        acc = f"{acc}/{part}"
        yield acc


def _mount_tuple(mounts: Iterable[Mount]) -> tuple[Mount, ...]:
    # A named converter: mypy cannot infer the element type through ``converter=tuple``.
    return tuple(mounts)


@attrs.frozen
class MountTree:
    """The mounts of one mount namespace, in the order the kernel listed them.

    Lookups are backed by indexes built once (by id, by parent, by device, by place), so every
    query below is constant or proportional to the depth of a path, never to the number of mounts.
    """

    mounts: tuple[Mount, ...] = attrs.field(converter=_mount_tuple)
    #: The namespace's identity (the inode of /proc/PID/ns/mnt), 0 when unknown.
    ns_id: int = 0
    _by_id: dict[int, Mount] = attrs.field(init=False, repr=False, eq=False)
    _children: dict[int, list[Mount]] = attrs.field(init=False, repr=False, eq=False)
    _by_dev: dict[Dev, list[Mount]] = attrs.field(init=False, repr=False, eq=False)
    _at: dict[tuple[int, str], Mount] = attrs.field(init=False, repr=False, eq=False)
    _root: Mount | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        mounts = self.mounts
        by_id = {m.mnt_id: m for m in mounts}
        children: dict[int, list[Mount]] = {}
        at: dict[tuple[int, str], Mount] = {}
        by_dev: dict[Dev, list[Mount]] = {}
        base = None
        for m in mounts:
            group = by_dev.get(m.dev)
            if group is None:
                by_dev[m.dev] = [m]
            else:
                group.append(m)
            pid = m.parent_id
            if pid != m.mnt_id and pid in by_id:
                kids = children.get(pid)
                if kids is None:
                    children[pid] = [m]
                else:
                    kids.append(m)
                # Later entries win: a mount tucked at the same place by propagation shows later.
                at[(pid, m.mountpoint)] = m
            elif m.mountpoint == "/":
                # The last parentless mount at "/" (stacked roots: the later one is on top);
                # kept so that lookup() costs the depth of the path, not a scan of the table.
                base = m
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_children", children)
        object.__setattr__(self, "_by_dev", by_dev)
        object.__setattr__(self, "_at", at)
        object.__setattr__(self, "_root", None if base is None else self._top_of(base, "/"))

    @classmethod
    def from_mounts(cls, mounts: Iterable[Mount], ns_id: int = 0) -> MountTree:
        return cls(tuple(mounts), ns_id)

    def __len__(self) -> int:
        return len(self.mounts)

    def __iter__(self) -> Iterator[Mount]:
        return iter(self.mounts)

    def __contains__(self, mnt_id: object) -> bool:
        return mnt_id in self._by_id

    def get(self, mnt_id: int) -> Mount:
        try:
            return self._by_id[mnt_id]
        except KeyError:
            raise MountNotFoundError(
                f"mount id {mnt_id} is not in mount namespace {self.ns_id}"
            ) from None

    def find(self, mnt_id: int) -> Mount | None:
        return self._by_id.get(mnt_id)

    def parent(self, mount: Mount) -> Mount | None:
        if mount.parent_id == mount.mnt_id:
            return None
        return self._by_id.get(mount.parent_id)

    def children(self, mount: Mount | int) -> tuple[Mount, ...]:
        mnt_id = mount if isinstance(mount, int) else mount.mnt_id
        return tuple(self._children.get(mnt_id, ()))

    def by_dev(self, dev: Dev) -> tuple[Mount, ...]:
        """Every mount of the superblock with this device number, in kernel order."""
        return tuple(self._by_dev.get(dev, ()))

    def devices(self) -> Iterator[Dev]:
        return iter(self._by_dev)

    @property
    def roots(self) -> tuple[Mount, ...]:
        """Mounts whose parent is not in this namespace's view (the root, and chroot leftovers)."""
        by_id = self._by_id
        return tuple(m for m in self.mounts if m.parent_id == m.mnt_id or m.parent_id not in by_id)

    @property
    def root(self) -> Mount:
        """The mount at ``/`` that everything else hangs from (the topmost one if stacked)."""
        if self._root is None:
            raise MountNotFoundError(f"mount namespace {self.ns_id} has no root mount")
        return self._root

    def _top_of(self, mount: Mount, place: str) -> Mount:
        """Follow mounts stacked on ``place`` over ``mount`` up to the visible one."""
        while (nxt := self._at.get((mount.mnt_id, place))) is not None:
            mount = nxt
        return mount

    def lookup(self, path: str) -> Mount:
        """The mount that an absolute path lands on, overmounts included (the visible one)."""
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} is not absolute")
        cur = self.root
        for prefix in _components_prefixes(path):
            if prefix != "/":
                cur = self._top_of(cur, prefix)
        return cur

    def relative_path(self, mount: Mount, path: str) -> str:
        """``path`` (absolute, in the namespace) as a path inside ``mount``'s filesystem."""
        mp = mount.mountpoint
        if path == mp:
            rest = ""
        elif mp == "/":
            rest = path
        elif path.startswith(mp + "/"):
            rest = path[len(mp) :]
        else:
            raise ValueError(f"{path!r} is not under {mount.describe()}")
        root = mount.root.rstrip("/")
        return (root + rest) or "/"

    def overmounts(self) -> dict[int, tuple[Mount, ...]]:
        """Which mounts cover others: covering mount id -> the mounts it hides.

        A mount hides a mount stacked under it at the same place (its parent has the same
        mountpoint), and siblings attached to the same parent at or below its mountpoint.
        """
        covered: dict[int, list[Mount]] = {}
        for parent_id, kids in self._children.items():
            parent = self._by_id[parent_id]
            at_place: dict[str, Mount] = {}
            for k in kids:
                at_place[k.mountpoint] = k  # the last one at a place is the visible one
            for k in kids:
                if k.mountpoint == parent.mountpoint:
                    covered.setdefault(k.mnt_id, []).append(parent)
                for anc in _parent_paths(k.mountpoint):
                    over = at_place.get(anc)
                    if over is not None and over is not k:
                        covered.setdefault(over.mnt_id, []).append(k)
                        break
                dup = at_place[k.mountpoint]
                if dup is not k:
                    covered.setdefault(dup.mnt_id, []).append(k)
        return {k: tuple(v) for k, v in covered.items()}

    def topo_order(self) -> tuple[Mount, ...]:
        """Every mount after its parent (kernel order among siblings)."""
        out: list[Mount] = []
        children = self._children
        stack = list(reversed(self.roots))
        pop, push, extend = stack.pop, out.append, stack.extend
        while stack:
            m = pop()
            push(m)
            kids = children.get(m.mnt_id)
            if kids is not None:
                extend(reversed(kids))
        return tuple(out)
