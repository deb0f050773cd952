#!/usr/bin/env python3
"""SIGKILL ``criu-fw restore --root DIR --detach`` at random points and check what it leaves.

An image directory of ``--mounts`` mounts (written by the library: mount images alone) is
restored with ``--root DIR``, DIR an almost empty directory, so that the restore makes about
one mountpoint directory per mount there; a few tmpfs have content archives big enough for
GNU tar jobs. A whole restore is timed first (the fastest of three); then ``--kills``
restores are each killed with SIGKILL after a seeded random delay up to 120% of that time
(so that a few land once it is complete). Every restore runs as a real one does,
in ``unshare --net --ipc``, with a TMPDIR of its own, and this script is their child
subreaper: whatever a killed restore leaves running (a holder, the building child, a tar,
the watchdog) becomes this script's child. After each kill, within a few seconds:

* no process of the restore is left (this script has no child any more), unless the restore
  had printed its holder's PID (it was complete): then that holder, and only it, is left;
* the caller's mount table is as before (no mount under the run's directory or stacked on an
  existing mountpoint);
* DIR holds exactly what it held before (a complete restore's mountpoints are removed by
  this script once it has ended the holder), and the TMPDIR is empty.

Prints one line per problem and a summary line; exit status 1 if anything failed.

    sudo .venv/bin/python scripts/kill_restore.py --kills 200 --seed 0
"""

from __future__ import annotations

import argparse
import ctypes
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from criu_fw.api.loader import load_drivers
from criu_fw.images import write_image
from criu_fw.images.mounts import write_mount_namespace
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.proto import core_pb2, inventory_pb2
from criu_fw.records import DumpedNamespace

CLI = ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw"]
PR_SET_CHILD_SUBREAPER = 36
#: How long a kill's leftovers may take to go (the building child undoing, init reaping).
SETTLE = 5.0
RW = ("rw", "relatime")


def write_images(where: Path, mounts: int, archives: int) -> None:
    """A root taken from --root and units of four mounts: a tmpfs (the first ``archives``
    with a 2 MiB content archive: a GNU tar job each), a tmpfs inside it, and two binds of
    the first that are peers. Mountpoints /k/uN/{t,b,c} are made in DIR's tree."""
    tree = [Mount(1, 0, Dev(254, 0), "/", "/", "ext4", "/dev/vda", RW, ("rw",))]
    content: dict[int, str] = {}
    blob = _archive()
    nid = 2
    for i in range(max(1, mounts // 4)):
        dev = Dev(0, 100 + i)
        u = f"/k/u{i}"
        tree += [
            Mount(nid, 1, dev, "/", f"{u}/t", "tmpfs", "t", RW, ("rw",)),
            Mount(nid + 1, nid, Dev(0, 5000 + i), "/", f"{u}/t/x", "tmpfs", "x", RW, ("rw",)),
            Mount(nid + 2, 1, dev, "/", f"{u}/b", "tmpfs", "t", RW, ("rw",),
                  Propagation(shared=10 + i)),
            Mount(nid + 3, 1, dev, "/", f"{u}/c", "tmpfs", "t", RW, ("rw",),
                  Propagation(shared=10 + i)),
        ]
        if i < archives:
            name = f"tmpfs-dev-{dev.kdev}.tar.gz.img"
            (where / name).write_bytes(blob)
            content[nid] = name
        nid += 4
    mgr = load_drivers()
    dumped = DumpedNamespace.of(1, MountTree(tuple(tree)), content=content,
                                drivers={m.mnt_id: mgr.owner(m.fstype) for m in tree})
    write_mount_namespace(str(where), dumped)
    ids = core_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1, sighand_id=1, mnt_ns_id=1)
    write_image(str(where / "inventory.img"), "INVENTORY",
                [inventory_pb2.inventory_entry(img_version=2, root_ids=ids)])


def _archive() -> bytes:
    """A gzip'd tar of the mountpoint x and 2 MiB that do not compress: over the in-process
    limit, so GNU tar unpacks it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        d = tarfile.TarInfo("x")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        data = os.urandom(2 << 20)
        f = tarfile.TarInfo("data")
        f.size = len(data)
        tar.addfile(f, io.BytesIO(data))
    return out.getvalue()


def children() -> dict[int, str]:
    """This process's children (every orphan of a restore comes here), zombies reaped."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if not pid:
            break
    me = os.getpid()
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == me and fields[0] != "Z":
            out[int(name)] = stat.partition("(")[2].rpartition(")")[0]
    return out


def mounts_touching(base: str, before: list[str]) -> list[str]:
    """What changed in this process's mount table: mounts added or removed under ``base``,
    or added on a mountpoint that had one (not what a busy machine's containers do
    elsewhere meanwhile)."""
    now = Path("/proc/self/mountinfo").read_text().splitlines()
    old, new = Counter(before), Counter(now)
    points = {line.split(" ")[4] for line in before}

    def ours(line: str) -> bool:
        return line.split(" ")[4].startswith(base + "/")

    return sorted([f"+ {x}" for x in new - old if ours(x) or x.split(" ")[4] in points]
                  + [f"- {x}" for x in old - new if ours(x)])


def snapshot(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def remove_made(top: Path, before: set[str]) -> None:
    """Remove what a complete restore made in DIR (its holder ended: nothing is mounted)."""
    for rel in sorted(snapshot(top) - before, key=lambda r: r.count("/"), reverse=True):
        path = top / rel
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def run(images: Path, root: Path, tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "restore", "-q", "-D", str(images), "--root", str(root), "--detach"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)},
    )


