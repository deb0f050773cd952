"""Image directories as CRIU 4.2 writes them, with no criu-fw image: read, shown, restored
and verified by criu-fw.

CRIU 4.2 is not packaged here, so the golden directories are written from the format's facts
(docs/criu-compat.md): the mount image by Debian's ``crit encode`` from the JSON CRIU's
entries show as, the tmpfs archive by GNU tar with CRIU's options, the inventory naming the
*dumper's* namespaces (as CRIU's does) and the root task's ids naming the dumped one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from criu_fw.api.loader import load_drivers
from criu_fw.images import write_image
from criu_fw.images.mounts import read_mount_namespace
from criu_fw.proto import core_pb2, inventory_pb2, pstree_pb2
from criu_fw.restore import image_namespaces
from helpers import CRIT, crit_env

NS = 7  # CRIU's id of the dumped mount namespace (its ns counter, not 1)
ROOT_PID = 42

# MS_* values CRIU puts in mnt_entry.flags.
RDONLY, NOSUID, RELATIME = 0x1, 0x2, 0x200000
UNBINDABLE, SLAVE, SHARED = 0x20000, 0x80000, 0x100000


def kdev(major: int, minor: int) -> int:
    return major << 20 | minor


def entry(mnt_id: int, parent: int, dev: int, root: str, mountpoint: str, fstype: int,
          source: str, flags: int = RELATIME, **more: Any) -> dict[str, Any]:
    e = {"fstype": fstype, "mnt_id": mnt_id, "root_dev": kdev(0, dev), "parent_mnt_id": parent,
         "flags": flags, "root": root, "mountpoint": mountpoint, "source": source,
         "options": more.pop("options", ""), "shared_id": more.pop("shared_id", 0),
         "master_id": more.pop("master_id", 0), "sb_flags": more.pop("sb_flags", 0)}
    e.update(more)
    return e


# A container-like tree as CRIU 4.2 records it (mountinfo order; CRIU writes the reverse).
TMPFS, PROC, AUTO = 5, 1, 16
TREE = [
    entry(100, 1, 40, "/", "/", TMPFS, "rootfs", options="mode=755"),
    entry(101, 100, 41, "/", "/proc", PROC, "proc", NOSUID | RELATIME),
    entry(102, 100, 42, "/", "/data", TMPFS, "data", RELATIME, options="size=4096k,mode=700"),
    entry(103, 100, 42, "/sub", "/view", TMPFS, "data", RDONLY | NOSUID | RELATIME,
          options="size=4096k,mode=700"),
    entry(104, 100, 43, "/", "/peer-a", TMPFS, "peers", RELATIME | SHARED, shared_id=5),
    entry(105, 100, 43, "/", "/peer-b", TMPFS, "peers", RELATIME | SHARED, shared_id=5),
    entry(106, 100, 43, "/", "/slave", TMPFS, "peers", RELATIME | SLAVE, master_id=5),
    entry(107, 100, 44, "/", "/unb", TMPFS, "unb", RELATIME | UNBINDABLE),
]  # fmt: skip


def crit(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run([CRIT, *args], capture_output=True, text=True, input=stdin, env=crit_env(),
                         timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0, f"crit {' '.join(args)} failed: {res.stderr}"
    return res.stdout


def criu_dir(where: Path, tree: list[dict[str, Any]], archives: dict[int, dict[str, bytes]]) -> str:
    where.mkdir()
    # The dumper's own namespaces in the inventory (CRIU's convention), the dumped task's
    # in its ids image.
    dumper = core_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1, sighand_id=1,
                                          mnt_ns_id=1, net_ns_id=2)  # fmt: skip
    write_image(str(where / "inventory.img"), "INVENTORY",
                [inventory_pb2.inventory_entry(img_version=2, root_ids=dumper)])
    write_image(str(where / "pstree.img"), "PSTREE",
                [pstree_pb2.pstree_entry(pid=ROOT_PID, ppid=0, pgid=ROOT_PID, sid=ROOT_PID)])
    task = core_pb2.task_kobj_ids_entry(vm_id=3, files_id=3, fs_id=3, sighand_id=3,
                                        mnt_ns_id=NS)  # fmt: skip
    write_image(str(where / f"ids-{ROOT_PID}.img"), "IDS", [task])
    mnts = json.dumps({"magic": "MNTS", "entries": list(reversed(tree))})
    crit("encode", "-o", str(where / f"mountpoints-{NS}.img"), stdin=mnts)
    for dev, files in archives.items():
        src = where / f"src-{dev}"
        src.mkdir()
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        # CRIU's tar options (criu/mount.c), GNU format.
        subprocess.run(
            ["tar", "--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system",
             "--check-links", "--preserve-permissions", "--sparse", "--numeric-owner",
             f"--file={where}/tmpfs-dev-{kdev(0, dev)}.tar.gz.img", "-C", str(src), "."],
            check=True,
        )
        shutil.rmtree(src)
    return str(where)


DATA = {42: {"f": b"bytes of the data tmpfs\n", "sub/g": b"seen through the view\n"},
        43: {"p": b"peers\n"}, 44: {}}  # fmt: skip


# Mounts a tmpfs at /peer-a/x inside the namespace of the PID given (libc loaded first:
# after setns the root is the restored one, which holds no Python).
PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
if libc.setns(fd, 0x20000) != 0 or libc.mkdir(b"/peer-a/x", 0o755) != 0:
    sys.exit(2)
sys.exit(0 if libc.mount(b"probe", b"/peer-a/x", b"tmpfs", 0, None) == 0 else 3)
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_the_namespaces_are_found_through_the_root_task_not_the_inventory(
    tmp_path: Path,
) -> None:
    d = criu_dir(tmp_path / "img", TREE, DATA)
    assert image_namespaces(d) == (NS, [NS])
    got = read_mount_namespace(d, NS, load_drivers())
    by = {r.mount.mountpoint: r for r in got}
    assert [r.mount.mnt_id for r in got] == [e["mnt_id"] for e in TREE]
    assert by["/"].content is None  # CRIU never archives the root: it comes back empty
    assert by["/data"].content == by["/view"].content == f"tmpfs-dev-{kdev(0, 42)}.tar.gz.img"
    assert by["/view"].mount.mount_options == ("ro", "nosuid", "relatime")
    assert by["/view"].mount.root == "/sub"
    assert by["/data"].mount.super_options == ("rw", "size=4096k", "mode=700")
    assert by["/peer-a"].mount.propagation.shared == 5
    assert by["/slave"].mount.propagation.master == 5
    assert by["/slave"].mount.propagation.shared is None  # 0 is none
    assert by["/unb"].mount.propagation.unbindable
    assert {r.driver for r in got} == {"generic"}
    out = run("show", f"{d}/mountpoints-{NS}.img")
    assert out.returncode == 0 and json.loads(out.stdout)["magic"] == "MNTS"


@pytest.mark.privileged
def test_a_criu_directory_restores_and_verifies(tmp_path: Path) -> None:
    d = criu_dir(tmp_path / "img", TREE, DATA)
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore",
         "-D", d, "--detach"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout.split()[0])
    try:
        # The restored root is an empty tmpfs (no shell in it): looked at from here.
        top = Path(f"/proc/{holder}/root")
        assert (top / "data/f").read_bytes() + (top / "view/g").read_bytes() == (
            b"bytes of the data tmpfs\nseen through the view\n"
        )
        assert sorted(os.listdir(top)) == ["data", "peer-a", "peer-b", "proc", "slave", "unb",
                                           "view"]  # fmt: skip
        table = {f[4]: f for f in (line.split() for line in Path(
            f"/proc/{holder}/mountinfo").read_text().splitlines())}
        assert table["/view"][5].split(",")[:2] == ["ro", "nosuid"]
        assert "unbindable" in table["/unb"]
        before = run("verify", "-t", str(holder), "-D", d)
        assert before.returncode == 0, before.stdout + before.stderr
        # The peers are one group again and the slave its slave: a mount made in one shows
        # in all three.
        probe = subprocess.run([sys.executable, "-c", PROBE, str(holder)], check=False)
        assert probe.returncode == 0
        mounted = Path(f"/proc/{holder}/mountinfo").read_text().count(" probe ")
        assert mounted == 3
        ver = subprocess.run(
            [sys.executable, "-m", "criu_fw", "verify", "-t", str(holder), "-D", d],
            capture_output=True, text=True, timeout=60, check=False,
        )
        # The probe mounted just now is the one difference.
        assert "probe" in ver.stdout + ver.stderr and ver.returncode == 1, ver.stdout
    finally:
        os.kill(holder, 9)


def test_a_tmpfs_without_its_archive_and_an_overlay_say_what_is_missing(
    tmp_path: Path,
) -> None:
    d = criu_dir(tmp_path / "a", TREE, {43: DATA[43], 44: {}})
    out = run("restore", "-D", d, "--dry-run")
    assert out.returncode == 3
    assert out.stderr.strip().endswith(
        f"mount 102 at '/data' (tmpfs, source 'data'): its content archive "
        f"tmpfs-dev-{kdev(0, 42)}.tar.gz.img is missing (CRIU archives every tmpfs but the "
        "root of the dump)"
    )
    ovl = entry(108, 100, 45, "/", "/ovl", 17, "overlay",
                options="lowerdir=/l,upperdir=/u,workdir=/w")  # fmt: skip
    d = criu_dir(tmp_path / "b", [*TREE, ovl], DATA)
    out = run("restore", "-D", d, "--dry-run")
    assert out.returncode == 3
    assert "mount 108 at '/ovl' (overlay, source 'overlay')" in out.stderr
    assert "no overlay layer state in the images" in out.stderr


@pytest.mark.privileged
def test_a_deleted_root_whose_mountpoint_is_gone_is_refused_naming_both(tmp_path: Path) -> None:
    # CRIU's images say only that the root of /gone-bind was deleted: it is made again as its
    # mountpoint is, and without --root the root tmpfs comes back empty, without it.
    gone = entry(108, 100, 42, "/sub/x", "/gone-bind", TMPFS, "data", deleted=True,
                 options="size=4096k,mode=700")  # fmt: skip
    d = criu_dir(tmp_path / "c", [*TREE, gone], DATA)
    out = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore",
         "-D", d, "--detach"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip() == (
        "criu-fw: error: mount 108 at '/gone-bind' (tmpfs, source 'data'): its root '/sub/x' "
        "was deleted before the dump, and CRIU's images say only that: it is made again as "
        "its mountpoint is, which is missing"
    )
    assert out.stdout == ""
