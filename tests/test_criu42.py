"""CRIU 4.2 itself against criu-fw's images, and criu-fw against CRIU 4.2's.

The binary is CRIU 4.2.1 built from its release source by ``scripts/criu42.sh`` (the test
command's set-up; Debian's criu 3.17 cannot checkpoint on this kernel). One container-like
process (a tmpfs root holding a static busybox, pivoted into) holds the tree issue 15 names:
tmpfs, binds of a directory and of a file, a read-only bind, content hidden under an
overmount, peers and a slave, an unbindable and a strictatime mount, a name that is not
UTF-8, a bpf filesystem (CRIU's AUTO with ``--enable-fs``), a proc, a host directory bound in
(external to both dumps, ``--external mnt[/t/ext]:hostdir``) and binds whose root directory
or file was deleted. CRIU dumps it (left stopped), criu-fw dumps it too, then:

* ``criu-fw merge`` puts criu-fw's mount images into CRIU's directory and ``criu restore``
  (CRIU's own process images) must give the dumped tree back, content included;
* ``criu-fw restore`` of CRIU's directory alone (``--root`` for the root, as CRIU's restore
  takes it) must give the same tree;
* ``podman container checkpoint --export`` with this CRIU: ``criu-fw show`` names the
  container and ``criu-fw verify`` of the archive finds the live container as dumped.

CRIU restores with both its mount engines (mount-v2, the default, and
``--mntns-compat-mode``). mount-v2 sets propagation through ``/proc/self/fd`` inside the
restored namespace, so the tree has a proc mount: without one, CRIU 4.2.1 fails on its own
images too ("Failed to make mount N shared: No such file or directory").
Every CRIU and criu-fw command that mounts runs inside ``unshare -m --propagation private``
(restores also in new network and IPC namespaces, the loopback up for CRIU's checks).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import wait_until

pytestmark = pytest.mark.privileged

BIN = Path(sys.executable).parent
CRIU = Path(os.environ.get("CRIU_FW_CRIU42", BIN.parent / "criu-4.2" / "criu"))
CLI = str(BIN / "criu-fw")
PRIVATE = ["unshare", "-m", "--propagation", "private"]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

if not os.access(CRIU, os.X_OK):
    pytest.skip(f"no CRIU 4.2 binary at {CRIU} (scripts/criu42.sh builds it; it could not "
                f"fetch the source)", allow_module_level=True)

LATIN = "t/caf\udce9"  # 'café' in Latin-1: not UTF-8
# What the root tmpfs holds besides mounts; made again in the --root directory of restores.
LAYOUT = r"""
mkdir -p bin dev proc t/a t/b t/ro t/over t/p1 t/p2 t/s t/ub t/st t/del t/file t/bpf t/ext
cp "$BUSYBOX" bin/busybox; ln -s busybox bin/sleep; ln -s busybox bin/cat
mknod dev/null c 1 3; chmod 666 dev/null; touch t/file/x t/delf; chmod 640 t/delf
mkdir "t/$(printf 'caf\351')"
chmod 1777 .
"""
MOUNTS = r"""
mount -t tmpfs -o size=8m,mode=755 tt t/a; mkdir t/a/sub; echo hi > t/a/sub/f; echo top > t/a/g
mount --bind t/a/sub t/b
mount --bind t/a/g t/file/x
mount --bind t/a t/ro; mount -o remount,bind,ro t/ro
mount -t tmpfs hidden t/over; echo under > t/over/h; mount -t tmpfs cover t/over
mount -t tmpfs shr t/p1; mount --make-shared t/p1; mount --bind t/p1 t/p2
mount --bind t/p1 t/s; mount --make-slave t/s
mount -t tmpfs ub t/ub; mount --make-unbindable t/ub
mount -t tmpfs -o strictatime st t/st
mkdir t/a/gone; echo x > t/a/gone/y; mount --bind t/a/gone t/del; rm -rf t/a/gone
echo z > t/a/gf; mount --bind t/a/gf t/delf; rm t/a/gf
L="t/$(printf 'caf\351')"; mount -t tmpfs latin "$L"; echo latin > "$L/l"
mount -t bpf bpf t/bpf
mount -t proc proc proc
mount --bind "$HOSTDIR" t/ext
"""
# The dumped process: a private namespace, the tree above under a tmpfs root, pivoted into,
# then sleep (its standard streams /dev/null of the root, nothing else open).
CONTAINER = r"""
import ctypes, os, subprocess, sys
root, script = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def check(ret, what):
    if ret != 0:
        raise OSError(ctypes.get_errno(), what)