def whole_restore(images: Path, root: Path, tmp: Path, before: set[str]) -> float:
    t0 = time.monotonic()
    proc = run(images, root, tmp)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kill_restore: the restore fails unkilled: {err.decode().strip()}")
    for pid in out.split():
        os.kill(int(pid), signal.SIGKILL)
    _wait(lambda: not children(), SETTLE)
    remove_made(root, before)
    return took


def _wait(done: object, timeout: float) -> bool:
    assert callable(done)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def one_kill(images: Path, root: Path, tmp: Path, base: str, before: set[str],
             table: list[str], delay: float) -> tuple[str, list[str]]:
    """Kill one restore after ``delay`` s; (how far it had got, the problems seen)."""
    proc = run(images, root, tmp)
    time.sleep(delay)
    building = bool(os.listdir(tmp))  # its work directory exists: the child builds
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    printed = [int(p) for p in out.split()]
    problems: list[str] = []

    def clean() -> bool:
        return (set(children()) <= set(printed) and not os.listdir(tmp)
                and not mounts_touching(base, table)
                and (bool(printed) or snapshot(root) == before))

    _wait(clean, SETTLE)
    left = {p: c for p, c in children().items() if p not in printed}
    if left:
        problems.append("processes left: " + ", ".join(f"{p} ({c})" for p, c in left.items()))
    if os.listdir(tmp):
        problems.append(f"left in TMPDIR: {sorted(os.listdir(tmp))}")
    if changed := mounts_touching(base, table):
        problems.append(f"the caller's mount table changed: {changed[:3]}")
    complete = False
    if printed:
        alive = [p for p in printed if p in children()]
        made = snapshot(root) - before
        # Printed, then killed before it was handed over: undone (nothing left) is fine too.
        complete = bool(alive)
        if complete and not made:
            problems.append("a complete restore's mountpoints are gone from DIR")
        if not complete and made:
            problems.append(f"undone after its PID was printed, but DIR keeps {len(made)}")
        for p in alive:
            os.kill(p, signal.SIGKILL)
        _wait(lambda: not children(), SETTLE)
        remove_made(root, before)
    elif (diff := snapshot(root) ^ before):
        problems.append(f"DIR changed: {len(diff)} entries, e.g. {sorted(diff)[:3]}")
    if proc.returncode != -signal.SIGKILL and not printed:
        problems.append(f"it ended by itself ({proc.returncode}): {err.decode().strip()}")
    for p in children():  # whatever is left, by PID, so that the next kill starts clean
        os.kill(p, signal.SIGKILL)
    _wait(lambda: not children(), SETTLE)
    return "complete" if complete else "building" if building else "starting", problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mounts", type=int, default=1000)
    ap.add_argument("--archives", type=int, default=3,
                    help="tmpfs with a content archive big enough for a GNU tar job")
    args = ap.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("kill_restore: cannot become a child subreaper")
    if children():
        raise SystemExit("kill_restore: it has children already; run it on its own")
    rng = random.Random(args.seed)
    base = tempfile.mkdtemp(prefix="criu-fw-kill-restore-")
    images, root, tmp = Path(base, "img"), Path(base, "root"), Path(base, "tmp")
    for d in (images, root, tmp):
        d.mkdir()
    (root / "etc").mkdir()  # DIR is not empty: what was there must stay as it was
    (root / "etc" / "hostname").write_text("kept\n")
    failures: list[str] = []
    phases: Counter[str] = Counter()
    try:
        write_images(images, args.mounts, args.archives)
        before = snapshot(root)
        table = Path("/proc/self/mountinfo").read_text().splitlines()
        whole = min(whole_restore(images, root, tmp, before) for _ in range(3))
        for n in range(args.kills):
            delay = rng.uniform(0, whole * 1.2)
            phase, problems = one_kill(images, root, tmp, base, before, table, delay)
            phases[phase] += 1
            for p in problems:
                line = f"kill {n} after {delay:.3f} s: {p}"
                failures.append(line)
                print(line, flush=True)
    finally:
        for p in children():
            os.kill(p, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
    bad = len({f.split(":")[0] for f in failures})
    print(f"kill_restore: {args.kills} kills of a {whole:.2f} s restore of {args.mounts} "
          f"mounts (seed {args.seed}): {args.kills - bad} left nothing behind "
          f"({phases['starting']} while it started and planned, {phases['building']} while "
          f"it built, {phases['complete']} once complete), {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
