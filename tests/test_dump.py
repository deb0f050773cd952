"""The dump engine on real processes in real (private) mount namespaces, checked with crit."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from criu_fw import hookimpl
from criu_fw.dump import dump
from criu_fw.errors import DumpError
from criu_fw.images import read_image
from criu_fw.proto import core_pb2, fdinfo_pb2, mm_pb2, mnt_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scenario = Callable[..., NamespaceScenario]

#: A process that holds files open and mapped, then says so through a marker file.
HOLDER = r"""
import mmap, os, sys, time
w = sys.argv[1]
keep = [open(f"{w}/t/e/f"), open(f"{w}/b/f"), open(f"{w}/t/d/top", "r+b")]
d = os.open(w, os.O_RDONLY | os.O_DIRECTORY)
top = mmap.mmap(keep[2].fileno(), 0)
priv = open(f"{w}/t/e/f", "rb")
pm = mmap.mmap(priv.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
priv.close()
open(f"{w}/holder.ready", "w").close()
time.sleep(100000)
"""

NESTED = r"""
import sys, time
w = sys.argv[1]
f = open(f"{w}/t/e/g")
open(f"{w}/nested.ready", "w").close()
time.sleep(100000)
"""

SCRIPT = """
mkdir -p t b
mount -t tmpfs tt t
mkdir t/d t/e
echo hidden > t/d/h
echo data > t/e/f
mount -t tmpfs over t/d
echo top > t/d/top
mount --bind t/e b
python3 -c '{holder}' "$PWD" &
unshare -m --propagation private sh -c 'mount -t tmpfs inner t/e; echo in > t/e/g; \
exec python3 -c "$0" "$PWD"' '{nested}' &
while [ ! -e holder.ready ] || [ ! -e nested.ready ]; do sleep 0.02; done
"""


@pytest.fixture
def busy(scenario: Scenario) -> NamespaceScenario:
    return scenario(SCRIPT.format(holder=HOLDER, nested=NESTED))


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "img"


def _mounts(image_dir: Path, ns_id: int) -> list[mnt_pb2.mnt_entry]:
    return read_image(str(image_dir / f"mountpoints-{ns_id}.img"), mnt_pb2.mnt_entry)


def _files(image_dir: Path) -> dict[str, fdinfo_pb2.file_entry]:
    return {e.reg.name: e for e in read_image(str(image_dir / "files.img"), fdinfo_pb2.file_entry)}


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


def _crit(*args: str) -> str:
    return subprocess.run(["crit", *args], check=True, capture_output=True, text=True).stdout


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rpartition(b")")[2].split()[1]) == pid:
                        out.append(int(name))
            except OSError:
                pass
    return out


def test_dump_nested_namespaces_files_and_maps(busy: NamespaceScenario, out: Path) -> None:
    w = busy.workdir
    res = dump(busy.pid, str(out))
    assert len(res.pids) == 3 and len(res.namespaces) == 2
    assert _state(busy.pid) in "SR"  # resumed
    outer = {m.source: m for m in _mounts(out, 1)}
    inner = {m.source: m for m in _mounts(out, 2)}
    assert "inner" in inner and "inner" not in outer
    files = _files(out)
    # Mount ids name mounts in the mountpoints image of the file's own namespace.
    assert files[f"{w}/t/d/top"].reg.mnt_id == outer["over"].mnt_id
    assert files[f"{w}/t/e/f"].reg.mnt_id == outer["tt"].mnt_id
    bind = next(m for m in _mounts(out, 1) if m.mountpoint == f"{w}/b")
    assert bind.root == "/e" and files[f"{w}/b/f"].reg.mnt_id == bind.mnt_id
    assert files[f"{w}/t/e/g"].reg.mnt_id == inner["inner"].mnt_id
    nested_pid = next(p for p in res.pids[1:] if
                      read_image(str(out / f"ids-{p}.img"), core_pb2.task_kobj_ids_entry)[0]
                      .mnt_ns_id == 2)
    assert nested_pid
    # The hidden file under the overmount is in the archive of the covered tmpfs.
    kdev = outer["tt"].root_dev
    with tarfile.open(out / f"tmpfs-dev-{kdev}.tar.gz.img") as tar:
        names = tar.getnames()
    assert "./d/h" in names and "./e/f" in names and "./d/top" not in names
    # The mapped files: shared one with FILE_SHARED, private one with FILE_PRIVATE.
    holder = next(p for p in res.pids if p not in (busy.pid, nested_pid))
    mm = read_image(str(out / f"mm-{holder}.img"), mm_pb2.mm_entry)[0]
    by_id = {e.id: e.reg.name for e in read_image(str(out / "files.img"), fdinfo_pb2.file_entry)}
    shared = [v for v in mm.vmas if v.status & (1 << 7)]
    private = [v for v in mm.vmas if v.status & (1 << 6)]
    assert f"{w}/t/d/top" in {by_id[v.shmid] for v in shared}
    assert f"{w}/t/e/f" in {by_id[v.shmid] for v in private}
    assert all(v.status & 1 for v in shared + private)
    assert by_id[mm.exe_file_id].endswith(("python3", "python3.11"))
    # Sizes of regular files only, as CRIU writes them (cwd and root are directories).
    regs = [e.reg for e in read_image(str(out / "files.img"), fdinfo_pb2.file_entry)]
    assert {stat.S_ISREG(r.mode) for r in regs} == {True, False}
    assert all(r.HasField("size") == stat.S_ISREG(r.mode) for r in regs)


@pytest.mark.crit
def test_crit_reads_every_image(busy: NamespaceScenario, out: Path) -> None:
    w = busy.workdir
    dump(busy.pid, str(out))
    fds = _crit("x", str(out), "fds")
    assert f"{w}/t/e/f" in fds and f"{w}/b/f" in fds and f"{w}/t/e/g" in fds
    assert "cwd:" in fds and "root: /" in fds
    mems = _crit("x", str(out), "mems")
    assert f"{w}/t/d/top (s)" in mems and f"{w}/t/e/f" in mems and "[stack]" in mems
    for img in sorted(out.iterdir()):
        if img.name.endswith(".img") and not img.name.startswith(("fw-", "tmpfs-")):
            _crit("show", str(img))


def test_cli_no_such_pid(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw.cli", "dump", "-t", "999999999",
         "-D", str(tmp_path / "img")],
        capture_output=True, text=True,
    )
    assert res.returncode == 2  # a usage mistake (docs/cli.md), as in tree and verify
    assert res.stderr == "criu-fw: error: no process 999999999\n"
    assert os.listdir(tmp_path) == []


def test_read_only_image_dir(busy: NamespaceScenario, scenario: Scenario) -> None:
    # The dumper runs inside another private namespace where its image dir is read-only.
    ro = scenario("mkdir -p ro && mount -t tmpfs -o ro rofs ro")
    argv = [sys.executable, "-m", "criu_fw.cli", "dump", "-t", str(busy.pid),
            "-D", f"{ro.workdir}/ro/img"]
    res = ro.run(argv, check=False)
    err = res.stderr.decode()
    assert res.returncode == 3, err
    assert "Read-only file system" in err and err.strip().count("\n") == 0
    assert _state(busy.pid) in "SR"


class _KillOnce:
    """A cross-cutting plugin: kills one process of the tree while mounts are parsed."""

    def __init__(self, victim: int) -> None:
        self.victim = victim

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        if self.victim:
            os.kill(self.victim, signal.SIGKILL)
            self.victim = 0
            time.sleep(0.05)
        return (yield)


def test_vanishing_process(busy: NamespaceScenario, out: Path) -> None:
    victim = max(_children(busy.pid))
    with pytest.raises(DumpError, match=f"process {victim} does not exist or vanished"):
        dump(busy.pid, str(out), plugins=[_KillOnce(victim)])
    assert not out.exists() and os.listdir(out.parent) == []
    assert _state(busy.pid) in "SR"


class _Remount:
    """Changes the mount table of the dumped namespace during the first ``times`` passes."""

    def __init__(self, scn: NamespaceScenario, times: int) -> None:
        self.scn, self.times, self.seen = scn, times, list[object]()

    @hookimpl(wrapper=True)
    def parse_mount(self, ctx: object) -> Iterator[None]:
        # One change per pass: each pass of the dump has its own context object.
        if not any(c is ctx for c in self.seen) and len(self.seen) < self.times:
            self.seen.append(ctx)
            self.scn.sh(f"mkdir -p m{len(self.seen)} && mount -t tmpfs x m{len(self.seen)}")
        return (yield)


def test_mount_table_change_retries(busy: NamespaceScenario, out: Path) -> None:
    res = dump(busy.pid, str(out), plugins=[_Remount(busy, 1)])
    assert res.attempts == 2
    assert any(m.mountpoint.endswith("/m1") for m in _mounts(out, 1))


def test_mount_table_keeps_changing(busy: NamespaceScenario, out: Path) -> None:
    with pytest.raises(DumpError, match="kept changing"):
        dump(busy.pid, str(out), plugins=[_Remount(busy, 99)])
    assert not out.exists()


class _ChangeOnce:
    """Runs a shell command in the dumped namespace once, from inside one hook of the dump's
    first pass (a wrapper: the drivers' own work still runs)."""

    def __init__(self, scn: NamespaceScenario, during: str, command: str) -> None:
        self.scn, self.during, self.command = scn, during, command
        self.done = False

    def _now(self, hook: str) -> None:
        if hook == self.during and not self.done:
            self.done = True
            self.scn.sh(self.command)

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        self._now("parse_mount")
        return (yield)

    @hookimpl(wrapper=True)
    def dump_content(self) -> Iterator[None]:
        self._now("dump_content")
        return (yield)


def test_a_change_undone_before_the_reread_is_still_seen(busy: NamespaceScenario,
                                                         out: Path) -> None:
    # The text is the same again by the end: only the kernel's change events tell.
    change = _ChangeOnce(busy, "parse_mount", "mkdir -p aba && mount -t tmpfs x aba && umount aba")
    res = dump(busy.pid, str(out), plugins=[change])
    assert change.done and res.attempts == 2
    assert not any(m.mountpoint.endswith("/aba") for m in _mounts(out, 1))


def test_a_propagation_change_is_seen(busy: NamespaceScenario, out: Path) -> None:
    # mount(2)'s MS_SHARED moves no change event on this kernel: the re-read sees it.
    def bind_entry() -> mnt_pb2.mnt_entry:
        (entry,) = [m for m in _mounts(out, 1) if m.mountpoint.endswith(f"{busy.workdir}/b")]
        return entry

    dump(busy.pid, str(out))
    assert bind_entry().shared_id == 0
    os.rename(out, f"{out}.before")
    res = dump(busy.pid, str(out), plugins=[_ChangeOnce(busy, "parse_mount",
                                                        "mount --make-shared b")])
    assert res.attempts == 2 and bind_entry().shared_id != 0


def test_a_mount_made_while_content_is_archived_is_seen(busy: NamespaceScenario,
                                                        out: Path) -> None:
    change = _ChangeOnce(busy, "dump_content", "mkdir -p late && mount -t tmpfs x late")
    res = dump(busy.pid, str(out), plugins=[change])
    assert change.done and res.attempts == 2
    assert any(m.mountpoint.endswith("/late") for m in _mounts(out, 1))


def test_leave_stopped(busy: NamespaceScenario, out: Path) -> None:
    dump(busy.pid, str(out), leave_stopped=True)
    try:
        assert _state(busy.pid) == "T"
    finally:
        os.kill(busy.pid, signal.SIGCONT)
        for c in _children(busy.pid):
            os.kill(c, signal.SIGCONT)


def test_image_dir_not_empty(busy: NamespaceScenario, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(DumpError, match="not empty"):
        dump(busy.pid, str(tmp_path))
    assert _state(busy.pid) in "SR"
