"""``criu-fw show IMAGE``: JSON like crit show; a bad image is one error line and exit 3."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from criu_fw.cli import main
from criu_fw.images import write_image
from criu_fw.proto import pstree_pb2
from criu_fw.records import DumpedNamespace


def test_show_prints_json(tmp_path: Path) -> None:
    path = str(tmp_path / "pstree.img")
    write_image(path, "PSTREE", [pstree_pb2.pstree_entry(pid=5, ppid=1, pgid=5, sid=5)])
    res = CliRunner().invoke(main, ["show", path])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {
        "magic": "PSTREE",
        "entries": [{"pid": 5, "ppid": 1, "pgid": 5, "sid": 5}],
    }


def test_show_bad_image_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pstree.img"
    path.write_bytes(b"\x19CVT\x30\x30\x27\x50\x10\x00\x00\x00abc")
    res = CliRunner().invoke(main, ["show", str(path)])
    assert res.exit_code == 3
    assert res.stderr == (f"criu-fw: error: {path}: entry 0: truncated payload (3 of 16 bytes)\n")
    res = CliRunner().invoke(main, ["show", str(tmp_path / "none.img")])
    assert (res.exit_code, res.stderr) == (
        3,
        f"criu-fw: error: {tmp_path}/none.img: no such image file\n",
    )


def test_show_fw_image_with_driver_state(tmp_path: Path) -> None:
    from criu_fw.images.mounts import write_mount_namespace
    from criu_fw.model import Dev, Mount, MountTree
    from helpers import LabelState

    tree = MountTree((Mount(1, 0, Dev(0, 30), "/", "/", "tmpfs", "none", ("rw",), ("rw",)),))
    dumped = DumpedNamespace.of(3, tree, drivers={1: "generic"}, states={1: LabelState("hello")})
    write_mount_namespace(str(tmp_path), dumped)
    res = CliRunner().invoke(main, ["show", str(tmp_path / "fw-mountpoints-3.img")])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["magic"] == "FW_MNTS"
    assert shown["entries"][0]["header"]["mount_count"] == 1
    assert shown["entries"][1]["mount"]["state"] == {
        "@type": "google.protobuf.StringValue",
        "value": "hello",
    }
    assert shown["entries"][1]["mount"]["fstype"] == "tmpfs"
