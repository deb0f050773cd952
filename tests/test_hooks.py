"""The typed hook facade (``mgr.hooks``): one method per hook, routed to exactly one driver,
results checked against the hook's contract, errors attributed; its one fast path (a single
plain implementation called as a function) gives what pluggy's own call gives."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from criu_fw import hookimpl
from criu_fw.api.hooks import current_driver
from criu_fw.api.loader import DriverManager
from criu_fw.driver import FsDriver
from criu_fw.errors import DriverError, RestoreError
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.kernel.mountops import RecordingMountOps
from criu_fw.model import MountTree
from criu_fw.restore import DumpedNamespace, restore
from helpers import MOUNT, LabelState, Ram, Wrap, ram_manager


def _monitored(mgr: DriverManager) -> list[str]:
    seen: list[str] = []
    mgr.pm.add_hookcall_monitoring(lambda hook, impls, kw: seen.append(hook), lambda *a: None)
    return seen


@pytest.mark.parametrize("path", ["direct", "pluggy"])
def test_results_routing_and_wrappers_are_the_same_on_both_paths(path: str) -> None:
    ram = Ram()
    mgr = ram_manager(ram)
    seen = _monitored(mgr) if path == "pluggy" else []
    hooks = mgr.hooks
    assert hooks.parse_mount("ram", MOUNT, None, 1) == LabelState("myram")
    assert hooks.parse_mount("ram", MOUNT, None, None) is None
    assert ram.seen == ["ram", "ram"] and current_driver() is None
    assert seen == (["parse_mount"] * 2 if path == "pluggy" else [])
    # A wrapper registered later is called from then on, and not after it leaves.
    wrap = Wrap()
    mgr.pm.register(wrap)
    assert hooks.parse_mount("ram", MOUNT, None, 1) == LabelState("myram")
    mgr.pm.unregister(wrap)
    hooks.parse_mount("ram", MOUNT, None, 1)
    assert wrap.calls == 1


def test_monitoring_added_after_direct_calls_sees_the_next_ones() -> None:
    mgr = ram_manager(Ram())
    mgr.hooks.parse_mount("ram", MOUNT, None, 1)
    seen = _monitored(mgr)
    mgr.hooks.parse_mount("ram", MOUNT, None, 1)
    assert seen == ["parse_mount"]


@pytest.mark.parametrize("path", ["direct", "pluggy"])
@pytest.mark.parametrize(
    "exc, message",
    [
        (ValueError("bad"), "driver 'ram': parse_mount failed: ValueError: bad"),
        (DriverError("other", "inner"), "driver 'ram': parse_mount: driver 'other': inner"),
        (DriverError("ram", "mine"), "driver 'ram': mine"),
    ],
)
def test_errors_are_attributed_to_the_driver(path: str, exc: Exception, message: str) -> None:
    mgr = ram_manager(Ram(exc))
    if path == "pluggy":
        _monitored(mgr)
    with pytest.raises(DriverError) as err:
        mgr.hooks.parse_mount("ram", MOUNT, None, 1)
    assert str(err.value) == message and err.value.driver == "ram"
    assert err.value is exc or err.value.__cause__ is exc
    assert current_driver() is None


def test_an_interrupt_passes_through_and_an_unknown_driver_is_named() -> None:
    with pytest.raises(KeyboardInterrupt):
        ram_manager(Ram(KeyboardInterrupt())).hooks.parse_mount(
            "ram", MOUNT, None, 1
        )
    with pytest.raises(DriverError, match="driver 'nope': parse_mount: no such driver"):
        ram_manager(Ram()).hooks.parse_mount("nope", MOUNT, None, 1)


class Liar(FsDriver):
    """Returns the wrong kind of thing from every hook."""

    name = "liar"
    fstypes = ("ramfs",)

    @hookimpl
    def parse_mount(self) -> Any:
        return {"not": "a state"}

    @hookimpl
    def fixup_fd_path(self) -> Any:
        return "/a/path"

    @hookimpl
    def fixup_vma(self) -> Any:
        return 7

    @hookimpl
    def rebuild_mount(self) -> Any:
        return ("tmpfs", "src")

    @hookimpl
    def dump_content(self) -> Any:
        return b"bytes"

    @hookimpl
    def restore_content(self) -> Any:
        return "done"


def test_what_a_driver_returns_is_checked_against_the_contract() -> None:
    hooks = ram_manager(Liar()).hooks
    calls: list[tuple[str, Any]] = [
        ("parse_mount returned dict, not a DriverState or None",
         lambda: hooks.parse_mount("liar", MOUNT, None, None)),
        ("fixup_fd_path returned str, not an OpenFile or None",
         lambda: hooks.fixup_fd_path("liar", None, MOUNT, None)),
        ("fixup_vma returned int, not a FileMapping or None",
         lambda: hooks.fixup_vma("liar", None, MOUNT, None)),
        ("rebuild_mount returned tuple, not a mount plan or None",
         lambda: hooks.rebuild_mount("liar", MOUNT, None, None)),
        ("dump_content returned bytes, not an image name or None",
         lambda: hooks.dump_content("liar", MOUNT, "/x", None)),
        ("restore_content returned str, not True, a ContentJob or None",
         lambda: hooks.restore_content("liar", MOUNT, "i", "/x", None)),
    ]  # fmt: skip
    for message, call in calls:
        with pytest.raises(DriverError) as err:
            call()
        assert str(err.value) == f"driver 'liar': {message}"


def test_implements_says_whether_a_call_can_do_anything() -> None:
    mgr = ram_manager(Ram())
    assert mgr.hooks.implements("parse_mount", "ram")
    assert not mgr.hooks.implements("dump_content", "ram")
    assert mgr.hooks.dump_content("ram", MOUNT, "/x", None) is None
    mgr.pm.register(Wrap())
    assert mgr.hooks.implements("parse_mount", "ram")
    assert mgr.hooks is mgr.hooks  # built once per manager


def test_a_complete_call_warns_nothing() -> None:
    mgr = ram_manager(Ram())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mgr.hooks.parse_mount(
            "ram", MOUNT, None, 1
        ) == LabelState("myram")


class Refuser(FsDriver):
    """Refuses to rebuild, naming the mount itself (as drivers are asked to)."""

    name = "refuser"
    fstypes = ("ramfs",)

    @hookimpl
    def rebuild_mount(self, mount: Any) -> None:
        raise RestoreError(f"{mount.describe()}: cannot be rebuilt here")


def test_a_restore_error_names_the_mount_once() -> None:
    root = parse_line(b"1 0 0:30 / / rw - tmpfs t rw")
    ram = parse_line(b"2 1 0:31 / /r rw - ramfs r rw")
    ns = DumpedNamespace.of(1, MountTree([root, ram], ns_id=1), drivers={2: "refuser"})
    with pytest.raises(RestoreError) as err:
        restore("/x", namespaces=[ns], ops=RecordingMountOps(), plugins=[Refuser()])
    assert str(err.value) == (
        "mount 2 at '/r' (ramfs, source 'r'): driver 'refuser': cannot be rebuilt here"
    )
