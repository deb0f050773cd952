"""A third-party driver that calls sys.exit() (or is interrupted) while it is imported."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from criu_fw.api import loader
from criu_fw.api.loader import ENTRY_POINT_GROUP, DriverConfig, DriverManager
from criu_fw.cli import main


def _with_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    """A real module on sys.path, published under our group next to the real entry points."""
    (tmp_path / "criu_fw_test_exiter.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = metadata.EntryPoint("exiter", "criu_fw_test_exiter:Driver", ENTRY_POINT_GROUP)
    real = metadata.entry_points

    def entry_points(**kw: Any) -> Any:
        found = list(real(**kw))
        return [*found, extra] if kw.get("group") == ENTRY_POINT_GROUP else found

    monkeypatch.setattr(loader.metadata, "entry_points", entry_points)


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
