"""tmpfs content archives made and unpacked in-process against GNU tar, both directions.

One scenario holds a tmpfs with every kind of inode and attribute a tmpfs can have, and empty
tmpfs to extract into. Each test archives one way and extracts the other, and compares the
trees: bytes, blocks (holes), modes, owners, mtimes to the nanosecond, every extended
attribute (user., trusted., security., a file capability, POSIX ACLs), link targets, hard link
groups, device numbers, names that are not UTF-8 or hold a newline. Access times are not
compared (GNU tar does not restore them either).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from criu_fw.dump import dump
from criu_fw.fsdrivers.generic import content, gnutar, tarread
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

#: Builds the tree in ./src (run inside the scenario, as root, on a fresh tmpfs).
BUILD = r'''
import os, socket, struct, sys
os.chdir(sys.argv[1])
def acl(*entries):
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
U = 0xFFFFFFFF
w = lambda p, data, **kw: open(p, "wb").write(data)
w("empty", b"")
w("small", b"hello\n")
w("block", b"x" * 512)
w("random", os.urandom(300_000))
w("zeros", bytes(70_000))          # written zeros: allocated, not a hole
w("n" * 100, b"hundred")            # the longest name a ustar header holds
w("l" * 255, b"longest component")
os.makedirs("deep/" + "/".join(["d" * 60] * 6))
w("deep/" + "/".join(["d" * 60] * 6) + "/f", b"deep")
w(b"bad\xff\xfeutf8", b"latin")
w("new\nline", b"nl")
w("tab\tand space \\ back", b"t")
w("-dash", b"d")
w("PaxHeaders", b"p")
w("k=v%25", b"eq")
w("caf\u00e9", b"utf8")
w("setuid", b"#!/bin/sh\n"); os.chown("setuid", 1234, 5678); os.chmod("setuid", 0o4755)
w("none", b"0"); os.chmod("none", 0)
w("bigid", b"b"); os.chown("bigid", 3_000_000, 4_000_000)
os.mkdir("sgid"); os.chown("sgid", 0, 5678); os.chmod("sgid", 0o2750)
os.mkdir("sticky", 0o1777); os.chmod("sticky", 0o1777)
os.makedirs("hollow/dirs/inside")
# Extended attributes of every namespace, binary values, awkward names.
os.setxattr("small", "user.a", b"va")
os.setxattr("small", "trusted.bin", b"\x00\xff\x00binary\n=")
os.setxattr("small", "security.s", b"sec")
os.setxattr("small", "user.x=y%z", b"eq")
os.setxattr("small", "user.big", os.urandom(3000))
os.setxattr("sgid", "user.dir", b"d")
os.setxattr("sgid", "trusted.dir", b"t")
# A file capability (cap_net_bind_service, v2): chown and writes clear it, so it must be
# set after both.
os.setxattr("setuid", "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))
# POSIX ACLs: an access ACL naming a user and a group, and a directory with a default ACL
# (what is created in it afterwards inherits it).
os.setxattr("random", "system.posix_acl_access",
            acl((1, 6, U), (2, 4, 1000), (4, 4, U), (8, 6, 2000), (0x10, 6, U), (0x20, 4, U)))
os.mkdir("acl")
os.setxattr("acl", "system.posix_acl_default",
            acl((1, 7, U), (2, 5, 1001), (4, 5, U), (0x10, 5, U), (0x20, 0, U)))
os.setxattr("acl", "system.posix_acl_access",
            acl((1, 7, U), (4, 5, U), (8, 7, 2001), (0x10, 7, U), (0x20, 5, U)))
w("acl/inherited", b"i")
os.mkdir("acl/sub")
# Links: relative, absolute, dangling, long, not UTF-8; hard links across directories, to a
# symbolic link, to a device node.
os.symlink("small", "rel")
os.symlink("/etc/passwd", "abs")
os.symlink("nowhere/at/all", "dangling")
os.symlink("t" * 300, "longtarget")
os.symlink(b"\xff\xfe", "badtarget")
os.lchown("rel", 1234, 5678)
os.setxattr("rel", "trusted.onlink", b"l", follow_symlinks=False)
os.mkdir("hard")
os.link("small", "hard/one")
os.link("small", "hard/two")
os.link("rel", "hard/tolink", follow_symlinks=False)
os.mknod("null", 0o666 | 0o020000, os.makedev(1, 3))
os.mknod("loop", 0o660 | 0o060000, os.makedev(7, 0))
os.mknod("bigminor", 0o600 | 0o020000, os.makedev(4095, 1048575))
os.setxattr("null", "trusted.dev", b"n", follow_symlinks=False)
os.link("null", "hard/null")
os.mkfifo("fifo", 0o640)
os.chown("fifo", 7, 8)
s = socket.socket(socket.AF_UNIX); s.bind("sock"); s.close()   # no tar archives a socket
# Times: nanoseconds, before the epoch, past what a ustar field holds.
os.utime("small", ns=(1_000_000_000_123456789, 1_100_000_000_987654321))
os.utime("random", ns=(0, -1_234_567_890_500_000_000))
os.utime("block", ns=(0, 9_000_000_000 * 10**9 + 1))
os.utime("rel", ns=(0, 1_200_000_000_000000001), follow_symlinks=False)
os.utime("fifo", ns=(0, 1_300_000_000_5))
for d in ("sgid", "acl/sub", "hollow/dirs", "hard", "deep"):
    os.utime(d, ns=(0, 1_400_000_000_000000042))
os.chmod(".", 0o1775); os.chown(".", 11, 12)
os.setxattr(".", "trusted.root", b"r")
os.utime(".", ns=(0, 1_500_000_000_000000007))
'''

SPARSE = r'''
import os, sys
os.chdir(sys.argv[1])
with open("sparse", "wb") as f:
    f.seek(1 << 20); f.write(b"middle"); f.seek(5 << 20); f.write(b"end")
with open("hole-at-end", "wb") as f:
    f.write(b"start"); f.truncate(3 << 20)
open("plain", "wb").write(b"p" * 5000)
os.utime(".", ns=(0, 1_500_000_000_000000007))
'''

SCRIPT = f"""
mkdir src sparse a b c d
mount -t tmpfs src src
mount -t tmpfs sparse sparse
for t in a b c d; do mount -t tmpfs $t $t; done
python3 -c '{BUILD}' src
python3 -c '{SPARSE}' sparse
"""


@pytest.fixture(scope="module")
def scn() -> Iterator[NamespaceScenario]:
    s = NamespaceScenario(SCRIPT)
    try:
        yield s
    finally:
        s.close()


def _at(scn: NamespaceScenario, name: str) -> str:
    return f"/proc/{scn.pid}/root{scn.workdir}/{name}"


def _empty(scn: NamespaceScenario, name: str) -> str:
    """A target tmpfs, emptied and given back its fresh root's metadata."""
    scn.sh(f"umount {name} && mount -t tmpfs {name} {name}")
    return _at(scn, name)


