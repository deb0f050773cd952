"""The README's main job: ``scripts/demo.sh`` runs the whole round trip and cleans up after
itself (every process it started is gone, its temporary directory is removed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_processes() -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"/tmp/criu-fw-demo-" in f.read():
                    out.append(pid)
        except OSError:
            continue
    return out


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    # Its own TMPDIR: another demo running on the machine meanwhile cannot look like a leak.
    res = subprocess.run(
        ["bash", os.path.join(TOP, "scripts", "demo.sh")],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    for section in ("== the original namespace", "== dump", "== restore",
                    "== the restored namespace", "== verify"):
        assert section in out
    assert "verify: OK, 9 mounts match" in out
    # Both trees were printed, with the overmount stacked on /over.
    assert out.count("│ └─/over  top") == 2
    assert "hello from the lower layer\nwritten through the overlay\n" in out
    # The open file with its flags and position, as dumped.
    assert "name: /merged/hello, mnt_id: " in out and ", flags: " in out and ", pos: 0\n" in out
    # Propagation works in the restored namespace: a mount in /shared shows in its peer.
    assert "appears in its peer /peer\nmounted in /shared\n" in out
    with open(os.path.join(TOP, "scripts", "demo.sh")) as f:
        assert "dump --help" not in f.read()
    assert out.rstrip().endswith("hidden under the overmount\ndemo: round trip complete")
    assert _demo_processes() == []
    assert list(tmp_path.iterdir()) == []
