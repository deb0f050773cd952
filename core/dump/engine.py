"""``dump()``: checkpoint the mount namespaces, open files and file mappings of a process tree.

Order of work (CRIU's): freeze the tree top-down; find its mount namespaces; per mount the
owner's ``parse_mount`` (parents first); per fd, cwd, root, exe and mapping the ``fixup_*``
hooks; per superblock that needs it ``dump_content`` through a helper's childless copy of a
mount. Every mount table is watched for change events from before it is read and read again
from when the files are done (in a thread, while the content is archived and the mount
images are written; :mod:`.consistency`), and the dump starts again (bounded) if anyone
changed one. The tree is resumed in a ``finally``. Images go into a temporary directory
(:mod:`.staging`: next to the target, or inside it when it is a mountpoint), are synced (one
syncfs), ``inventory.img`` is written last and fsynced, and the directory is renamed into
place (or its files moved, ``inventory.img`` last): a reader sees a complete dump or none.
SIGTERM, SIGHUP and SIGINT fail the dump like any error; a SIGKILL is undone by a watchdog
process (:mod:`.watchdog`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

import attrs

from ..api.base import DriverState
from ..api.hooks import in_context
from ..api.loader import DriverConfig, DriverManager, resolve_manager
from ..context import DumpContext
from ..errors import CriuFwError, DriverError, DumpError, DumpRefusedError
from ..gcpause import gc_paused
from ..images.mounts import mount_image_names, write_mount_namespace
from ..images.process import (
    ProcessImages,
    mapping_flags,
    mm_entry,
    mm_fields,
    reg_entry,
    vma_entry,
    write_inventory,
    write_process_images,
)
from ..images.stats import write_dump_stats
from ..model import Dev, Mount, MountTree
from ..progress import Progress, count
from ..proto import fdinfo_pb2, fs_pb2
from ..records import DeletedRoot, DumpedNamespace, MountRecord
from .consistency import MountWatch, Recheck
from .deleted import deleted_roots
from .files import FD_CWD, FD_EXE, FD_ROOT, FileReader
from .ghosts import Ghosts, is_ghost
from .ids import FileIds, TableIds
from .lock import TreeLocks, locked_tree
from .maps import MapsReader
from .namespaces import (
    FilesystemViews,
    Namespace,
    find_namespaces,
    reap_helpers,
    start_helpers,
)
from .procfs import ProcFS
from .procs import Freezer, Process, collect_tree
from .routing import Router, describe
from .staging import Staging, interruptible
from .watchdog import Watchdog
from .workers import Pool

log = logging.getLogger("criu_fw.dump")

#: How many times the dump starts again when the mount table changed under it.
RETRIES = 3


@attrs.frozen
class DumpResult:
    """What a dump wrote, for callers and the CLI's summary."""

    image_dir: str
    pids: tuple[int, ...]
    #: Small namespace id -> number of mounts.
    namespaces: Mapping[int, int]
    files: int
    mappings: int
    #: (ns_id, mnt_id) -> external key.
    external: Mapping[tuple[int, int], str]
    content_images: tuple[str, ...]
    attempts: int
    #: Seconds per phase: freeze, mounts, files, content and write_mounts (while the check's
    #: re-read runs in a thread), check (starting the re-read, and what is left of it after
    #: the images are written), write (process images); frozen: how long the dumped
    #: processes were stopped (from the first stop to their resume, all attempts).
    timings: Mapping[str, float]
    #: fds left out because they are no file of a mount (pipes, sockets, anonymous inodes,
    #: FIFOs: the process checkpointer's), by kind: {"pipe": 2, "socket": 1}.
    skipped_fds: Mapping[str, int] = attrs.field(factory=dict)