def snapshot(
    top: str, *, seconds: bool = False, xattrs: bool = True, node_links: bool = True,
) -> dict[bytes, Any]:
    """Everything a restore must give back about each entry below ``top`` (sockets left
    out: no tar archives them). ``node_links=False``: hard links between device nodes or
    FIFOs left out (GNU tar archives each name as a node of its own; our writer keeps
    the link, as it does for files and symbolic links)."""
    root = os.fsencode(top)
    out: dict[bytes, Any] = {}
    groups: dict[int, list[bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [b"", *dirs, *files]:
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                continue
            mtime = st.st_mtime_ns // 10**9 if seconds else st.st_mtime_ns
            rec: dict[str, Any] = {"mode": st.st_mode, "owner": (st.st_uid, st.st_gid),
                                   "mtime": mtime}
            if xattrs:
                rec["xattrs"] = {
                    k: os.getxattr(path, k, follow_symlinks=False)
                    for k in sorted(os.listxattr(path, follow_symlinks=False))
                }
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    rec["sha"] = hashlib.sha256(f.read()).hexdigest()
                rec["size"], rec["blocks"] = st.st_size, st.st_blocks
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            node = not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and (node_links or not node):
                groups.setdefault(st.st_ino, []).append(rel)
            out[rel] = rec
    for names in groups.values():
        for n in names:
            out[n]["links"] = sorted(names)
    return out


def _same_trees(a: dict[bytes, Any], b: dict[bytes, Any]) -> None:
    assert sorted(a) == sorted(b)
    diff = {
        k: {f: (a[k].get(f), b[k].get(f)) for f in a[k].keys() | b[k].keys()
            if a[k].get(f) != b[k].get(f)}
        for k in a if a[k] != b[k]
    }
    assert diff == {}


def _gnu_extract(archive: str, target: str) -> subprocess.CompletedProcess[bytes]:
    with open(archive, "rb") as f:
        return subprocess.run([*gnutar.TAR_EXTRACT, "--file", "-", "--directory", target],
                              stdin=f, capture_output=True)


def _restore(archive: str, target: str) -> object:
    fd = os.open(archive, os.O_RDONLY)
    try:
        job = content.restore(fd, archive, target)
    finally:
        os.close(fd)
    if not isinstance(job, bool):
        job.wait()
    return job


def test_the_tree_has_what_the_tests_need(scn: NamespaceScenario) -> None:
    tree = snapshot(_at(scn, "src"))
    assert len(tree) > 40
    assert tree[b"small"]["links"] == [b"hard/one", b"hard/two", b"small"]
    assert tree[b"rel"]["links"] == [b"hard/tolink", b"rel"]
    assert "security.capability" in tree[b"setuid"]["xattrs"]
    assert "system.posix_acl_access" in tree[b"acl/inherited"]["xattrs"]  # inherited
    assert tree[b"random"]["mtime"] < 0
    assert os.path.exists(_at(scn, "src/sock"))


def test_our_archive_extracted_by_gnu_tar(scn: NamespaceScenario, tmp_path: Any) -> None:
    out = str(tmp_path / "ours.tar.gz")
    assert content.dump(_at(scn, "src"), out, "src") == "in-process"
    target = _empty(scn, "a")
    res = _gnu_extract(out, target)
    # Not a warning either (an unknown PAX keyword, a bad header, a lone zero block), but
    # the two GNU tar gives for the times the tree holds on purpose.
    warnings = [line for line in res.stderr.decode().splitlines()
                if "implausibly old time stamp" not in line and "in the future" not in line]
    assert (res.returncode, warnings) == (0, [])
    _same_trees(snapshot(_at(scn, "src")), snapshot(target))
    listed = subprocess.run(["tar", "-tzf", out], capture_output=True, check=True)
    assert listed.stderr == b"" and listed.stdout.startswith(b"./\n")


def test_gnu_tars_archive_extracted_in_process(scn: NamespaceScenario, tmp_path: Any) -> None:
    out = str(tmp_path / "gnu.tar.gz")
    gnutar.archive(_at(scn, "src"), out, "src")
    target = _empty(scn, "b")
    assert _restore(out, target) is True  # in-process, not a tar job
    _same_trees(snapshot(_at(scn, "src"), node_links=False), snapshot(target))


def test_our_archive_extracted_in_process(scn: NamespaceScenario, tmp_path: Any) -> None:
    out = str(tmp_path / "ours.tar.gz")
    assert content.dump(_at(scn, "src"), out, "src") == "in-process"
    target = _empty(scn, "c")
    assert _restore(out, target) is True
    _same_trees(snapshot(_at(scn, "src")), snapshot(target))


def test_our_archive_lists_like_gnu_tars(scn: NamespaceScenario, tmp_path: Any) -> None:
    """Member for member the same names, kinds, modes, owners, times, link targets and
    extended attributes as GNU tar writes (the order of a directory's entries aside)."""
    ours, gnu = str(tmp_path / "ours.tar.gz"), str(tmp_path / "gnu.tar.gz")
    content.dump(_at(scn, "src"), ours, "src")
    gnutar.archive(_at(scn, "src"), gnu, "src")

    def members(path: str) -> dict[bytes, Any]:
        with open(path, "rb") as f:
            raw = gzip.decompress(f.read())
        return {m.name: (m.kind, m.mode, m.uid, m.gid, m.mtime_ns, m.linkname, m.devmajor,
                         m.devminor, m.size, bytes(m.data), m.xattrs)
                for m in tarread.members(raw)}

    a, b = members(ours), members(gnu)
    assert sorted(a) == sorted(b)
    # Which name of a hard-linked inode carries the data depends on the directory order.
    differ = {k for k in a if a[k] != b[k]}
    assert all(a[k][0] == b"1" or b[k][0] == b"1" for k in differ), differ


def test_gnu_tar_reads_our_text_acls(scn: NamespaceScenario, tmp_path: Any) -> None:
    """Our ``SCHILY.acl.*`` text (numeric ids), read by GNU tar --acls alone (no xattrs):
    the same ACLs as the source's."""
    out = str(tmp_path / "ours.tar.gz")
    content.dump(_at(scn, "src"), out, "src")
    target = _empty(scn, "a")
    with open(out, "rb") as f:
        subprocess.run(["tar", "--extract", "--gzip", "--acls", "--numeric-owner", "-p",
                        "--file", "-", "--directory", target], stdin=f, check=True)
    acls = ("system.posix_acl_access", "system.posix_acl_default")
    want, got = snapshot(_at(scn, "src")), snapshot(target)
    with_acl = [k for k, rec in want.items() if set(acls) & set(rec.get("xattrs", {}))]
    assert len(with_acl) >= 4
    for k in with_acl:
        assert {a: want[k]["xattrs"].get(a) for a in acls} == \
            {a: got[k]["xattrs"].get(a) for a in acls}, k
        assert want[k]["mode"] == got[k]["mode"], k


def test_sparse_files_go_to_gnu_tar_and_come_back_in_process(
    scn: NamespaceScenario, tmp_path: Any,
) -> None:
    out = str(tmp_path / "sparse.tar.gz")
    assert content.dump(_at(scn, "sparse"), out, "sparse") == "tar"
    target = _empty(scn, "d")
    assert _restore(out, target) is True
    before, after = snapshot(_at(scn, "sparse")), snapshot(target)
    _same_trees(before, after)
    assert after[b"sparse"]["blocks"] * 512 < 64 << 10  # the holes are holes again


def test_criu_gnu_format_archive_extracted_in_process(
    scn: NamespaceScenario, tmp_path: Any,
) -> None:
    """CRIU's own archives: GNU format (long names as ``L`` members, old GNU sparse files,
    whole seconds, no xattrs), as ``criu dump`` makes them."""
    out = str(tmp_path / "criu.tar.gz")
    for src in ("src", "sparse"):
        subprocess.run(
            ["tar", "--create", "--gzip", "--no-unquote", "--no-wildcards",
             "--one-file-system", "--check-links", "--preserve-permissions", "--sparse",
             "--numeric-owner", f"--file={out}", f"--directory={_at(scn, src)}", "."],
            check=True, capture_output=True,
        )
        target = _empty(scn, "d")
        assert _restore(out, target) is True
        want = snapshot(_at(scn, src), seconds=True, xattrs=False, node_links=False)
        got = snapshot(target, seconds=True, xattrs=False)
        _same_trees(want, got)


def test_a_bigger_filesystem_goes_to_gnu_tar_both_ways(
    scn: NamespaceScenario, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(content, "DUMP_MEMBERS", 10)
    monkeypatch.setattr(content, "RESTORE_ARCHIVE", 1000)
    out = str(tmp_path / "big.tar.gz")
    assert content.dump(_at(scn, "src"), out, "src") == "tar"
    target = _empty(scn, "a")
    fd = os.open(out, os.O_RDONLY)
    try:
        job = content.restore(fd, out, target)
    finally:
        os.close(fd)
    assert isinstance(job, gnutar.Extraction)
    job.wait()
    _same_trees(snapshot(_at(scn, "src"), node_links=False), snapshot(target))


MIXED = r"""
for t in big1 big2 big3 s1 s2 s3 s4; do mkdir $t; mount -t tmpfs $t $t; done
for t in big1 big2 big3; do
    head -c 3000000 /dev/urandom > $t/random; mkdir $t/d; echo x > $t/d/x; ln -s d $t/l
    python3 -c "import os; os.setxattr('$t/random', 'user.k', b'v')"
done
for t in s1 s2 s3 s4; do echo small > $t/f; chown 5:6 $t/f; ln $t/f $t/h; done
"""


def test_dump_and_restore_mixing_big_and_small_tmpfs(tmp_path: Any) -> None:
    """The whole command both ways: small tmpfs in-process, big ones by GNU tar (several
    extractions running at once while the restore goes on)."""
    scn = NamespaceScenario(MIXED)
    images, pidfile = str(tmp_path / "img"), str(tmp_path / "pid")
    proc = None
    pid = 0
    try:
        dump(scn.pid, images)
        sizes = sorted(os.path.getsize(os.path.join(images, n)) for n in os.listdir(images)
                       if n.startswith("tmpfs-dev-"))
        assert sum(s > content.RESTORE_ARCHIVE for s in sizes) == 3
        proc = subprocess.Popen(
            [sys.executable, "-m", "criu_fw", "restore", "-D", images, "--root", "/", "--",
             "sh", "-c", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
             "exec sleep 100000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(pidfile):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with open(pidfile) as f:
            pid = int(f.read())
        for t in ("big1", "big2", "big3", "s1", "s2", "s3", "s4"):
            _same_trees(snapshot(_at(scn, t)), snapshot(f"/proc/{pid}/root{scn.workdir}/{t}"))
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        scn.close()