check(libc.unshare(0x00020000), "unshare")
subprocess.run(["sh", "-ec", "mount --make-rprivate /; mount -t tmpfs rootfs \"$0\"; cd \"$0\";"
                + script, root], check=True)
os.chdir(root)
os.mkdir(".old")
check(libc.syscall(155, b".", b".old"), "pivot_root")
os.chdir("/")
check(libc.umount2(b"/.old", 2), "umount")
os.rmdir("/.old")
sys.stdout.write("ready\n"); sys.stdout.flush()
fd = os.open("/dev/null", os.O_RDWR)
for i in (0, 1, 2):
    os.dup2(fd, i)
os.closerange(3, 65536)
os.execv("/bin/sleep", ["sleep", "1000"])
"""
# Reads the restored namespace's hidden file: a private copy of it, the cover unmounted.
HIDDEN = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
assert libc.setns(fd, 0x00020000) == 0 and libc.unshare(0x00020000) == 0
assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0  # rprivate: nothing goes back
assert libc.umount2(b"/t/over", 2) == 0
sys.stdout.write(open("/t/over/h").read())
"""


EXTERNAL = ["--external", "mnt[/t/ext]:hostdir"]


class Dumped(NamedTuple):
    criu_dir: Path
    fw_dir: Path
    root: Path  # the root tmpfs's files and mountpoints, for --root
    hostdir: Path  # bound in from the host: the external mount, key "hostdir"
    before: list[tuple[str, ...]]


def _run(argv: list[str], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                         cwd=cwd, env=env)
    assert res.returncode == 0, f"{argv}: {res.stdout}{res.stderr}"
    return res


def _end(pid: int) -> None:
    """SIGKILL a restored process and wait until its PID is free: the next restore of the
    same dump needs it (reaped here if it was reparented to this process)."""
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return not os.path.exists(f"/proc/{pid}")

    assert wait_until(gone, 10), f"restored process {pid} did not go"


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def table(pid: int) -> list[tuple[str, ...]]:
    """Every mount but the root: mountpoint, root, options, propagation (peer groups
    renumbered by first appearance), fstype, source, superblock options."""
    groups: dict[str, int] = {}

    def prop(fields: list[str]) -> str:
        out = []
        for f in fields:
            kind, _, n = f.partition(":")
            out.append(f"{kind}:{groups.setdefault(n, len(groups) + 1)}" if n else kind)
        return " ".join(sorted(out))

    rows = []
    lines = Path(f"/proc/{pid}/mountinfo").read_bytes().decode("utf-8", "surrogateescape")
    for line in lines.splitlines()[1:]:
        left, right = line.split(" - ", 1)
        f, r = left.split(), right.split()
        rows.append((f[4], f[3], f[5], prop(f[6:]), r[0], r[1], r[2]))
    return sorted(rows)


def _content(pid: int) -> dict[str, str]:
    top = Path(f"/proc/{pid}/root")
    got = {p: (top / p).read_text() for p in ("t/a/g", "t/b/f", "t/file/x", "t/ro/sub/f",
                                               f"{LATIN}/l", "t/ext/h")}
    got["hidden"] = _run([sys.executable, "-c", HIDDEN, str(pid)]).stdout
    got["del"] = " ".join(sorted(os.listdir(top / "t/del")))
    # CRIU's rule for a deleted root: made again empty, as its mountpoint is (type, mode).
    st = (top / "t/delf").stat()
    got["delf"] = f"{oct(st.st_mode)} {st.st_size}"
    return got


