"""Content put back by a job that runs on its own (``restore_content`` returning a ContentJob).

The executor creates later, independent superblocks while the job runs, waits for it before
anything is cut from the filling superblock, and cancels it when the restore fails. These
checks use the recording mount layer with a test driver whose job is scripted (nothing is
mounted; the real job, the generic driver's tar for big archives, is exercised by
test_content_archives and by test_restore_errors' corrupt archive cases). Superblocks with
content of their own are made ahead too, starting their jobs, while fewer than
``executor.CONTENT_WORKERS`` run.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest
from criu_fw import hookimpl
from criu_fw.context import RestoreContext
from criu_fw.driver import DriverState, FsDriver
from criu_fw.errors import RestoreError
from criu_fw.kernel.mountinfo import parse
from criu_fw.kernel.mountops import Call, ParamArg, RecordingMountOps
from criu_fw.model import Mount, MountTree
from criu_fw.plan import ContentJob, MountPlan, NewSuperblock
from criu_fw.restore import DumpedNamespace, executor, restore

# The root (a fillfs with content) and a bind of a directory in it; two plain tmpfs that can
# be made while the root is being filled; a second fillfs with content of its own.
MOUNTINFO = """\
1 0 0:30 / / rw - fillfs root rw
2 1 0:31 / /a rw - tmpfs ta rw
3 1 0:30 /sub /c rw - fillfs root rw
4 1 0:32 / /b rw - tmpfs tb rw
5 1 0:33 / /d rw - fillfs other rw
"""


class _Ops(RecordingMountOps):
    """Records like a dry run, but lets the driver start its content job, and can refuse
    to create one superblock."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__()
        self.refuse = refuse

    def new_superblock(
        self, fstype: str, source: str, params: Sequence[tuple[str, ParamArg]], *,
        legacy_data: str | None = None, chroot: str | None = None,
    ) -> int:
        if source == self.refuse:
            raise OSError(22, "refused for the test")
        return super().new_superblock(fstype, source, params, legacy_data=legacy_data,
                                      chroot=chroot)

    def restore_content(self, handle: int, image: str, fill: Callable[[str], object]) -> None:
        super().restore_content(handle, image, fill)
        fill(f"/proc/self/fd/{handle}")


class _Job:
    def __init__(self, log: list[Call], image: str, done_after: int, fail: str | None) -> None:
        self.log, self.image, self.left, self.fail = log, image, done_after, fail

    def done(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self) -> None:
        self.log.append(Call("job_wait", path=self.image))
        if self.fail:
            raise RestoreError(self.fail)

    def cancel(self) -> None:
        self.log.append(Call("job_cancel", path=self.image))


class _FillFs(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("fillfs",)
    name = "fillfs"

    def __init__(self, log: list[Call], done_after: int = 1000, fail: str | None = None) -> None:
        self.log, self.done_after, self.fail = log, done_after, fail

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        return NewSuperblock("fillfs", mount.source)

    @hookimpl
    def restore_content(
        self, mount: Mount, image: str, path: str, ctx: RestoreContext
    ) -> ContentJob | None:
        return _Job(self.log, image, self.done_after, self.fail)


def _run(ops: _Ops, **driver: object) -> None:
    tree = MountTree.from_mounts(parse(MOUNTINFO.encode()), ns_id=9)
    content = {1: "root.img", 5: "other.img"}
    restore("/nonexistent", ops=ops, plugins=[_FillFs(ops.calls, **driver)],  # type: ignore[arg-type]
            namespaces=[DumpedNamespace.of(9, tree, content=content)])


def _index(calls: list[Call], pred: Callable[[Call], bool]) -> int:
    return next(i for i, c in enumerate(calls) if pred(c))


def _sb(source: str) -> Callable[[Call], bool]:
    return lambda c: c.op == "new_superblock" and c.source == source


@pytest.fixture
def one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "CONTENT_WORKERS", 1)


