"""Content archived by worker processes forked from the dumper (core/dump/workers.py): every
filesystem's image is made once, from the frozen namespace, by the dumper or a worker;
errors in a worker fail the dump naming the mount; nothing is left running.

Real namespaces: ramfs mounts for a test driver that says who wrote each image, tmpfs for
the generic driver's archives (read back with Python's tarfile)."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from criu_fw import hookimpl
from criu_fw.driver import DumpContext, DumpError, FsDriver, Mount
from criu_fw.dump import dump
from criu_fw.dump.workers import MIN_ITEMS
from criu_fw.errors import DriverError
from criu_fw.testing import NamespaceScenario
from helpers import alive

CPUS = len(os.sched_getaffinity(0))
COUNT = MIN_ITEMS + 8

Scenario = Callable[..., NamespaceScenario]


class Recorder(FsDriver):
    """ramfs: the image holds the writer's PID and the filesystem's file ``f``."""

    name = "recorder"
    fstypes = ("ramfs",)
    parallel_content: ClassVar[bool] = True

    def __init__(self, callers: Path, fail_in_worker: str = "") -> None:
        self.dumper = os.getpid()
        self.callers = callers
        self.fail_in_worker = fail_in_worker

    def pids(self) -> set[int]:
        return {int(p) for p in self.callers.read_text().split()}

    @hookimpl
    def dump_content(self, mount: Mount, path: str, ctx: DumpContext) -> str:
        with open(self.callers, "a") as log:
            log.write(f"{os.getpid()}\n")
        if os.getpid() != self.dumper:
            if self.fail_in_worker == "error":
                raise DumpError(f"cannot save {mount.mountpoint}")
            if self.fail_in_worker == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        name = f"ramfs-{mount.dev.kdev}.img"
        with open(os.path.join(path, "f"), "rb") as f:
            data = f.read()
        with open(os.path.join(ctx.image_dir, name), "wb") as out:
            out.write(f"{os.getpid()}\n".encode() + data)
        return name


class Serial(Recorder):
    parallel_content: ClassVar[bool] = False


def _ramfs(scenario: Scenario) -> NamespaceScenario:
    return scenario(
        f"for i in $(seq 0 {COUNT - 1}); do mkdir r$i; mount -t ramfs ram$i r$i; "
        "echo content-$i > r$i/f; done"
    )


def _images(images: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in images.glob("ramfs-*.img"):
        pid, _, data = p.read_bytes().partition(b"\n")
        out[p.name] = (int(pid), data)
    return out


def test_a_driver_that_allows_it_is_called_in_one_process_per_cpu(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = _ramfs(scenario)
    rec = Recorder(tmp_path / "callers")
    dump(scn.pid, str(tmp_path / "img"), plugins=[rec], auto_external=True)
    got = _images(tmp_path / "img")
    assert sorted(data for _, data in got.values()) == sorted(
        f"content-{i}\n".encode() for i in range(COUNT)
    )
    writers = {pid for pid, _ in got.values()}
    assert os.getpid() in writers
    assert len(writers) == CPUS
    assert alive(writers - {os.getpid()}) == []


def test_a_driver_that_does_not_say_so_runs_in_the_dumper(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = _ramfs(scenario)
    dump(scn.pid, str(tmp_path / "img"), plugins=[Serial(tmp_path / "callers")],
         auto_external=True)
    got = _images(tmp_path / "img")
    assert len(got) == COUNT
    assert {pid for pid, _ in got.values()} == {os.getpid()}


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
def test_an_error_in_a_worker_fails_the_dump_naming_the_mount(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = _ramfs(scenario)
    rec = Recorder(tmp_path / "callers", "error")
    with pytest.raises(DriverError) as err:
        dump(scn.pid, str(tmp_path / "img"), plugins=[rec], auto_external=True)
    text = str(err.value)
    assert text.startswith("driver 'recorder': ")
    assert "cannot save " in text and "/r" in text
    assert err.value.driver == "recorder"
    assert not (tmp_path / "img").exists()
    assert len(rec.pids()) == CPUS
    assert alive(rec.pids() - {os.getpid()}) == []


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
def test_a_worker_killed_fails_the_dump_and_leaves_nothing(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = _ramfs(scenario)
    rec = Recorder(tmp_path / "callers", "kill")
    with pytest.raises(DumpError, match=r"a content worker died \(signal 9\)"):
        dump(scn.pid, str(tmp_path / "img"), plugins=[rec], auto_external=True)
    assert not (tmp_path / "img").exists()
    assert len(rec.pids()) == CPUS
    assert alive(rec.pids() - {os.getpid()}) == []
    # The dumped process was resumed: it still sleeps, not stopped.
    state = Path(f"/proc/{scn.pid}/stat").read_text().rpartition(")")[2].split()[0]
    assert state == "S"


def test_tmpfs_archives_from_workers_hold_each_filesystem(
    scenario: Scenario, tmp_path: Path
) -> None:
    # One big tmpfs among them: GNU tar archives it in the background of whichever process
    # got it, which waits for it before it reports.
    scn = scenario(
        f"for i in $(seq 0 {COUNT - 1}); do mkdir t$i; mount -t tmpfs tmp$i t$i; "
        "echo content-$i > t$i/f; done\n"
        "head -c 9M /dev/urandom > t1/big"
    )
    dump(scn.pid, str(tmp_path / "img"), auto_external=True)
    found: dict[str, bytes] = {}
    big = 0
    for p in (tmp_path / "img").glob("tmpfs-dev-*.tar.gz.img"):
        with tarfile.open(p, "r:gz") as tar:
            names = tar.getnames()
            member = next((n for n in names if n.lstrip("./") == "f"), None)
            if member is None:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            found[data.decode()] = data
            if any(n.lstrip("./") == "big" for n in names):
                big = tar.getmember(next(n for n in names if n.lstrip("./") == "big")).size
    assert sorted(found) == sorted(f"content-{i}\n" for i in range(COUNT))
    assert big == 9 << 20



class _Sleep:
    """A background job (a ContentJob): a process that would run on for a minute."""

    def __init__(self, log: Path) -> None:
        self.proc = subprocess.Popen(["sleep", "60"])
        with open(log, "a") as f:
            f.write(f"{self.proc.pid}\n")

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self) -> None:
        self.proc.wait()

    def cancel(self) -> None:
        self.proc.kill()
        self.proc.wait()


class LeavesJobs(Recorder):
    """In a worker: leaves a job running on its first filesystem, fails on its second."""

    def __init__(self, callers: Path, jobs: Path) -> None:
        super().__init__(callers)
        self.jobs = jobs
        self.calls = 0

    @hookimpl
    def dump_content(self, mount: Mount, path: str, ctx: DumpContext) -> str:
        if os.getpid() != self.dumper:
            self.calls += 1
            if self.calls == 1:
                ctx.in_background(_Sleep(self.jobs), mount.mountpoint)
            else:
                raise DumpError(f"cannot save {mount.mountpoint}")
        return super().dump_content(mount, path, ctx)


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
def test_a_failing_worker_stops_the_jobs_it_left_running(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = _ramfs(scenario)
    jobs = tmp_path / "jobs"
    with pytest.raises(DriverError, match="cannot save "):
        dump(scn.pid, str(tmp_path / "img"),
             plugins=[LeavesJobs(tmp_path / "callers", jobs)], auto_external=True)
    started = {int(p) for p in jobs.read_text().split()}
    assert len(started) == CPUS - 1
    assert alive(started) == []
