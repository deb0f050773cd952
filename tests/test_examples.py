"""The programs under examples/ run as their docs say."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.testing import NamespaceScenario
from criu_fw.testing.roundtrip import round_trip

TOP = Path(__file__).resolve().parent.parent


@pytest.mark.privileged
def test_the_embedding_example_round_trips_a_namespace() -> None:
    res = subprocess.run(
        ["unshare", "--net", "--ipc", sys.executable, str(TOP / "examples" / "embed.py")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verify: OK\n" in res.stdout
    assert "the file reads: kept across the restore\n" in res.stdout


@pytest.mark.privileged
def test_the_kits_round_trip_dumps_restores_and_verifies(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path
) -> None:
    s = scenario("mkdir t && mount -t tmpfs -o size=1m kit t && echo kept > t/f")
    with round_trip(s.pid, str(tmp_path / "img")) as restored:
        assert restored.verify_ok, restored.verify_output
        inside = Path(f"/proc/{restored.pid}/root{s.workdir}/t/f")
        assert inside.read_text() == "kept\n"
        holder = restored.pid
    # The holder is ended when the block ends (it is init's child: reaped there, soon).
    for _ in range(100):
        try:
            if "State:\tZ" in Path(f"/proc/{holder}/status").read_text():
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"holder {holder} still runs")