@attrs.define
class _Attempt:
    """The state of one pass over the frozen tree."""

    ctx: DumpContext
    namespaces: list[Namespace]
    ns_of: dict[int, int]
    drivers: dict[int, dict[int, str]] = attrs.field(factory=dict)
    states: dict[int, dict[int, DriverState | None]] = attrs.field(factory=dict)
    content: dict[int, dict[int, str]] = attrs.field(factory=dict)
    procs: list[ProcessImages] = attrs.field(factory=list)
    files: list[fdinfo_pb2.file_entry] = attrs.field(factory=list)
    n_files: int = 0
    n_maps: int = 0
    skipped_fds: dict[str, int] = attrs.field(factory=dict)
    ghosts: Ghosts | None = None
    #: Binds of deleted files and directories (see .deleted), by namespace and mount id.
    deleted: dict[int, dict[int, DeletedRoot]] = attrs.field(factory=dict)


def dump(
    pid: int,
    image_dir: str,
    *,
    plugins: Iterable[object] = (),
    config: DriverConfig | None = None,
    externals: Mapping[str, str] = {},
    auto_external: bool = False,
    leave_stopped: bool = False,
    proc_root: str = "/proc",
    sys_root: str = "/sys",
    root: str | None = None,
    manager: DriverManager | None = None,
    progress: Callable[[str], None] | None = None,
) -> DumpResult:
    """Dump the tree of process ``pid`` into ``image_dir`` (missing or empty); all or nothing.

    ``externals`` maps mountpoints to keys (``--external mnt[MOUNTPOINT]:KEY``);
    ``auto_external`` records mounts from outside the dump under the host path where the
    dumper sees them. With a recorded ``proc_root``, nothing is frozen or entered and no
    content is archived. ``progress`` gets a line per phase (:mod:`criu_fw.progress`).
    Raises :class:`~criu_fw.errors.DumpError` (or another
    :class:`~criu_fw.errors.CriuFwError`) with one line saying what failed.
    """
    target = os.path.abspath(image_dir)
    fs = ProcFS(proc_root)

    def run(locks: TreeLocks | None) -> DumpResult:
        return _dump(
            pid, target, fs, locks, plugins=plugins, config=config, externals=externals,
            auto_external=auto_external, leave_stopped=leave_stopped, proc_root=proc_root,
            sys_root=sys_root, root=root, manager=manager, progress=progress,
        )

    # Every process the dump stops is locked against other dumps of overlapping trees (.lock);
    # a recorded /proc stops nothing.
    return locked_tree(fs, pid, log.warning, run) if fs.live else run(None)


def _dump(
    pid: int,
    target: str,
    fs: ProcFS,
    locks: TreeLocks | None,
    *,
    plugins: Iterable[object],
    config: DriverConfig | None,
    externals: Mapping[str, str],
    auto_external: bool,
    leave_stopped: bool,
    proc_root: str,
    sys_root: str,
    root: str | None,
    manager: DriverManager | None,
    progress: Callable[[str], None] | None,
) -> DumpResult:
    # Started first: whatever the dumper does from here, a SIGKILL is undone.
    watchdog = Watchdog()
    try:
        if fs.live:
            # The namespace helpers start up while the dump gets ready and the tree is
            # frozen and read (two share the work from SPLIT_AT filesystems on).
            start_helpers(2 if len(os.sched_getaffinity(0)) > 1 else 1)
        with interruptible():
            stage = Staging(target, watchdog)
            tmp = stage.tmp
            freezer = (locks.freezer(watchdog) if locks is not None
                       else Freezer(fs, enabled=fs.live, watchdog=watchdog))
            timings: dict[str, float] = {}
            report = Progress(progress)
            try:
                mgr = resolve_manager(manager, plugins, config)
                watchdog.wait_ready()
                t0 = time.perf_counter()
                try:
                    procs = collect_tree(fs, pid, freezer)
                    timings["freeze"] = time.perf_counter() - t0
                    report(f"froze {count(len(procs), 'process')}")
                    with gc_paused():  # see criu_fw.gcpause
                        attempt, tries, images = _read_consistent(
                            fs, mgr, procs, tmp, timings,
                            dict(externals), auto_external, proc_root, sys_root, root, pid,
                            report,
                        )
                except BaseException:
                    freezer.resume()  # a failed dump never leaves them stopped
                    raise
                finally:
                    # What the dumped processes waited for: from the first stop to here.
                    timings["frozen"] = time.perf_counter() - t0
                try:
                    if not leave_stopped:
                        freezer.resume()
                        report(f"resumed the processes ({timings['frozen']:.2f} s frozen)")
                    t0 = time.perf_counter()
                    with gc_paused():
                        _write_mounts(tmp, attempt, images)
                finally:
                    images.close()
                timings["write_mounts"] = time.perf_counter() - t0
                _write(tmp, attempt, timings)
                stage.publish()
                timings["write"] = time.perf_counter() - t0
                report(f"wrote the process images into {target}")
                if leave_stopped:
                    # Left stopped only once the images are there: a dump that fails
                    # while writing resumes them (below).
                    freezer.leave()
            except BaseException:
                stage.abort()
                if leave_stopped:
                    freezer.resume()
                raise
    finally:
        watchdog.done()
        reap_helpers()
    return DumpResult(
        image_dir=target,
        pids=tuple(p.pid for p in procs),
        namespaces={ns.ns_id: len(ns.tree) for ns in attempt.namespaces},
        files=attempt.n_files,
        mappings=attempt.n_maps,
        external=dict(attempt.ctx.external_mounts),
        content_images=tuple(sorted({n for c in attempt.content.values() for n in c.values()})),
        attempts=tries,
        timings=timings,
        skipped_fds=dict(sorted(attempt.skipped_fds.items())),
    )


