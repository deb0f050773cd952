"""Superblocks a restore does not own: this machine's sysfs and mqueue stay as they are.

sysfs is one superblock per network namespace and mqueue one per IPC namespace, so a restore
that made a dumped read-only sysfs read-only by reconfiguring "its" superblock made this
machine's own /sys read-only. Every privileged check here runs in a *throwaway* child process
that first unshares mount, network and IPC namespaces (and makes / private): its own sysfs and
mqueue, mounted there, stand in for this machine's. Inside it a container-like scenario (its
own mount, network and IPC namespaces) mounts a read-only sysfs and a read-only mqueue; it is
dumped, then restored by the CLI and by the library, and the throwaway namespace's superblocks
are read before and after. The child reports what it saw; the tests assert on that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from criu_fw import kernel
from criu_fw.kernel.mountinfo import parse
from criu_fw.kernel.mountops import KernelMountOps, NotOwnedError, RecordingMountOps
from criu_fw.kernel.superblocks import predicted_shared
from criu_fw.model import MountTree
from criu_fw.restore import DumpedNamespace, restore
from criu_fw.restore.verify import verify
from criu_fw.testing import READY, NamespaceScenario
from helpers import dump_scenario

ST_RDONLY = 1
CLI = [sys.executable, "-m", "criu_fw"]


# -- the throwaway namespace -------------------------------------------------------------


def in_throwaway(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a forked child that first unshares mount, network and IPC namespaces
    (and makes / private): a stand-in for this machine. Returns what ``fn`` returned (JSON);
    an exception in the child fails the test with the child's traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(r)
        code = 0
        try:
            kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWNET | kernel.CLONE_NEWIPC)
            kernel.make_rprivate()
            out: dict[str, Any] = {"ok": fn()}
        except BaseException:
            out = {"error": traceback.format_exc()}
            code = 1
        with os.fdopen(w, "w") as f:
            json.dump(out, f)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    data = json.loads(text)
    if "error" in data:
        raise AssertionError(f"in the throwaway namespace:\n{data['error']}")
    result: dict[str, Any] = data["ok"]
    return result


def mount_line(path: str, pid: int | str = "self") -> dict[str, Any]:
    """The mountinfo entry at ``path`` (the top one) as seen by ``pid``."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        mounts = [m for m in parse(f.read()) if m.mountpoint == path]
    assert mounts, f"nothing mounted at {path} for {pid}"
    m = mounts[-1]
    return {"mount": sorted(m.mount_options), "super": sorted(m.super_options),
            "dev": f"{m.dev.major}:{m.dev.minor}"}


def flags_of(path: str) -> dict[str, Any]:
    """What this namespace's own sysfs or mqueue mount at ``path`` is: its mountinfo entry
    and whether writes fail (statvfs ST_RDONLY: the mount's flag or its superblock's)."""
    return {**mount_line(path), "readonly": bool(os.statvfs(path).f_flag & ST_RDONLY)}


class _Keep(logging.Handler):
    """Keeps the messages of warnings (the restoring child's arrive through the caller)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)


def _kill(pid: int) -> None:
    """End a holder by PID and wait until it is gone (it is not our child)."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)


# The container: own mount, network and IPC namespaces (like runc's), without the mounts of
# the machine it was started on that a container does not have (/sys and the machine's own
# sysfs and mqueue mounts); a read-only sysfs, and an mqueue made read-only (its superblock
# exists with the IPC namespace, so `mount -o ro` alone sets only the mount's flag).
CONTAINER = """
exec unshare --net --ipc -- sh -c '
set -e
umount -R /sys {machine}/sys {machine}/mq
mkdir -p c/sys c/mq
mount -t sysfs -o ro sysfs c/sys
mount -t mqueue -o ro mq c/mq
mount -o remount,ro c/mq
echo {ready}
exec sleep 100000'
"""