CONTENT = {"t/a/g": "top\n", "t/b/f": "hi\n", "t/file/x": "top\n", "t/ro/sub/f": "hi\n",
           f"{LATIN}/l": "latin\n", "t/ext/h": "host\n", "hidden": "under\n", "del": "",
           "delf": "0o100640 0"}


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dumped]:
    base = tmp_path_factory.mktemp("criu42")
    rootfs, root, hostdir = base / "rootfs", base / "root", base / "hostdir"
    for d in (rootfs, root, hostdir):
        d.mkdir()
    (hostdir / "h").write_text("host\n")
    env = {**os.environ, "BUSYBOX": BUSYBOX, "HOSTDIR": str(hostdir)}
    _run(["sh", "-ec", LAYOUT], cwd=root, env=env)
    proc = subprocess.Popen([sys.executable, "-c", CONTAINER, str(rootfs), LAYOUT + MOUNTS],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        before = table(proc.pid)
        criu_dir, fw_dir = base / "criu", base / "fw"
        criu_dir.mkdir()
        res = subprocess.run([*PRIVATE, str(CRIU), "dump", "-t", str(proc.pid), "-D",
                              str(criu_dir), "--leave-stopped", "--enable-fs", "bpf", "-v4",
                              "-o", "dump.log", *EXTERNAL], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, _log_tail(criu_dir / "dump.log")
        _run([*PRIVATE, CLI, "dump", "-q", "-t", str(proc.pid), "-D", str(fw_dir), *EXTERNAL])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    yield Dumped(criu_dir, fw_dir, root, hostdir, before)


def test_criu_fws_mount_image_is_criu_4_2s_byte_for_byte(dumped: Dumped) -> None:
    # The same mounts dumped by both: every mnt_entry field (AUTO and its name for bpf,
    # unbindable, strictatime, the raw bytes of the Latin-1 name, deleted roots, 0 for no
    # peer group) written as CRIU writes it, under CRIU's own namespace number.
    criu_images = list(dumped.criu_dir.glob("mountpoints-*.img"))
    assert len(criu_images) == 1
    assert criu_images[0].read_bytes() == (dumped.fw_dir / "mountpoints-1.img").read_bytes()


def _criu_restore(images: Path, dumped: Dumped, pidfile: Path, *more: str) -> int:
    script = ('ip link set lo up && d=$1 r=$2 p=$3 e=$4 && shift 4 && exec "$0" restore '
              '-D "$d" --root "$r" -d --pidfile "$p" -v4 -o restore.log --external "$e" "$@"')
    res = subprocess.run([*PRIVATE, "--net", "--ipc", "sh", "-c", script, str(CRIU),
                          str(images), str(dumped.root), str(pidfile),
                          f"mnt[hostdir]:{dumped.hostdir}", *more],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + _log_tail(images / "restore.log")
    return int(pidfile.read_text())


@pytest.mark.parametrize(("engine", "deleted_file_mode"), [
    # CRIU's two mount engines make a deleted file root again with different modes: mount-v2
    # (the default) 0600, the older one the mountpoint's.
    ((), "0o100600"), (("--mntns-compat-mode",), "0o100640"),
], ids=["mount-v2", "compat"])
def test_criu_restores_its_processes_with_criu_fws_mount_images(
    dumped: Dumped, tmp_path: Path, engine: tuple[str, ...], deleted_file_mode: str,
) -> None:
    merged = tmp_path / "merged"
    shutil.copytree(dumped.criu_dir, merged)
    out = _run([CLI, "merge", "-D", str(dumped.fw_dir), "--into", str(merged)]).stdout
    assert re.search(r"mount namespaces criu-fw -> CRIU: 1 -> \d+", out), out
    # CRIU's own mount image is gone: what CRIU restores is criu-fw's.
    ns = re.search(r"-> (\d+)", out)
    assert ns is not None
    assert (merged / f"mountpoints-{ns.group(1)}.img").read_bytes() == (
        dumped.fw_dir / "mountpoints-1.img").read_bytes()
    pid = _criu_restore(merged, dumped, tmp_path / "pid", *engine)
    try:
        assert table(pid) == dumped.before
        assert _content(pid) == {**CONTENT, "delf": f"{deleted_file_mode} 0"}
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
    finally:
        _end(pid)


def test_criu_fw_restores_a_directory_criu_4_2_wrote(dumped: Dumped, tmp_path: Path) -> None:
    images = tmp_path / "criu"
    shutil.copytree(dumped.criu_dir, images)
    pidfile = tmp_path / "pid"
    _run([*PRIVATE, "--net", "--ipc", CLI, "restore", "-q", "-D", str(images), "--root",
          str(dumped.root), "--external", f"mnt[hostdir]:{dumped.hostdir}", "--detach",
          "--pidfile", str(pidfile)])
    pid = int(pidfile.read_text())
    try:
        assert table(pid) == dumped.before
        assert _content(pid) == CONTENT
        # Everything as CRIU dumped it, the root being --root's directory (as in CRIU's
        # restore); the root itself is what verify cannot find in the images.
        ver = subprocess.run([CLI, "verify", "-D", str(images), "-t", str(pid), "--root",
                              str(dumped.root)], capture_output=True, text=True, timeout=60,
                             check=False)
        assert ver.returncode == 0, ver.stdout
        other = subprocess.run([CLI, "verify", "-D", str(images), "-t", str(pid), "--root",
                                str(dumped.hostdir)], capture_output=True, text=True,
                               timeout=60, check=False)
        assert other.returncode == 1
        assert other.stdout == f"/: the live root is not --root's directory {dumped.hostdir}\n"
        plain = subprocess.run([CLI, "verify", "-D", str(images), "-t", str(pid)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert plain.returncode == 1
        assert "/: fstype 'tmpfs' in the images, 'ext4' live" in plain.stdout
    finally:
        _end(pid)


PODMAN = r"""
set -eu
T=$1; CLI=$2; CRIU_DIR=$3
mkdir -p $T/rootfs/bin $T/rootfs/proc $T/rootfs/sys $T/rootfs/dev $T/rootfs/tmp $T/rootfs/etc
cp "$(command -v busybox || echo /bin/busybox)" $T/rootfs/bin/busybox
for c in sh sleep cat; do ln -s busybox $T/rootfs/bin/$c; done
tar -C $T/rootfs -cf $T/rootfs.tar .
RUN=$(mktemp -d /tmp/criu-fw-podman.XXXXXX)
P="podman --root $T/storage --runroot $RUN --volumepath $T/volumes --storage-driver overlay
   --cgroup-manager cgroupfs --events-backend file --runtime runc"
trap '$P rm -f -t 0 ck1 >/dev/null 2>&1 || true; rm -rf $RUN' EXIT
$P import -q $T/rootfs.tar localhost/criu-fw-ck:1 >/dev/null
$P run -d --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --name ck1 \
    --tmpfs /scratch localhost/criu-fw-ck:1 sh -c 'echo tmp > /scratch/s; exec sleep 1000' \
    >/dev/null
PID=$($P inspect ck1 --format '{{.State.Pid}}')
for i in $(seq 100); do [ -s /proc/$PID/root/scratch/s ] && break; sleep 0.1; done
# runc runs the criu it finds first on PATH: CRIU 4.2.
PATH=$CRIU_DIR:$PATH $P container checkpoint --leave-running --export $T/ck.tar.zst ck1 \
    >$T/checkpoint.out 2>&1
$CLI show $T/ck.tar.zst > $T/show.out 2>&1
$CLI verify -D $T/ck.tar.zst -t $PID > $T/verify.out 2>&1 || echo "status $?" >> $T/verify.out
"""


def test_a_podman_checkpoint_made_by_criu_4_2_is_shown_and_verified(tmp_path: Path) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are set up by scripts/bootstrap.sh")
    res = subprocess.run([*PRIVATE, "sh", "-c", PODMAN, "sh", str(tmp_path), CLI,
                          str(CRIU.parent)], capture_output=True, text=True, timeout=300)
    logs = "".join(f"{p.name}: {p.read_text()}" for p in sorted(tmp_path.glob("*.out")))
    assert res.returncode == 0, res.stderr + logs
    show = (tmp_path / "show.out").read_text()
    assert show.startswith(f"{tmp_path}/ck.tar.zst: container checkpoint of ck1 ("), show
    assert re.search(r"/scratch +tmpfs +tmpfs +generic .* tmpfs-dev-\d+\.tar\.gz\.img", show)
    # The live container is as CRIU dumped it: the files runc binds from the host (CRIU
    # records their type as unsupported), devpts (CRIU adds newinstance) included.
    verify = (tmp_path / "verify.out").read_text()
    assert "status" not in verify, verify
