"""Content put back by fill workers forked from the restoring process (core/restore/fill.py):
every filesystem gets its own content, hidden ones included, filled by the builder or a
worker; a worker's error or death fails the restore naming the mount, and nothing is left
running.

Real namespaces: ramfs mounts for a test driver whose restore writes, next to the content,
which process filled each filesystem (read back through the restored holder's root), and
tmpfs for the generic driver's archives through the ``criu-fw`` command.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from criu_fw import hookimpl
from criu_fw.api.tracing import Tracer
from criu_fw.driver import DumpContext, FsDriver, Mount, RestoreContext, RestoreError
from criu_fw.dump import dump
from criu_fw.fsdrivers.generic import content
from criu_fw.restore import restore
from criu_fw.restore.fill import MIN_BATCH
from criu_fw.testing import NamespaceScenario
from helpers import alive, reaping, wait_until

pytestmark = pytest.mark.privileged

CPUS = len(os.sched_getaffinity(0))
#: Enough ramfs for a batch of MIN_BATCH in the workers' share (the builder keeps a quarter).
COUNT = 2 * MIN_BATCH + 8
#: Every 7th ramfs is hidden under another ramfs (its content comes back all the same).
COVERED = range(0, COUNT, 7)

Scenario = Callable[..., NamespaceScenario]

_SCRIPT = Path(sys.executable).with_name("criu-fw")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "criu_fw"]


class Filler(FsDriver):
    """ramfs: the image holds the file ``f``; the restore writes it back and adds ``by``,
    the PID of the process that filled the filesystem."""

    name = "filler"
    fstypes = ("ramfs",)
    api_version = (1, 3)
    parallel_restore_content: ClassVar[bool] = True

    def __init__(self, fail_in_worker: str = "") -> None:
        self.test = os.getpid()
        self.fail_in_worker = fail_in_worker

    @hookimpl
    def dump_content(self, mount: Mount, path: str, ctx: DumpContext) -> str:
        name = f"ramfs-{mount.dev.kdev}.img"
        with open(os.path.join(path, "f"), "rb") as f, \
                open(os.path.join(ctx.image_dir, name), "wb") as out:
            out.write(f.read())
        return name

    @hookimpl
    def restore_content(self, mount: Mount, image: str, path: str, ctx: RestoreContext) -> bool:
        # The builder is the test process's child; a worker is the builder's.
        if os.getppid() != self.test:
            if self.fail_in_worker == "error":
                raise RestoreError(f"cannot fill {mount.mountpoint}")
            if self.fail_in_worker == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        with open(os.path.join(ctx.image_dir, image), "rb") as f:
            data = f.read()
        with open(os.path.join(path, "f"), "wb") as out:
            out.write(data)
        with open(os.path.join(path, "by"), "w") as out:
            out.write(f"{os.getpid()}\n")
        return True


class SerialFiller(Filler):
    parallel_restore_content: ClassVar[bool] = False


@pytest.fixture
def ramfs_images(scenario: Scenario, tmp_path: Path) -> Iterator[tuple[NamespaceScenario, str]]:
    covers = " ".join(map(str, COVERED))
    scn = scenario(
        f"for i in $(seq 0 {COUNT - 1}); do mkdir r$i; mount -t ramfs ram$i r$i; "
        "echo content-$i > r$i/f; done\n"
        f"for i in {covers}; do mount -t ramfs cover$i r$i; echo cover-$i > r$i/f; done"
    )
    images = str(tmp_path / "img")
    dump(scn.pid, images, plugins=[Filler()], auto_external=True)
    yield scn, images


def _restored(holder: int, workdir: str) -> tuple[dict[str, bytes], set[int]]:
    """Each ramfs's ``f`` as the restored namespace shows it (the covered ones read after
    unmounting their cover there), and the PIDs that filled them."""
    files: dict[str, bytes] = {}
    fillers: set[int] = set()
    covers = [f"{workdir}/r{i}" for i in COVERED]
    for phase in ("visible", "covered"):
        for i in range(COUNT):
            if phase == "covered" and i not in COVERED:
                continue
            top = Path(f"/proc/{holder}/root{workdir}/r{i}")
            files[f"{phase}-{i}"] = (top / "f").read_bytes()
            fillers.add(int((top / "by").read_text()))
        if phase == "visible":
            # In the restored namespace only (the holder's): nothing of the caller's.
            subprocess.run(["nsenter", "-t", str(holder), "-m", "--", "umount", *covers],
                           check=True)
    return files, fillers


def _run(scn: NamespaceScenario, images: str, driver: Filler) -> tuple[dict[str, bytes], set[int]]:
    res = restore(images, root="/", plugins=[driver], detach=True, netns="new", ipcns="new")
    try:
        return _restored(res.pid, scn.workdir)
    finally:
        res.terminate()


def _expected() -> dict[str, bytes]:
    want = {f"visible-{i}": f"content-{i}\n".encode() for i in range(COUNT)}
    want.update({f"visible-{i}": f"cover-{i}\n".encode() for i in COVERED})
    want.update({f"covered-{i}": f"content-{i}\n".encode() for i in COVERED})
    return want


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
def test_workers_and_the_builder_fill_every_filesystem_hidden_ones_too(
    ramfs_images: tuple[NamespaceScenario, str],
) -> None:
    scn, images = ramfs_images
    with reaping() as left:
        files, fillers = _run(scn, images, Filler())
        assert wait_until(lambda: not left(), 10), left()
    assert files == _expected()
    # The builder and one worker per further CPU, none of them the caller, all gone.
    assert len(fillers) == CPUS
    assert os.getpid() not in fillers
    assert alive(fillers) == []


def test_a_driver_that_does_not_say_so_is_filled_by_the_builder_alone(
    ramfs_images: tuple[NamespaceScenario, str],
) -> None:
    scn, images = ramfs_images
    files, fillers = _run(scn, images, SerialFiller())
    assert files == _expected()
    assert len(fillers) == 1


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
@pytest.mark.parametrize("how", ["error", "kill"])
def test_a_worker_that_fails_fails_the_restore_naming_the_mount(
    ramfs_images: tuple[NamespaceScenario, str], tmp_path: Path, how: str,
) -> None:
    scn, images = ramfs_images
    root = tmp_path / "root"
    root.mkdir()
    tracer = Tracer()
    with reaping() as left:
        with pytest.raises(RestoreError) as err:
            restore(images, root=str(root), plugins=[Filler(how), tracer], detach=True,
                    netns="new", ipcns="new")
        # Nothing runs on: no worker, builder or holder.
        assert wait_until(lambda: not left(), 10), left()
    text = str(err.value)
    mount = rf"mount \d+ at '{re.escape(scn.workdir)}/r\d+' \(ramfs, source '(ram|cover)\d+'\): "
    if how == "error":
        assert re.fullmatch(mount + r"driver 'filler': cannot fill .*/r\d+", text), text
        # The failed call is among the records, handed back by the worker and the builder.
        failed = [r for r in tracer.records if r.hook == "restore_content" and r.error]
        assert failed and "cannot fill" in failed[0].error, tracer.records
    else:
        assert re.fullmatch(mount + r"the process putting its content back died \(signal 9\)",
                            text), text
    # The mountpoints made in the --root directory are gone again.
    assert os.listdir(root) == []


class ParallelFiller(Filler):
    """Filler whose dump side runs in the dump's content workers too."""

    parallel_content: ClassVar[bool] = True


