"""dump -> restore -> dump again: the second images equal the first except for ids.

The scenario is restored by the CLI with a command (``criu-fw restore -D DIR --root / -- sh
-c ...``) that opens the same files the original process held, so the second dump compares
mounts, driver states, tmpfs content *and* the process's files (see
:mod:`criu_fw.testing.compare` for what is normalised and why). The same restored process is
then used to check, file by file, that tmpfs content came back: bytes, modes, owners,
symlinks, hard links, xattrs and a sparse file, also under an overmount.

Also home of :func:`dump_scenario`, the one way the restore tests make images.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from criu_fw.dump import dump
from criu_fw.testing import NamespaceScenario
from criu_fw.testing.compare import image_differences
from helpers import dump_scenario

pytestmark = pytest.mark.privileged


# The content below is made in a tmpfs that is then partly hidden: "hid" is overmounted.
SCRIPT = r"""
mkdir -p a b c ov hid
mount -t tmpfs -o size=4m,mode=750 ta a
printf 'bytes\000\001\377end' > a/f; chown 12:34 a/f; chmod 4711 a/f
ln a/f a/hl; ln -s f a/sym; ln -s /nowhere/at/all a/dangling
mkdir -m 1777 a/dir; echo deep > a/dir/deep; chown 7:8 a/dir
truncate -s 8M a/sparse; printf tail >> a/sparse
python3 -c 'import os; os.setxattr("a/f", "user.k", b"v\x00al")'
python3 -c 'import os; os.setxattr("a/dir", "trusted.t", b"x")'
mkdir a/in; mount -t tmpfs tin a/in; echo inner > a/in/i
mount --bind a b; mount -o remount,bind,ro,nosuid b
mount -t tmpfs tc c; mount --make-shared c
mkdir c/l c/u c/w; echo lo > c/l/lo
mount -t overlay ov -o lowerdir=c/l,upperdir=c/u,workdir=c/w ov
mount -t tmpfs -o mode=700 hidden hid; echo secret > hid/s; chmod 640 hid/s; ln -s s hid/link
mount -t tmpfs top hid; echo cover > hid/c
"""
WORKLOAD = "exec 3<a/f; exec 4<ov/lo; exec 5>>hid/c; cd a/dir"


Restored = tuple[NamespaceScenario, str, str, int]


def _restore_with_command(images: str, workdir: str, pidfile: str) -> subprocess.Popen[bytes]:
    cmd = f"cd {workdir}; {WORKLOAD}; echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; " \
          "exec sleep 100000"
    return subprocess.Popen(
        [sys.executable, "-m", "criu_fw", "restore", "-D", images, "--root", "/", "--",
         "sh", "-c", cmd],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_pid(pidfile: str, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while not os.path.exists(pidfile):
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"restore failed: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the restored command did not start"
        time.sleep(0.02)
    with open(pidfile) as f:
        return int(f.read())


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    base = str(tmp_path_factory.mktemp("rt"))
    first, second = os.path.join(base, "first"), os.path.join(base, "second")
    scn = NamespaceScenario(SCRIPT, keep_running=f"{WORKLOAD}; exec sleep 100000")
    proc = None
    pid = 0
    try:
        dump_scenario(scn, first)
        proc = _restore_with_command(first, scn.workdir, os.path.join(base, "pid"))
        pid = _wait_pid(os.path.join(base, "pid"), proc)
        dump(pid, second, auto_external=True)
        yield scn, first, second, pid
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        scn.close()


def test_second_dump_equals_the_first_except_ids(roundtrip: Restored) -> None:
    _, first, second, _ = roundtrip
    assert image_differences(first, second) == []


def test_the_comparison_sees_a_changed_file_and_a_changed_flag(
    roundtrip: Restored, tmp_path: os.PathLike[str]
) -> None:
    """The comparison is not blind: the restored namespace, changed, dumps differently."""
    scn, first, _, pid = roundtrip
    third = os.path.join(tmp_path, "third")
    w = scn.workdir
    # In a copy of the restored namespace (unshare inside it), so the other tests see the
    # restored one unchanged; the holder of the copy is a sleep whose PID we dump.
    holder = subprocess.Popen(
        ["nsenter", "-t", str(pid), "-m", "--", "unshare", "-m", "--propagation", "unchanged",
         "--", "sh", "-c",
         f"cd {w}; echo changed > a/dir/deep; mount -o remount,bind,ro c; {WORKLOAD}; "
         f"echo ready; exec sleep 100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        err = holder.stderr
        assert holder.stdout.readline() == b"ready\n", err.read() if err is not None else b""
        dump(holder.pid, third, auto_external=True)
    finally:
        holder.kill()
        holder.wait()
    diffs = image_differences(first, third)
    assert any("/c/mount_options" in d or "/c/flags" in d for d in diffs), diffs
    assert any("/a: content differs" in d and "dir/deep" in d for d in diffs), diffs
    # Only those: the rest of the round trip still holds.
    assert all("/c/" in d or "content differs" in d for d in diffs), diffs


def _root(pid: int, scn: NamespaceScenario, rel: str) -> str:
    return f"/proc/{pid}/root{scn.workdir}/{rel}"


def test_tmpfs_content_comes_back(roundtrip: Restored) -> None:
    scn, _, _, pid = roundtrip
    f = _root(pid, scn, "a/f")
    with open(f, "rb") as fh:
        assert fh.read() == b"bytes\x00\x01\xffend"
    st = os.lstat(f)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4711, 12, 34)
    assert os.lstat(_root(pid, scn, "a/hl")).st_ino == st.st_ino and st.st_nlink == 2
    assert os.readlink(_root(pid, scn, "a/sym")) == "f"
    assert os.readlink(_root(pid, scn, "a/dangling")) == "/nowhere/at/all"
    d = os.lstat(_root(pid, scn, "a/dir"))
    assert (d.st_mode & 0o7777, d.st_uid, d.st_gid) == (0o1777, 7, 8)
    assert os.getxattr(f, "user.k") == b"v\x00al"
    assert os.getxattr(_root(pid, scn, "a/dir"), "trusted.t") == b"x"
    sp = os.stat(_root(pid, scn, "a/sparse"))
    assert sp.st_size == 8 * 1024 * 1024 + 4
    assert sp.st_blocks * 512 < 64 * 1024, "the sparse file came back dense"
    with open(_root(pid, scn, "a/sparse"), "rb") as fh:
        fh.seek(8 * 1024 * 1024 - 2)
        assert fh.read() == b"\0\0tail"
    # The superblock options came back too (size=4m, mode=750).
    assert os.stat(_root(pid, scn, "a")).st_mode & 0o777 == 0o750
    with open(_root(pid, scn, "a/in/i")) as fh:
        assert fh.read() == "inner\n"


def test_hidden_tmpfs_content_comes_back(roundtrip: Restored) -> None:
    """Under the overmount: unmounted in a copy of the restored namespace (unshare inside it)."""
    scn, _, _, pid = roundtrip
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "--", "unshare", "-m", "--", "sh", "-c",
         f"cd {scn.workdir}; cat hid/c; umount hid; cat hid/s; stat -c '%a %h' hid hid/s; "
         f"readlink hid/link; ls hid"],
        capture_output=True, check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode() == "cover\nsecret\n700 2\n640 1\ns\nlink\ns\n"


def test_the_restored_process_sees_its_files_on_the_right_mounts(roundtrip: Restored) -> None:
    scn, _, _, pid = roundtrip
    assert os.readlink(f"/proc/{pid}/cwd") == f"{scn.workdir}/a/dir"
    assert os.readlink(f"/proc/{pid}/fd/4") == f"{scn.workdir}/ov/lo"
    assert shutil.which("sleep")
