"""All or nothing, whatever happens to the dumper: signals, SIGKILL, a mountpoint as the image
directory, a full image directory, temporary directories of dead dumpers."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.errors import DriverError, DumpError
from criu_fw.images import read_image
from criu_fw.proto import inventory_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scenario = Callable[..., NamespaceScenario]

#: A dumper whose drivers hang on the first mount, after saying so in a marker file.
SLEEPY_DUMPER = r"""
import sys, time
from criu_fw import hookimpl
from criu_fw.dump import dump

class Sleepy:
    @hookimpl(wrapper=True)
    def parse_mount(self):
        open(sys.argv[3], "w").close()
        time.sleep(60)
        return (yield)

dump(int(sys.argv[1]), sys.argv[2], plugins=[Sleepy()])
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


def _tree(scn: NamespaceScenario) -> list[int]:
    """The scenario's process and its background child."""
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rpartition(b")")[2].split()[1]) == scn.pid:
                        kids.append(int(name))
            except OSError:
                pass
    return [scn.pid, *kids]


def _wait(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def two(scenario: Scenario) -> NamespaceScenario:
    return scenario("sleep 100000 &")


def _start_sleepy(scn: NamespaceScenario, out: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    marker = tmp_path / "in-parse-mount"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPY_DUMPER, str(scn.pid), str(out), str(marker)],
        stderr=subprocess.PIPE,
    )
    _wait(lambda: marker.exists() or proc.poll() is not None, "the dumper never got going")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def test_sigkill_mid_dump_resumes_and_leaves_nothing(two: NamespaceScenario,
                                                     tmp_path: Path) -> None:
    pids = _tree(two)
    assert len(pids) == 2
    out = tmp_path / "img"
    dumper = _start_sleepy(two, out, tmp_path)
    assert [_state(p) for p in pids] == ["T", "T"]  # frozen while it reads them
    assert any(n.startswith(".img.criu-fw-") for n in os.listdir(tmp_path))
    dumper.kill()
    dumper.wait()
    _wait(lambda: all(_state(p) != "T" for p in pids), "the processes stayed stopped")
    _wait(lambda: not any(n.startswith(".img.") for n in os.listdir(tmp_path)),
          "the temporary directory stayed")
    assert not out.exists()


def test_sigkill_mid_dump_into_a_mountpoint(two: NamespaceScenario, scenario: Scenario,
                                            tmp_path: Path) -> None:
    holder = scenario("mkdir img && mount -t tmpfs imgfs img")
    target = Path(f"/proc/{holder.pid}/root{holder.workdir}/img")
    dumper = _start_sleepy(two, target, tmp_path)
    assert [n for n in os.listdir(target) if n.startswith(".img.criu-fw-")]  # inside it
    dumper.kill()
    dumper.wait()
    _wait(lambda: os.listdir(target) == [], "the temporary directory stayed")
    _wait(lambda: all(_state(p) != "T" for p in _tree(two)), "the processes stayed stopped")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_dump_fails_cleanly(two: NamespaceScenario, tmp_path: Path,
                                       sig: signal.Signals) -> None:
    pids = _tree(two)
    out = tmp_path / "img"
    dumper = _start_sleepy(two, out, tmp_path)
    dumper.send_signal(sig)
    _, err = dumper.communicate(timeout=30)
    assert dumper.returncode != 0
    assert f"DumpInterrupted: interrupted by {sig.name}" in err.decode()
    # Resumed by the dumper itself, before it exited.
    assert all(_state(p) != "T" for p in pids)
    assert [n for n in os.listdir(tmp_path) if n != "in-parse-mount"] == []


def test_cli_sigterm_is_one_line(two: NamespaceScenario, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    # The CLI's own error boundary and exit status, with the hanging plugin slipped in.
    code = SLEEPY_DUMPER.replace(
        "dump(int(sys.argv[1]), sys.argv[2], plugins=[Sleepy()])",
        "import criu_fw.cli.dump as d\n"
        "real = d.dump\n"
        "d.dump = lambda *a, **kw: real(*a, **{**kw, 'plugins': [Sleepy()], 'manager': None})\n"
        "from criu_fw.cli import main\n"
        "main(['dump', '-t', sys.argv[1], '-D', sys.argv[2]])",
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(two.pid), str(tmp_path / "img"),
                             str(marker)], stderr=subprocess.PIPE, text=True)
    _wait(lambda: marker.exists() or proc.poll() is not None, "the dumper never got going")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == ("criu-fw: error: interrupted by SIGTERM; the processes were resumed and "
                   "nothing was written\n")


def test_stale_temporary_directories_are_removed(two: NamespaceScenario,
                                                 tmp_path: Path) -> None:
    dead = tmp_path / ".img.criu-fw-dead1234"
    dead.mkdir()
    (dead / "pstree.img").write_bytes(b"x")
    alive = tmp_path / ".img.criu-fw-alive567"
    alive.mkdir()
    fd = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a dump in progress holds its directory
        dump(two.pid, str(tmp_path / "img"))
        assert sorted(os.listdir(tmp_path)) == [".img.criu-fw-alive567", "img"]
    finally:
        os.close(fd)


def test_image_dir_is_an_empty_mountpoint(two: NamespaceScenario, scenario: Scenario) -> None:
    # The usual tmpfs for images; here under a read-only parent as well.
    holder = scenario("mkdir p && mount -t tmpfs p p && mkdir p/img && "
                      "mount -t tmpfs imgfs p/img && mount -o remount,ro p")
    target = f"/proc/{holder.pid}/root{holder.workdir}/p/img"
    res = dump(two.pid, target)
    names = set(os.listdir(target))
    assert {"inventory.img", "pstree.img", "mountpoints-1.img"} <= names
    assert not any(n.startswith(".") for n in names)
    inv = read_image(os.path.join(target, "inventory.img"), inventory_pb2.inventory_entry)
    assert inv[0].root_ids.mnt_ns_id == 1 and res.pids[0] == two.pid
    assert holder.sh("grep -c imgfs /proc/self/mountinfo").strip() == "1"  # still mounted


def test_unwritable_image_dir_fails_before_freezing(two: NamespaceScenario,
                                                   scenario: Scenario) -> None:
    holder = scenario("mkdir img && mount -t tmpfs -o ro imgfs img")
    target = f"/proc/{holder.pid}/root{holder.workdir}/img"
    with pytest.raises(DumpError, match=r"img: cannot write into it: Read-only file system"):
        dump(two.pid, target)
    assert all(_state(p) != "T" for p in _tree(two))


def test_full_image_dir_names_the_cause(scenario: Scenario) -> None:
    big = scenario("mkdir big && mount -t tmpfs big big && "
                   "head -c 1000000 /dev/urandom > big/random")
    small = scenario("mkdir small && mount -t tmpfs -o size=64k small small")
    with pytest.raises(DriverError) as err:
        dump(big.pid, f"/proc/{small.pid}/root{small.workdir}/small/img")
    msg = str(err.value)
    assert msg.startswith("driver 'generic': archiving mount "), msg
    assert "(tmpfs, source 'big') into /proc/" in msg and ".tar.gz.img failed: " in msg
    assert "No space left on device" in msg and "not recoverable" not in msg
    assert small.sh("ls -A small") == ""
    assert _state(big.pid) != "T"
