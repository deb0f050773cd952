"""Containers made by Debian's podman (overlay storage, 30 and 80 image layers) dumped with
the CLI, verified against the live container, and restored in throwaway network and IPC
namespaces: while the container runs, after it was stopped (its cgroups gone), after it was
removed (its upper layer gone: refused, naming why), and once more from a dump of the
restored namespace.

Everything happens inside ``unshare -m --propagation private`` with podman's storage, run
and volume directories under the test's temporary directory: podman's mounts and ours stay
in that child's namespace and nothing of the machine's podman is used. The image is built
offline: a busybox root filesystem imported with ``podman import``, one ``COPY`` layer per
file on top. At 80 layers the absolute layer paths would pass the kernel's 4 KiB option
limit, so containers/storage mounts the overlay with paths relative to its graph root
(``l/ID``), which the dump must find.

podman's default RLIMIT_NOFILE (1,048,576) is above this machine's hard limit and cannot be
raised without CAP_SYS_RESOURCE, hence ``--ulimit`` on the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

BIN = Path(sys.executable).parent

SCRIPT = r"""
set -eu
T=$1; BIN=$2; N=$3
CLI=$BIN/criu-fw
mkdir -p $T/rootfs/bin $T/rootfs/proc $T/rootfs/sys $T/rootfs/dev $T/rootfs/tmp \
    $T/rootfs/etc $T/ctx $T/hostdir
cp "$(command -v busybox || echo /bin/busybox)" $T/rootfs/bin/busybox
for c in sh sleep cat ls; do ln -s busybox $T/rootfs/bin/$c; done
tar -C $T/rootfs -cf $T/rootfs.tar .
echo host-bytes > $T/hostdir/h
# podman wants a run root of at most 50 characters: a short directory of its own.
RUN=$(mktemp -d /tmp/criu-fw-podman.XXXXXX)
P="podman --root $T/storage --runroot $RUN --volumepath $T/volumes --storage-driver overlay
   --cgroup-manager cgroupfs --events-backend file --runtime runc"
trap '$P rm -f -t 0 c1 >/dev/null 2>&1 || true; rm -rf $RUN' EXIT
$P import -q $T/rootfs.tar localhost/criu-fw-bb:1 >/dev/null
{
    echo "FROM localhost/criu-fw-bb:1"
    for i in $(seq $N); do echo "layer $i" > $T/ctx/f$i; echo "COPY f$i /layers/f$i"; done
} > $T/ctx/Containerfile
$P build -q --network none -t localhost/criu-fw-layers $T/ctx >/dev/null
$P volume create vol1 >/dev/null
$P run -d --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --name c1 \
    -v vol1:/data -v $T/hostdir:/host --tmpfs /scratch localhost/criu-fw-layers \
    sh -c 'echo copied-up >> /layers/f1; rm /layers/f2; echo vol > /data/v;
           echo tmp > /scratch/s; exec 3</layers/f3; exec sleep 1000' >/dev/null
PID=$($P inspect c1 --format '{{.State.Pid}}')
for i in $(seq 100); do [ -s /proc/$PID/root/scratch/s ] && break; sleep 0.1; done
cat /proc/$PID/mountinfo > $T/before

# Every restore in fresh network and IPC namespaces; the storage and run roots granted.
RESTORE="unshare --net --ipc $CLI restore -q --allow-host $T --allow-host $RUN"
SHOW='cat /proc/self/mountinfo; echo ==; cat /layers/f1 /layers/f3 /data/v /scratch/s /host/h;
      ls /layers | wc -l; ls /layers/f2 2>/dev/null || echo f2-gone'
$CLI dump -q -t $PID -D $T/img --external-auto 2>$T/dump.err
$CLI verify -t $PID -D $T/img > $T/verify.out 2>&1
crit x $T/img fds > $T/crit-fds
crit x $T/img mems > $T/crit-mems
$RESTORE -D $T/img -- /bin/sh -c "$SHOW" \
    > $T/running 2>$T/running.err

$P stop -t 0 c1 >/dev/null
$RESTORE -D $T/img -- /bin/true \
    > /dev/null 2>$T/stopped-plain.err && echo unexpected > $T/stopped-plain.err
$RESTORE -D $T/img --cgroup-root /libpod_parent \
    -- /bin/sh -c "$SHOW" > $T/stopped 2>$T/stopped.err

# A second round trip: a process of the restored namespace dumped, restored again.
rm -f $T/hostdir/pid
$RESTORE -D $T/img \
    --cgroup-root /libpod_parent -- /bin/sh -c 'echo $$ > /host/pid; exec sleep 1000' \
    2>$T/second.err &
for i in $(seq 100); do [ -s $T/hostdir/pid ] && break; sleep 0.1; done
S=$(cat $T/hostdir/pid)
$CLI dump -q -t $S -D $T/img2 --external-auto 2>>$T/second.err || true
kill $S; wait
$RESTORE -D $T/img2 \
    --cgroup-root /libpod_parent -- /bin/sh -c "$SHOW" > $T/second 2>>$T/second.err

$P rm -f -t 0 c1 >/dev/null
$RESTORE -D $T/img --cgroup-root /libpod_parent \
    -- /bin/true > /dev/null 2>$T/removed.err && echo unexpected > $T/removed.err
true
"""


def _table(text: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for line in text.splitlines():
        left, right = line.split(" - ", 1)
        f = left.split()
        rows.append((f[4], f[3], right.split()[0], f[5]))
    return sorted(rows)


def _cgroups_at(rows: list[tuple[str, str, str, str]], root: str) -> list[tuple[str, ...]]:
    """The table with every cgroup mount's root replaced (``--cgroup-root``)."""
    return sorted((mp, root if fs == "cgroup" else r, fs, o) for mp, r, fs, o in rows)


@pytest.mark.parametrize("layers", [30, 80])
def test_podman_container_round_trips(tmp_path: Path, layers: int) -> None:
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh",
                          str(tmp_path), str(BIN), str(layers)],
                         capture_output=True, text=True, timeout=300)
    logs = "".join(f"{p.name}: {p.read_text()}" for p in sorted(tmp_path.glob("*.err")))
    assert res.returncode == 0, res.stderr + logs
    before = _table((tmp_path / "before").read_text())
    expected_files = f"layer 1\ncopied-up\nlayer 3\nvol\ntmp\nhost-bytes\n{layers - 1}\nf2-gone\n"
    for case in ("running", "stopped", "second"):
        out = (tmp_path / case).read_text()
        assert "==\n" in out, f"{case}: {logs}"
        table, files = out.split("==\n")
        want = before if case == "running" else _cgroups_at(before, "/libpod_parent")
        assert _table(table) == want, case
        assert files == expected_files, case
    # The dump matches the live container, and CRIU's reader sees the open file and the
    # mapped binary at their paths in the container (on the overlay).
    assert (tmp_path / "verify.out").read_text().startswith("verify: OK"), logs
    assert "3: /layers/f3" in (tmp_path / "crit-fds").read_text()
    assert "r-x /bin/busybox" in (tmp_path / "crit-mems").read_text()
    # Stopped: the cgroup is gone, and the error says which option helps.
    stopped = (tmp_path / "stopped-plain.err").read_text()
    assert "is gone from this machine's cgroup filesystem" in stopped, stopped
    assert "--cgroup-root PATH" in stopped
    # Removed: podman deleted the upper layer; refused, naming it.
    removed = (tmp_path / "removed.err").read_text()
    assert removed.startswith("criu-fw: error: mount ") and "upperdir directory" in removed
    assert removed.rstrip().endswith("restore before removing it)"), removed
