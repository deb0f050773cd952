"""A disk that fills during a dump: one clear line, a failing status, nothing published or
left behind in the image directory's filesystem, and the dumped processes running again
(also with --leave-stopped, which keeps them stopped only after a dump that succeeded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

# The image directory is a 512 KiB tmpfs of the scenario's namespace (reached through its
# /proc/PID/root); the tmpfs to archive holds 3 MB of incompressible bytes.
SCRIPT = r"""
mkdir imgs m
mount -t tmpfs -o size=512k small imgs
mount -t tmpfs data m
head -c 3000000 /dev/urandom > m/big
"""


def _state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    raise AssertionError("no State line")


@pytest.mark.parametrize("extra", [[], ["--leave-stopped"]])
def test_a_full_disk_fails_the_dump_cleanly(extra: list[str]) -> None:
    with NamespaceScenario(SCRIPT) as scn:
        imgs = Path(f"/proc/{scn.pid}/root{scn.workdir}/imgs")
        res = subprocess.run(
            [sys.executable, "-m", "criu_fw", "dump", "-q", "-t", str(scn.pid),
             "-D", str(imgs / "img"), "--root", "/", *extra],
            capture_output=True, text=True, timeout=60,
        )
        assert res.returncode != 0
        # (The scenario's own stderr is a deleted file: a warning line about it comes first.)
        errors = [x for x in res.stderr.splitlines() if not x.startswith("criu-fw: warning")]
        assert len(errors) == 1 and errors[0].startswith("criu-fw: error: "), res.stderr
        assert "No space left on device" in errors[0]
        assert f"at '{scn.workdir}/m'" in errors[0]  # the filesystem being archived
        assert list(imgs.iterdir()) == []
        assert _state(scn.pid) in ("S", "R")