def _read_consistent(
    fs: ProcFS, mgr: DriverManager, procs: list[Process], tmp: str, timings: dict[str, float],
    externals: dict[str, str], auto_external: bool, proc_root: str, sys_root: str,
    root: str | None, pid: int, report: Progress,
) -> tuple[_Attempt, int, _MountImages]:
    changed: list[Namespace] = []
    for n in range(1, RETRIES + 1):
        _clear(tmp)
        ctx = DumpContext(
            image_dir=tmp, proc_root=proc_root, sys_root=sys_root, root_pid=pid,
            externals=externals, recorded=not fs.live, root=root, auto_external=auto_external,
        )
        # Watching for changes starts before the tables are read (see .consistency).
        watch = MountWatch() if fs.live else None
        try:
            t0 = time.perf_counter()
            namespaces, ns_of = find_namespaces(fs, procs, watch)
            if externals:
                _check_externals(externals, namespaces)
            attempt = _Attempt(ctx, namespaces, ns_of)
            for ns in namespaces:
                ctx.trees[ns.ns_id] = ns.tree
                ctx.ns_pids[ns.ns_id] = ns.pid
            router = Router(mgr, ctx)
            _mounts(attempt, router)
            _check_external_keys(ctx)
            mounts = sum(len(ns.tree) for ns in namespaces)
            report(f"read {count(mounts, 'mount')} of {count(len(namespaces), 'namespace')}")
            # The mount images are created now and written after the content archives: right
            # after those, creating a file on a disk filesystem can wait for its journal (0.5
            # to 0.9 ms each on ext4, against a few us now).
            images = _MountImages(tmp, namespaces)
            try:
                t1 = time.perf_counter()
                _files(fs, attempt, router, procs)
                if fs.live:
                    attempt.deleted = deleted_roots(
                        namespaces, set(ctx.external_mounts), proc_root, tmp
                    )
                t2 = time.perf_counter()
                report(f"read {count(attempt.n_files, 'open file')}, "
                       f"{count(attempt.n_maps, 'file mapping')}")
                # The snapshot: the re-read starts now and runs (the kernel's part, in a
                # thread) while the content is archived; with content, once its workers are
                # forked (no fork after a thread starts).
                check: Recheck | None = None
                started = 0.0  # counted with the check

                def start_check(namespaces: list[Namespace] = namespaces) -> None:
                    nonlocal check, started
                    if check is None and fs.live:
                        t = time.perf_counter()
                        check = Recheck(fs, namespaces)
                        started = time.perf_counter() - t

                try:
                    if fs.live:
                        _content(attempt, router, start_check)
                        archived = {n for c in attempt.content.values() for n in c.values()}
                        report(f"saved the content of {count(len(archived), 'filesystem')}")
                    start_check()
                    t3 = t4 = time.perf_counter()
                    # Archives still being made (big filesystems, in parallel) are waited for
                    # here: the processes stay frozen until their content is saved. The mount
                    # images are not: what they hold is in memory, and checked just below
                    # (they are written once the processes run again, see _dump).
                    ctx.wait_background()
                    waited = time.perf_counter() - t4
                    t4 += waited
                    changed = check.changed() if check is not None else []
                    if watch is not None:
                        moved = watch.changed()
                        changed += [ns for ns in namespaces
                                    if ns.pid in moved and ns not in changed]
                    t5 = time.perf_counter()
                finally:
                    ctx.cancel_background()
                    if check is not None:
                        check.close()
            except BaseException:
                images.close()
                raise
        finally:
            if watch is not None:
                watch.close()
        for k, v in (("mounts", t1 - t0), ("files", t2 - t1),
                     ("content", t3 - t2 - started + waited), ("check", t5 - t4 + started)):
            timings[k] = v
        if not changed:
            return attempt, n, images
        images.close()
        log.warning("mount table of namespace %s changed during the dump; starting again",
                    ", ".join(str(ns.ns_id) for ns in changed))
    where = ", ".join(f"{ns.ns_id} (process {ns.pid})" for ns in changed)
    raise DumpError(
        f"the mount table of namespace {where} kept changing during the dump "
        f"({RETRIES} attempts); nothing was written"
    )


