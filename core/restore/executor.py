"""Running one namespace's ordered steps through the mount layer.

The executor keeps a handle per superblock (its detached root, which never gets children, so
every bind of it is cloned from a clean place) and per mount (released as soon as nothing
needs it, so 10,000 mounts do not need 10,000 open descriptors at once). Per-mount flags are
set right after a leaf mount is made, and at the end for mounts with children (a read-only
parent must not stop a missing mountpoint from being created).

Superblock handles live in a :class:`Superblocks` pool shared by the executors of every
namespace of one restore: a superblock is created by the first namespace that needs it and
stays open until the last mount of any namespace has been cut from it. What runs after every
namespace's tree exists (deferred flags, propagation across namespaces, read-only superblocks)
is driven by :mod:`.build`.

Content put back by a job that runs on its own (a tar, see
:class:`~criu_fw.plan.ContentJob`) overlaps the rest of the build: while it runs, the
executor creates the superblocks that come later and depend on nothing (no layer, no
mount), and it waits for the job only when a mount is cut from the filling superblock
(every later use of it goes through such a mount), or at the end of its steps. A superblock
made ahead that has content of its own starts its job too, while fewer than
:data:`CONTENT_WORKERS` jobs run: big tmpfs are unpacked in parallel, one per CPU, while
this process makes the rest (content a driver puts back before its hook returns, such as
the generic driver's small archives, takes this process's time wherever it is done).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import stat
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from .. import kernel
from ..api.hooks import on_mount
from ..api.loader import DriverManager
from ..context import RestoreContext
from ..errors import CriuFwError, DriverError, RestoreError, SyscallError
from ..kernel.mountops import Fd, MountOps, ParamArg
from ..kernel.superblocks import sharing
from ..model import Mount
from ..plan import ContentJob, ExternalRef, LoopFile, PathRef, is_content_job
from .fill import MIN_BATCH, FillWorkers
from .grants import host_source
from .order import CREATE, SB, Step
from .plans import MountJob, NamespacePlan, SuperblockJob
from .propagation import needs_propagation

log = logging.getLogger("criu_fw.restore")

A = TypeVar("A")
R = TypeVar("R")

#: How many content jobs may run at once: one per CPU this process may use (each is a
#: tar with its gzip, mostly waiting on each other).
CONTENT_WORKERS = max(1, len(os.sched_getaffinity(0)))

FLAG_ATTRS = {
    "ro": kernel.MOUNT_ATTR_RDONLY,
    "nosuid": kernel.MOUNT_ATTR_NOSUID,
    "nodev": kernel.MOUNT_ATTR_NODEV,
    "noexec": kernel.MOUNT_ATTR_NOEXEC,
    "nodiratime": kernel.MOUNT_ATTR_NODIRATIME,
    "noatime": kernel.MOUNT_ATTR_NOATIME,
    "strictatime": kernel.MOUNT_ATTR_STRICTATIME,
    "nosymfollow": kernel.MOUNT_ATTR_NOSYMFOLLOW,
}
#: Per-mount options mountinfo shows that are no flag of their own (``rw``, ``relatime``:
#: the defaults). Any other option fails the restore by name (plans.py): a hardening flag is
#: never dropped in silence.
PER_MOUNT_DEFAULTS = frozenset({"rw", "relatime"})
_ALL_FLAGS = (
    kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NODEV
    | kernel.MOUNT_ATTR_NOEXEC | kernel.MOUNT_ATTR_NODIRATIME | kernel.MOUNT_ATTR_NOSYMFOLLOW
)
#: Superblocks dealt to each fill worker for every one filled by the builder (see
#: :meth:`Executor._deal`).
BUILDER_SHARE = 3
#: What fsmount(attr_flags=0) gives: rw, relatime.
_FRESH = 0


def mount_attrs(m: Mount) -> int:
    """The MOUNT_ATTR_* value that gives the mount's per-mount options (relatime is 0).

    mountinfo names ``relatime`` and ``noatime`` but never ``strictatime``: a mount that shows
    neither is a strictatime mount."""
    value = 0
    opts = m.mount_options
    for opt in opts:
        value |= FLAG_ATTRS.get(opt, 0)
    if "relatime" not in opts and "noatime" not in opts:
        value |= kernel.MOUNT_ATTR_STRICTATIME
    return value


class Superblocks:
    """Handles of new superblocks' detached roots, shared by every namespace's executor.

    ``users`` counts the mounts, in all namespaces, still to be cut from each superblock; a
    superblock with a single mount, at its root, is used directly (``direct``: (namespace,
    mount id)) instead of being cloned."""

    def __init__(self, plans: Sequence[NamespacePlan]) -> None:
        self.handle: dict[int, int] = {}
        self.users: dict[int, int] = {}
        last_user: dict[int, tuple[int, MountJob]] = {}
        for plan in plans:
            for job in plan.jobs.values():
                if job.sb is not None:
                    self.users[job.sb] = self.users.get(job.sb, 0) + 1
                    last_user[job.sb] = (plan.ns_id, job)
        self.direct: set[tuple[int, int]] = set()
        for sbk, n in self.users.items():
            ns_id, only = last_user[sbk]
            if n == 1 and only.path == "/":
                self.direct.add((ns_id, only.mount.mnt_id))

    def close(self, ops: MountOps) -> None:
        for h in self.handle.values():
            ops.close(h)
        self.handle.clear()


class Executor:
    def __init__(
        self,
        plan: NamespacePlan,
        ops: MountOps,
        mgr: DriverManager,
        ctx: RestoreContext,
        *,
        root_path: str,
        chroot: str | None = None,
        pool: Superblocks | None = None,
    ) -> None:
        self.plan = plan
        self.ops = ops
        self.mgr = mgr
        self.ctx = ctx
        self.root_path = root_path
        self.chroot = chroot
        self.pool = pool if pool is not None else Superblocks([plan])
        self.handle: dict[int, int] = {}
        self.attrs: dict[int, int | None] = {}  # by mount id: flags known to be set
        self.refs: dict[int, int] = {}
        self.keep: set[int] = set()  # mount ids needed after the build
        self.deferred_attrs: list[Mount] = []
        #: Superblocks whose content is still being put back, by key.
        self.pending: dict[int, tuple[SuperblockJob, ContentJob]] = {}
        # Superblocks that may be created early, without and with content, next one last.
        self._ahead: list[SuperblockJob] = []
        self._ahead_content: list[SuperblockJob] = []
        self._working_ahead = False
        self._fd_budget: int | None = None  # descriptors the work ahead may hold
        self._made: set[int] = set()  # keys of the superblocks created so far
        #: Workers that may put content back beside the build (:mod:`.fill`): one per
        #: further CPU, none for a dry run; the superblocks they may fill, in step order.
        self._fill_workers = CONTENT_WORKERS - 1 if ops.forks_workers else 0
        self._deal_queue: list[SuperblockJob] = []
        self._deal_next = 0
        self._mine: deque[SuperblockJob] = deque()  # this process's share of the dealt
        self._dealable: set[int] = set()
        self._fills: list[FillWorkers[SuperblockJob]] = []
        self._parallel_drivers: dict[str, bool] = {}
        #: Mounts of deleted roots made again: what unlinks each once it is attached.
        self._unlink_after: dict[int, Callable[[], None]] = {}
        # Mounts kept only for their propagation (set last) may give their handle back once
        # more than a quarter of the descriptors are held so, and be opened again by path
        # then: at 100,000 mounts, 3 in 10 with peers or masters outgrew a hard limit of
        # 20,000 (EMFILE). Only mounts visible at their mountpoint: a path leads to them.
        self._budget = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
        self._held = 0
        self._propagation_only: set[int] = set()
        self._reopened: OrderedDict[int, int] = OrderedDict()
        tree = plan.tree
        for sb in plan.superblocks.values():
            for ref in sb.plan.dependencies():
                self.refs[ref] = self.refs.get(ref, 0) + 1
            if sb.readonly:
                self.keep.add(sb.mount.mnt_id)
        other_reasons = set(self.keep)
        for m in plan.mounts:
            kids = len(tree.children(m))
            self.refs[m.mnt_id] = self.refs.get(m.mnt_id, 0) + kids + 1
            if needs_propagation(m):
                self.keep.add(m.mnt_id)
                self._propagation_only.add(m.mnt_id)
            if kids and (plan.jobs[m.mnt_id].sb is None or mount_attrs(m) != _FRESH):
                self.deferred_attrs.append(m)
                self.keep.add(m.mnt_id)
                other_reasons.add(m.mnt_id)
        # The root stays: reopened mounts are found beneath it, whatever namespace the
        # builder is in at the time.
        self.keep.add(plan.root.mnt_id)
        other_reasons.add(plan.root.mnt_id)
        self._propagation_only -= other_reasons
        for mnt_id in self.keep:
            self.refs[mnt_id] = self.refs.get(mnt_id, 0) + 1

    # -- handles -------------------------------------------------------------------------

    def _release(self, mnt_id: int) -> None:
        self.refs[mnt_id] -= 1
        if self.refs[mnt_id] == 0:
            self.ops.close(self.handle.pop(mnt_id))

    # -- steps ---------------------------------------------------------------------------

    def run(self, steps: Sequence[Step]) -> None:
        sbs = self.plan.superblocks
        # In step order from the end, so that pop() gives the next one.
        early = [sbs[s.key] for s in reversed(steps) if s.kind == SB and _early(sbs[s.key])]
        self._ahead = [sb for sb in early if sb.content is None]
        self._ahead_content = [sb for sb in early if sb.content is not None]
        if self._fill_workers:
            self._deal_queue = [sb for sb in reversed(self._ahead_content)
                                if self._parallel_fill(sb.driver)]
            self._dealable = {sb.key for sb in self._deal_queue}
            self._ahead_content = [sb for sb in self._ahead_content
                                   if sb.key not in self._dealable]
        try:
            for step in steps:
                if step.kind == SB:
                    sb = sbs[step.key]
                    self._guard(sb.mount, self._superblock, sb)
                else:
                    m = self.plan.tree.get(step.key)
                    self._guard(m, self._create if step.kind == CREATE else self._attach, m)
            for key in list(self.pending):
                self._wait(key)
            for workers in self._fills:
                workers.finish()
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Stop the content jobs still running (the restore failed)."""
        for remove in self._unlink_after.values():
            with contextlib.suppress(OSError):
                remove()
        self._unlink_after.clear()
        pending, self.pending = self.pending, {}
        for _, job in pending.values():
            job.cancel()
        for workers in self._fills:
            workers.cancel()

    def _guard(self, m: Mount, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)``, an error out of it worded as one about ``m``."""
        try:
            return fn(arg)
        except RestoreError:
            raise
        except (CriuFwError, OSError) as exc:
            raise RestoreError(on_mount(m.describe(), exc)) from exc

    def _param(self, value: object) -> ParamArg:
        if isinstance(value, PathRef):
            return Fd(value.mnt_id, value.path, self.handle[value.mnt_id])
        if isinstance(value, ExternalRef):
            src = host_source(value, self.plan.root, self.ctx)
            return Fd(-1, src.path, -1, base=src.base)
        assert value is None or isinstance(value, str)
        return value

    def _superblock(self, sb: SuperblockJob) -> None:
        if sb.key in self._made:
            return
        if sb.key in self._dealable and self._deal(sb):
            return
        self._make(sb)
        if sb.content is not None:
            job = self._fill(sb)
            if job is not None:
                self.pending[sb.key] = (sb, job)
                self._work_ahead()

    def _make(self, sb: SuperblockJob) -> None:
        params = [(k, self._param(v)) for k, v in sb.plan.params]
        source = sb.plan.source
        if isinstance(source, LoopFile):
            src = host_source(source.path, sb.mount, self.ctx, "the loop device's backing file")
            source = self.ops.attach_loop(src.base, src.path, source, follow=src.follow)
        h = self.ops.new_superblock(
            sb.plan.fstype, source, params, legacy_data=sb.plan.legacy_data, chroot=self.chroot,
        )
        if sb.plan.fsid is not None:
            got = self.ops.fsid(h)
            if got is not None and got != sb.plan.fsid:
                self.ops.close(h)
                raise RestoreError(
                    f"{sb.mount.describe()}: the device given holds another filesystem "
                    f"(fsid {got:#x}, the dumped one was {sb.plan.fsid:#x})"
                )
        if not self.ops.owns(h):
            self._not_owned(sb, h)
        self.pool.handle[sb.key] = h
        self._made.add(sb.key)
        for ref in sb.plan.dependencies():
            self._release(ref)

    def _fill(self, sb: SuperblockJob) -> ContentJob | None:
        """Put the superblock's content back (made, and has a content image): None when
        done, or the job still doing it."""
        image = sb.content
        assert image is not None
        started: list[ContentJob] = []

        def fill(path: str) -> None:
            done = self.mgr.hooks.restore_content(sb.driver, sb.mount, image, path, self.ctx)
            if done is True:
                return
            if is_content_job(done):
                started.append(done)
            elif not done:
                raise RestoreError(
                    f"{sb.mount.describe()}: driver {sb.driver!r} did not restore the "
                    f"content image {image}"
                )

        self.ops.restore_content(self.pool.handle[sb.key], image, fill)
        return started[0] if started else None

    def _fill_named(self, sb: SuperblockJob) -> ContentJob | None:
        """:meth:`_fill` in a worker: an error names the mount, as at a step here."""
        return self._guard(sb.mount, self._fill, sb)

    def _parallel_fill(self, driver: str) -> bool:
        known = self._parallel_drivers.get(driver)
        if known is None:
            obj = self.mgr.info(driver).obj
            known = bool(getattr(obj, "parallel_restore_content", False) is True)
            self._parallel_drivers[driver] = known
        return known

    def _deal(self, sb: SuperblockJob) -> bool:
        """Create ``sb`` and the next superblocks whose content workers may put back (within
        half the descriptors left), and start the workers on them. One in
        :data:`BUILDER_SHARE` per worker is left to this process, filled at its own step: the
        build's mounts take it about as long as the workers' filling (10,000 mounts, 2 CPUs:
        0.35 s of mounts, 0.6 s of filling), so it would otherwise wait for them. False
        when too few are left for a fork to pay: ``sb`` is then filled here."""
        queue = self._deal_queue
        room = self._room()
        batch = [sb]
        every = BUILDER_SHARE * self._fill_workers + 1
        mine: list[SuperblockJob] = []
        while self._deal_next < len(queue) and len(batch) + len(mine) < room:
            nxt = queue[self._deal_next]
            self._deal_next += 1
            if nxt.key in self._made or nxt is sb:
                continue
            if (len(batch) + len(mine) + 1) % every == 0:
                self._dealable.discard(nxt.key)  # made and filled here (see _wait)
                mine.append(nxt)
            else:
                batch.append(nxt)
        if len(batch) < MIN_BATCH:
            self._dealable.clear()  # the rest are filled here too
            return False
        for x in batch:
            self._guard(x.mount, self._make, x)
        workers = FillWorkers(batch, self._fill_named, self._fill_workers, self._job_error)
        self._fills.append(workers)
        workers.start()
        for i, x in enumerate(batch):
            self.pending[x.key] = (x, Dealt(workers, i))
        self._mine.extend(mine)
        return True

    def _room(self) -> int:
        """How many more handles the work done ahead may hold (half the descriptors left
        when first asked; then what this build holds is counted instead)."""
        # A running job holds descriptors of its own (its archive, its tar's pipes); a
        # superblock dealt to a fill worker holds none here beyond its handle.
        jobs = sum(not isinstance(j, Dealt) for _, j in self.pending.values())
        held = len(self.pool.handle) + jobs + len(self.handle)
        if self._fd_budget is None:
            # Counted once (a listing of /proc/self/fd per call was 70 us, per superblock
            # with content); then what this build holds is counted instead.
            self._fd_budget = (
                resource.getrlimit(resource.RLIMIT_NOFILE)[0] - _open_fds()
            ) // 2 + held
        return self._fd_budget - held

    def _work_ahead(self) -> None:
        """Create later, independent superblocks while content jobs run, within a share of
        the descriptors left (each one is a handle held until its mounts are cut): first one
        with content of its own if a worker is free (its job starts), else one without."""
        if self._working_ahead:
            return  # a superblock made ahead started a job: this loop goes on with it
        self._working_ahead = True
        try:
            room = self._room()
            while room > 0:
                running = sum(not j.done() for _, j in self.pending.values())
                if not running:
                    break
                queue = (self._ahead_content
                         if self._ahead_content and running < CONTENT_WORKERS else self._ahead)
                if not queue:
                    break
                sb = queue.pop()
                if sb.key in self.pool.handle or sb.key in self._made:
                    continue
                self._guard(sb.mount, self._superblock, sb)
                room -= 1
        finally:
            self._working_ahead = False

    def _wait(self, key: int) -> None:
        job = self.pending[key][1]
        # Waiting for a worker: this process fills its own share ahead meanwhile (the
        # root's big archive in a worker would otherwise stop the build for its whole tar).
        while self._mine and not job.done():
            nxt = self._mine.popleft()
            if nxt.key not in self._made:
                self._guard(nxt.mount, self._superblock, nxt)
        sb, job = self.pending.pop(key)
        try:
            job.wait()
        except Exception as exc:
            if isinstance(job, Dealt):
                raise  # worded in the worker
            raise self._job_error(sb, exc) from exc

    @staticmethod
    def _job_error(sb: SuperblockJob, exc: BaseException) -> RestoreError:
        """A content job's failure, worded as an error out of the hook itself would be (see
        DriverManager.call)."""
        if isinstance(exc, DriverError):
            err = exc
        elif isinstance(exc, CriuFwError):
            err = DriverError(sb.driver, str(exc))
        else:
            err = DriverError(sb.driver, f"restore_content failed: {type(exc).__name__}: {exc}")
        return RestoreError(on_mount(sb.mount.describe(), err))

    def _create(self, m: Mount) -> None:
        job = self.plan.jobs[m.mnt_id]
        if job.sb in self.pending:
            self._wait(job.sb)
        if job.sb is None:
            assert job.base is not None
            h = self.ops.clone_host(job.base, job.path, follow=job.follow)
            current: int | None = None  # whatever the host mount has
        elif (self.plan.ns_id, m.mnt_id) in self.pool.direct:
            h = self.pool.handle.pop(job.sb)
            current = _FRESH
        else:
            pool = self.pool
            try:
                if job.deleted is not None:
                    h = self._recreate(job, pool.handle[job.sb])
                else:
                    h = self.ops.clone(pool.handle[job.sb], job.path)
            except SyscallError as exc:
                if exc.errno == errno.ENOENT and m.root_deleted:
                    raise RestoreError(
                        f"{m.describe()}: its root {m.root!r} was deleted before the dump, "
                        f"and the images do not say how to make it again"
                    ) from exc
                if exc.errno != errno.ENOENT or self.ops.owns(pool.handle[job.sb]):
                    raise
                # A superblock this restore did not make (a cgroup hierarchy) lacks the
                # directory the mount showed: created by someone else, and gone (a runtime
                # removes a container's cgroup when it stops). Not made here: it is the
                # machine's, not the images'.
                if job.path != m.root:
                    raise RestoreError(
                        f"{m.describe()}: {job.path!r} (from --cgroup-root) does not exist in "
                        f"this machine's {m.fstype} hierarchy; create the cgroup first"
                    ) from exc
                raise RestoreError(
                    f"{m.describe()}: its root {m.root!r} is gone from this machine's "
                    f"{m.fstype} filesystem (a runtime removes a container's cgroup when the "
                    f"container stops); give the container's new cgroup with --cgroup-root "
                    f"PATH, or restore before removing the container"
                ) from exc
            current = _FRESH
            pool.users[job.sb] -= 1
            if pool.users[job.sb] == 0:
                self.ops.close(pool.handle.pop(job.sb))
        self.handle[m.mnt_id] = h
        self.attrs[m.mnt_id] = current
        if not self.plan.tree.children(m):
            self._set_attrs(m)

    def _recreate(self, job: MountJob, src: int) -> int:
        """A bind of a deleted file or directory: made again in the rebuilt filesystem,
        cloned, unlinked (see :mod:`criu_fw.dump.deleted`)."""
        gone = job.deleted
        assert gone is not None
        if not self.ops.owns(src):
            raise RestoreError(
                f"{job.mount.describe()}: its root was deleted, and its filesystem is this "
                f"machine's, not made by this restore: nothing is created in it"
            )
        mode, owner = gone.mode, (gone.uid, gone.gid)
        if gone.like_mountpoint:
            mode, owner = self._mountpoint_mode(job.mount), (0, 0)
        content = self.ctx.open_image(gone.content) if gone.content is not None else None
        try:
            h, remove = self.ops.recreate(
                src, job.path, mode, owner, link=gone.link, content=content
            )
        finally:
            if content is not None:
                os.close(content)
        self._unlink_after[job.mount.mnt_id] = remove
        return h

    def _mountpoint_mode(self, m: Mount) -> int:
        """What CRIU's restore makes for a deleted root its images say nothing more of: the
        kind and permission bits of the mountpoint in the rebuilt parent (ordered after it)."""
        if m is self.plan.root:
            raise RestoreError(f"{m.describe()}: its root {m.root!r} was deleted, and the "
                               f"images do not say what it was")
        parent = self.plan.tree.get(m.parent_id)
        rel = _relative(m.mountpoint, parent.mountpoint)
        mode = self.ops.mode_of(self.handle[parent.mnt_id], rel)
        if mode is None or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            what = "missing" if mode is None else "neither a directory nor a regular file"
            raise RestoreError(
                f"{m.describe()}: its root {m.root!r} was deleted before the dump, and CRIU's "
                f"images say only that: it is made again as its mountpoint is, which is {what}"
            )
        return stat.S_IFMT(mode) | stat.S_IMODE(mode)

    def _set_attrs(self, m: Mount) -> None:
        want = mount_attrs(m)
        if (
            "ro" in m.super_options and not want & kernel.MOUNT_ATTR_RDONLY
            and self.plan.jobs[m.mnt_id].sb is not None
            and not self.ops.owns(self.handle[m.mnt_id])
        ):
            # Writable in name only (its superblock was read-only), and the superblock is
            # this machine's, never made read-only by a restore: the mount itself is.
            want |= kernel.MOUNT_ATTR_RDONLY
        if self.attrs.get(m.mnt_id) == want:
            return
        self.ops.set_attr(self.handle[m.mnt_id], want, _ALL_FLAGS | kernel.MOUNT_ATTR__ATIME)
        self.attrs[m.mnt_id] = want

    def _attach(self, m: Mount) -> None:
        h = self.handle[m.mnt_id]
        if m is self.plan.root:
            self.ops.attach(h, None, self.root_path)
        else:
            parent = self.plan.tree.get(m.parent_id)
            rel = _relative(m.mountpoint, parent.mountpoint)
            self.ops.attach(h, self.handle[parent.mnt_id], rel)
            remove = self._unlink_after.pop(m.mnt_id, None)
            if remove is not None:
                remove()  # attached: its root is unlinked again, as it was dumped
            self._release(parent.mnt_id)
            if m.mnt_id in self._propagation_only:
                self._keep_or_give_back(m)
        self._release(m.mnt_id)

    def _keep_or_give_back(self, m: Mount) -> None:
        if self._held < self._budget or self.plan.tree.lookup(m.mountpoint) is not m:
            self._held += 1
            return
        self.keep.discard(m.mnt_id)
        self._release(m.mnt_id)  # its keep reference; :meth:`mount_handle` reopens it

    def _make_readonly(self, m: Mount) -> None:
        h = self.handle[m.mnt_id]
        if self.ops.owns(h):
            self.ops.reconfigure(h, [("ro", None)])
        # Otherwise this machine's (warned when it was made): its mounts are read-only each.

    def _not_owned(self, sb: SuperblockJob, h: int) -> None:
        """The kernel handed back a superblock that exists already (this machine's sysfs,
        mqueue, ...): nothing of it may change. Said once per superblock, as a warning where
        it is not what the images hold."""
        whose, hint = sharing(sb.plan.fstype, self.ctx.other_namespaces)
        if sb.content is not None:
            self.ops.close(h)
            raise RestoreError(
                f"{sb.mount.describe()}: its content image {sb.content} would be written into "
                f"the existing superblock of {whose}; " + (hint or "restore it elsewhere")
            )
        asked = ["ro" if sb.readonly else "rw"] + [
            k if v is None else f"{k}={v}" for k, v in sb.plan.params
            if v is None or isinstance(v, str)
        ]
        have = self.ops.existing_options(h)
        if have is not None and set(asked) == set(have):
            log.info("%s: comes back as the existing superblock of %s, the same options",
                     sb.mount.describe(), whose)
            return
        here = "not known here" if have is None else f"{','.join(have)} here"
        if have is None and not sb.readonly:
            # Nothing known to differ (its superblock is not mounted where this restore
            # looked, or a dry run): said, not warned.
            log.info("%s: comes back as the existing superblock of %s (options %s in the "
                     "images, %s)", sb.mount.describe(), whose, ",".join(asked), here)
            return
        mounts = "; its mounts are read-only one by one" if sb.readonly else ""
        log.warning(
            "%s: its superblock is shared with %s and was left as it is (options %s in the "
            "images, %s%s)%s", sb.mount.describe(), whose, ",".join(asked), here, mounts,
            f"; {hint}" if hint else "",
        )

    # -- after every namespace's tree exists --------------------------------------------

    def finish_attrs(self) -> None:
        """Flags of mounts with children (run inside this executor's namespace)."""
        for m in self.deferred_attrs:
            self._guard(m, self._set_attrs, m)

    def mount_handle(self, m: Mount) -> int:
        """The handle of a mount of this namespace, opened again beneath the root where it
        was given back (a few are cached, within the same budget)."""
        h = self.handle.get(m.mnt_id)
        if h is not None:
            return h
        h = self._reopened.get(m.mnt_id)
        if h is not None:
            self._reopened.move_to_end(m.mnt_id)
            return h
        root = self.plan.root
        h = self.ops.reopen(self.handle[root.mnt_id], _relative(m.mountpoint, root.mountpoint))
        self._reopened[m.mnt_id] = h
        if len(self._reopened) > self._budget:
            self.ops.close(self._reopened.popitem(last=False)[1])
        return h

    def readonly_superblocks(self) -> None:
        """Superblocks asked for read-only, created writable (content, mountpoints); only
        those this restore created (see :meth:`MountOps.owns`)."""
        for sb in self.plan.superblocks.values():
            if sb.readonly:
                self._guard(sb.mount, self._make_readonly, sb.mount)

    def close(self) -> None:
        for mnt_id in list(self.keep):
            self._release(mnt_id)
        self.keep.clear()
        for h in self._reopened.values():
            self.ops.close(h)
        self._reopened.clear()


class Dealt:
    """A superblock's content put back by a fill worker (the shape of a ContentJob)."""

    def __init__(self, workers: FillWorkers[SuperblockJob], i: int) -> None:
        self.workers, self.i = workers, i

    def done(self) -> bool:
        return self.workers.done(self.i)

    def wait(self) -> None:
        self.workers.wait(self.i)

    def cancel(self) -> None:
        self.workers.cancel()


def _early(sb: SuperblockJob) -> bool:
    """Whether a superblock can be created before its turn: it names no mount or outside
    path."""
    return all(
        not isinstance(v, PathRef | ExternalRef) for _, v in sb.plan.params
    ) and not sb.plan.dependencies()


def _open_fds() -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/fd"))
    return 0


def _relative(path: str, top: str) -> str:
    if path == top:
        return ""
    if top == "/":
        return path.lstrip("/")
    return path[len(top) :].lstrip("/")
