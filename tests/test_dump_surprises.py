"""What a dump used to do silently, said in one line: one mountpoint given two keys, one key
for two different mounts, a blocked driver that does not exist, the fallback driver blocked,
fds that are no file of a mount left out. Run as a person runs ``criu-fw dump``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.testing import NamespaceScenario

Scenario = Callable[..., NamespaceScenario]
NO_PID = "999999999"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, check=False, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_one_mountpoint_given_two_keys_is_refused(tmp_path: Path) -> None:
    img = str(tmp_path / "img")
    res = cli("dump", "-t", NO_PID, "-D", img,
              "--external", "mnt[/data]:k1", "--external", "mnt[/data]:k2")  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (
        2, "", "criu-fw: error: --external mnt[/data]:k2: mountpoint /data is already given "
        "key 'k1'; give each mount one key\n")  # fmt: skip
    # The same key twice is no contradiction: the dump goes on (to the missing process).
    res = cli("dump", "-t", NO_PID, "-D", img,
              "--external", "mnt[/data]:k1", "--external", "mnt[/data]:k1")  # fmt: skip
    assert (res.returncode, res.stderr) == (2, f"criu-fw: error: no process {NO_PID}\n")


def test_a_block_driver_that_names_no_driver_is_a_warning() -> None:
    res = cli("--block-driver", "nosuch", "drivers")
    assert res.returncode == 0
    assert res.stderr == (
        "criu-fw: warning: --block-driver nosuch: no driver named 'nosuch' is installed, so it "
        "blocks nothing (loaded: aufs, generic, overlay)\n")  # fmt: skip
    res = cli("tree", env={"CRIU_FW_BLOCK_DRIVERS": "aufs,nosuch"})
    assert res.returncode == 0
    assert res.stderr == (
        "criu-fw: warning: nosuch in CRIU_FW_BLOCK_DRIVERS: no driver named 'nosuch' is "
        "installed, so it blocks nothing (loaded: generic, overlay)\n")  # fmt: skip
    # A driver that exists is blocked without a word.
    res = cli("--block-driver", "aufs", "drivers")
    assert (res.returncode, res.stderr) == (0, "")


@pytest.mark.privileged
def test_one_key_for_two_different_mounts_is_refused(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario("mkdir a b c && mount -t tmpfs ta a && mount -t tmpfs tb b"
                   " && mount --bind a c")  # fmt: skip
    w = scn.workdir
    res = cli("dump", "-t", str(scn.pid), "-D", str(tmp_path / "img"), "--external-auto",
              "--external", f"mnt[{w}/a]:k", "--external", f"mnt[{w}/b]:k")  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert re.fullmatch(
        rf"criu-fw: error: external key 'k' names two different mounts, {w}/a \(tmpfs \d+:\d+, "
        rf"root /\) and {w}/b \(tmpfs \d+:\d+, root /\); the restore would bind one path to "
        r"both: give each its own key\n", res.stderr), res.stderr  # fmt: skip
    assert not (tmp_path / "img").exists() and _state(scn.pid) in "SR"
    # A mount and a bind of the same directory may share their key.
    res = cli("dump", "-t", str(scn.pid), "-D", str(tmp_path / "img"), "--external-auto",
              "--external", f"mnt[{w}/a]:k", "--external", f"mnt[{w}/c]:k")  # fmt: skip
    assert res.returncode == 0, res.stderr


@pytest.mark.privileged
def test_blocking_the_fallback_names_the_cause(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario("mkdir a && mount -t tmpfs ta a")
    res = cli("--block-driver", "generic", "dump", "-t", str(scn.pid),
              "-D", str(tmp_path / "img"), "--external-auto")  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert re.fullmatch(
        r"criu-fw: error: driver 'generic': no driver for fstype '[^']+': the fallback driver "
        r"'generic', which handles every fstype no other driver claims, is blocked "
        r"\(--block-driver or CRIU_FW_BLOCK_DRIVERS\) and no other fallback is loaded\n",
        res.stderr), res.stderr  # fmt: skip
    assert not (tmp_path / "img").exists() and _state(scn.pid) in "SR"


def _not_files(pid: int) -> Counter[str]:
    """What the fd links of ``pid`` that are no path show, by kind (pipe, socket, ...)."""
    out: Counter[str] = Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        if not target.startswith("/"):
            kind, _, rest = target.partition(":")
            out[rest.strip("[]") if kind == "anon_inode" else kind] += 1
    return out


@pytest.mark.privileged
def test_skipped_fds_are_counted_in_the_summary(scenario: Scenario, tmp_path: Path) -> None:
    holder = ("import os, socket, time; r, w = os.pipe(); s = socket.socket(); "
              "e = os.eventfd(0); os.mkfifo('ff'); f = os.open('ff', os.O_RDWR); "
              "os.close(os.open('done', os.O_CREAT | os.O_WRONLY)); time.sleep(100000)")
    scn = scenario("mkdir a && mount -t tmpfs ta a && exec 7<a",
                   keep_running=f"exec {sys.executable} -c \"{holder}\"")  # fmt: skip
    # The scenario is ready before the program it execs has made its fds.
    for _ in range(1000):
        if os.path.exists(f"{scn.workdir}/done"):
            break
        time.sleep(0.01)
    kinds = _not_files(scn.pid)
    assert kinds["pipe"] >= 2 and kinds["socket"] >= 1 and kinds["eventfd"] == 1
    kinds["fifo"] += 1  # the FIFO has a path: skipped as a fifo, not as a file
    res = cli("dump", "-t", str(scn.pid), "-D", str(tmp_path / "img"), "--external-auto")
    assert res.returncode == 0, res.stderr
    listed = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    assert (f"skipped {sum(kinds.values())} fd(s) that are no file of a mount ({listed}): the "
            "process checkpointer's to restore, not in the images") in res.stdout.splitlines()