def _check_externals(externals: Mapping[str, str], namespaces: list[Namespace]) -> None:
    """A declared external mount that matches no mount is a typo, not a no-op."""
    known = {m.mountpoint for ns in namespaces for m in ns.tree.mounts}
    for mp, key in externals.items():
        if mp not in known:
            raise DumpRefusedError(
                f"--external mnt[{mp}]:{key}: no mount at {mp!r} in the dumped mount "
                "namespaces (give the mountpoint as the processes see it)"
            )


def _check_external_keys(ctx: DumpContext) -> None:
    """Two different mounts (another filesystem, or another directory of it) recorded under
    one key would both be bound from the one path the restore maps that key to: refused,
    naming both. Mounts of the same directory may share a key (one source, several places)."""
    seen: dict[str, tuple[int, Mount]] = {}
    for (ns_id, mnt_id), key in ctx.external_mounts.items():
        m = ctx.trees[ns_id].get(mnt_id)
        first = seen.setdefault(key, (ns_id, m))
        other = first[1]
        if (other.dev, other.root) == (m.dev, m.root):
            continue
        where = [f"{x.mountpoint} ({x.fstype} {x.dev}, root {x.root})" for x in (other, m)]
        declared = other.mountpoint in ctx.externals and m.mountpoint in ctx.externals
        error = DumpRefusedError if declared else DumpError
        raise error(
            f"external key {key!r} names two different mounts, {where[0]} and {where[1]}; "
            "the restore would bind one path to both: give each its own key"
        )


def _clear(tmp: str) -> None:
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))


def _mounts(a: _Attempt, router: Router) -> None:
    ctx = a.ctx
    # fstype -> (owner, whether its parse_mount can do anything): once per fstype.
    owners: dict[str, tuple[str, bool]] = {}
    hooks = router.hooks
    for ns in a.namespaces:
        tree = ns.tree
        drivers: dict[int, str] = {}
        states: dict[int, DriverState | None] = {}
        for m in tree.topo_order():
            owner = owners.get(m.fstype)
            if owner is None:
                d = router.owner(m.fstype)
                owner = owners[m.fstype] = (d, hooks.implements("parse_mount", d))
            d, implemented = owner
            drivers[m.mnt_id] = d
            if implemented:
                try:
                    state = hooks.parse_mount(d, m, tree, ctx)
                except DriverError as err:
                    raise in_context(err, "parse_mount", m.describe(),
                                     f"mount {m.mnt_id}") from err.__cause__
                if state is not None:
                    states[m.mnt_id] = state
        a.drivers[ns.ns_id] = drivers
        a.states[ns.ns_id] = states


