"""The public driver API: one module a driver imports from, versioned, and enough for the
built-in drivers (they are held to the same rule as third-party ones)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import criu_fw.driver as api
import pytest
from criu_fw.api.loader import DriverConfig, DriverManager
from criu_fw.context import DumpContext
from criu_fw.driver import API_VERSION, FsDriver, hookimpl, routed_to
from criu_fw.errors import DriverLoadError
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.model import MountTree

DRIVERS = Path(__file__).resolve().parent.parent / "fsdrivers"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return out


def test_built_in_drivers_import_only_the_public_api() -> None:
    bad = []
    for path in sorted(DRIVERS.rglob("*.py")):
        own = f"criu_fw.fsdrivers.{path.relative_to(DRIVERS).parts[0]}"
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top != "criu_fw":
                assert top in sys.stdlib_module_names or top in ("attrs", "google"), (
                    f"{path}:{line}: {module}"
                )
                continue
            allowed = (
                module in ("criu_fw", "criu_fw.driver")
                or module.startswith(own)
                # A built-in driver's own messages live in the fixed proto/ directory.
                or (module == "criu_fw.proto")
            )
            if not allowed:
                bad.append(f"{path.relative_to(DRIVERS)}:{line}: {module}")
    assert bad == []


def test_every_public_name_is_importable() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name


class Future(FsDriver):
    name = "future"
    fstypes = ("futurefs",)
    api_version = (API_VERSION[0], API_VERSION[1] + 1)


class Ancient(FsDriver):
    name = "ancient"
    fstypes = ("ancientfs",)
    api_version = (API_VERSION[0] - 1, 0)


@pytest.mark.parametrize("cls", [Future, Ancient])
def test_a_driver_for_another_api_version_is_not_loaded_and_says_why(cls: type) -> None:
    mgr = DriverManager(DriverConfig(external=False))
    with pytest.raises(DriverLoadError) as err:
        mgr.load([cls()])
    wanted = ".".join(map(str, cls.api_version))
    have = ".".join(map(str, API_VERSION))
    assert f"written for driver API {wanted}; this criu-fw provides {have}" in str(err.value)


def test_a_driver_for_this_api_or_an_older_minor_loads() -> None:
    class Current(FsDriver):
        name = "current"
        fstypes = ("currentfs",)
        api_version = (API_VERSION[0], 0)

    mgr = DriverManager(DriverConfig(external=False)).load([Current()])
    assert mgr.owner("currentfs") == "current"


class Claimer(FsDriver):
    """Claims the files of the mount below its own, under whatever name it is loaded."""

    fstypes = ("unionfs",)

    @hookimpl
    def parse_mount(self, mount: object, tree: MountTree, ctx: DumpContext) -> None:
        ctx.claim_files(tree.get(1))


def test_claims_go_to_the_calling_driver_whatever_its_name() -> None:
    lower = parse_line(b"1 0 0:30 / / rw - tmpfs t rw")
    union = parse_line(b"2 1 0:31 / /u rw - unionfs u rw")
    tree = MountTree([lower, union], ns_id=7)
    ctx = DumpContext(image_dir="/nonexistent", trees={7: tree})
    claimer = Claimer()
    claimer.name = "renamed-union"  # type: ignore[misc]
    mgr = DriverManager(DriverConfig(external=False)).load([claimer])
    mgr.hooks.parse_mount("renamed-union", union, tree, ctx)
    assert ctx.claimants(7, 1) == ("renamed-union",)
    # A driver's own unit test calls its hook directly, saying who it is.
    with routed_to("mine"):
        ctx.claim_files(lower)
    assert ctx.claimants(7, 1) == ("renamed-union", "mine")
    with pytest.raises(RuntimeError, match="from a driver's hook"):
        ctx.claim_files(lower)


def test_test_modules_import_helpers_not_each_other() -> None:
    """Shared test code lives in tests/helpers.py (and the other *_helpers/conftest modules),
    so that a test module can be moved or deleted without breaking another."""
    tests = Path(__file__).resolve().parent
    bad = [
        f"{path.name}:{line}: {module}"
        for path in sorted(tests.glob("test_*.py"))
        for line, module in _imports(path)
        if module.startswith("test_")
    ]
    assert bad == []
