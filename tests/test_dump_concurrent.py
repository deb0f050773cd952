"""Dumps at the same time: eight dumps of eight different process trees on this 2-core
machine all succeed and write what each writes alone (ids aside); a second dump of a tree
that is being dumped waits for the first, saying so, instead of stopping and resuming the
same processes under it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from criu_fw.dump.lock import dump_lock
from criu_fw.testing import NamespaceScenario
from criu_fw.testing.compare import image_differences

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "criu_fw"]

SCRIPT = r"""
for i in $(seq 20); do mkdir -p t$i b$i; mount -t tmpfs -o size=1m t t$i
    echo "tree $i" > t$i/f; mount --bind t$i b$i; done
mount --make-shared t1; mkdir s; mount --bind t1 s
"""


def _dump(pid: int, where: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "dump", "-q", "-t", str(pid), "-D", str(where), "--root", "/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_eight_concurrent_dumps_write_what_each_writes_alone(tmp_path: Path) -> None:
    scns = [NamespaceScenario(SCRIPT + f"echo only{n} > t2/f\n") for n in range(8)]
    try:
        for n, scn in enumerate(scns):
            alone = _dump(scn.pid, tmp_path / f"alone{n}")
            assert alone.wait(60) == 0, alone.communicate()[1]
        together = [_dump(scn.pid, tmp_path / f"together{n}") for n, scn in enumerate(scns)]
        for proc in together:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        for n in range(8):
            assert image_differences(str(tmp_path / f"alone{n}"),
                                     str(tmp_path / f"together{n}")) == []
        # Each wrote its own tree, not a neighbour's.
        assert image_differences(str(tmp_path / "alone0"), str(tmp_path / "alone1")) != []
    finally:
        for scn in scns:
            scn.close()


def test_a_second_dump_of_one_tree_waits_for_the_first(tmp_path: Path) -> None:
    with NamespaceScenario(SCRIPT) as scn:
        # The test holds the lock a dump of this tree holds while it runs.
        with dump_lock(scn.pid, "/proc", lambda _: None):
            second = _dump(scn.pid, tmp_path / "second")
            time.sleep(1.5)
            assert second.poll() is None  # still waiting, nothing frozen meanwhile
            assert not (tmp_path / "second").exists()
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert err.splitlines()[0] == (
            f"criu-fw: WARNING: another criu-fw dump of process {scn.pid} is running; "
            "waiting for it"
        )
        assert (tmp_path / "second" / "inventory.img").exists()