def _wants_content(router: Router, driver: str, fstype: str) -> bool:
    if not router.hooks.implements("dump_content", driver):
        return False
    wanted = getattr(router.mgr.info(driver).obj, "content_fstypes", None)
    return wanted is None or fstype in wanted


def _content(a: _Attempt, router: Router, started: Callable[[], None]) -> None:
    """dump_content once per superblock, through a childless copy of one of its mounts;
    ``started`` is called once the content workers are forked (or no workers are)."""
    ext = a.ctx.external_mounts
    seen: set[Dev] = set()
    per_ns: dict[int, list[Mount]] = {}
    all_of: dict[Dev, list[tuple[int, Mount]]] = {}
    for ns in a.namespaces:
        for m in ns.tree.mounts:
            all_of.setdefault(m.dev, []).append((ns.ns_id, m))
    for dev, mounts in all_of.items():
        if dev in seen:
            continue
        seen.add(dev)
        ns_id, first = mounts[0]
        if not _wants_content(router, a.drivers[ns_id][first.mnt_id], first.fstype):
            continue
        best = _view_mount(a, mounts)
        if best is None or (best[0], best[1].mnt_id) in ext:
            continue
        per_ns.setdefault(best[0], []).append(best[1])
    ctx = a.ctx

    def call(item: tuple[int, Mount, str]) -> str | None:
        ns_id, m, path = item
        try:
            return router.hooks.dump_content(a.drivers[ns_id][m.mnt_id], m, path, ctx)
        except DriverError as err:
            raise in_context(err, "dump_content", m.describe(),
                             f"mount {m.mnt_id}") from err.__cause__

    # A helper holds a descriptor per filesystem it hands out and raises its soft limit to
    # the hard one: batches within half of that (50,000 tmpfs at 100,000 mounts outgrew a
    # limit of 20,000), all from the one private copy of the namespace.
    batch = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[1] // 2)
    parallel: dict[str, bool] = {}
    todo = [(ns, chosen) for ns in a.namespaces if (chosen := per_ns.get(ns.ns_id))]
    for k, (ns, chosen) in enumerate(todo):
        views = FilesystemViews(ns.pid, ns.tree, chosen, batch=batch)
        try:
            for part, final in views.stream():
                items = [(ns.ns_id, chosen[i], path) for i, path in part]
                shared = []
                for it in items:
                    driver = a.drivers[ns.ns_id][it[1].mnt_id]
                    if driver not in parallel:
                        parallel[driver] = _parallel(router, driver)
                    if parallel[driver]:
                        shared.append(it)
                pool = Pool(shared, call, ctx.workers, ctx.in_worker, ctx.wait_background,
                            ctx.cancel_background)
                # No fork once a thread runs: the re-read's thread starts with the last
                # batch (once its workers are forked, or at once if it has none).
                last = final and k == len(todo) - 1
                names = dict(zip((it[1] for it in shared),
                                 pool.run(started if last else _nothing), strict=True))
                for it in items:
                    name = names[it[1]] if it[1] in names else call(it)
                    if name is None:
                        continue
                    for other_ns, other in all_of[it[1].dev]:
                        a.content.setdefault(other_ns, {})[other.mnt_id] = name
        finally:
            views.close()
    started()


def _nothing() -> None:
    return None


def _parallel(router: Router, driver: str) -> bool:
    return getattr(router.mgr.info(driver).obj, "parallel_content", False) is True


