"""Discovery of third-party drivers from REAL distributions installed with pip into a virtual
environment (tests/fixtures/thirdparty), and every hook of that driver on real mounts.

The venv is offline and quick: no pip of its own (ours runs with ``--python``-less
``-m pip`` through a .pth that makes our .venv's packages, criu-fw included, importable),
``--no-deps --no-build-isolation --no-index``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.api.loader import DriverConfig, DriverManager
from criu_fw.api.tracing import Tracer
from criu_fw.context import DumpContext, RestoreContext
from criu_fw.files import OpenFile
from criu_fw.images.mounts import read_mount_namespace, write_mount_namespace
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.plan import NewSuperblock
from criu_fw.records import DumpedNamespace
from criu_fw.testing import NamespaceScenario

FIXTURES = Path(__file__).parent / "fixtures" / "thirdparty"
OUR_SITE = sysconfig.get_paths()["purelib"]


def make_venv(where: Path, *packages: Path) -> Path:
    """A venv that sees our site-packages (a .pth running site.addsitedir, so our editable
    criu-fw and its dependencies import) and has ``packages`` really installed by pip."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "criu_fw_dev.pth").write_text(f"import site; site.addsitedir({OUR_SITE!r})\n")
    if packages:
        res = subprocess.run(
            [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
             *map(str, packages)],
            capture_output=True, text=True,
        )
        assert res.returncode == 0, res.stderr
    return py


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_venv(
        tmp_path_factory.mktemp("venv") / "v",
        FIXTURES / "criu-fw-ramfs",
        FIXTURES / "criu-fw-broken",
    )


def cli(
    py: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRIU_FW_")}
    return subprocess.run(
        [str(py), "-m", "criu_fw", *args], capture_output=True, text=True,
        env={**clean, **(env or {})},
    )


def test_drivers_lists_the_installed_driver_and_skips_broken_ones(venv_python: Path) -> None:
    res = cli(venv_python, "drivers")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    ramfs = next(line for line in lines if line.startswith("ramfs "))
    assert "criu-fw-ramfs 0.3.1" in ramfs
    for hook in ("parse_mount", "rebuild_mount", "dump_content", "restore_content"):
        assert hook in ramfs
    skipped = {line.split()[1]: line for line in lines if line.startswith("skipped ")}
    assert set(skipped) == {"importfail", "badtypes", "misspelled"}
    assert all("(criu-fw-broken 0.0.1)" in line for line in skipped.values())
    assert "No module named 'criu_fw_dependency_that_is_not_installed'" in skipped["importfail"]
    assert "fstypes must be a collection" in skipped["badtypes"]
    assert "unknown hook 'parse_mounts'" in skipped["misspelled"]
    assert any(line.startswith("overlay ") and "built-in" in line for line in lines)

    data = json.loads(cli(venv_python, "drivers", "--json").stdout)
    (info,) = [d for d in data["drivers"] if d["name"] == "ramfs"]
    assert (info["distribution"], info["version"], info["fstypes"]) == (
        "criu-fw-ramfs", "0.3.1", ["ramfs"]
    )


def test_broken_drivers_never_break_help_or_other_commands(venv_python: Path) -> None:
    res = cli(venv_python, "--help")
    assert res.returncode == 0 and "drivers" in res.stdout and res.stderr == ""
    res = cli(venv_python, "check")
    assert res.returncode == 0, res.stderr
    # A command that loads drivers warns about each skipped one on stderr, once.
    res = cli(venv_python, "tree", "-t", str(os.getpid()))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped") == 3
    assert "driver 'importfail' from distribution criu-fw-broken 0.0.1 skipped" in res.stderr


def test_strict_mode_makes_a_broken_driver_fatal_in_one_line(venv_python: Path) -> None:
    for args, env in ((["--strict-drivers"], {}), ([], {"CRIU_FW_STRICT_DRIVERS": "1"})):
        res = cli(venv_python, *args, "drivers", env=env)
        assert res.returncode != 0
        (line,) = res.stderr.splitlines()
        assert line.startswith("criu-fw: error: driver '")
        assert "from distribution criu-fw-broken 0.0.1" in line
        assert "Traceback" not in res.stderr


def test_block_and_builtin_only(venv_python: Path) -> None:
    res = cli(venv_python, "--block-driver", "ramfs", "drivers")
    assert not any(line.startswith("ramfs ") for line in res.stdout.splitlines())
    res = cli(venv_python, "drivers", env={"CRIU_FW_BLOCK_DRIVERS": "importfail,badtypes"})
    assert "skipped importfail" not in res.stdout and "skipped misspelled" in res.stdout
    res = cli(venv_python, "drivers", env={"CRIU_FW_NO_EXTERNAL_DRIVERS": "1"})
    assert "ramfs" not in res.stdout and "skipped" not in res.stdout
    assert "generic" in res.stdout


def test_the_installed_driver_replaces_a_builtin_when_that_is_blocked(
    venv_python: Path, tmp_path: Path
) -> None:
    # A second real package that claims "overlay": conflict until the built-in is blocked.
    pkg = tmp_path / "criu-fw-myoverlay"
    (pkg / "myoverlay").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "criu-fw-myoverlay"\nversion = "2.0"\n'
        '[project.entry-points."criu_fw.fsdrivers"]\nmyoverlay = "myoverlay:MyOverlay"\n'
        '[tool.setuptools]\npackages = ["myoverlay"]\n'
    )
    (pkg / "myoverlay" / "__init__.py").write_text(
        "from criu_fw import FsDriver\n\nclass MyOverlay(FsDriver):\n    fstypes = ('overlay',)\n"
    )
    py = make_venv(tmp_path / "v", pkg)
    res = cli(py, "drivers")
    assert "conflict overlay: claimed by myoverlay, overlay" in res.stdout
    owner = "import criu_fw as c; print(c.load_drivers().owner('overlay'))"
    res = subprocess.run([py, "-c", owner], capture_output=True, text=True)
    assert res.returncode != 0 and "'myoverlay' and 'overlay' both claim fstype 'overlay'" in (
        res.stderr
    )
    env = {**os.environ, "CRIU_FW_BLOCK_DRIVERS": "overlay"}
    res = subprocess.run([py, "-c", owner], capture_output=True, text=True, env=env)
    assert res.stdout.strip() == "myoverlay", res.stderr
    env = {**os.environ, "CRIU_FW_PREFER": "overlay=overlay"}
    res = subprocess.run([py, "-c", owner], capture_output=True, text=True, env=env)
    assert res.stdout.strip() == "overlay", res.stderr


