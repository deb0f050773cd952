"""``restore()``: the library call behind ``criu-fw restore``.

Everything that can fail without mounting happens first, in the caller's process: reading
and checking the images, loading drivers, asking every driver for its plan, resolving
externals, ordering the steps. Then one child process builds every dumped mount namespace, each
in a new private namespace, sharing superblocks and peer groups across them (see :mod:`.build`
and :mod:`.child`); the caller's namespace is never changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from ..api.loader import DriverConfig, DriverManager, resolve_manager
from ..context import RestoreContext
from ..errors import CriuFwError, ImageError, UsageError
from ..gcpause import gc_paused
from ..images import read_image
from ..kernel.mountops import KernelMountOps, MountOps
from ..progress import Progress, count
from ..proto import inventory_pb2
from ..records import DumpedNamespace
from .build import SameNamespace, build_all
from .child import (
    Builder,
    KernelNamespaces,
    NamespaceJoin,
    close_namespaces,
    open_namespaces,
    spawn,
)
from .grants import Grants
from .order import Step, order_steps
from .outside import close_all, host_masters, open_masters
from .plans import NamespacePlan, plan_namespaces
from .signals import RestoreInterrupted, forward_to, interruptible, track, wait_command
from .watchdog import RestoreWatchdog

log = logging.getLogger("criu_fw.restore")

#: The newest CRIU inventory image version criu-fw reads (CRIU writes 2).
INVENTORY_VERSION = 2
_MNTS_NAME = re.compile(r"^mountpoints-(\d+)\.img$")


@attrs.define
class RestoreResult:
    """What a restore left behind.

    ``holders`` maps each dumped mount-namespace id to the PID of a process inside its
    restored namespace (with ``command``: the root namespace's entry is the command's PID,
    which has exited by the time ``restore`` returns). ``exit_code`` is the command's.
    :meth:`terminate` ends the holders; :meth:`hold` keeps them until a signal comes.

    Until it is handed over (:meth:`settle`: when ``restore`` returns, or at the end of the
    caller's :func:`~criu_fw.restore.signals.interruptible` block), ending it undoes the
    restore: the building child removes the mountpoints it made in a ``--root`` tree, and a
    caller killed meanwhile leaves nothing either (:mod:`.watchdog`).
    """

    root_ns: int
    holders: dict[int, int] = attrs.field(factory=dict)
    exit_code: int | None = None
    #: The mount requests of a dry run (``ops=RecordingMountOps()``), per namespace.
    ops: MountOps | None = None
    #: Ends the holders (and the work directory) if this process dies before the restore
    #: is handed over, or, without ``detach``, before the holders are ended.
    watchdog: RestoreWatchdog | None = attrs.field(default=None, repr=False, eq=False)
    detach: bool = attrs.field(default=False, repr=False, eq=False)
    #: The building child, waiting to keep or undo what it made (see :class:`.child.Builder`).
    builders: list[Builder] = attrs.field(factory=list, repr=False, eq=False)
    #: ``--pidfile`` and the PID written there: removed by :meth:`terminate` (that PID is
    #: gone then).
    pidfile: tuple[str, int] | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def pid(self) -> int:
        """The PID in the restored root namespace (0 for a dry run)."""
        return self.holders.get(self.root_ns, 0)

    def settle(self) -> None:
        """Hand the restore over: what it made stays (mountpoints in a ``--root`` tree),
        and the holders of a detached restore outlive this process (``criu-fw restore
        --detach`` calls it once their PIDs are printed)."""
        for b in self.builders:
            b.keep()
        self.builders.clear()
        if self.detach and self.watchdog is not None:
            self.watchdog.done()

    def terminate(self) -> None:
        """Kill every holder process (by PID) and reap it; before :meth:`settle`, undo the
        restore as well."""
        for ns_id, pid in self.holders.items():
            if ns_id == self.root_ns and self.exit_code is not None:
                continue  # the command, reaped already: its PID may be another's by now
            _kill(pid)
        self.holders.clear()
        for b in self.builders:
            b.undo()
        self.builders.clear()
        self._remove_pidfile()
        if self.watchdog is not None:
            self.watchdog.done()

    def _remove_pidfile(self) -> None:
        written, self.pidfile = self.pidfile, None
        if written is None:
            return
        path, pid = written
        with contextlib.suppress(OSError):
            with open(path) as f:
                if f.read() != f"{pid}\n":
                    return  # written again since, by someone else
            os.unlink(path)

    def hold(self) -> int | None:
        """Keep the restored namespaces until SIGTERM, SIGHUP, SIGINT or SIGQUIT comes (or
        the root holder is killed), then end every holder: ``criu-fw restore`` without
        ``--detach`` or a command. Returns the signal that came (None: the holder ended)."""
        self.settle()
        if not self.holders:
            return None
        try:
            with interruptible():
                # Not reaped here: terminate() reaps it, and only then may its PID be reused.
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except RestoreInterrupted as exc:
            return exc.signum
        finally:
            self.terminate()
        return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def image_namespaces(image_dir: str) -> tuple[int, list[int]]:
    """The root mount-namespace id (from inventory.img) and every namespace with images,
    root first.

    The directory is untrusted: a mount image name must be one criu-fw writes (the id in
    ASCII digits, no leading zero, at most 64 bits), and at most
    :data:`~criu_fw.images.check.MAX_NAMESPACES` namespaces are restored at once.
    """
    from ..images.check import MAX_NAMESPACES

    inventory = os.path.join(image_dir, "inventory.img")
    try:
        mode = os.stat(image_dir).st_mode
    except OSError:
        raise ImageError(image_dir, "no such image directory") from None
    if not stat.S_ISDIR(mode):
        raise ImageError(image_dir, "not a directory: no such image directory")
    if not os.path.lexists(inventory):
        raise ImageError(inventory, "missing: not a criu-fw image directory")
    entries = read_image(inventory, inventory_pb2.inventory_entry, kind="INVENTORY")
    if len(entries) != 1:
        raise ImageError(inventory, f"expected one inventory entry, found {len(entries)}")
    inv = entries[0]
    if inv.img_version > INVENTORY_VERSION:
        raise ImageError(
            inventory,
            f"image version {inv.img_version} is newer than this criu-fw reads "
            f"({INVENTORY_VERSION})",
        )
    ids: list[int] = []
    with os.scandir(image_dir) as listing:
        for item in listing:
            if not (m := _MNTS_NAME.match(item.name)):
                continue
            digits = m.group(1)
            # \d matches any script's digits; int() of thousands of them is refused anyway.
            if not (digits.isascii() and len(digits) <= 20 and str(int(digits)) == digits
                    and int(digits) < 1 << 64):
                raise ImageError(item.path, "not a mount image name criu-fw writes "
                                 "(mountpoints-<decimal id>.img)")
            ids.append(int(digits))
            if len(ids) > MAX_NAMESPACES:
                raise ImageError(
                    image_dir,
                    f"more than {MAX_NAMESPACES} mount namespaces (mountpoints-*.img); one "
                    f"restore rebuilds at most {MAX_NAMESPACES}, each held by a process",
                )
    ids.sort()
    # The dump's root task says which namespace is the root one (CRIU's inventory names
    # the dumper's own namespaces); the inventory where the task images are missing.
    from ..images.criu import root_task_namespace

    task_root = root_task_namespace(image_dir)
    if task_root is not None:
        root = task_root
    elif not inv.HasField("root_ids") or not inv.root_ids.HasField("mnt_ns_id"):
        raise ImageError(inventory, "no root mount namespace id (root_ids.mnt_ns_id)")
    else:
        # Mount images alone (the library's writer, or a dump whose process images were
        # left behind) are a whole restore's input: it rebuilds mount namespaces only, and
        # criu-fw's inventory names the dumped root task's namespace.
        log.info("%s: no process images (pstree.img); the root mount namespace is "
                 "inventory.img's", image_dir)
        root = inv.root_ids.mnt_ns_id
    if root not in ids:
        raise ImageError(
            os.path.join(image_dir, f"mountpoints-{root}.img"),
            "missing: the root mount namespace has no mount image",
        )
    return root, [root] + [i for i in ids if i != root]


def read_namespaces(image_dir: str, mgr: DriverManager) -> tuple[int, list[DumpedNamespace]]:
    from ..images.mounts import read_mount_namespace

    root, ids = image_namespaces(image_dir)
    return root, [read_mount_namespace(image_dir, i, mgr) for i in ids]


def restore(
    image_dir: str,
    *,
    root: str | None = None,
    externals: Mapping[str, str] | None = None,
    allow_host: Sequence[str] = (),
    devices: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    detach: bool = False,
    pidfile: str | None = None,
    plugins: Iterable[object] = (),
    config: DriverConfig | None = None,
    manager: DriverManager | None = None,
    ops: MountOps | None = None,
    namespaces: Sequence[DumpedNamespace] | None = None,
    proc_root: str = "/proc",
    outside_masters: str = "host",
    netns: str | None = None,
    ipcns: str | None = None,
    progress: Callable[[str], None] | None = None,
    cgroup_roots: Mapping[str, str] | None = None,
) -> RestoreResult:
    """Restore every mount namespace dumped in ``image_dir``.

    :param root: the directory used as the root where the root mount cannot be rebuilt from
        the images (CRIU's ``--root``).
    :param externals: ``--external mnt[KEY]:PATH`` as ``{KEY: PATH}``.
    :param allow_host: ``--allow-host DIR``: host directories under which paths named by the
        images (overlay layers on the host, ``--external-auto`` keys, image files to attach
        to loop devices) may be used; nothing
        else outside the restored namespaces is (see :mod:`criu_fw.restore.grants`).
    :param command: run it in the restored root namespace (root = the restored root, cwd
        ``/``) and wait for it; ``exit_code`` is its exit status (128+N when signal N ended
        it). Meanwhile SIGTERM, SIGHUP, SIGINT and SIGQUIT go to it (see
        :mod:`criu_fw.restore.signals`).
    :param detach: leave holder processes in the restored namespaces and return at once.
        Without ``command`` and ``detach`` the holders are left too; the caller ends them
        with :meth:`RestoreResult.terminate`.
    :param pidfile: with ``detach``: write the root namespace holder's PID there.
    :param plugins: extra driver objects (like ``pytest.main(plugins=...)``).
    :param manager: drivers the caller loaded (instead of ``plugins`` and ``config``; see
        :func:`~criu_fw.api.loader.resolve_manager`).
    :param ops: a mount layer to use instead of the kernel, in this process (a dry run with
        :class:`~criu_fw.kernel.mountops.RecordingMountOps`): nothing is forked, mounted or written.
    :param namespaces: restore these instead of reading ``image_dir`` (first = root).
    :param proc_root: where drivers read the restoring kernel's /proc (``filesystems``).
    :param outside_masters: a mount that was a slave of a group outside the images becomes a
        slave of the host mount it is restored from (``host``; an error where there is none)
        or private (``private``); see :mod:`criu_fw.restore.outside`.
    :param netns: build in a new network namespace (``"new"``) or in the one of a namespace
        file (``/run/netns/NAME``, ``/proc/PID/ns/net``) instead of the caller's: a sysfs is
        then rebuilt as its own superblock instead of being this machine's (see
        :mod:`criu_fw.kernel.superblocks`). The holders (and ``command``) stay in it.
    :param ipcns: the same for the IPC namespace (an mqueue's superblock).
    :param progress: gets a line per phase (:mod:`criu_fw.progress`).
    :param cgroup_roots: ``--cgroup-root [CONTROLLER:]PATH`` as ``{CONTROLLER or "": PATH}``:
        the cgroup mounts come back rooted at PATH of the machine's hierarchy instead of the
        dumped container's cgroup, which its runtime removed with it (see
        :func:`~criu_fw.restore.plans.cgroup_path`).

    Called from the main thread, a SIGTERM, SIGHUP, SIGINT or SIGQUIT before the restore is
    complete undoes it and raises :class:`~criu_fw.restore.signals.RestoreInterrupted`
    (nothing it started is left). To cover the moments after it returns as well, call it
    inside :func:`~criu_fw.restore.signals.interruptible`, which ends its holders too.
    """
    if command is not None and detach:
        raise UsageError("a command and --detach exclude each other")
    if command is not None and not command:
        raise UsageError("the command is empty")
    if pidfile is not None and not detach:
        raise UsageError("--pidfile needs --detach")
    if ops is not None and (detach or command is not None):
        raise UsageError("a dry run starts nothing: --detach and a command do not apply")
    if root is not None and not os.path.isdir(root):
        raise UsageError(f"--root {root!r}: not a directory (the root of the restored tree)")
    granted_dirs, granted_devices = _granted_dirs(allow_host), _granted_devices(devices or {})
    granted_externals = _granted_externals(externals or {})
    cgroups = _cgroup_roots(cgroup_roots or {})
    # Checked before the images are read; opened (and checked) again for the child below.
    close_namespaces(open_namespaces(netns=netns, ipcns=ipcns))
    other_namespaces = {k: v for k, v in (("net", netns), ("ipc", ipcns)) if v is not None}
    # A signal from here on undoes what was started (see .signals); the command gets it.
    with interruptible():
        # The watchdog first: it starts up while the images are read and planned.
        result = RestoreResult(0, watchdog=None if ops else RestoreWatchdog(), detach=detach)
        tracked = track(result)
        try:
            mgr = resolve_manager(manager, plugins, config)
            if namespaces is None:
                with gc_paused():  # see criu_fw.gcpause
                    root_ns, spaces = read_namespaces(image_dir, mgr)
            else:
                spaces = list(namespaces)
                root_ns = spaces[0].ns_id
            result.root_ns = root_ns
            report = Progress(progress)
            mounts = sum(len(ns.tree) for ns in spaces)
            report(f"read {count(mounts, 'mount')} of {count(len(spaces), 'namespace')}")
            ctx = RestoreContext(
                image_dir=image_dir, root=root, externals=granted_externals, ops=ops,
                allow_host=granted_dirs, devices=granted_devices,
                proc_root=proc_root, other_namespaces=other_namespaces, cgroup_roots=cgroups,
            )
            plans: list[tuple[NamespacePlan, list[Step]]] = []
            # Planning allocates a few small objects per mount and frees none of them: the
            # cyclic collector would only rescan the growing heap (superlinear at 10,000
            # mounts). The forked child inherits the setting for its build and re-enables
            # nothing: it execs or exits.
            with gc_paused():
                for plan in plan_namespaces(spaces, mgr, ctx):
                    plans.append((plan, order_steps(plan)))
                _say_unused(granted_externals, granted_devices)
                masters = host_masters([p for p, _ in plans], outside_masters)
                report(f"planned {count(sum(len(s) for _, s in plans), 'step')}")
                fds = open_masters(masters)
                joins: list[NamespaceJoin] = []
                try:
                    joins = open_namespaces(netns=netns, ipcns=ipcns)
                    done = _run(plans, result, mgr, ctx, ops, command, detach, pidfile,
                                root_ns, fds, joins)
                    if command is None:
                        report(f"built {count(mounts, 'mount')}")
                finally:
                    close_namespaces(joins)
                    close_all(fds)
        except BaseException:
            # What spawn() left running is ended, and the watchdog told it need do nothing.
            result.terminate()
            raise
        if not tracked:
            done.settle()  # no block of the caller's (another thread): handed over now
        return done


def _cgroup_roots(roots: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for controller, path in roots.items():
        shown = f"{controller}:{path}" if controller else path
        parts = path.split("/")
        if not path.startswith("/") or ".." in parts or "\0" in path:
            raise UsageError(
                f"--cgroup-root {shown!r}: PATH must be an absolute path in the cgroup "
                f"hierarchy, without '..'"
            )
        out[controller] = "/" + "/".join(p for p in parts if p not in ("", "."))
    return out


def _granted_dirs(dirs: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for d in dirs:
        if not d.startswith("/"):
            raise UsageError(f"--allow-host {d!r}: give an absolute directory")
        if not os.path.isdir(d):
            raise UsageError(f"--allow-host {d!r}: no such directory")
        out.append(os.path.normpath(d))
    return tuple(out)


def _granted_devices(devices: Mapping[str, str]) -> Grants:
    for dev, path in devices.items():
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"--external dev[{dev}]:{path}: {exc.strerror}") from None
        if not stat.S_ISBLK(mode):
            raise UsageError(f"--external dev[{dev}]:{path}: not a block device")
    return Grants(devices)


def _granted_externals(externals: Mapping[str, str]) -> Grants:
    """Every ``--external mnt[KEY]:PATH`` must be there, used or not: checked before the
    images are read, so that a dry run fails as the restore would."""
    for key, path in externals.items():
        try:
            os.stat(path)
        except OSError as exc:
            raise UsageError(f"--external mnt[{key}]:{path}: {exc.strerror}") from None
    return Grants(externals)


def _say_unused(externals: Grants, devices: Grants) -> None:
    """A mapping that no mount of the images looked up (once every one was planned)."""
    for key, path in externals.unused():
        log.warning("--external mnt[%s]:%s: no mount in the images has the key %r; it is not "
                    "used", key, path, key)
    for dev, path in devices.unused():
        log.warning("--external dev[%s]:%s: no filesystem in the images was on device %s; it "
                    "is not used", dev, path, dev)


def _run(
    plans: list[tuple[NamespacePlan, list[Step]]],
    result: RestoreResult,
    mgr: DriverManager,
    ctx: RestoreContext,
    ops: MountOps | None,
    command: Sequence[str] | None,
    detach: bool,
    pidfile: str | None,
    root_ns: int,
    outside: Mapping[tuple[int, int], int],
    joins: Sequence[NamespaceJoin] = (),
) -> RestoreResult:
    if ops is not None:
        build_all(plans, ops, mgr, ctx, SameNamespace(), chroot=False, outside=outside)
        result.ops = ops
        return result

    def build(kops: KernelMountOps, spaces: KernelNamespaces) -> None:
        build_all(plans, kops, mgr, ctx, spaces, chroot=True, outside=outside)

    # The holders go into the result as each starts: a signal cannot leave one unknown.
    spawned = spawn(
        build, [p.ns_id for p, _ in plans], command=command, detach=detach, join=joins,
        holders=result.holders, watchdog=result.watchdog, builders=result.builders,
    )
    if command is not None:
        pid = spawned.pid
        try:
            # spawn() forwards the signals to the command from its exec on (.signals); they
            # stop going there before it is reaped, when its PID could become another's.
            wait_command(pid)
        finally:
            forward_to(0)
            result.terminate()
        _, status = os.waitpid(pid, 0)
        result.holders[root_ns] = pid
        code = os.waitstatus_to_exitcode(status)
        result.exit_code = code if code >= 0 else 128 - code
        return result
    if pidfile is not None:
        # Recorded first: a signal during the write still has it removed with the holders.
        result.pidfile = (os.path.abspath(pidfile), result.pid)
        if result.watchdog is not None:
            result.watchdog.pidfile(pidfile, result.pid)
        with open(pidfile, "w") as f:
            f.write(f"{result.pid}\n")
    return result


__all__ = ["CriuFwError", "RestoreResult", "image_namespaces", "read_namespaces", "restore"]
