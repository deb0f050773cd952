"""Restore of 1,000 and 10,000 mounts next to the floor, in one run.

The dumped namespace is synthetic but realistic: a tmpfs root whose content (every mountpoint
directory) comes from a content archive, and per unit of 10 mounts: a tmpfs with a tmpfs
stacked over it (an overmount), three binds of a directory of the root filesystem forming a
shared group (two peers and a slave), a tmpfs mounted inside one of those binds, a bind of a
child tmpfs, and three more tmpfs. The floor is a minimal loop in a fresh private namespace
issuing the same mount system calls for the same tree, the way the engine issues them
(fsopen/fsconfig/fsmount per superblock, open_tree CLONE from the superblock's fd per mount,
move_mount relative to the parent mount's fd, mount_setattr and MOVE_MOUNT_SET_GROUP for the
groups), with the mountpoints made by mkdir instead of the archive.

    sudo .venv/bin/python bench/restore.py [--sizes 1000,10000] [--repeat 7]

The machine is shared and noisy, so every repeat runs the floor and the restore back to back
(interleaved: a slow spell hits both), and the report gives the median and the minimum of each
and the ratios of medians and of minimums.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from criu_fw import kernel
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.restore import DumpedNamespace, restore

UNIT = 10


def synthetic(units: int) -> tuple[MountTree, list[str]]:
    """The dumped tree, and the directories the root filesystem's archive must hold."""
    mounts = [Mount(1, 0, Dev(0, 1), "/", "/", "tmpfs", "root", ("rw", "relatime"), ("rw",))]
    dirs: list[str] = []
    nid, dev = 2, 2
    for i in range(units):
        u = f"/u{i}"
        dirs += [f"{u}/{n}" for n in ("t", "b1", "b2", "b3", "s1", "s2", "s3", "c", "src/x")]
        t_dev, t_id = Dev(0, dev), nid
        add = mounts.append
        add(Mount(nid, 1, t_dev, "/", f"{u}/t", "tmpfs", "t", ("rw", "relatime"), ("rw",)))
        rw = ("rw", "relatime")
        add(Mount(nid + 1, nid, Dev(0, dev + 1), "/", f"{u}/t", "tmpfs", "over", rw, ("rw",)))
        g = 1000 + i
        for k, prop in enumerate(
            (Propagation(shared=g), Propagation(shared=g), Propagation(master=g)), start=2
        ):
            add(Mount(nid + k, 1, Dev(0, 1), f"{u}/src", f"{u}/b{k - 1}", "tmpfs", "root",
                      ("rw", "relatime"), ("rw",), prop))
        add(Mount(nid + 5, nid + 2, Dev(0, dev + 2), "/", f"{u}/b1/x", "tmpfs", "in", rw, ("rw",)))
        add(Mount(nid + 6, 1, t_dev, "/", f"{u}/c", "tmpfs", "t", ("rw", "relatime"), ("rw",)))
        for k in range(3):
            add(Mount(nid + 7 + k, 1, Dev(0, dev + 3 + k), "/", f"{u}/s{k + 1}", "tmpfs", "s",
                      ("rw", "nosuid", "relatime"), ("rw",)))
        assert t_id == nid
        nid += UNIT
        dev += 6
    return MountTree.from_mounts(mounts, ns_id=1), dirs


def make_images(dirs: list[str], where: str) -> str:
    src = os.path.join(where, "content")
    for d in dirs:
        os.makedirs(src + d, exist_ok=True)
    name = f"tmpfs-dev-{Dev(0, 1).kdev}.tar.gz.img"
    subprocess.run(["tar", "-czf", os.path.join(where, name), "-C", src, "."], check=True)
    shutil.rmtree(src)
    return name


def floor(tree: MountTree, dirs: list[str]) -> float:
    """Seconds the minimal syscall loop takes, measured in a forked child (fresh namespace)."""
    base = tempfile.mkdtemp(prefix="criu-fw-bench-floor-")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            kernel.enter_private_namespace()
            t0 = time.perf_counter()
            _floor_loop(tree, dirs, base)
            os.write(w, f"{time.perf_counter() - t0}".encode())
        except BaseException as exc:
            os.write(w, f"ERR {exc}".encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 1000).decode()
    os.close(r)
    os.waitpid(pid, 0)
    os.rmdir(base)  # its mounts were the child's namespace's, gone with it
    if out.startswith("ERR"):
        raise RuntimeError(out)
    return float(out)


