"""The wheel: only criu_fw/..., entry points, py.typed; installs offline into a fresh venv,
imports, and mypy (strict) type-checks a client against the installed package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUR_SITE = sysconfig.get_paths()["purelib"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Built from a copy: the checkout's build/ holds the editable link tree that other
    # processes may be refreshing at the same moment.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("core", "fsdrivers", "proto"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        # -x: the build requirements come from this venv (offline); do not re-check them.
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-x", "--outdir", str(out)],
        cwd=src, capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = out.glob("criu_fw-*.whl")
    yield whl


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"criu_fw", f"{wheel.name.split('-py3')[0]}.dist-info"}, tops
    for must in ("criu_fw/py.typed", "criu_fw/__init__.py", "criu_fw/cli/__init__.py",
                 "criu_fw/fsdrivers/overlay/__init__.py", "criu_fw/fsdrivers/generic/__init__.py",
                 "criu_fw/fsdrivers/aufs/__init__.py", "criu_fw/proto/mnt_pb2.py",
                 "criu_fw/proto/mnt_pb2.pyi", "criu_fw/proto/mnt.proto",
                 "criu_fw/kernel/statmount.py", "criu_fw/api/hooks.py",
                 "criu_fw/images/mounts.py", "criu_fw/testing/compare.py"):
        assert must in names, must
    # Every Python module of the checkout made it into the wheel (no forgotten subpackage).
    for pkg_dir, prefix in (("core", "criu_fw"), ("fsdrivers", "criu_fw/fsdrivers"),
                            ("proto", "criu_fw/proto")):
        for py in (REPO / pkg_dir).rglob("*.py"):
            rel = py.relative_to(REPO / pkg_dir).as_posix()
            if "__pycache__" not in rel:
                assert f"{prefix}/{rel}" in names, f"{pkg_dir}/{rel} is not in the wheel"
    dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(dist_info).decode()
    assert "[criu_fw.fsdrivers]" in entry_points
    for line in ("generic = criu_fw.fsdrivers.generic:driver",
                 "overlay = criu_fw.fsdrivers.overlay:driver",
                 "aufs = criu_fw.fsdrivers.aufs:driver", "criu-fw = criu_fw.entry:main"):
        assert line in entry_points, line


CLIENT = '''\
from criu_fw import FsDriver, Mount, hookimpl, load_drivers
from criu_fw.plan import NewSuperblock
from criu_fw.proto import mnt_pb2


class MyDriver(FsDriver):
    fstypes = ("myfs",)

    @hookimpl
    def rebuild_mount(self, mount: Mount) -> NewSuperblock:
        return NewSuperblock("myfs", mount.source)


def owner(fstype: str) -> str:
    return load_drivers(plugins=[MyDriver()]).owner(fstype)


entry: mnt_pb2.mnt_entry = mnt_pb2.mnt_entry(mnt_id=1)
'''

BAD_CLIENT = "from criu_fw import load_drivers\nx: int = load_drivers().owner('x')\n"


def test_wheel_installs_imports_and_type_checks(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # Our site-packages as a plain path entry: dependencies (pluggy, attrs, click, protobuf)
    # and pip import from there, but not our editable criu_fw (its .pth is not processed).
    Path(site, "deps.pth").write_text(OUR_SITE + "\n")
    res = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    probe = (
        "import criu_fw, criu_fw.fsdrivers.overlay, criu_fw.proto.mnt_pb2, criu_fw.cli;"
        "print(criu_fw.__file__); print(sorted(criu_fw.load_drivers().drivers))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRIU_FW_")}
    res = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert res.returncode == 0, res.stderr
    where, drivers = res.stdout.splitlines()
    assert where.startswith(site), where
    assert {"generic", "overlay", "aufs"} <= set(ast.literal_eval(drivers))
    res = subprocess.run([venv / "bin" / "criu-fw", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "criu-fw" in res.stdout

    (tmp_path / "client.py").write_text(CLIENT)
    (tmp_path / "bad_client.py").write_text(BAD_CLIENT)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", str(py)]
    res = subprocess.run([*mypy, "client.py"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # mypy really sees the package's types (py.typed): a wrong annotation is caught.
    res = subprocess.run([*mypy, "bad_client.py"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1, res.stdout
    assert 'Incompatible types in assignment (expression has type "str"' in res.stdout
