"""Overlays end to end: a real namespace dumped with ``dump()``, restored with ``restore()`` in a
fresh private namespace, compared with ``verify()``, and dumped and restored a second time.

What a user sees is asserted: the restored mountinfo (layer options with clean in-namespace
paths), the merged files read through the restored overlay, and verify's differences.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import criu_fw
import pytest
from criu_fw.errors import RestoreError
from criu_fw.images import image_to_dict
from criu_fw.images.mounts import read_mount_namespace
from criu_fw.restore import image_namespaces
from criu_fw.restore.verify import verify
from criu_fw.testing import NamespaceScenario
from overlay_helpers import (
    at,
    auto_externals,
    checkpoint,
    inside,
    layer_options,
    live_tree,
    restored,
)

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``criu-fw`` console script."""
    exe = os.path.join(os.path.dirname(sys.executable), "criu-fw")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def with_usr(root: str) -> str:
    """Shell lines that keep the host's programs usable after pivot_root into ``root``."""
    return (
        f"mkdir -p {root}/usr {root}/proc && mount --bind /usr {root}/usr && "
        f"mount -t proc proc {root}/proc && "
        f"for d in bin lib lib64 sbin; do ln -s usr/$d {root}/$d; done\n"
    )


# -- stale layer paths after pivot_root -------------------------------------------------------

PIVOTED = (
    """
mkdir new && mount -t tmpfs newroot new && mkdir new/l1 new/l2 new/up new/wk new/ovl new/old
echo 1 > new/l1/f1; echo 2 > new/l2/f2; echo 2 > new/l2/shadowed; echo top > new/l1/shadowed
mount -t overlay overlay new/ovl \\
  -o lowerdir=$PWD/new/l1:$PWD/new/l2,upperdir=$PWD/new/up,workdir=$PWD/new/wk
echo written > new/ovl/fu && rm new/ovl/f2
"""
    + with_usr("new")
    + """
cd new && pivot_root . old && cd / && umount -l /old
"""
)
CLEAN = ("lowerdir+=/l1", "lowerdir+=/l2", "upperdir=/up", "workdir=/wk")


def test_pivot_root_stale_prefix_restores_clean_and_the_same_again(
    scenario: Scn, tmp_path: os.PathLike[str]
) -> None:
    s = scenario(PIVOTED)
    stale = layer_options(at(live_tree(s.pid), "/ovl"))
    assert stale[0] == f"lowerdir={s.workdir}/new/l1:{s.workdir}/new/l2"  # what CRIU replays
    first, second = f"{tmp_path}/first", f"{tmp_path}/second"
    checkpoint(s.pid, first)
    with restored(first) as pid:
        ovl = at(live_tree(pid), "/ovl")
        assert layer_options(ovl) == CLEAN
        assert not any(s.workdir in o or "/tmp/" in o for o in ovl.super_options)
        # Merged view: lower files, the upper's new file, the whiteout of f2, the top layer
        # winning over the one below.
        assert inside(pid, "cat /ovl/f1 /ovl/fu /ovl/shadowed; ls /ovl") == (
            "1\nwritten\ntop\nf1\nfu\nshadowed\n"
        )
        # verify compares the layers by where they lead, not by spelling.
        assert verify(pid, first).differences == ()
        # The second checkpoint of the restored namespace (where CRIU fails) gives the same
        # options again.
        checkpoint(pid, second)
    with restored(second) as pid2:
        assert layer_options(at(live_tree(pid2), "/ovl")) == CLEAN
        assert verify(pid2, second).differences == ()
        assert inside(pid2, "cat /ovl/f1 /ovl/fu") == "1\nwritten\n"