def round_trips() -> dict[str, Any]:
    """The whole story in one throwaway namespace (see the module docstring)."""
    seen: dict[str, Any] = {}
    machine = tempfile.mkdtemp(prefix="criu-fw-machine-")
    images = tempfile.mkdtemp(prefix="criu-fw-sbimg-")
    for kind, fstype in (("sys", "sysfs"), ("mq", "mqueue")):
        os.mkdir(f"{machine}/{kind}")
        kernel.mount(fstype, f"{machine}/{kind}", fstype)
    holders: list[int] = []
    scn = None
    try:
        seen["before"] = {k: flags_of(f"{machine}/{k}") for k in ("sys", "mq")}
        scn = NamespaceScenario(CONTAINER.format(machine=machine, ready=READY))
        w = scn.workdir
        seen["dumped"] = {k: mount_line(f"{w}/c/{k}", scn.pid) for k in ("sys", "mq")}
        dump_scenario(scn, f"{images}/img")

        # 1. A plain restore (CLI): the machine's superblocks come back, left as they are.
        res = _cli("restore", "-D", f"{images}/img", "--root", "/", "--detach")
        assert res.returncode == 0, res.stderr
        h = int(res.stdout.split()[0])
        holders.append(h)
        seen["plain"] = {
            "stderr": res.stderr,
            "restored": {k: mount_line(f"{w}/c/{k}", h) for k in ("sys", "mq")},
            "readonly": {k: bool(os.statvfs(f"/proc/{h}/root{w}/c/{k}").f_flag & ST_RDONLY)
                         for k in ("sys", "mq")},
            "machine": {k: flags_of(f"{machine}/{k}") for k in ("sys", "mq")},
            "verify": list(verify(h, f"{images}/img").differences),
        }
        # A real difference is not hidden: the restored sysfs made writable.
        subprocess.run(["nsenter", "-t", str(h), "-m", "--", "mount", "-o",
                        "remount,bind,rw", f"{w}/c/sys"], check=True)
        seen["plain"]["verify_writable"] = list(verify(h, f"{images}/img").differences)
        _kill(h)

        # 2. Into new network and IPC namespaces (library): the restore's own superblocks.
        records: list[str] = []
        handler = _Keep(records)
        logging.getLogger("criu_fw").addHandler(handler)
        result = restore(f"{images}/img", root="/", detach=True, netns="new", ipcns="new")
        logging.getLogger("criu_fw").removeHandler(handler)
        h = result.pid
        holders.append(h)
        seen["fresh"] = {
            "warnings": list(records),
            "restored": {k: mount_line(f"{w}/c/{k}", h) for k in ("sys", "mq")},
            "ns": {k: os.readlink(f"/proc/{h}/ns/{k}") != os.readlink(f"/proc/self/ns/{k}")
                   for k in ("net", "ipc", "mnt")},
            "machine": {k: flags_of(f"{machine}/{k}") for k in ("sys", "mq")},
            "verify": list(verify(h, f"{images}/img").differences),
        }
        result.terminate()

        # 3. A command (CLI) runs in the new namespaces too.
        res = _cli("restore", "-D", f"{images}/img", "--root", "/", "--netns", "new",
                   "--ipcns", "new", "--", "sh", "-c",
                   "readlink /proc/self/ns/net /proc/self/ns/ipc")
        seen["command"] = {
            "code": res.returncode, "stderr": res.stderr, "ns": res.stdout.split(),
            "mine": [os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/ipc")],
        }

        # 4. Into given namespaces (library): those of another process, by their files.
        other = subprocess.Popen(["unshare", "--net", "--ipc", "--", "sleep", "100000"])
        holders.append(other.pid)
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{other.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        records.clear()
        logging.getLogger("criu_fw").addHandler(handler)
        result = restore(f"{images}/img", root="/", detach=True,
                         netns=f"/proc/{other.pid}/ns/net", ipcns=f"/proc/{other.pid}/ns/ipc")
        logging.getLogger("criu_fw").removeHandler(handler)
        h = result.pid
        holders.append(h)
        seen["given"] = {
            "warnings": list(records),
            "restored": {k: mount_line(f"{w}/c/{k}", h) for k in ("sys", "mq")},
            "ns": {k: os.readlink(f"/proc/{h}/ns/{k}") == os.readlink(f"/proc/{other.pid}/ns/{k}")
                   for k in ("net", "ipc")},
            "other": other.pid,
        }
        result.terminate()
        other.kill()
        other.wait()
        seen["after"] = {k: flags_of(f"{machine}/{k}") for k in ("sys", "mq")}
        return seen
    finally:
        for pid in holders:
            _kill(pid)
        if scn is not None:
            scn.close()
        for kind in ("sys", "mq"):
            kernel.umount2(f"{machine}/{kind}", kernel.MNT_DETACH)
        shutil.rmtree(machine, ignore_errors=True)
        shutil.rmtree(images, ignore_errors=True)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create namespaces")
    return in_throwaway(round_trips)


# -- a plain restore --------------------------------------------------------------------


@pytest.mark.privileged
def test_the_dumped_superblocks_were_read_only(seen: dict[str, Any]) -> None:
    for kind in ("sys", "mq"):
        assert "ro" in seen["dumped"][kind]["super"], seen["dumped"]
    assert seen["before"]["sys"]["super"] == ["rw"] and not seen["before"]["sys"]["readonly"]
    assert seen["before"]["mq"]["super"] == ["rw"] and not seen["before"]["mq"]["readonly"]


@pytest.mark.privileged
def test_a_plain_restore_leaves_this_machines_sysfs_and_mqueue_as_they_are(
    seen: dict[str, Any],
) -> None:
    for when in ("plain", "fresh"):
        assert seen[when]["machine"] == seen["before"], when
    assert seen["after"] == seen["before"]


@pytest.mark.privileged
def test_a_plain_restore_makes_the_mounts_read_only_not_the_superblocks(
    seen: dict[str, Any],
) -> None:
    plain = seen["plain"]
    for kind in ("sys", "mq"):
        got = plain["restored"][kind]
        # This machine's superblock (same device), writable, behind a read-only mount.
        assert got["dev"] == seen["before"][kind]["dev"], kind
        assert got["super"] == ["rw"] and "ro" in got["mount"], got
        assert plain["readonly"][kind], kind


@pytest.mark.privileged
def test_a_plain_restore_says_which_superblocks_it_left_and_what_would_rebuild_them(
    seen: dict[str, Any],
) -> None:
    lines = [x for x in seen["plain"]["stderr"].splitlines() if "superblock is shared" in x]
    (sysfs,) = [x for x in lines if "(sysfs, source 'sysfs')" in x]
    (mqueue,) = [x for x in lines if "(mqueue, source 'mq')" in x]
    assert "/c/sys'" in sysfs and "this machine's network namespace" in sysfs
    assert "left as it is" in sysfs and "restore with --netns new" in sysfs
    assert "options ro in the images, rw here" in sysfs
    assert "this machine's IPC namespace" in mqueue and "--ipcns new" in mqueue


@pytest.mark.privileged
def test_verify_accepts_read_only_mounts_of_the_machines_superblock(
    seen: dict[str, Any],
) -> None:
    assert seen["plain"]["verify"] == []


@pytest.mark.privileged
def test_verify_still_sees_a_writable_one(seen: dict[str, Any]) -> None:
    diffs = seen["plain"]["verify_writable"]
    assert len(diffs) == 1 and diffs[0].endswith("/c/sys: read-only in the images, writable live")


# -- new network and IPC namespaces --------------------------------------------------------


@pytest.mark.privileged
def test_in_new_namespaces_the_superblocks_are_rebuilt_read_only_and_separate(
    seen: dict[str, Any],
) -> None:
    fresh = seen["fresh"]
    for kind in ("sys", "mq"):
        got = fresh["restored"][kind]
        assert got["dev"] != seen["before"][kind]["dev"], kind
        assert got["super"] == ["ro"] and "ro" in got["mount"], got
    assert fresh["ns"] == {"net": True, "ipc": True, "mnt": True}
    assert not [x for x in fresh["warnings"] if "/c/" in x], fresh["warnings"]
    assert fresh["verify"] == []


@pytest.mark.privileged
def test_a_command_runs_in_the_new_namespaces(seen: dict[str, Any]) -> None:
    cmd = seen["command"]
    assert cmd["code"] == 0, cmd["stderr"]
    net, ipc = cmd["ns"]
    assert net.startswith("net:[") and net != cmd["mine"][0]
    assert ipc.startswith("ipc:[") and ipc != cmd["mine"][1]


@pytest.mark.privileged
def test_given_namespace_files_are_entered(seen: dict[str, Any]) -> None:
    given = seen["given"]
    assert given["ns"] == {"net": True, "ipc": True}
    # Nobody had that network namespace's sysfs mounted: a new one, the restore's own. Its
    # IPC namespace made its mqueue: that one is left as it is, and said so.
    assert given["restored"]["sys"]["super"] == ["ro"]
    assert given["restored"]["mq"]["super"] == ["rw"] and "ro" in given["restored"]["mq"]["mount"]
    (line,) = [x for x in given["warnings"] if "superblock is shared" in x]
    assert "(mqueue, source 'mq')" in line
    assert f"shared with the IPC namespace /proc/{given['other']}/ns/ipc" in line
    assert line.endswith("restore with --ipcns new to rebuild it")


# -- the mount layer's guard ---------------------------------------------------------------


def _refusals() -> dict[str, Any]:
    top = tempfile.mkdtemp(prefix="criu-fw-owned-")
    try:
        for name, fstype in (("t", "tmpfs"), ("sys", "sysfs")):
            os.mkdir(f"{top}/{name}")
            kernel.mount(fstype, f"{top}/{name}", fstype)
        ops = KernelMountOps()
        out: dict[str, Any] = {}
        # A tmpfs this layer did not make, and the sysfs of this network namespace, which
        # the kernel hands back from a "new" superblock request.
        theirs = kernel.open_tree(f"{top}/t", kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
        sysfs = ops.new_superblock("sysfs", "sysfs", [])
        for name, h in (("tmpfs", theirs), ("sysfs", sysfs)):
            try:
                ops.reconfigure(h, [("ro", None)])
                out[name] = "reconfigured"
            except NotOwnedError as exc:
                out[name] = str(exc)
            out[f"{name}_owned"] = ops.owns(h)
        out["sysfs_same"] = os.fstat(sysfs).st_dev == os.stat(f"{top}/sys").st_dev
        out["left"] = {k: flags_of(f"{top}/{k}")["readonly"] for k in ("t", "sys")}
        # One it made itself is reconfigured.
        mine = ops.new_superblock("tmpfs", "mine", [])
        ops.reconfigure(mine, [("ro", None)])
        out["mine"] = bool(os.fstatvfs(mine).f_flag & ST_RDONLY)
        # mqueue is made with its IPC namespace: EBUSY to an exclusive request, yet in a
        # namespace the restore made it is the restore's own.
        kernel.unshare(kernel.CLONE_NEWIPC)
        plain = KernelMountOps().new_superblock("mqueue", "mq", [])
        fresh_ops = KernelMountOps(fresh=["ipc"])
        fresh = fresh_ops.new_superblock("mqueue", "mq", [])
        fresh_ops.reconfigure(fresh, [("ro", None)])
        out["mqueue"] = {"plain_owned": KernelMountOps().owns(plain),
                         "fresh_owned": fresh_ops.owns(fresh),
                         "fresh_ro": bool(os.fstatvfs(fresh).f_flag & ST_RDONLY)}
        for fd in (theirs, sysfs, mine, plain, fresh):
            os.close(fd)
        return out
    finally:
        for name in ("t", "sys"):
            kernel.umount2(f"{top}/{name}", kernel.MNT_DETACH)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.privileged
def test_reconfigure_refuses_superblocks_this_layer_did_not_create() -> None:
    out = in_throwaway(_refusals)
    assert out["tmpfs"].startswith("refusing to reconfigure the tmpfs superblock on device ")
    assert "this restore did not create it" in out["tmpfs"]
    assert out["sysfs"].startswith("refusing to reconfigure the sysfs superblock")
    assert out["sysfs_same"] and not out["sysfs_owned"] and not out["tmpfs_owned"]
    assert out["left"] == {"t": False, "sys": False}
    assert out["mine"]
    assert out["mqueue"] == {"plain_owned": False, "fresh_owned": True, "fresh_ro": True}


# -- dry runs, the recording layer and option errors (no privileges) ----------------------

TREE = """\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 0:30 / /sys ro,nosuid,relatime - sysfs sysfs ro
3 1 0:30 / /sys2 rw,relatime - sysfs sysfs ro
4 1 0:31 / /dev/mqueue ro,relatime - mqueue mqueue ro
5 1 0:32 / /t rw,relatime - tmpfs t ro
"""


def _dry(namespaces: dict[str, str]) -> RecordingMountOps:
    tree = MountTree.from_mounts(parse(TREE.encode()), ns_id=9)
    ops = RecordingMountOps(shared=predicted_shared(namespaces))
    restore("/nonexistent", ops=ops, namespaces=[DumpedNamespace.of(9, tree)], root="/")
    return ops


def test_a_dry_run_leaves_keyed_superblocks_and_makes_their_mounts_read_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "criu_fw")
    ops = _dry({})
    supers = {c.fstype: c for c in ops.of("new_superblock")}
    assert not supers["sysfs"].owned and not supers["mqueue"].owned and supers["tmpfs"].owned
    # Only the tmpfs (the restore's own) is reconfigured.
    (reconf,) = ops.of("reconfigure")
    assert reconf.handle is not None and ops.owns(reconf.handle)
    assert reconf.params == (("ro", None),)
    # /sys2 was writable in name only: its mount is made read-only itself.
    sys2 = next(c.handle for c in ops.of("attach") if c.path in ("sys2", "/sys2"))
    assert any(c.handle == sys2 and c.flags & kernel.MOUNT_ATTR_RDONLY
               for c in ops.of("set_attr"))
    assert supers["sysfs"].describe().endswith(
        "= existing sysfs superblock, source 'sysfs', left as it is"
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'/sys' (sysfs" in w and "--netns new" in w for w in warned), warned
    assert any("'/dev/mqueue' (mqueue" in w and "--ipcns new" in w for w in warned), warned


def test_a_dry_run_into_new_namespaces_rebuilds_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "criu_fw")
    ops = _dry({"net": "new", "ipc": "new"})
    assert all(c.owned for c in ops.of("new_superblock"))
    assert len(ops.of("reconfigure")) == 3
    assert not [r for r in caplog.records if "superblock is shared" in r.getMessage()]


def test_the_recording_layer_refuses_too() -> None:
    ops = RecordingMountOps(shared={"sysfs"})
    sysfs = ops.new_superblock("sysfs", "sysfs", [])
    cut = ops.clone(sysfs, "/class")
    for h in (sysfs, cut):
        with pytest.raises(NotOwnedError, match="did not create it"):
            ops.reconfigure(h, [("ro", None)])
    ops.reconfigure(ops.new_superblock("tmpfs", "t", []), [("ro", None)])
    assert len(ops.of("reconfigure")) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--netns", "/etc/passwd"], "--netns /etc/passwd: not a namespace file; give new, or "
                                     "a namespace file such as /run/netns/NAME"),
        (["--netns", "/proc/self/ns/ipc"], "--netns /proc/self/ns/ipc: an IPC namespace, not "
                                           "a network namespace"),
        (["--ipcns", "/proc/self/ns/net"], "--ipcns /proc/self/ns/net: a network namespace, "
                                           "not an IPC namespace"),
        (["--ipcns", "/nonexistent/ns"], "--ipcns /nonexistent/ns: cannot open it: No such "
                                         "file or directory"),
    ],
)
def test_a_namespace_that_is_not_one_fails_before_anything_else(
    args: list[str], expected: str, tmp_path: os.PathLike[str],
) -> None:
    res = _cli("restore", "-D", str(tmp_path), *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr


def _tree(lines: str) -> MountTree:
    root = "1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
    return MountTree.from_mounts(parse((root + lines).encode()), ns_id=9)


def test_verify_compares_where_writes_fail_not_where_read_only_is_set() -> None:
    from criu_fw.restore.verify import compare_trees

    dumped = _tree("2 1 0:30 / /sys ro,relatime - sysfs sysfs ro\n"
                   "3 1 0:31 / /t ro,relatime - tmpfs t ro\n")
    # This machine's writable sysfs behind a read-only mount: the same for whoever writes.
    same = _tree("7 1 0:22 / /sys ro,relatime - sysfs sysfs rw\n"
                 "8 1 0:40 / /t ro,relatime - tmpfs t ro\n")
    assert compare_trees(dumped, same).differences == ()
    # Writable: reported. A tmpfs (always the restore's own) is compared exactly.
    writable = _tree("7 1 0:22 / /sys rw,relatime - sysfs sysfs rw\n"
                     "8 1 0:40 / /t ro,relatime - tmpfs t rw\n")
    assert compare_trees(dumped, writable).differences == (
        "/sys: read-only in the images, writable live",
        "/t: superblock options ro in the images, rw live",
    )
    # Another superblock option of a keyed filesystem: reported, saying whose it may be.
    other = _tree("7 1 0:22 / /sys ro,relatime - sysfs sysfs rw,seclabel\n"
                  "8 1 0:40 / /t ro,relatime - tmpfs t ro\n")
    (line,) = compare_trees(dumped, other).differences
    assert line == ("/sys: superblock options ro in the images, rw,seclabel live (the sysfs "
                    "superblock may be shared with this machine's network namespace; restore "
                    "with --netns new to rebuild it)")