def _view_mount(a: _Attempt, mounts: list[tuple[int, Mount]]) -> tuple[int, Mount] | None:
    """The mount of a superblock whose copy shows the most: the widest root, visible first."""
    trees = a.ctx.trees
    return min(
        mounts,
        key=lambda nm: (nm[1].root.count("/") if nm[1].root != "/" else 0,
                        trees[nm[0]].lookup(nm[1].mountpoint) is not nm[1]),
        default=None,
    )


def _files(fs: ProcFS, a: _Attempt, router: Router, procs: list[Process]) -> None:
    live = fs.live
    reader = FileReader(fs, live)
    maps = MapsReader(fs, live)
    ids = FileIds(live)
    tables = TableIds(live)
    known_devs = {m.dev for ns in a.namespaces for m in ns.tree.mounts}
    seen_tables: set[int] = set()
    ghosts = a.ghosts = Ghosts(fs)
    for k, proc in enumerate(procs, 1):
        ns_id = a.ns_of[proc.pid]
        tree = a.ctx.trees[ns_id]
        files_id = tables.files_id(proc.pid)
        pi = ProcessImages(proc, ns_id, files_id, k)
        pi.shares_table = files_id in seen_tables
        seen_tables.add(files_id)
        if not pi.shares_table:
            for f in reader.fds(proc.pid):
                f, mount = router.fixup("fixup_fd_path", f, tree)
                mnt = mount.mnt_id if mount is not None else None
                fid, new = ids.for_fd(f, mnt)
                if new:
                    a.files.append(reg_entry(fid, f, path=f.path, flags=f.flags, pos=f.pos,
                                             mnt_id=mnt, size=f.size, mode=f.mode))
                    if f.deleted and is_ghost(f.path, f.deleted):
                        ghosts.add(fid, describe(f), proc.pid, f"fd/{f.fd}", f.mode)
                pi.add_fd(f.fd, fid, f.flags)
                a.n_files += 1
        special: dict[int, int] = {}
        for which in (FD_CWD, FD_ROOT, FD_EXE):
            sf = reader.special(proc.pid, which)
            if sf is None:
                continue
            sf, mount = router.fixup("fixup_fd_path", sf, tree)
            fid = ids.new()
            a.files.append(reg_entry(fid, sf, path=sf.path, flags=sf.flags, pos=0,
                                     mnt_id=mount.mnt_id if mount is not None else None,
                                     size=sf.size, mode=sf.mode))
            if sf.deleted and is_ghost(sf.path, sf.deleted):
                ghosts.add(fid, describe(sf), proc.pid, _SPECIAL[which], sf.mode)
            special[which] = fid
        if FD_CWD in special or FD_ROOT in special:
            cwd = special.get(FD_CWD, special.get(FD_ROOT, 0))
            pi.fs = fs_pb2.fs_entry(cwd_id=cwd, root_id=special.get(FD_ROOT, cwd))
        vmas = []
        for v in maps.vmas(proc.pid, known_devs):
            shmid = v.inode
            if v.file is not None:
                fm, mount = router.fixup("fixup_vma", v.file, tree)
                mnt = mount.mnt_id if mount is not None else None
                flags = mapping_flags(v)
                shmid, new = ids.for_mapping(fm.path, mnt, flags, fm.identity)
                if new:
                    a.files.append(reg_entry(shmid, None, path=fm.path, flags=flags, pos=0,
                                             mnt_id=mnt))
                    if fm.deleted and is_ghost(fm.path, fm.deleted):
                        ghosts.add(shmid, describe(fm), proc.pid,
                                   f"map_files/{v.start:x}-{v.end:x}", 0)
                a.n_maps += 1
            vmas.append(vma_entry(v, shmid))
        pi.mm = mm_entry(mm_fields(fs.read(proc.pid, "stat", optional=True)),
                         special.get(FD_EXE, 0), vmas)
        # A process killed meanwhile reads as one with no files: make sure it was not.
        fs.check_alive(proc.pid, "its files and mappings")
        a.procs.append(pi)
    a.skipped_fds = dict(reader.skipped)