def test_pivot_root_through_the_cli(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    s = scenario(PIVOTED)
    images = f"{tmp_path}/images"
    out = cli("dump", "-t", str(s.pid), "-D", images, "--external-auto")
    assert out.returncode == 0, out.stderr
    out = cli("restore", "-D", images, "--detach", "--external", "mnt[/usr]:/usr")
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    try:
        assert layer_options(at(live_tree(pid), "/ovl")) == CLEAN
        assert inside(pid, "cat /ovl/f1") == "1\n"
        ver = cli("verify", "-D", images, "-t", str(pid))
        assert (ver.returncode, ver.stdout) == (0, "verify: OK, 4 mounts match\n")
    finally:
        os.kill(pid, 9)  # the holder the CLI left (not our child: init reaps it)


# -- relative paths, overmounted layer, data-only layers ---------------------------------


def test_relative_layer_paths(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && cd W && mkdir l1 l2 up wk ovl && echo x > l2/x
mount -t overlay overlay -o lowerdir=l1:l2,upperdir=up,workdir=wk ovl
"""
    )
    W = f"{s.workdir}/W"
    assert at(live_tree(s.pid), f"{W}/ovl").super_option("lowerdir") == "l1:l2"
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    with restored(images, root="/") as pid:
        ovl = at(live_tree(pid), f"{W}/ovl")
        assert layer_options(ovl) == (
            f"lowerdir+={W}/l1",
            f"lowerdir+={W}/l2",
            f"upperdir={W}/up",
            f"workdir={W}/wk",
        )
        assert inside(pid, f"cat {W}/ovl/x") == "x\n"
        assert verify(pid, images).differences == ()


def test_layer_overmounted_after_the_overlay(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/low W/up W/wk W/ovl
mount -t tmpfs low W/low && mkdir W/low/a W/low/b && echo a > W/low/a/fa && echo b > W/low/b/fb
mount -t overlay overlay W/ovl \\
  -o lowerdir=$PWD/W/low/a:$PWD/W/low/b,upperdir=$PWD/W/up,workdir=$PWD/W/wk
mount -t tmpfs cover W/low/a && echo decoy > W/low/a/fa
"""
    )
    W = f"{s.workdir}/W"
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    with restored(images, root="/") as pid:
        tree = live_tree(pid)
        ovl = at(tree, f"{W}/ovl")
        # The covered directory is the layer, not the tmpfs on top of it.
        assert layer_options(ovl)[0] == f"lowerdir+={W}/low/a"
        assert inside(pid, f"cat {W}/ovl/fa {W}/low/a/fa {W}/ovl/fb") == "a\ndecoy\nb\n"
        assert at(tree, f"{W}/low/a").fstype == "tmpfs"  # the cover is back on top
        assert verify(pid, images).differences == ()


def test_data_only_layers(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/l1 W/d1 W/d2 W/ovl && echo x > W/l1/x
mount -t overlay overlay -o lowerdir=$PWD/W/l1::$PWD/W/d1::$PWD/W/d2 W/ovl
"""
    )
    W = f"{s.workdir}/W"
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    with restored(images, root="/") as pid:
        ovl = at(live_tree(pid), f"{W}/ovl")
        assert layer_options(ovl) == (f"lowerdir+={W}/l1", f"datadir+={W}/d1", f"datadir+={W}/d2")
        assert "ro" in ovl.super_options
        assert inside(pid, f"cat {W}/ovl/x") == "x\n"


# -- layers on tmpfs: content archived and restored --------------------------------------


def test_upper_and_lower_on_separate_tmpfs(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/low W/up W/wk W/ovl
mount -t tmpfs low W/low && mkdir -p W/low/dir/sub && echo a > W/low/a && echo gone > W/low/g
echo old > W/low/dir/sub/o && echo keep > W/low/dir/k
mount -t overlay overlay W/ovl -o lowerdir=$PWD/W/low,upperdir=$PWD/W/up,workdir=$PWD/W/wk
echo new > W/ovl/u && echo more >> W/ovl/a && rm W/ovl/g
rm -r W/ovl/dir && mkdir W/ovl/dir && echo fresh > W/ovl/dir/f
"""
    )
    W = f"{s.workdir}/W"
    merged = "find . | sort; cat a u dir/f"
    want = inside(s.pid, f"cd {W}/ovl && {merged}")
    assert "./g" not in want and "./dir/k" not in want  # a whiteout and an opaque directory
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    root, _ = image_namespaces(images)
    dumped = read_mount_namespace(images, root)
    assert {r.mount.mountpoint for r in dumped if r.content} >= {W, f"{W}/low"}
    with restored(images, root="/") as pid:
        assert inside(pid, f"cd {W}/ovl && {merged}") == want
        assert inside(pid, f"cat {W}/low/a {W}/low/g") == "a\ngone\n"  # the lower untouched
        diffs = verify(pid, images).differences
        assert diffs == ()


# -- many layers with long paths (new mount API, layers by fd) ----------------------------

MANY = """
import os, sys
n, base = int(sys.argv[1]), os.path.abspath(sys.argv[2])
for i in range(n):
    os.makedirs(f"{base}/{i:03d}")
    with open(f"{base}/{i:03d}/only{i}", "w") as f:
        f.write(f"{i}\\n")
sys.path.insert(0, sys.argv[3])
from criu_fw import kernel as k
fd = k.fsopen("overlay")
k.fsconfig(fd, k.FSCONFIG_SET_STRING, "source", "overlay")
for i in range(n):  # one fd per layer: a 210-byte path is fine by fd, as a string too
    d = os.open(f"{base}/{i:03d}", os.O_PATH)
    k.fsconfig(fd, k.FSCONFIG_SET_FD, "lowerdir+", None, d)
    os.close(d)
k.fsconfig(fd, k.FSCONFIG_CMD_CREATE)
m = k.fsmount(fd)
k.move_mount(m, "", k.AT_FDCWD, "W/ovl", k.MOVE_MOUNT_F_EMPTY_PATH)
"""


@pytest.mark.parametrize("layers", [2, 10, 200, 500])
def test_many_layers_with_long_paths(
    scenario: Scn, tmp_path: os.PathLike[str], layers: int
) -> None:
    site = os.path.dirname(os.path.dirname(os.path.abspath(criu_fw.__file__)))
    long = "L" * 180  # each layer path is about 210 bytes: 500 of them are 100 KiB of options
    s = scenario(
        f"""
mkdir W && mount -t tmpfs w W && mkdir W/ovl && cat > many.py <<'PY'
{MANY}
PY
{sys.executable} many.py {layers} W/{long} {site}
"""
    )
    W = f"{s.workdir}/W"
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    with restored(images, root="/") as pid:
        ovl = at(live_tree(pid), f"{W}/ovl")
        assert layer_options(ovl) == tuple(
            f"lowerdir+={W}/{long}/{i:03d}" for i in range(layers)
        )  # no layer lost, in order
        low = layers - 1
        assert inside(pid, f"cat {W}/ovl/only{low} {W}/ovl/only0") == f"{low}\n0\n"
        assert verify(pid, images).differences == ()


# -- a container whose root is an overlay on host directories ------------------------------


def test_container_root_on_host_layers_restores_with_the_layers_granted(
    scenario: Scn, tmp_path: os.PathLike[str]
) -> None:
    s = scenario(
        """
mkdir l1 l2 up wk root && echo 1 > l1/f1 && echo 2 > l2/f2
mount -t overlay overlay root -o lowerdir=$PWD/l1:$PWD/l2,upperdir=$PWD/up,workdir=$PWD/wk
"""
        + with_usr("root")
        + """
mkdir root/old && cd root && pivot_root . old && cd / && umount -l /old
echo from-container > /fc
"""
    )
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    # No --root: the root overlay is rebuilt from its layers, host directories the images
    # name, which the restore uses only once the operator grants where they may be.
    out = cli("restore", "-D", images, "--dry-run", "--external", "mnt[/usr]:/usr")
    assert out.returncode != 0
    assert out.stderr.strip().endswith(
        f"lowerdir+ directory '{s.workdir}/l1' is a host path named by the images, used only "
        f"when granted; give --allow-host {s.workdir} (or a directory above it)"
    )
    with restored(images, allow_host=(s.workdir,)) as pid:
        root = at(live_tree(pid), "/")
        assert root.fstype == "overlay"
        assert layer_options(root) == (
            f"lowerdir+={s.workdir}/l1",
            f"lowerdir+={s.workdir}/l2",
            f"upperdir={s.workdir}/up",
            f"workdir={s.workdir}/wk",
        )
        assert inside(pid, "cat /f1 /f2 /fc") == "1\n2\nfrom-container\n"
        assert verify(pid, images).differences == ()


# -- a layer that cannot be found ----------------------------------------------------------

LOST = """
mkdir W && mount -t tmpfs w W && mkdir W/L W/b W/ovl && mount -t tmpfs gone W/L && mkdir W/L/a
echo a > W/L/a/fa
mount -t overlay overlay -o lowerdir=$PWD/W/L/a:$PWD/W/b W/ovl
umount -l W/L
"""


def test_lost_layer_fails_the_dump_then_works_as_external(
    scenario: Scn, tmp_path: os.PathLike[str]
) -> None:
    s = scenario(LOST)
    W = f"{s.workdir}/W"
    images = f"{tmp_path}/img"
    out = cli("dump", "-t", str(s.pid), "-D", images, "--external-auto")
    assert out.returncode != 0
    msg = out.stderr.strip()
    assert "\n" not in msg and "Traceback" not in msg
    assert f"at '{W}/ovl' (overlay" in msg
    assert f"lowerdir layer '{W}/L/a' not found" in msg
    assert f"--external mnt[{W}/ovl]:KEY" in msg
    assert not os.path.exists(images)  # all or nothing

    # Declared external at dump, mapped at restore: the user's directory takes its place.
    ext = f"mnt[{W}/ovl]:rootfs"
    out = cli("dump", "-t", str(s.pid), "-D", images, "--external-auto", "--external", ext)
    assert out.returncode == 0, out.stderr
    there = f"{tmp_path}/replacement"
    os.mkdir(there)
    with open(f"{there}/fa", "w") as f:
        f.write("replaced\n")
    with restored(images, root="/", externals={"rootfs": there}) as pid:
        assert inside(pid, f"cat {W}/ovl/fa") == "replaced\n"
    out = cli(
        "restore", "-D", images, "--root", "/", "--detach", "--external", f"mnt[rootfs]:{there}"
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    try:
        assert inside(pid, f"cat {W}/ovl/fa") == "replaced\n"
    finally:
        os.kill(pid, 9)


# -- open and mapped files on the overlay ---------------------------------------------------

FILES = """
mkdir W && mount -t tmpfs w W && mkdir W/low W/up W/wk W/ovl && mount -t tmpfs low W/low
echo lower > W/low/lf; echo cu > W/low/cu; echo gone > W/low/gone; echo mapped > W/low/m
echo upper > W/up/uf
mount -t overlay overlay W/ovl -o lowerdir=$PWD/W/low,upperdir=$PWD/W/up,workdir=$PWD/W/wk
exec 3<W/ovl/lf 4<W/ovl/uf 5>>W/ovl/cu 6<W/ovl/gone
rm W/ovl/gone
/usr/bin/python3 -c '
import mmap, time
f = open("W/ovl/m", "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
f.close()
open("mapped", "w").close()
time.sleep(100000)' &
while [ ! -e mapped ]; do sleep 0.01; done
"""


def test_open_and_mapped_files_point_at_the_overlay(
    scenario: Scn, tmp_path: os.PathLike[str]
) -> None:
    s = scenario(FILES)
    W = f"{s.workdir}/W"
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    root, _ = image_namespaces(images)
    tree = read_mount_namespace(images, root).tree
    ovl = at(tree, f"{W}/ovl")
    entries = image_to_dict(f"{images}/files.img")["entries"]
    by_path: dict[str, set[int]] = {}
    for e in entries:
        by_path.setdefault(e["reg"]["name"], set()).add(e["reg"]["mnt_id"])
    # Lower, upper, copied-up, deleted-while-open and mmapped: all on the overlay mount, none
    # on a layer's mount, with the overlay's paths.
    for name in ("lf", "uf", "cu", "gone", "m"):
        assert by_path[f"{W}/ovl/{name}"] == {ovl.mnt_id}, name
    layer_mounts = {at(tree, W).mnt_id, at(tree, f"{W}/low").mnt_id}
    assert not any(mnt & layer_mounts for mnt in by_path.values())
    crit = shutil.which("crit")
    if crit is not None:
        out = subprocess.run(
            [crit, "x", images, "fds"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        for fd, name in ((3, "lf"), (4, "uf"), (5, "cu"), (6, "gone")):
            assert f"{fd}: {W}/ovl/{name}" in out.stdout
    with restored(images, root="/") as pid:
        # The restored mount shows what the files pointed at (the copy-up kept in the upper).
        assert inside(pid, f"cat {W}/ovl/lf {W}/ovl/uf {W}/ovl/cu {W}/ovl/m") == (
            "lower\nupper\ncu\nmapped\n"
        )
        # The upper holds the copy-up and the whiteout of the file deleted while open.
        assert inside(pid, f"ls {W}/up; stat -c %F {W}/up/gone; ls {W}/ovl") == (
            "cu\ngone\nuf\ncharacter special file\ncu\nlf\nm\nuf\n"
        )
        assert verify(pid, images).differences == ()


# -- copy-up with every layer on one filesystem ------------------------------------------------

# The overlay shows a copied-up file under its origin's inode number here (see
# criu_fw.fsdrivers.overlay.identity); the dump used to take that for a wrong upper.
ONE_FS = """
mkdir W && mount -t tmpfs w W && mkdir W/l W/u W/w W/o W/l/d
echo 1 > W/l/f1; echo 2 > W/l/f2; echo 3 > W/l/d/f3
mount -t overlay overlay -o "lowerdir=$PWD/W/l,upperdir=$PWD/W/u,workdir=$PWD/W/w{opts}" W/o
echo up > W/o/f1 && chmod 600 W/o/f2 && mv W/o/d W/o/d2 2>/dev/null || true
exec 3<W/o/f1
"""


# index=on: the upper root's trusted.overlay.origin (and the index dir's trusted.overlay.upper)
# hold file handles of the dumped tmpfs; the restored tmpfs has new inodes, so the kernel
# refuses the mount with ESTALE ("failed to verify upper root origin"). Removing those two
# xattrs between the content restore and the overlay's creation needs a step the restore
# engine does not offer drivers yet (core/restore).
INDEX_STALE = pytest.mark.xfail(
    strict=True, raises=RestoreError, reason="index=on: origin handles of a re-created tmpfs"
)


@pytest.mark.parametrize(
    "opts", ["", pytest.param(",index=on", marks=INDEX_STALE), ",metacopy=on", ",redirect_dir=on"]
)
def test_copy_up_on_one_filesystem_round_trip(
    scenario: Scn, tmp_path: os.PathLike[str], opts: str
) -> None:
    s = scenario(ONE_FS.format(opts=opts))
    W = f"{s.workdir}/W"
    look = f"cd {W}/o && cat f1 f2 && stat -c '%n %a' f1 f2 && find . | sort"
    want = inside(s.pid, look)
    assert want.startswith("up\n2\nf1 644\nf2 600\n")
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    tree = read_mount_namespace(images, image_namespaces(images)[0]).tree
    ovl = at(tree, f"{W}/o")
    files = image_to_dict(f"{images}/files.img")["entries"]
    assert {(e["reg"]["name"], e["reg"]["mnt_id"]) for e in files} >= {(f"{W}/o/f1", ovl.mnt_id)}
    with restored(images, root="/") as pid:
        ovl_now = at(live_tree(pid), f"{W}/o")
        assert layer_options(ovl_now) == (
            f"lowerdir+={W}/l",
            f"upperdir={W}/u",
            f"workdir={W}/w",
        )
        # The copied-up file's contents and the metadata-only copy-up come back through the
        # restored overlay; the lower is untouched.
        assert inside(pid, look) == want
        assert inside(pid, f"cat {W}/l/f1 && stat -c %a {W}/l/f2") == "1\n644\n"
        assert verify(pid, images).differences == ()


# -- a root overlay whose layers are reachable only below it ----------------------------------

LAYERS_INSIDE = (
    """
mkdir st root && mount -t tmpfs st st && mkdir st/l st/u st/w && echo 1 > st/l/f1
mount -t overlay overlay root -o lowerdir=$PWD/st/l,upperdir=$PWD/st/u,workdir=$PWD/st/w
mkdir -p root/layers && mount --bind st root/layers
"""
    + with_usr("root")
    + """
mkdir root/old && cd root && pivot_root . old && cd / && umount -l /old
"""
)


def test_root_overlay_with_its_layers_only_below_it_fails_the_dump_saying_what_to_do(
    scenario: Scn, tmp_path: os.PathLike[str]
) -> None:
    # The layers' tmpfs is left only at /layers, inside the overlay: a restore would need the
    # overlay before its own layer (a dependency cycle). The dump says so, and how to go on.
    s = scenario(LAYERS_INSIDE)
    images = f"{tmp_path}/img"
    out = cli("dump", "-t", str(s.pid), "-D", images, "--external-auto")
    assert out.returncode != 0
    msg = out.stderr.strip()
    assert "\n" not in msg and "Traceback" not in msg
    assert "at '/' (overlay" in msg
    assert f"upperdir layer '{s.workdir}/st/u' is only reachable at '/layers/u'" in msg
    assert "below the overlay itself" in msg
    assert "--external mnt[/]:KEY" in msg and "--external mnt[KEY]:DIR" in msg
    assert not os.path.exists(images)
    # Following the advice: the root is external, the layers' tmpfs inside it is restored.
    out = cli(
        "dump", "-t", str(s.pid), "-D", images, "--external-auto", "--external", "mnt[/]:rootfs"
    )
    assert out.returncode == 0, out.stderr
    there = f"{tmp_path}/rootdir"
    for d in ("layers", "proc", "usr"):
        os.makedirs(f"{there}/{d}")
    with restored(images, externals={"rootfs": there, **auto_externals(images)}) as pid:
        assert at(live_tree(pid), "/layers").fstype == "tmpfs"
        with open(f"/proc/{pid}/root/layers/l/f1") as f:
            assert f.read() == "1\n"