# ---- every hook of the third-party driver, on real ramfs mounts (in this process) ----------


@pytest.fixture
def ramfs_driver(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(FIXTURES / "criu-fw-ramfs"))
    import criu_fw_ramfs

    return criu_fw_ramfs.driver


@pytest.mark.privileged
def test_every_hook_of_the_thirdparty_driver_on_real_mounts(
    ramfs_driver: object, tmp_path: Path
) -> None:
    tracer = Tracer()
    mgr = DriverManager(DriverConfig(external=False)).load([ramfs_driver, tracer])
    src = NamespaceScenario(
        "mkdir r && mount -t ramfs -o mode=750 myram r && mkdir r/d"
        " && printf 'hello\\0world' > r/d/f && printf x > r/top && exec 3< r/top"
    )
    dst = NamespaceScenario("mkdir r && mount -t ramfs newram r")
    try:
        tree = read_mountinfo(src.pid)
        (mount,) = [m for m in tree if m.source == "myram"]
        assert mgr.owner(mount.fstype) == "ramfs"
        dctx = DumpContext(image_dir=str(tmp_path), root_pid=src.pid)
        state = mgr.hooks.parse_mount("ramfs", mount=mount, tree=tree, ctx=dctx)
        assert (state.mode, state.entries) == ("750", 2)

        fd_path = os.readlink(f"/proc/{src.pid}/fd/3")
        opened = OpenFile(pid=src.pid, fd=3, path=fd_path, flags=0, pos=0,
                          mnt_id=mount.mnt_id, size=1, mode=0o100644)
        assert mgr.hooks.fixup_fd_path("ramfs", file=opened, mount=mount, ctx=dctx) is None
        assert mgr.hooks.fixup_vma("ramfs", vma=None, mount=mount, ctx=dctx) is None

        where = f"/proc/{src.pid}/root{mount.mountpoint}"
        image = mgr.hooks.dump_content("ramfs", mount=mount, path=where, ctx=dctx)
        assert image.startswith("ramfs-") and (tmp_path / image).exists()

        # The state travels in criu-fw's image packed in Any, typed by the driver's message.
        drivers = {m.mnt_id: mgr.owner(m.fstype) for m in tree}
        dumped = DumpedNamespace.of(1, tree, drivers=drivers, states={mount.mnt_id: state})
        write_mount_namespace(str(tmp_path), dumped)
        back = read_mount_namespace(str(tmp_path), 1, mgr)
        assert back.record(mount.mnt_id).state == state
        assert type(state).MESSAGE.DESCRIPTOR.full_name == "criu_fw_ramfs.RamfsState"

        rctx = RestoreContext(image_dir=str(tmp_path), tree=tree)
        plan = mgr.hooks.rebuild_mount("ramfs", mount=mount, state=state, ctx=rctx)
        assert plan == NewSuperblock("ramfs", "myram", (("mode", "750"),))

        (target,) = [m for m in read_mountinfo(dst.pid) if m.source == "newram"]
        into = f"/proc/{dst.pid}/root{target.mountpoint}"
        assert mgr.hooks.restore_content("ramfs", mount=mount, image=image, path=into,
                        ctx=rctx) is True
        assert dst.sh("cat r/d/f") == "hello\0world" and dst.sh("cat r/top") == "x"
    finally:
        src.close()
        dst.close()
    assert [c[:2] for c in tracer.calls()] == [
        (h, "ramfs") for h in ("parse_mount", "fixup_fd_path", "fixup_vma", "dump_content",
                               "rebuild_mount", "restore_content")
    ]