@pytest.mark.usefixtures("one_worker")
def test_independent_superblocks_are_made_while_the_content_job_runs() -> None:
    ops = _Ops()
    _run(ops)
    calls = ops.calls
    root_handle = calls[_index(calls, _sb("root"))].handle
    started = _index(calls, lambda c: c.op == "restore_content" and c.path == "root.img")
    waited = _index(calls, lambda c: c.op == "job_wait" and c.path == "root.img")
    # Both plain tmpfs come between the job's start and the wait for it ...
    assert started < _index(calls, _sb("ta")) < waited
    assert started < _index(calls, _sb("tb")) < waited
    # ... but with one worker, a superblock with content of its own waits for its turn, and
    # nothing is cut from the root's superblock before its content is in.
    assert _index(calls, _sb("other")) > waited
    first_clone = _index(calls, lambda c: c.op == "clone" and c.other == root_handle)
    assert first_clone > waited
    # Every superblock is still made exactly once, and both jobs are waited for.
    assert sorted(c.source or "" for c in ops.of("new_superblock")) == [
        "other", "root", "ta", "tb"]
    assert [c.path for c in ops.of("job_wait")] == ["root.img", "other.img"]


def test_content_jobs_run_in_parallel_up_to_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor, "CONTENT_WORKERS", 2)
    ops = _Ops()
    _run(ops)
    calls = ops.calls
    started = {c.path: i for i, c in enumerate(calls) if c.op == "restore_content"}
    waited = {c.path: i for i, c in enumerate(calls) if c.op == "job_wait"}
    # The second superblock with content is made, and its job started, while the first
    # one's runs (before the plain ones: a free worker first) ...
    assert started["root.img"] < _index(calls, _sb("other")) < started["other.img"] \
        < _index(calls, _sb("ta")) < waited["root.img"]
    # ... and nothing is cut from either before its own job is waited for.
    for source, image in (("root", "root.img"), ("other", "other.img")):
        handle = calls[_index(calls, _sb(source))].handle
        assert all(i > waited[image] for i, c in enumerate(calls)
                   if c.op == "clone" and c.other == handle)
    assert sorted(c.source or "" for c in ops.of("new_superblock")) == [
        "other", "root", "ta", "tb"]


def test_no_more_jobs_than_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "CONTENT_WORKERS", 1)
    ops = _Ops()
    _run(ops)
    calls = ops.calls
    started = [i for i, c in enumerate(calls) if c.op == "restore_content"]
    waited = [i for i, c in enumerate(calls) if c.op == "job_wait"]
    assert started[0] < waited[0] < started[1] < waited[1]


def test_a_job_that_ends_at_once_changes_nothing_in_the_order() -> None:
    ops = _Ops()
    _run(ops, done_after=0)
    calls = ops.calls
    waited = _index(calls, lambda c: c.op == "job_wait" and c.path == "root.img")
    assert _index(calls, _sb("ta")) > waited


@pytest.mark.usefixtures("one_worker")
def test_superblocks_made_ahead_stay_within_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for one handle (half of the two descriptors left) while the job runs.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 2, hard))
    try:
        ops = _Ops()
        _run(ops)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    calls = ops.calls
    waited = _index(calls, lambda c: c.op == "job_wait" and c.path == "root.img")
    assert _index(calls, _sb("ta")) < waited < _index(calls, _sb("tb"))


def test_a_failed_job_names_the_mount_and_the_driver() -> None:
    ops = _Ops()
    with pytest.raises(RestoreError) as err:
        _run(ops, fail="root.img: tar could not restore the content (exit 2): broken")
    assert str(err.value) == (
        "mount 1 at '/' (fillfs, source 'root'): driver 'fillfs': root.img: tar could not "
        "restore the content (exit 2): broken"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_elsewhere_cancels_the_running_jobs(
    monkeypatch: pytest.MonkeyPatch, workers: int,
) -> None:
    monkeypatch.setattr(executor, "CONTENT_WORKERS", workers)
    ops = _Ops(refuse="tb")
    with pytest.raises(RestoreError, match=r"^mount 4 at '/b' \(tmpfs, source 'tb'\): .*refused"):
        _run(ops)
    jobs = [c.op for c in ops.calls if c.op.startswith("job_") or c.op == "restore_content"]
    assert jobs == ["restore_content"] * workers + ["job_cancel"] * workers
    assert not any(c.op == "clone" for c in ops.calls)
