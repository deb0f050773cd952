"""Dumping a recorded /proc tree (plain files and symlinks): nothing frozen, nothing entered."""

from __future__ import annotations

import os
from pathlib import Path

from criu_fw.dump import dump
from criu_fw.images import read_image
from criu_fw.proto import fdinfo_pb2, mm_pb2, mnt_pb2

MOUNTINFO = (
    "20 1 0:30 / / rw,relatime - tmpfs root rw\n"
    "21 20 0:31 / /data rw,relatime shared:4 - tmpfs data rw\n"
    "22 20 0:31 /sub /mnt rw,relatime shared:4 - tmpfs data rw\n"
)


def _record(root: Path, pid: int, ppid: int, fds: dict[int, str]) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "fdinfo").mkdir()
    (d / "ns").mkdir()
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (holder) S {ppid} {pid} {pid} 0 -1 0\n")
    (d / "mountinfo").write_text(MOUNTINFO)
    os.symlink("mnt:[4026532001]", d / "ns" / "mnt")
    os.symlink("/", d / "cwd")
    os.symlink("/", d / "root")
    for fd, path in fds.items():
        os.symlink(path, d / "fd" / str(fd))
        mnt_id = 22 if path.startswith("/mnt") else 21
        (d / "fdinfo" / str(fd)).write_text(f"pos:\t5\nflags:\t0100002\nmnt_id:\t{mnt_id}\n")
    (d / "maps").write_text(
        "7f0000000000-7f0000001000 rw-s 00001000 00:1f 12 /data/shm\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
    )


def test_dump_recorded_tree(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _record(proc, 100, 1, {3: "/data/x", 4: "/mnt/y (deleted)"})
    _record(proc, 101, 100, {0: "/data/x", 1: "pipe:[123]"})
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
