"""SIGKILL of ``criu-fw dump`` at seeded random points of its run: the dumped processes run
again, no temporary or half-written image directory is left, no process of the dump stays
(``scripts/kill_dump.py`` does the killing and checking; many more points: docs/reliability.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kill_dump.py"


def test_killed_dumps_leave_nothing_behind() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--kills", "12", "--seed", "3",
                          "--mounts", "150"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1].endswith(": 12 left nothing behind, 0 problem(s)")
