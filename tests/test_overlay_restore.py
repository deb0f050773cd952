"""Overlays rebuilt for real by the restore engine from the driver's plan (layers by fd).

Layers sit on host directories here, so the restored root (``root="/"``) holds them without a
content image; the namespace images are built from the live tree and the driver's state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import criu_fw
import pytest
from criu_fw.context import DumpContext
from criu_fw.dump import dump
from criu_fw.errors import RestoreError
from criu_fw.fsdrivers.overlay.layers import namespace_path
from criu_fw.fsdrivers.overlay.options import parse_options
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.model import MountTree
from criu_fw.restore import DumpedNamespace, RestoreResult, restore
from criu_fw.testing import NamespaceScenario
from overlay_helpers import at, host_devices, parse

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]


def context_of(pid: int) -> tuple[DumpContext, MountTree]:
    nid = os.stat(f"/proc/{pid}/ns/mnt").st_ino
    tree = read_mountinfo(pid, ns_id=nid)
    ctx = DumpContext(image_dir="/nonexistent", trees={nid: tree}, ns_pids={nid: pid})
    return ctx, tree


def rebuild(
    pid: int,
    mountpoint: str,
    root: str | None = "/",
    allow_host: tuple[str, ...] = (),
    devices: dict[str, str] | None = None,
) -> RestoreResult:
    ctx, tree = context_of(pid)
    ovl = at(tree, mountpoint)
    state = parse(ctx, tree, ovl)
    ns = DumpedNamespace.of(
        tree.ns_id, tree, drivers={ovl.mnt_id: "overlay"}, states={ovl.mnt_id: state}
    )
    return restore(
        "/nonexistent", root=root, namespaces=[ns], detach=True, allow_host=allow_host,
        devices=devices,
    )


def inside(pid: int, script: str) -> str:
    res = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script], capture_output=True
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def test_restored_overlay_is_clean_and_dumps_the_same_again(scenario: Scn) -> None:
    s = scenario(
        """
mkdir l1 l2 up wk ovl && echo 1 > l1/f1 && echo 2 > l2/f2 && echo u > up/fu
cd l1 && mount -t overlay overlay ../ovl -o lowerdir=.:../l2,upperdir=../up,workdir=../wk
"""
    )
    D = s.workdir
    res = rebuild(s.pid, f"{D}/ovl")
    try:
        ctx, tree = context_of(res.pid)
        ovl = at(tree, f"{D}/ovl")
        assert ovl.super_options == (
            "rw",
            f"lowerdir+={D}/l1",
            f"lowerdir+={D}/l2",
            f"upperdir={D}/up",
            f"workdir={D}/wk",
        )
        assert inside(res.pid, f"cat {D}/ovl/f1 {D}/ovl/f2 {D}/ovl/fu") == "1\n2\nu\n"
        # A second dump of the restored overlay finds the same layers, as shown this time.
        state = parse(ctx, tree, ovl)
        assert [(namespace_path(tree, x), x.found) for x in state.layers] == [
            (f"{D}/up", "as shown"),
            (f"{D}/wk", "as shown"),
            (f"{D}/l1", "as shown"),
            (f"{D}/l2", "as shown"),
        ]
        again = rebuild(res.pid, f"{D}/ovl")
        try:
            assert at(context_of(again.pid)[1], f"{D}/ovl").super_options == ovl.super_options
        finally:
            again.terminate()
    finally:
        res.terminate()


MANY = """
import os, sys
sys.path.insert(0, %r)
from criu_fw import kernel as k
n, base = int(sys.argv[1]), os.path.abspath(sys.argv[2])
for i in range(n):
    os.makedirs(f"{base}/{i:03d}")
    with open(f"{base}/{i:03d}/only{i}", "w") as f:
        f.write(f"{i}\\n")
fd = k.fsopen("overlay")
k.fsconfig(fd, k.FSCONFIG_SET_STRING, "source", "overlay")
for i in range(n):
    k.fsconfig(fd, k.FSCONFIG_SET_STRING, "lowerdir+", f"{base}/{i:03d}")
k.fsconfig(fd, k.FSCONFIG_CMD_CREATE)
m = k.fsmount(fd)
k.move_mount(m, "", k.AT_FDCWD, "ovl", k.MOVE_MOUNT_F_EMPTY_PATH)
"""


# Where criu_fw is importable from, for the script run inside the scenario.
SITE = os.path.dirname(os.path.dirname(os.path.abspath(criu_fw.__file__)))


@pytest.mark.parametrize("layers", [2, 10, 200, 500])
def test_many_layers_with_long_paths(scenario: Scn, layers: int) -> None:
    long = "L" * 180  # each layer path is about 210 bytes: 500 of them are 100 KiB
    code = MANY % SITE
    s = scenario(
        f"""
