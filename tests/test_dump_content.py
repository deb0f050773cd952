"""What a dump records beyond the basics: threads, deleted and O_TMPFILE files (ghosts), every
kind of inode in a tmpfs archive, and a /proc entry that cannot be read."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.dump.ghosts import GHOST_LIMIT
from criu_fw.errors import DumpError
from criu_fw.images import read_image
from criu_fw.proto import fdinfo_pb2, mnt_pb2, pstree_pb2, remap_pb2
from criu_fw.testing import NamespaceScenario
from helpers import record_proc

Scenario = Callable[..., NamespaceScenario]

#: Three threads; t/gone unlinked while open, an O_TMPFILE with bytes, a big unlinked file.
HOLDER = r"""
import os, sys, threading, time
w = sys.argv[1]
gone = open(f"{w}/t/gone", "rb")
os.unlink(f"{w}/t/gone")
tmpf = os.open(f"{w}/t", os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(tmpf, b"made with O_TMPFILE")
big = open(f"{w}/t/big", "rb")
os.unlink(f"{w}/t/big")
for _ in range(2):
    threading.Thread(target=time.sleep, args=(100000,), daemon=True).start()
open(f"{w}/ready", "w").close()
time.sleep(100000)
"""


def _ghost(path: Path) -> tuple[remap_pb2.ghost_file_entry, bytes]:
    """CRIU's ghost-file layout: magics, one sized entry, then the file's bytes."""
    raw = path.read_bytes()
    (size,) = struct.unpack_from("<I", raw, 8)
    return remap_pb2.ghost_file_entry.FromString(raw[12:12 + size]), raw[12 + size:]


@pytest.mark.privileged
def test_threads_and_deleted_files(scenario: Scenario, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    scn = scenario(
        f"mkdir t && mount -t tmpfs tt t && echo secret > t/gone && "
        f"head -c {GHOST_LIMIT + 1} /dev/zero > t/big && "
        f"python3 -c '{HOLDER}' \"$PWD\" & "
        "while [ ! -e ready ]; do sleep 0.02; done"
    )
    w = scn.workdir
    out = tmp_path / "img"
    with caplog.at_level(logging.WARNING, logger="criu_fw.dump"):
        res = dump(scn.pid, str(out))
    holder = res.pids[1]
    pstree = {e.pid: e for e in read_image(str(out / "pstree.img"), pstree_pb2.pstree_entry)}
    threads = list(pstree[holder].threads)
    assert len(threads) == 3 and threads[0] == holder
    assert sorted(threads) == sorted(int(t) for t in os.listdir(f"/proc/{holder}/task"))

    files = {e.id: e.reg for e in read_image(str(out / "files.img"), fdinfo_pb2.file_entry)}
    remaps = read_image(str(out / "remap-fpath.img"), remap_pb2.remap_file_path_entry)
    by_name = {files[r.orig_id].name: r for r in remaps}
    # The kernel names an O_TMPFILE "#INODE". (The scenario's stderr is one too, in /tmp.)
    tmpname = next(n for n in by_name if n.startswith(f"{w}/t/#"))
    assert {f"{w}/t/gone", tmpname, f"{w}/t/big"} <= set(by_name)
    assert all(r.remap_type == remap_pb2.GHOST for r in remaps)
    gone, data = _ghost(out / f"ghost-file-{by_name[f'{w}/t/gone'].remap_id}.img")
    assert data == b"secret\n" and gone.size == 7 and gone.mode & 0o170000 == 0o100000
    assert _ghost(out / f"ghost-file-{by_name[tmpname].remap_id}.img")[1] == b"made with O_TMPFILE"
    big, data = _ghost(out / f"ghost-file-{by_name[f'{w}/t/big'].remap_id}.img")
    assert data == b"" and big.chunks and big.size == GHOST_LIMIT + 1
    warned = [r.getMessage() for r in caplog.records if "deleted while open" in r.getMessage()]
    assert any(f"'{w}/t/gone'" in m for m in warned)
    assert any("more than the ghost limit" in m and f"'{w}/t/big'" in m for m in warned)


@pytest.mark.privileged
@pytest.mark.crit
def test_crit_reads_the_ghosts(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario("mkdir t && mount -t tmpfs tt t && echo secret > t/gone && exec 3< t/gone "
                   "&& rm t/gone")
    dump(scn.pid, str(tmp_path / "img"))
    for name in ("remap-fpath.img", "ghost-file-1.img"):
        res = subprocess.run(["crit", "show", str(tmp_path / "img" / name)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert '"remap_type": "GHOST"' in subprocess.run(
        ["crit", "show", str(tmp_path / "img" / "remap-fpath.img")],
        capture_output=True, text=True).stdout


TREE = r"""
mkdir t && mount -t tmpfs tt t && cd t
mknod null c 1 3 && mkfifo fifo
echo data > f && ln f hard && chown 1234:5678 f && touch -d @1000000000 f
mkdir d && touch -d @1100000000 d
python3 -c 'import os; os.setxattr("f", "user.criu", b"fw"); os.setxattr("d", "trusted.k", b"v")'
cd ..
"""


@pytest.mark.privileged
def test_tmpfs_archive_keeps_every_kind_of_inode(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(TREE)
    out = tmp_path / "img"
    dump(scn.pid, str(out))
    mounts = read_image(str(out / "mountpoints-1.img"), mnt_pb2.mnt_entry)
    tt = next(m for m in mounts if m.mountpoint == f"{scn.workdir}/t")
    with tarfile.open(out / f"tmpfs-dev-{tt.root_dev}.tar.gz.img") as tar:
        m = {i.name: i for i in tar.getmembers()}
    assert m["./null"].ischr() and (m["./null"].devmajor, m["./null"].devminor) == (1, 3)
    assert m["./fifo"].isfifo()
    # One of the two names is the file, the other a hard link to it.
    f, hard = sorted((m["./f"], m["./hard"]), key=lambda i: i.islnk())
    assert f.isreg() and hard.islnk() and hard.linkname == f.name
    assert (f.uid, f.gid, int(f.mtime)) == (1234, 5678, 1000000000)
    assert f.pax_headers.get("SCHILY.xattr.user.criu") == "fw"
    assert m["./d"].isdir() and int(m["./d"].mtime) == 1100000000
    assert m["./d"].pax_headers.get("SCHILY.xattr.trusted.k") == "v"


def test_unreadable_proc_entry_is_one_line(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    record_proc(proc, 100, 1, {3: "/data/x"})
    (proc / "100" / "maps").unlink()
    (proc / "100" / "maps").mkdir()  # a directory where a file is expected
    with pytest.raises(DumpError) as err:
        dump(100, str(tmp_path / "img"), proc_root=str(proc))
    assert str(err.value) == f"cannot read {proc}/100/maps: EISDIR (Is a directory)"
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw.cli", "dump", "-t", "100", "-D", str(tmp_path / "img"),
         "--proc-root", str(proc)], capture_output=True, text=True,
    )
    assert res.returncode == 3
    assert res.stderr == f"criu-fw: error: cannot read {proc}/100/maps: EISDIR (Is a directory)\n"
    assert sorted(os.listdir(tmp_path)) == ["proc"]


@pytest.mark.privileged
def test_one_deleted_inode_open_three_times_is_one_ghost(
    scenario: Scenario, tmp_path: Path
) -> None:
    """CRIU keeps one ghost per inode: three descriptors of one deleted file point at it."""
    scn = scenario("mkdir t && mount -t tmpfs tt t && echo once > t/gone && exec 3< t/gone "
                   "4< t/gone 5<> t/gone && rm t/gone")
    out = tmp_path / "img"
    dump(scn.pid, str(out))
    files = {e.id: e.reg for e in read_image(str(out / "files.img"), fdinfo_pb2.file_entry)}
    remaps = read_image(str(out / "remap-fpath.img"), remap_pb2.remap_file_path_entry)
    mine = [r for r in remaps if files[r.orig_id].name == f"{scn.workdir}/t/gone"]
    assert len(mine) == 3 and len({r.remap_id for r in mine}) == 1
    _, data = _ghost(out / f"ghost-file-{mine[0].remap_id}.img")
    assert data == b"once\n"
    ghost_files = sorted(p.name for p in out.iterdir() if p.name.startswith("ghost-file-"))
    assert len(ghost_files) == len({r.remap_id for r in remaps})
