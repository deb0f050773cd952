"""A container made by Debian's runc or crun (default spec, on a directory root and on an
overlay root): dumped with the CLI, restored in throwaway network and IPC namespaces, and
compared with what the runtime had built.

Everything happens inside ``unshare -m --propagation private``: the runtime's mounts and ours
stay in that child's namespace. The container id is unique per run and the container is
deleted whatever happens, so its cgroup directories do not outlive the test.

crun 1.8 refuses a host with cgroup v1 and v2 side by side ("cgroups in hybrid mode not
supported"), which this machine is. Its case mounts the machine's cgroup2 hierarchy alone on
/sys/fs/cgroup inside the private namespace, so crun sees a unified host, and leaves out the
spec's resource limits (crun would raise RLIMIT_MEMLOCK for its device filter, which needs a
capability the test host may not grant).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

CLI = str(Path(sys.executable).parent / "criu-fw")

SCRIPT = r"""
set -eu
T=$1; CLI=$2; ID=$3; KIND=$4; RT=$5
if [ "$RT" = crun ]; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
R=$T/bundle/rootfs
mkdir -p $R/bin $R/proc $R/sys $R/dev $R/tmp $R/etc
cp "$(command -v busybox || echo /bin/busybox)" $R/bin/busybox
for c in sh sleep cat; do ln -s busybox $R/bin/$c; done
GRANT="--external mnt[$R]:$R"
if [ "$KIND" = shared-host ]; then
    # A host whose mounts are shared (systemd's default), the container's root a slave of
    # them, and the host's /sys/fs/cgroup bound in: its cgroup mounts are slaves of the
    # host's. Shared only inside this private namespace: nothing reaches the machine's.
    mount --make-rshared /
    GRANT="$GRANT --allow-host /sys/fs/cgroup"
fi
if [ "$KIND" = overlay ]; then
    # The container root is an overlay on directories of the host: the restore needs them
    # granted (--allow-host), as a runtime's storage would be.
    mkdir -p $T/lower $T/upper $T/work
    cp -a $R/. $T/lower/ && rm -rf $R/*
    mount -t overlay ov -o lowerdir=$T/lower,upperdir=$T/upper,workdir=$T/work $R
    GRANT="--allow-host $T"
fi
cd $T/bundle
$RT spec
RT=$RT KIND=$KIND python3 - <<'P'
import json, os
s = json.load(open("config.json"))
s["process"]["terminal"] = False
if os.environ["RT"] == "crun":
    s["process"].pop("rlimits", None)
    s["linux"].pop("resources", None)
s["process"]["args"] = ["sh", "-c", "echo kept > /dev/shm/data; exec sleep 1000"]
if os.environ["KIND"] == "shared-host":
    s["linux"]["rootfsPropagation"] = "rslave"
    s["mounts"].append({"destination": "/sys/fs/cgroup", "type": "bind",
                        "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]})
json.dump(s, open("config.json", "w"))
P
trap '$RT --root $T/state delete -f $ID >/dev/null 2>&1 || true' EXIT
$RT --root $T/state run -d --pid-file $T/pid $ID </dev/null >/dev/null 2>$T/runtime.err
PID=$(cat $T/pid)
for i in $(seq 50); do [ -s /proc/$PID/root/dev/shm/data ] && break; sleep 0.1; done
cat /proc/$PID/mountinfo > $T/before
$CLI dump -q -t $PID -D $T/img --external-auto 2>$T/dump.err
unshare --net --ipc $CLI restore -q -D $T/img $GRANT \
    -- /bin/sh -c 'cat /proc/self/mountinfo; echo ==; cat /dev/shm/data' > $T/restored
"""


def _table(text: str) -> list[tuple[str, str, str, str]]:
    """Mountpoint, root, fstype and per-mount options, sorted: what a container sees of its
    mounts, without the ids, devices and order that differ after any restore."""
    rows = []
    for line in text.splitlines():
        left, right = line.split(" - ", 1)
        f = left.split()
        rows.append((f[4], f[3], right.split()[0], f[5]))
    return sorted(rows)


def _masters(text: str) -> list[tuple[str, str]]:
    """Each mount's mountpoint and the peer group it is a slave of, if any."""
    out = []
    for line in text.splitlines():
        f = line.split(" - ", 1)[0].split()
        out += [(f[4], tag) for tag in f[6:] if tag.startswith("master:")]
    return sorted(out)


@pytest.mark.parametrize(("runtime", "root"), [
    ("runc", "directory"), ("runc", "overlay"), ("runc", "shared-host"),
    ("crun", "directory"), ("crun", "overlay"),
])
def test_container_round_trips(tmp_path: Path, root: str, runtime: str) -> None:
    cid = f"criu-fw-test-{uuid.uuid4().hex[:12]}"
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh",
                          str(tmp_path), CLI, cid, root, runtime],
                         capture_output=True, text=True, timeout=120)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.err")))
    assert res.returncode == 0, res.stderr + logs
    before = _table((tmp_path / "before").read_text())
    restored_table, shm = (tmp_path / "restored").read_text().split("==\n")
    after = _table(restored_table)
    assert after == before
    # The runtime's mounts, as a container engineer knows them, are all there.
    points = {row[0] for row in after}
    assert {"/", "/proc", "/dev", "/dev/shm", "/dev/mqueue", "/sys", "/proc/keys"} <= points
    # sysfs stays read-only, and the tmpfs content came back.
    assert ("/sys", "/", "sysfs", "ro,nosuid,nodev,noexec,relatime") in after
    assert shm == "kept\n"
    # Slaves of the host's mounts stay slaves of the same host mounts (--external-auto
    # records them as external; the restore binds them from the host and follows them).
    assert _masters(restored_table) == _masters((tmp_path / "before").read_text())
    if root == "shared-host":
        assert "/sys/fs/cgroup/memory" in dict(_masters(restored_table))
    # The container root is what the case set up (the table above holds it either way).
    root_type = [row[2] for row in after if row[0] == "/"]
    assert (root_type == ["overlay"]) == (root == "overlay")
