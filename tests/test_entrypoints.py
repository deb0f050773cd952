"""Entry points read from the distributions' metadata directly (core/api/entrypoints.py)
find what importlib.metadata finds, in the same order, or say they cannot (None)."""

from __future__ import annotations

import importlib.metadata as md
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.api import entrypoints
from criu_fw.api.loader import ENTRY_POINT_GROUP, load_drivers


def _theirs(group: str) -> list[tuple[str, str, str]]:
    return [(e.name, e.value, e.dist.metadata["Name"] if e.dist else "")
            for e in md.entry_points(group=group)]


def _ours(group: str) -> list[tuple[str, str, str]]:
    found = entrypoints.entry_points(group)
    assert found is not None
    return [(e.name, e.value, entrypoints.name_and_version(e.dist)[0] or "") for e in found]


def _dist(where: Path, dirname: str, name: str, version: str, eps: str) -> None:
    d = where / dirname
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
                                "Name: not-a-header\n")
    (d / "entry_points.txt").write_text(eps)


@pytest.fixture
def on_path(tmp_path: Path) -> Iterator[Path]:
    """Two directories at the front of sys.path; a third-party driver in each, the second
    shadowed by the first (same distribution name, spelled otherwise)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _dist(first, "criu_fw_zfs-1.0.dist-info", "criu-fw-zfs", "1.0",
          f"# a comment\n[console_scripts]\nzfs-x = m:f\n\n[{ENTRY_POINT_GROUP}]\n"
          "zfs = criu_fw_zfs.driver:driver [extra]\n")
    _dist(second, "Criu.Fw_ZFS-0.9.dist-info", "criu-fw-zfs", "0.9",
          f"[{ENTRY_POINT_GROUP}]\nzfs = old:driver\n")
    _dist(second, "other-2.0.egg-info", "other", "2.0",
          f"[{ENTRY_POINT_GROUP}]\n  other =  other.mod:make.driver  \n")
    (second / "shadow-1.0.egg-info").write_text("Name: shadow\n")  # a file: no entry points
    sys.path[:0] = [str(first), str(second)]
    md.FastPath.__new__.cache_clear()  # type: ignore[attr-defined]
    try:
        yield tmp_path
    finally:
        for p in (str(first), str(second)):
            sys.path.remove(p)


def test_this_environment_reads_the_same_both_ways() -> None:
    for group in (ENTRY_POINT_GROUP, "console_scripts", "pytest11"):
        assert _ours(group) == _theirs(group), group
    assert [n for n, _, _ in _ours(ENTRY_POINT_GROUP)] == ["aufs", "generic", "overlay"]


def test_third_party_distributions_first_one_of_a_name_winning(on_path: Path) -> None:
    ours = _ours(ENTRY_POINT_GROUP)
    assert ours == _theirs(ENTRY_POINT_GROUP)
    assert ("zfs", "criu_fw_zfs.driver:driver [extra]", "criu-fw-zfs") in ours
    assert ("other", "other.mod:make.driver", "other") in ours
    assert "old:driver" not in {v for _, v, _ in ours}
    (zfs,) = [e for e in entrypoints.entry_points(ENTRY_POINT_GROUP) or [] if e.name == "zfs"]
    assert entrypoints.name_and_version(zfs.dist) == ("criu-fw-zfs", "1.0")


def test_load_imports_the_module_and_follows_the_attributes(tmp_path: Path) -> None:
    ep = entrypoints.EntryPoint("x", "criu_fw.api.loader:DriverManager.load [extra]",
                                ENTRY_POINT_GROUP, str(tmp_path))
    from criu_fw.api.loader import DriverManager

    assert ep.load() is DriverManager.load


def test_a_zip_on_the_path_is_left_to_the_standard_library(tmp_path: Path) -> None:
    archive = tmp_path / "dists.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n\n")
        z.writestr("zipped-1.0.dist-info/entry_points.txt",
                   f"[{ENTRY_POINT_GROUP}]\nzipped = zipped:driver\n")
    sys.path.insert(0, str(archive))
    try:
        assert entrypoints.entry_points(ENTRY_POINT_GROUP) is None
        # The loader then finds it through importlib.metadata (and reports the failed import).
        mgr = load_drivers()
        assert any(p.name == "zipped" and "import failed" in p.reason for p in mgr.problems)
    finally:
        sys.path.remove(str(archive))