_SPECIAL = {FD_CWD: "cwd", FD_ROOT: "root", FD_EXE: "exe"}


class _MountImages:
    """The mount images of an attempt, created (empty) ahead of their writing."""

    def __init__(self, tmp: str, namespaces: list[Namespace]) -> None:
        self.files: dict[str, BinaryIO] = {}
        with _writing(tmp):
            try:
                for ns in namespaces:
                    for name in mount_image_names(ns.ns_id):
                        self.files[name] = open(os.path.join(tmp, name), "xb")  # noqa: SIM115
            except BaseException:
                self.close()
                raise

    def finish(self) -> None:
        """Close the written files (a failed write-out of their buffers raises)."""
        files, self.files = self.files, {}
        for f in files.values():
            f.close()

    def close(self) -> None:
        """Close whatever is still open (after a failure: the attempt is discarded)."""
        files, self.files = self.files, {}
        for f in files.values():
            with contextlib.suppress(OSError):
                f.close()


def _dumped(a: _Attempt, ns_id: int, tree: MountTree) -> DumpedNamespace:
    """The namespace's records: what each phase of the attempt learnt, one per mount."""
    drivers, states = a.drivers[ns_id], a.states.get(ns_id, {})
    content = a.content.get(ns_id, {})
    external = {m: k for (n, m), k in a.ctx.external_mounts.items() if n == ns_id}
    # tuple.__new__ in C, as the mountinfo parser makes Mounts: the named tuple's own
    # constructor is Python, a tenth of the mount images' writing at 10,000 mounts.
    new, record = tuple.__new__, MountRecord
    get_state, get_ext, get_content = states.get, external.get, content.get
    get_deleted = a.deleted.get(ns_id, {}).get
    records = {
        m.mnt_id: new(record, (m, drivers[m.mnt_id], get_state(m.mnt_id), get_ext(m.mnt_id),
                               get_content(m.mnt_id), get_deleted(m.mnt_id)))
        for m in tree
    }
    return DumpedNamespace(ns_id, tree, records)


def _write_mounts(tmp: str, a: _Attempt, images: _MountImages) -> None:
    with _writing(tmp):
        for ns in a.namespaces:
            write_mount_namespace(tmp, _dumped(a, ns.ns_id, ns.tree), files=images.files)
        images.finish()


@contextlib.contextmanager
def _writing(tmp: str) -> Iterator[None]:
    try:
        yield
    except CriuFwError:
        raise
    except OSError as exc:
        raise DumpError(f"writing images into {tmp} failed: "
                        f"{errno.errorcode.get(exc.errno or 0, '')} ({exc.strerror})") from exc


def _write(tmp: str, a: _Attempt, timings: dict[str, float]) -> None:
    """Everything but the mount images (written by the attempt that passed the check)."""
    with _writing(tmp):
        t1 = time.perf_counter()
        write_process_images(tmp, a.procs, a.files)
        if a.ghosts is not None:
            a.ghosts.write(tmp)
        timings["write_files"] = time.perf_counter() - t1
        write_dump_stats(tmp, freezing=timings["freeze"], frozen=timings["frozen"])
        _sync_dir_fs(tmp)
        # The completion mark: written (and synced) only after everything else is on disk.
        write_inventory(tmp, a.procs[0])
        _fsync_all(tmp, only="inventory.img")


def _sync_dir_fs(d: str) -> None:
    """Everything written into ``d`` on disk: one syncfs(2) of its filesystem.

    fsync(2) per image makes a disk filesystem commit its journal once per file (on ext4,
    a few ms each); syncfs commits once, and reports write-back errors since Linux 5.8.
    Where there is no syncfs, each file is synced.
    """
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        _fsync_all(d)
        return
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), d)
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _fsync_all(d: str, only: str | None = None) -> None:
    for name in [only] if only else os.listdir(d):
        fd = os.open(os.path.join(d, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