def _tmpfs() -> int:
    fs = kernel.fsopen("tmpfs")
    kernel.fsconfig(fs, kernel.FSCONFIG_SET_STRING, "source", "x")
    kernel.fsconfig(fs, kernel.FSCONFIG_CMD_CREATE)
    m = kernel.fsmount(fs)
    os.close(fs)
    return m


def _floor_loop(tree: MountTree, dirs: list[str], base: str) -> None:
    """The engine's system calls and nothing else: every superblock made once and kept
    detached, every mount cut from it (open_tree CLONE relative to the superblock's fd) and
    attached relative to its parent's fd (move_mount; an overmount with T_EMPTY_PATH onto
    the mount it covers), flags before attaching, groups after."""
    clone = kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC
    empty = kernel.AT_EMPTY_PATH
    f_empty, t_empty = kernel.MOVE_MOUNT_F_EMPTY_PATH, kernel.MOVE_MOUNT_T_EMPTY_PATH
    root_sb = _tmpfs()
    for d in dirs:
        os.makedirs(f"/proc/self/fd/{root_sb}{d}", exist_ok=True)
    root = kernel.open_tree("", clone | empty, dirfd=root_sb)
    kernel.move_mount(root, "", kernel.AT_FDCWD, base, f_empty)
    root_id = tree.root.mnt_id
    fds: dict[int, int] = {root_id: root}
    sbs: dict[Dev, int] = {Dev(0, 1): root_sb}
    by_id = {m.mnt_id: m for m in tree}
    for m in tree.topo_order()[1:]:
        sb = sbs.get(m.dev)
        if sb is not None:
            rel = m.root.strip("/")
            h = kernel.open_tree(rel, clone, dirfd=sb) if rel else kernel.open_tree(
                "", clone | empty, dirfd=sb
            )
        else:
            h = _tmpfs()
            if len(tree.by_dev(m.dev)) > 1:
                sbs[m.dev] = h
                h = kernel.open_tree("", clone | empty, dirfd=h)
        if "nosuid" in m.mount_options:
            kernel.mount_setattr(h, "", empty, kernel.MOUNT_ATTR_NOSUID)
        parent = by_id[m.parent_id]
        rel = m.mountpoint[len(parent.mountpoint):].strip("/")
        kernel.move_mount(h, "", fds[parent.mnt_id], rel, f_empty | (0 if rel else t_empty))
        fds[m.mnt_id] = h
    group = kernel.MOVE_MOUNT_SET_GROUP | f_empty | t_empty
    for m in tree:
        p, h = m.propagation, fds.get(m.mnt_id, -1)
        if p.shared is not None and m.mountpoint.endswith("b1"):
            kernel.mount_setattr(h, "", empty, propagation=kernel.MS_SHARED)
        elif p.shared is not None:
            kernel.move_mount(fds[m.mnt_id - 1], "", h, "", group)
        elif p.master is not None:
            kernel.move_mount(fds[m.mnt_id - 2], "", h, "", group)
            kernel.mount_setattr(h, "", empty, propagation=kernel.MS_SLAVE)
    for h in list(fds.values()) + list(sbs.values()):
        os.close(h)


def run_restore(tree: MountTree, images: str, content: str) -> float:
    ns = DumpedNamespace.of(1, tree, content={1: content})
    t0 = time.perf_counter()
    res = restore(images, namespaces=[ns], detach=True)
    took = time.perf_counter() - t0
    res.terminate()
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        tree, dirs = synthetic(n // UNIT)
        fl: list[float] = []
        rs: list[float] = []
        with tempfile.TemporaryDirectory() as images:
            content = make_images(dirs, images)
            run_restore(tree, images, content)  # warm-up: imports, page cache
            for _ in range(args.repeat):
                fl.append(floor(tree, dirs))
                rs.append(run_restore(tree, images, content))
        fmed, rmed = statistics.median(fl), statistics.median(rs)
        rows.append((len(tree), rmed, min(rs)))
        print(f"{len(tree):>6} mounts: restore median {rmed * 1000:8.1f} ms min "
              f"{min(rs) * 1000:8.1f} ms | floor median {fmed * 1000:8.1f} ms min "
              f"{min(fl) * 1000:8.1f} ms | ratio median {rmed / fmed:4.2f} min "
              f"{min(rs) / min(fl):4.2f}", flush=True)
    if len(rows) > 1:
        (n1, r1, m1), (n2, r2, m2) = rows[0], rows[-1]
        print(f"scaling: {n2 / n1:.0f}x the mounts took {r2 / r1:.1f}x the time (medians), "
              f"{m2 / m1:.1f}x (minimums)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
