"""The dump's cheaper calls and writes give what the plain ones give: positional hook calls
(``DriverManager.bind_args``), mount images written into files created ahead of time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from criu_fw import hookimpl
from criu_fw.driver import FsDriver
from criu_fw.dump.watchdog import Watchdog
from criu_fw.errors import DriverError
from criu_fw.images import write_serialized
from criu_fw.imageset import mount_image_names, read_mount_namespace, write_mount_namespace
from criu_fw.model import MountTree
from criu_fw.mountinfo import parse
from criu_fw.plugins import current_driver
from test_fastpaths import MOUNT, Wrap, ram_manager


class Ram3(FsDriver):
    """Takes exactly the arguments the dump passes, in its order: the positional fast path."""

    name = "ram3"
    fstypes = ("ramfs",)

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.seen: list[tuple[str | None, object]] = []

    @hookimpl
    def parse_mount(self, mount: object, tree: object, ctx: object) -> str | None:
        self.seen.append((current_driver(), tree))
        if self.fail is not None:
            raise self.fail
        return "state" if ctx is not None else None


@pytest.mark.parametrize("names", [("mount", "tree", "ctx"), ("ctx", "mount", "tree")])
def test_positional_calls_keep_results_routing_and_wrappers(names: tuple[str, ...]) -> None:
    # The second order does not match the implementation's: the keyword path, same results.
    ram = Ram3()
    mgr = ram_manager(ram)
    call = mgr.bind_args("parse_mount", "ram3", names)

    def args(mount: object, tree: object, ctx: object) -> list[object]:
        given = {"mount": mount, "tree": tree, "ctx": ctx}
        return [given[n] for n in names]

    assert call(*args(MOUNT, "t1", 1)) == "state"
    assert call(*args(MOUNT, "t2", None)) is None
    assert ram.seen == [("ram3", "t1"), ("ram3", "t2")] and current_driver() is None
    wrap = Wrap()
    mgr.pm.register(wrap)  # registered later: called from then on
    assert call(*args(MOUNT, "t3", 1)) == "state" and wrap.calls == 1
    mgr.pm.unregister(wrap)
    assert call(*args(MOUNT, "t4", 1)) == "state" and wrap.calls == 1


@pytest.mark.parametrize(
    "exc, message",
    [
        (ValueError("bad"), "driver 'ram3': parse_mount failed: ValueError: bad"),
        (DriverError("other", "inner"), "driver 'ram3': parse_mount: driver 'other': inner"),
        (DriverError("ram3", "mine"), "driver 'ram3': mine"),
    ],
)
def test_positional_calls_attribute_errors(exc: Exception, message: str) -> None:
    call = ram_manager(Ram3(exc)).bind_args("parse_mount", "ram3", ("mount", "tree", "ctx"))
    with pytest.raises(DriverError) as err:
        call(MOUNT, None, 1)
    assert str(err.value) == message and err.value.driver == "ram3"
    assert err.value is exc or err.value.__cause__ is exc
    with pytest.raises(KeyboardInterrupt):
        ram_manager(Ram3(KeyboardInterrupt())).bind_args(
            "parse_mount", "ram3", ("mount", "tree", "ctx")
        )(MOUNT, None, 1)
    with pytest.raises(DriverError, match="no such driver is loaded"):
        ram_manager(Ram3()).bind_args("parse_mount", "nope", ("mount", "tree", "ctx"))(
            MOUNT, None, 1
        )


TABLE = (
    b"1 0 0:20 / / rw - tmpfs root rw\n"
    b"2 1 0:21 / /proc rw,nosuid - proc proc rw\n"
    b"3 1 0:40 / /t rw shared:5 - tmpfs t rw,size=1k\n"
)


def test_mount_images_into_files_created_ahead_are_the_same_bytes(tmp_path: Path) -> None:
    tree = MountTree(tuple(parse(TABLE)), 7)
    drivers = dict.fromkeys((m.mnt_id for m in tree.mounts), "generic")
    plain, ahead = tmp_path / "plain", tmp_path / "ahead"
    plain.mkdir()
    ahead.mkdir()
    names = write_mount_namespace(str(plain), 3, tree, drivers=drivers)
    assert tuple(names) == mount_image_names(3)
    files = {n: open(ahead / n, "xb") for n in names}  # noqa: SIM115
    try:
        assert write_mount_namespace(str(ahead), 3, tree, drivers=drivers, files=files) == names
    finally:
        for f in files.values():
            f.close()
    for n in names:
        assert (ahead / n).read_bytes() == (plain / n).read_bytes()
    assert read_mount_namespace(str(ahead), 3).tree.mounts == tree.mounts
    # The path is only named (in errors); the bytes go to the file given.
    with open(tmp_path / "x.img", "xb") as f:
        assert write_serialized(str(tmp_path / "elsewhere"), "MNTS", [b"", b""], file=f) == 2
    assert not os.path.exists(tmp_path / "elsewhere") and (tmp_path / "x.img").stat().st_size


def test_the_watchdog_says_when_it_runs_and_a_dead_one_is_not_waited_for() -> None:
    wd = Watchdog()
    try:
        t = time.monotonic()
        wd.wait_ready(timeout=30)
        assert time.monotonic() - t < 30  # it answered: no timeout
        assert wd._proc is not None and wd._proc.poll() is None  # running, reading its pipe
    finally:
        wd.done()
    dead = Watchdog()
    assert dead._proc is not None
    dead._proc.kill()
    dead._proc.wait()
    t = time.monotonic()
    dead.wait_ready(timeout=30)
    assert time.monotonic() - t < 10
    dead.done()
