"""The dump's cheaper writes give what the plain ones give: mount images written into files
created ahead of time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from criu_fw.dump.watchdog import Watchdog
from criu_fw.images import write_serialized
from criu_fw.images.mounts import mount_image_names, read_mount_namespace, write_mount_namespace
from criu_fw.kernel.mountinfo import parse
from criu_fw.model import MountTree
from criu_fw.records import DumpedNamespace

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
    names = write_mount_namespace(str(plain), DumpedNamespace.of(3, tree, drivers=drivers))
    assert tuple(names) == mount_image_names(3)
    files = {n: open(ahead / n, "xb") for n in names}  # noqa: SIM115
    try:
        dumped = DumpedNamespace.of(3, tree, drivers=drivers)
        assert write_mount_namespace(str(ahead), dumped, files=files) == names
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
