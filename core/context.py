"""The contexts handed to hooks: what a driver may read and where it may record things.

Contexts are mutable (they accumulate as a dump or restore runs) but drivers only touch them
through the documented attributes and methods below.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import attrs

from .api.hooks import current_driver
from .errors import CriuFwError, DumpError, ImageError
from .model import Mount, MountTree
from .plan import ContentJob
from .stash import Stash

if TYPE_CHECKING:
    from .kernel.mountops import MountOps

log = logging.getLogger("criu_fw")


@attrs.define
class DumpContext:
    """State of one dump, shared by every hook call of that dump."""

    #: Where images are being written (a temporary directory until the dump is published).
    image_dir: str
    #: Where /proc and /sys are read from (recorded trees in tests, ``--proc-root``).
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    #: The process whose tree is dumped.
    root_pid: int = 0
    #: Every dumped mount namespace, by namespace id.
    trees: dict[int, MountTree] = attrs.field(factory=dict)
    #: ``--external mnt[MOUNTPOINT]:KEY`` declarations: mountpoint -> key.
    externals: Mapping[str, str] = attrs.field(factory=dict)
    #: Per-driver typed scratch space (see :mod:`criu_fw.stash`).
    stash: Stash = attrs.field(factory=Stash)
    #: A process inside each namespace, for reading through /proc/PID/root.
    ns_pids: dict[int, int] = attrs.field(factory=dict)
    #: True when /proc is a recording, not the live kernel: nothing is frozen or entered.
    recorded: bool = False
    #: ``--root``: the container's root directory, where a union filesystem whose mountinfo
    #: root is just ``/`` (AUFS) can be read to take files' identities.
    root: str | None = None
    #: ``--external-auto``: a mount from outside the dumped namespaces may be recorded with
    #: the path under which the dumper sees the same directory.
    auto_external: bool = False
    #: Mounts recorded as external, (ns_id, mnt_id) -> key; see :meth:`mark_external`.
    external_mounts: dict[tuple[int, int], str] = attrs.field(factory=dict)
    _claims: dict[tuple[int, int], list[str]] = attrs.field(factory=dict, alias="_claims")
    #: Work hooks started that goes on by itself (see :meth:`in_background`), oldest first.
    _background: list[tuple[ContentJob, str]] = attrs.field(factory=list, alias="_background")
    #: How many such jobs may run at once: one per CPU this process may use.
    workers: int = attrs.field(factory=lambda: max(1, len(os.sched_getaffinity(0))))

    def in_background(self, job: ContentJob, what: str) -> None:
        """Let ``job`` (started by a hook: a tar archiving a big filesystem) run while the
        dump goes on; ``what`` names it in errors. The core waits for every job before the
        dumped processes are resumed, so what they archive is the frozen state, and cancels
        them if the dump fails. With :attr:`workers` jobs running, this waits for the oldest
        first: a driver may start one per filesystem without counting."""
        while sum(not j.done() for j, _ in self._background) >= self.workers:
            self._finish(self._background.pop(0))
        self._background.append((job, what))

    def in_worker(self) -> None:
        """In a content worker forked from the dumper (see :mod:`criu_fw.dump.workers`): the
        jobs started so far are the dumper's, and this worker runs one at a time."""
        self._background = []
        self.workers = 1

    def wait_background(self) -> None:
        """Wait for every job :meth:`in_background` took (the core calls this)."""
        try:
            while self._background:
                self._finish(self._background.pop(0))
        finally:
            self.cancel_background()

    def cancel_background(self) -> None:
        """Stop the jobs still running (the dump failed); never raises."""
        jobs, self._background = self._background, []
        for job, _ in jobs:
            job.cancel()

    @staticmethod
    def _finish(item: tuple[ContentJob, str]) -> None:
        job, what = item
        try:
            job.wait()
        except CriuFwError:
            raise
        except Exception as exc:
            raise DumpError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def mark_external(self, ns_id: int, mnt_id: int, key: str) -> None:
        """Record a mount as bind-mounted from outside the dump (restore maps ``key`` to a
        path with ``--external mnt[KEY]:PATH``; an absolute-path key is that host path)."""
        self.external_mounts[(ns_id, mnt_id)] = key

    def claim_files(self, mount: Mount) -> None:
        """Ask that files the kernel reports on ``mount`` (a mount of a dumped namespace) also
        reach the driver calling this, whatever name it was registered under.

        For union filesystems whose files old kernels report on a layer's mount: the overlay
        driver claims its layer mounts so that ``fixup_fd_path`` reaches it for those files.
        Only inside a hook call (``parse_mount``): the core knows which driver is calling.
        """
        driver = current_driver()
        if driver is None:
            raise RuntimeError("claim_files is called from a driver's hook, not outside one")
        owners = self._claims.setdefault((self.tree_of(mount).ns_id, mount.mnt_id), [])
        if driver not in owners:
            owners.append(driver)

    def filesystem_views(
        self, tree: MountTree, mounts: Sequence[Mount]
    ) -> AbstractContextManager[list[str]]:
        """For each of ``mounts`` (of ``tree``, a dumped namespace) a directory through which
        its whole filesystem below the mount's root is readable, content hidden under
        overmounts included; valid inside the ``with``. Nothing changes in the namespace.
        Raises :class:`~criu_fw.errors.DumpError` where no copy can be made (a recorded
        /proc, a namespace without a process)."""
        from .dump.namespaces import FilesystemViews  # the dump package imports this module

        pid = self.ns_pids.get(tree.ns_id)
        if pid is None or self.recorded:
            raise DumpError(f"mount namespace {tree.ns_id}: no live process to read it through")
        return FilesystemViews(pid, tree, mounts)

    def claimants(self, ns_id: int, mnt_id: int) -> tuple[str, ...]:
        return tuple(self._claims.get((ns_id, mnt_id), ()))

    def tree_of(self, mount: Mount) -> MountTree:
        for tree in self.trees.values():
            if tree.find(mount.mnt_id) is mount:
                return tree
        raise KeyError(mount.mnt_id)


