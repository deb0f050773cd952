"""``stats-dump``: how long the dump kept the processes stopped, in CRIU's format.

A real dump of a scenario with tmpfs content (archived while the processes are stopped);
Debian's ``crit`` (pycriu) reads the file, and its ``frozen_time`` is the time the dump's
progress line reports, within the dump's own duration.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.images.stats import read_frozen_time
from criu_fw.testing import NamespaceScenario
from helpers import CRIT, crit_env

pytestmark = pytest.mark.privileged


def test_the_dump_says_how_long_the_processes_stayed_frozen(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path,
) -> None:
    scn = scenario("for i in 1 2 3; do mkdir t$i; mount -t tmpfs t$i t$i; "
                   "head -c 100000 /dev/urandom > t$i/f; done")
    lines: list[str] = []
    images = tmp_path / "img"
    started = time.monotonic()
    dump(scn.pid, str(images), auto_external=True, progress=lines.append)
    took = time.monotonic() - started

    res = subprocess.run([CRIT, "show", str(images / "stats-dump")], capture_output=True,
                         text=True, env=crit_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["magic"] == "STATS"
    (entry,) = shown["entries"]
    stats = entry["dump"]
    # Microseconds: stopping them is part of their stopped time, all of it within the dump.
    assert 0 < stats["freezing_time"] <= stats["frozen_time"] < took * 1e6
    assert stats["pages_written"] == 0  # no memory is saved
    (said,) = [m for line in lines if (m := re.search(r"\(([\d.]+) s frozen\)", line))]
    assert float(said.group(1)) == pytest.approx(stats["frozen_time"] / 1e6, abs=0.006)
    assert read_frozen_time(str(images)) == stats["frozen_time"] / 1e6
