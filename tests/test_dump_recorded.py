"""Dumping a recorded /proc tree (plain files and symlinks): nothing frozen, nothing entered."""

from __future__ import annotations

from pathlib import Path

from criu_fw.dump import dump
from criu_fw.images import read_image
from criu_fw.proto import fdinfo_pb2, mm_pb2, mnt_pb2
from helpers import record_proc


def test_dump_recorded_tree(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    record_proc(proc, 100, 1, {3: "/data/x", 4: "/mnt/y (deleted)"})
    record_proc(proc, 101, 100, {0: "/data/x", 1: "pipe:[123]"})
    out = tmp_path / "img"
    res = dump(100, str(out), proc_root=str(proc))
    assert res.pids == (100, 101) and dict(res.namespaces) == {1: 3}
    files = read_image(str(out / "files.img"), fdinfo_pb2.file_entry)
    by_name = {(f.reg.name, f.reg.mnt_id) for f in files}
    assert ("/data/x", 21) in by_name and ("/mnt/y", 22) in by_name
    assert ("/data/shm", 21) in by_name  # the mapping, found by its path
    mm = read_image(str(out / "mm-100.img"), mm_pb2.mm_entry)[0]
    assert [v.status & (1 << 7) for v in mm.vmas] == [1 << 7, 0]
    mounts = read_image(str(out / "mountpoints-1.img"), mnt_pb2.mnt_entry)
    assert {m.mountpoint for m in mounts} == {"/", "/data", "/mnt"}
    # No pipe, and the child has its own fd table with one file.
    fdinfo = read_image(str(out / "fdinfo-2.img"), fdinfo_pb2.fdinfo_entry)
    assert [e.fd for e in fdinfo] == [0]
