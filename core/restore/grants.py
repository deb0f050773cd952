"""What a restore may take from the host: only what the operator granted on the command line.

Images are untrusted; the operator's command line is trusted. A path outside the namespaces
being built is used only through one of these grants:

* ``--external mnt[KEY]:PATH``: the external mount dumped under KEY comes from PATH;
* ``--root DIR``: the root mount (and binds of directories below it) comes from DIR;
* ``--allow-host DIR``: host directories that images name by path (overlay layers of a
  container root on the host's storage, mounts ``--external-auto`` recorded by their host
  path) may be used when they lie below DIR. The restore may bind them, and an overlay
  writes into its upper and work directories there. So may image files a driver names in a
  :class:`~criu_fw.plan.LoopFile`: they are attached to loop devices.

Every image-named part of such a path is resolved inside the granted directory
(:mod:`criu_fw.kernel.confine`), so neither ``..`` nor a link leads out of it. What no grant covers
fails the restore before anything is mounted, with one line naming the mount and the exact
option that would grant it.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import ItemsView, Iterator, Mapping, ValuesView

import attrs

from ..context import RestoreContext
from ..errors import RestoreError, SyscallError
from ..kernel import confine
from ..kernel.mountops import BackingFileError, host_join, open_loop_file
from ..model import Mount
from ..plan import ExternalRef, LoopFile, NewSuperblock

log = logging.getLogger("criu_fw.restore")


class Grants(Mapping[str, str]):
    """``--external`` mappings (a key or a device -> a path here) that note which ones the
    restore looked up: one that no mount of the images uses is said (a mistyped key maps
    nothing, and the mount it was meant for fails later with "no mapping", or not at all).

    Reading a mapping by its key (``[]``, ``get``, ``in``) is a use; going over all of them
    (``values()``, ``items()``) is not: whoever picks one of them that way calls
    :meth:`use`."""

    def __init__(self, given: Mapping[str, str]) -> None:
        self._given = dict(given)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> str:
        value = self._given[key]
        self.used.add(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._given)

    def __len__(self) -> int:
        return len(self._given)

    def values(self) -> ValuesView[str]:
        return self._given.values()

    def items(self) -> ItemsView[str, str]:
        return self._given.items()

    def use(self, key: str) -> None:
        self.used.add(key)

    def unused(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._given.items() if k not in self.used]


def note_use(grants: Mapping[str, str], key: str) -> None:
    """Count ``key`` of ``grants`` as used (a plain mapping counts nothing)."""
    if isinstance(grants, Grants):
        grants.use(key)


@attrs.frozen
class HostSource:
    """A host directory: ``path`` inside the granted ``base``."""

    base: str
    path: str = "/"
    #: ``--allow-host``: the directory's own links are followed while they stay inside it.
    follow: bool = False

    @property
    def shown(self) -> str:
        return host_join(self.base, self.path)


def granted_dir(path: str, allowed: tuple[str, ...]) -> HostSource | None:
    """``path`` (an absolute path an image names) as a path inside one of the ``allowed``
    directories, or None. Compared by spelling: the image's path must be normalised (no
    ``.``, ``..`` or empty component) and start with the directory's components."""
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or "//" in path:
        return None
    for top in allowed:
        top_n = posixpath.normpath(top)
        if path == top_n or top_n == "/":
            return HostSource(top_n, path if top_n == "/" else "/", True)
        if path.startswith(top_n + "/"):
            return HostSource(top_n, path[len(top_n) :], True)
    return None


def host_source(
    ref: ExternalRef, mount: Mount, ctx: RestoreContext, what: str = "external mount"
) -> HostSource:
    """Where an external reference comes from on this host, or why it may not be used."""
    if ref.key is not None:
        mapped = ctx.externals.get(ref.key)
        if mapped is not None:
            return HostSource(mapped)
    named = ref.path if ref.path is not None else ref.key
    if named is not None and named.startswith("/"):
        found = granted_dir(named, ctx.allow_host)
        if found is not None:
            return found
    if ref.key is not None:
        option = f"--external mnt[{ref.key}]:PATH"
        if ref.key.startswith("/"):
            # Recorded by --external-auto: the host path it was dumped from, not trusted.
            option += f" (--external mnt[{ref.key}]:{ref.key} to use the path it was dumped from)"
        raise RestoreError(
            f"{mount.describe()}: {what} with key {ref.key!r} has no mapping; give {option}"
        )
    if named is None:
        raise RestoreError(f"{mount.describe()}: {what} without a key or a path")
    suggest = os.path.dirname(named.rstrip("/")) or "/"
    raise RestoreError(
        f"{mount.describe()}: {what} {named!r} is a host path named by the images, used only "
        f"when granted; give --allow-host {suggest} (or a directory above it)"
    )