@attrs.define
class RestoreContext:
    """State of one restore, shared by every hook call of that restore."""

    image_dir: str
    #: Where the restoring kernel's /proc is read (``/proc/filesystems``: which filesystem
    #: types it has); a recorded directory in tests.
    proc_root: str = "/proc"
    #: ``--root``: the directory to use as the root where the images cannot rebuild it.
    root: str | None = None
    #: ``--external mnt[KEY]:PATH``: key -> path on the restoring host.
    externals: Mapping[str, str] = attrs.field(factory=dict)
    #: ``--allow-host DIR``: host directories under which paths the images name may be used
    #: (see :mod:`criu_fw.restore.grants`).
    allow_host: tuple[str, ...] = ()
    #: ``--external dev[MAJ:MIN]:DEVICE``: dumped device ``"MAJ:MIN"`` -> a block device
    #: here; the only devices a restore mounts filesystems from.
    devices: Mapping[str, str] = attrs.field(factory=dict)
    #: ``--netns`` / ``--ipcns``: kind (``net``, ``ipc``) -> ``new`` or the namespace file
    #: the restore builds in; kinds not given are the caller's (see
    #: :mod:`criu_fw.kernel.superblocks`).
    other_namespaces: Mapping[str, str] = attrs.field(factory=dict)
    #: ``--cgroup-root [CONTROLLER:]PATH``: controller (``""`` for every hierarchy) -> the
    #: directory of the machine's cgroup hierarchy that a cgroup mount's root comes back at
    #: (see :func:`criu_fw.restore.plans.cgroup_path`).
    cgroup_roots: Mapping[str, str] = attrs.field(factory=dict)
    #: The layer through which every mount call goes (a recording one in tests).
    ops: MountOps | None = None
    #: The dumped mount tree being restored (one namespace at a time).
    tree: MountTree | None = None
    stash: Stash = attrs.field(factory=Stash)

    def open_image(self, name: str) -> int:
        """A read descriptor of the image file ``name`` in :attr:`image_dir` (a content
        archive), for a driver to read or hand to a helper process by descriptor.

        Images are untrusted: ``name`` must be a plain file name, and the file a regular
        file, not a link, a FIFO or a device (opened without following a link and without
        blocking, then checked). Raises :class:`~criu_fw.errors.ImageError` naming it."""
        return open_regular(self.image_dir, name)


def open_regular(directory: str, name: str) -> int:
    """``name`` inside ``directory``, opened read-only if it is a regular file (see
    :meth:`RestoreContext.open_image`)."""
    path = os.path.join(directory, name)
    if not name or "/" in name or name in (".", ".."):
        raise ImageError(path, "not a plain image file name")
    try:
        dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(directory, f"cannot open the image directory: {exc.strerror}") from None
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
        )
    except FileNotFoundError:
        raise ImageError(path, "missing content image") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(path, "is a symbolic link, not an image file") from None
        raise ImageError(path, f"cannot open: {exc.strerror}") from None
    finally:
        os.close(dfd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(path, "is not a regular file, not an image file")
    os.set_blocking(fd, True)
    return fd
