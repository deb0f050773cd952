"""The programs under examples/ run as their docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