def check_there(src: HostSource, mount: Mount, what: str = "external mount") -> None:
    """Resolve an outside source now, in the caller, as the building child will (beneath its
    granted directory): one that is not there fails the restore before anything is made,
    and a dry run the same way (it resolves nothing itself)."""
    try:
        base = os.open(src.base, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"{mount.describe()}: {what} {src.shown!r}: {exc.strerror}") from None
    try:
        if confine.components(src.path):  # else the base itself, which may be a file
            resolve = confine.GRANTED if src.follow else confine.STRICT
            os.close(confine.open_beneath(base, src.path, resolve))
    except SyscallError as exc:
        why = exc.detail or exc.strerror
        raise RestoreError(f"{mount.describe()}: {what} {src.shown!r}: {why}") from None
    finally:
        os.close(base)


def needs_device(fstype: str, source: str, proc_root: str = "/proc") -> bool:
    """Whether the kernel mounts ``fstype`` from a block device named by ``source``: listed
    without ``nodev`` in /proc/filesystems, or not listed (a module not loaded yet) with a
    source that is a path."""
    listed = _filesystems(proc_root)
    if fstype in listed:
        return not listed[fstype]
    return source.startswith("/")


def _filesystems(proc_root: str) -> dict[str, bool]:
    """fstype -> whether it is ``nodev``, from ``/proc/filesystems``."""
    found = _FILESYSTEMS.get(proc_root)
    if found is None:
        found = {}
        try:
            with open(os.path.join(proc_root, "filesystems"), encoding="utf-8") as f:
                for line in f:
                    flag, _, name = line.rstrip("\n").rpartition("\t")
                    found[name] = flag == "nodev"
        except OSError:
            pass
        _FILESYSTEMS[proc_root] = found
    return found


_FILESYSTEMS: dict[str, dict[str, bool]] = {}


def granted_device(plan: NewSuperblock, mount: Mount, ctx: RestoreContext) -> None:
    """A filesystem is mounted from a block device only when the operator named that device
    (``--external dev[MAJ:MIN]:DEVICE``), whatever a driver or the images say; or from a
    loop device the restore attaches itself to a granted file (:func:`granted_loop_file`)."""
    if isinstance(plan.source, LoopFile):
        granted_loop_file(plan.source, mount, ctx)
        return
    if not needs_device(plan.fstype, plan.source, ctx.proc_root):
        return
    granted = next((dev for dev, path in ctx.devices.items() if path == plan.source), None)
    if granted is not None:
        note_use(ctx.devices, granted)
        return
    dev = f"{mount.dev.major}:{mount.dev.minor}"
    raise RestoreError(
        f"{mount.describe()}: {plan.fstype} is mounted from a block device ({plan.source!r} in "
        f"the images), and a restore mounts one only from a device the operator names; give "
        f"--external dev[{dev}]:DEVICE"
    )


def granted_loop_file(loop: LoopFile, mount: Mount, ctx: RestoreContext) -> HostSource:
    """Where the file of a :class:`~criu_fw.plan.LoopFile` is on this host, checked before
    anything is mounted: granted, there, and the recorded file (the mount layer checks the
    descriptor it attaches again)."""
    src = host_source(loop.path, mount, ctx, what="the loop device's backing file")
    try:
        fd = open_loop_file(src.base, src.path, loop, follow=src.follow)
    except BackingFileError as exc:
        raise RestoreError(f"{mount.describe()}: {exc}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if (loop.ino is not None and loop.ino != st.st_ino) or (
        loop.dev is not None and loop.dev != st.st_dev
    ):
        log.info("%s: the loop device's backing file %s is another inode than the dumped one "
                 "(same size and modification time: a copy, or another machine)",
                 mount.describe(), src.shown)
    return src