@pytest.mark.skipif(CPUS < 2, reason="one CPU: no workers")
def test_a_tracer_keeps_the_calls_of_every_process(
    ramfs_images: tuple[NamespaceScenario, str], tmp_path: Path,
) -> None:
    """A program's Tracer sees the hooks called in forked processes too: the dump's content
    workers, the restore's builder and its fill workers (their records come back with what
    each process reports)."""
    scn, _ = ramfs_images
    superblocks = COUNT + len(COVERED)
    tracer = Tracer()
    images = str(tmp_path / "traced")
    dump(scn.pid, images, plugins=[ParallelFiller(), tracer], auto_external=True)
    # (The scenario's namespace also holds this machine's own tmpfs: the generic driver's.)
    dumped = [s for _, d, s in tracer.calls("dump_content") if d == "filler"]
    assert len(dumped) == superblocks, dumped
    assert len(set(dumped)) == superblocks  # each filesystem once

    tracer = Tracer()
    res = restore(images, root="/", plugins=[ParallelFiller(), tracer], detach=True,
                  netns="new", ipcns="new")
    try:
        _, fillers = _restored(res.pid, scn.workdir)
    finally:
        res.terminate()
    assert len(fillers) == CPUS  # filled by the builder and the workers, none the caller
    filled = [s for _, d, s in tracer.calls("restore_content") if d == "filler"]
    assert len(filled) == superblocks, filled
    assert all("ramfs-" in s for s in filled)
    planned = [s for _, d, s in tracer.calls("rebuild_mount") if d == "filler"]
    assert len(planned) == superblocks  # planned in this process, as before


def test_generic_archives_come_back_with_a_gnu_tar_among_them(
    scenario: Scenario, tmp_path: Path,
) -> None:
    """The generic driver through the command: a tmpfs whose archive GNU tar unpacks (more
    members than the in-process limit) holds the mountpoints of the small ones, so the build
    waits for it wherever it runs."""
    many = content.RESTORE_MEMBERS + 50
    scn = scenario(
        "mkdir big && mount -t tmpfs big big\n"
        f"for i in $(seq {many}); do echo $i > big/m$i; done\n"
        f"for i in $(seq 0 {COUNT - 1}); do mkdir big/t$i; mount -t tmpfs t$i big/t$i; "
        "echo small-$i > big/t$i/f; done\n"
        f"for i in {' '.join(map(str, COVERED))}; do mount -t tmpfs c$i big/t$i; done"
    )
    images = str(tmp_path / "img")
    dump(scn.pid, images, auto_external=True)
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", *CLI, "restore", "-q", "-D", images,
         "--root", "/", "--detach"], capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout)
    try:
        big = Path(f"/proc/{holder}/root{scn.workdir}/big")
        assert sorted(p.name for p in big.iterdir() if p.name.startswith("m")) == sorted(
            f"m{i}" for i in range(1, many + 1))
        assert (big / f"m{many}").read_text() == f"{many}\n"
        for i in range(COUNT):
            want = "" if i in COVERED else f"small-{i}\n"
            got = (big / f"t{i}" / "f").read_text() if want else os.listdir(big / f"t{i}")
            assert got == (want or []), i
        covers = [f"{scn.workdir}/big/t{i}" for i in COVERED]
        subprocess.run(["nsenter", "-t", str(holder), "-m", "--", "umount", *covers],
                       check=True)
        for i in COVERED:
            assert (big / f"t{i}" / "f").read_text() == f"small-{i}\n"
    finally:
        os.kill(holder, signal.SIGTERM)
