"""One exit-status scheme for every command (docs/cli.md): 0 success, 1 differences (verify),
2 a usage mistake, 3 a failure, 70 a bug, 128+N a signal. Run as a person runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.images import write_image
from criu_fw.proto import pstree_pb2

NO_PID = "999999999"  # above the largest pid_max the kernel allows


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and is not reaped yet: /proc shows it, without a namespace."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        yield pid
    finally:
        os.waitpid(pid, 0)


def test_no_such_process_is_status_2_in_every_command(tmp_path: Path) -> None:
    img = str(tmp_path / "img")
    for args, line in (
        (("dump", "-t", NO_PID, "-D", img), f"no process {NO_PID}"),
        (("verify", "-t", NO_PID, "-D", img), f"no process {NO_PID}"),
        (("tree", "-t", NO_PID), f"no process {NO_PID} (no /proc/{NO_PID}/ns/mnt)"),
    ):
        res = cli(*args)
        assert (res.returncode, res.stdout, res.stderr) == (2, "", f"criu-fw: error: {line}\n")
    assert os.listdir(tmp_path) == []


def test_an_exited_process_is_named_not_an_errno(zombie: int, tmp_path: Path) -> None:
    line = (f"criu-fw: error: process {zombie} has exited (its parent has not reaped it): "
            "it has no mounts\n")
    for args in (("dump", "-t", str(zombie), "-D", str(tmp_path / "img")),
                 ("verify", "-t", str(zombie), "-D", str(tmp_path)),
                 ("tree", "-t", str(zombie))):  # fmt: skip
        res = cli(*args)
        assert (res.returncode, res.stderr) == (2, line), args


def test_a_bad_image_is_a_failure_status_3(tmp_path: Path) -> None:
    bad = tmp_path / "pstree.img"
    bad.write_bytes(b"\x19CVT\x30\x30\x27\x50\x10\x00\x00\x00abc")
    res = cli("show", str(bad))
    assert (res.returncode, res.stderr) == (
        3, f"criu-fw: error: {bad}: entry 0: truncated payload (3 of 16 bytes)\n")
    res = cli("restore", "--dry-run", "-D", str(tmp_path / "none"))
    assert (res.returncode, res.stderr) == (
        3, f"criu-fw: error: {tmp_path}/none: no such image directory\n")


def test_a_bad_option_is_status_2() -> None:
    res = cli("dump", "-t", "x", "-D", "/nonexistent")
    assert res.returncode == 2 and "Invalid value for '-t'" in res.stderr
    res = cli("verify", "-D", "/nonexistent", "-t", "1=2=x")
    assert (res.returncode, res.stderr) == (
        2, "criu-fw: error: -t '1=2=x': expected PID or NS_ID=PID\n")


def test_show_of_a_good_image_is_status_0(tmp_path: Path) -> None:
    good = str(tmp_path / "pstree.img")
    write_image(good, "PSTREE", [pstree_pb2.pstree_entry(pid=5, ppid=1, pgid=5, sid=5)])
    assert cli("show", good).returncode == 0


def test_interrupted_is_130_and_one_line() -> None:
    # Ctrl-C in any command: as a shell reports SIGINT, never click's status 1 (verify's
    # "differences found").
    script = (
        "import click\n"
        "from criu_fw.cli import main\n"
        "@click.command('nap')\n"
        "def nap():\n"
        "    raise KeyboardInterrupt\n"
        "main.add_command(nap)\n"
        "main(['nap'], prog_name='criu-fw')\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert (res.returncode, res.stderr) == (130, "criu-fw: interrupted\n")


def test_help_states_the_scheme() -> None:
    res = cli("--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "Exit status: 0 success; 1 differences found (verify); 2 a usage mistake" in text
    assert "3 a failure (dump, restore, a bad image)" in text