mkdir ovl && cat > many.py <<'PY'
{code}
PY
{sys.executable} many.py {layers} {long}
"""
    )
    D = s.workdir
    res = rebuild(s.pid, f"{D}/ovl")
    try:
        ovl = at(context_of(res.pid)[1], f"{D}/ovl")
        shown = parse_options(ovl.super_options)
        assert [x.text for x in shown.lowers] == [
            f"{D}/{long}/{i:03d}" for i in range(layers)
        ]  # no layer lost, in order
        low = layers - 1
        assert inside(res.pid, f"cat {D}/ovl/only{low} {D}/ovl/only0") == f"{low}\n0\n"
    finally:
        res.terminate()


def test_container_root_on_host_layers_restores_with_the_host_dir_granted(scenario: Scn) -> None:
    s = scenario(
        """
mkdir l1 l2 up wk root && echo 1 > l1/f1 && echo 2 > l2/f2
mount -t overlay overlay root -o lowerdir=$PWD/l1:$PWD/l2,upperdir=$PWD/up,workdir=$PWD/wk
mkdir -p root/usr root/proc root/old && mount --bind /usr root/usr && mount -t proc p root/proc
for d in bin lib lib64 sbin; do ln -s usr/$d root/$d; done
cd root && pivot_root . old && cd / && umount -l /old
"""
    )
    # The images name host directories as layers: refused until the operator grants them.
    with pytest.raises(RestoreError) as err:
        rebuild(s.pid, "/", root=None)
    assert str(err.value).endswith(
        f"lowerdir+ directory '{s.workdir}/l1' is a host path named by the images, used only "
        f"when granted; give --allow-host {s.workdir} (or a directory above it)"
    )
    # /usr is bound from the host's own filesystem: the operator names its device too.
    res = rebuild(
        s.pid, "/", root=None, allow_host=(s.workdir,), devices=host_devices("/usr")
    )
    try:
        root = at(context_of(res.pid)[1], "/")
        assert root.fstype == "overlay"
        assert f"lowerdir+={s.workdir}/l1" in root.super_options
        assert inside(res.pid, "cat /f1 /f2") == "1\n2\n"
    finally:
        res.terminate()


CONTAINER_ROOT = """
mkdir l1 l2 up wk root && echo 1 > l1/f1 && echo 2 > l2/f2
mount -t overlay overlay root -o lowerdir=$PWD/l1:$PWD/l2,upperdir=$PWD/up,workdir=$PWD/wk
mkdir -p root/usr root/proc root/old && mount --bind /usr root/usr && mount -t proc p root/proc
for d in bin lib lib64 sbin; do ln -s usr/$d root/$d; done
cd root && pivot_root . old && cd / && umount -l /old
"""


def test_an_overlay_root_in_criu_s_own_images_is_taken_from_root(
    scenario: Scn, tmp_path: Path,
) -> None:
    """CRIU's images alone (a runtime's checkpoint) keep an overlay root's options, not its
    layers: the overlay driver cannot rebuild it. With ``--root DIR`` the root is DIR, as in
    CRIU's own restore (said in a warning); without, the restore fails naming the mount."""
    s = scenario(CONTAINER_ROOT)
    images = tmp_path / "images"
    dump(s.pid, str(images), auto_external=True)
    for p in images.glob("fw-*"):
        p.unlink()  # what CRIU writes
    cli = [sys.executable, "-m", "criu_fw", "restore", "-q", "-D", str(images)]
    usr = ["--external", "mnt[/usr]:/usr"]

    failed = subprocess.run(["unshare", "--net", "--ipc", "--", *cli, *usr, "--detach"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert failed.stderr.startswith("criu-fw: error: mount ") and " at '/' (overlay" in (
        failed.stderr), failed.stderr
    assert "no overlay layer state in the images" in failed.stderr

    rootfs = tmp_path / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    (rootfs / "proc").mkdir()
    (rootfs / "given").write_text("the operator's tree\n")
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", *cli, *usr, "--root", str(rootfs), "--detach"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout)
    try:
        warned = [line for line in res.stderr.splitlines() if "warning" in line]
        assert len(warned) == 1 and warned[0].endswith(
            f"the root is taken from --root {rootfs}"), res.stderr
        assert Path(f"/proc/{holder}/root/given").read_text() == "the operator's tree\n"
        mounts = {m.mountpoint: m for m in read_mountinfo(holder).mounts}
        assert mounts["/"].root == str(rootfs)
        assert mounts["/proc"].fstype == "proc"
        assert mounts["/usr"].root == "/usr"
    finally:
        os.kill(holder, signal.SIGTERM)
