"""A third-party driver that calls sys.exit() (or is interrupted) while it is imported."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from criu_fw.api.loader import ENTRY_POINT_GROUP, DriverConfig, DriverManager
from criu_fw.cli import main


def _with_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    """A real module on sys.path, published under our group by a distribution's metadata
    there, next to the real entry points."""
    (tmp_path / "criu_fw_test_exiter.py").write_text(body)
    info = tmp_path / "criu_fw_test_exiter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: criu-fw-test-exiter\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nexiter = criu_fw_test_exiter:Driver\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_sys_exit_at_import_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    _with_entry_point(monkeypatch, tmp_path, "import sys\nsys.exit('no thanks')\n")
    mgr = DriverManager(DriverConfig()).load()
    assert "generic" in mgr.drivers and "exiter" not in mgr.drivers
    [problem] = [p for p in mgr.problems if p.name == "exiter"]
    assert "SystemExit: no thanks" in problem.reason
    res = CliRunner().invoke(main, ["drivers"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "generic" in res.output and "exiter" in res.output


def test_keyboard_interrupt_at_import_still_stops(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    _with_entry_point(monkeypatch, tmp_path, "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        DriverManager(DriverConfig()).load()
