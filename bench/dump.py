"""Benchmark of ``criu_fw.dump.dump``: the dump's time next to the floor, in one run.

Usage (root): ``.venv/bin/python bench/dump.py [--mounts 1000,10000] [--files 100000]``

* Mount table: a child process in a private mount namespace builds N mounts under a tmpfs (1%
  new tmpfs superblocks made shared, 10% private binds, 10% binds stacked over those, 10%
  slaves, the rest binds that join the superblock mount's peer group). The *mount part* of the
  dump (reading the namespaces and parsing mountinfo, ``parse_mount`` per mount, writing the
  mountpoints images, the consistency check; its re-read runs in a thread from the end of the
  files on, see bench/README.md) is compared with its floor: this process reading the same
  /proc files (ns/mnt link, mountinfo) and nothing else. tmpfs archiving is reported apart (one
  ``tar`` per superblock: proportional to content, not to mounts).
* Open files: a tree of processes in a private namespace, each holding up to 19,990 fds (the
  hard limit here is 20,000), 100,000 in total, on one tmpfs (every file is open in several
  processes: separate descriptions that kcmp has to tell apart). The *files part* (reading fds,
  routing, ids, writing files/fdinfo images) is compared with its floor: listing fd/, readlink
  fd/N, reading fdinfo/N and stat'ing fd/N for every fd.

Every mount is made inside the children's private namespaces; the children are killed by
pid at the end. After one warm-up dump, floor and dump alternate ``--repeat`` times; each dump
is set against the floors measured just before and after it, and the figures are medians
(of the times, and of these per-dump ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

PER_PROC = 19_990


def _child_mounts(n: int, work: str) -> None:
    from criu_fw import kernel as k

    k.enter_private_namespace()
    k.mount("bench", work, "tmpfs", 0, "size=64m")
    last_sb = work
    prev = None
    for i in range(n):
        d = f"{work}/m{i}"
        os.mkdir(d)
    for i in range(n):
        d = f"{work}/m{i}"
        kind = i % 10
        if i % 100 == 0:
            k.mount(f"t{i}", d, "tmpfs", 0, "size=1m")
            with open(f"{d}/f", "w") as f:
                f.write("x")
            k.mount(None, d, None, k.MS_SHARED)
            last_sb = d
        elif kind == 1 and prev is not None:
            k.mount(last_sb, prev, None, k.MS_BIND)  # stacked over the previous mount
        elif kind == 0:
            k.mount(last_sb, d, None, k.MS_BIND)  # a private bind (next one stacks on it)
            k.mount(None, d, None, k.MS_PRIVATE)
        elif kind == 3:
            k.mount(last_sb, d, None, k.MS_BIND)  # a peer of the shared superblock mount
            k.mount(None, d, None, k.MS_SLAVE)
        else:
            k.mount(last_sb, d, None, k.MS_BIND)  # a shared peer
        prev = d
    _hold()


def _child_files(total: int, work: str) -> None:
    import resource

    from criu_fw import kernel as k

    k.enter_private_namespace()
    k.mount("benchf", work, "tmpfs", 0, "size=64m")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per = min(PER_PROC, hard - 10)
    for i in range(per):
        open(f"{work}/f{i}", "w").close()
    procs = (total + per - 1) // per
    r, w = os.pipe()
    for p in range(procs):
        if os.fork() == 0:
            os.close(r)
            count = min(per, total - p * per)
            fds = [os.open(f"{work}/f{i}", os.O_RDONLY) for i in range(count)]
            os.write(w, b"x")
            os.close(w)
            del fds
            _hold()
    os.close(w)
    got = 0
    while got < procs:
        got += len(os.read(r, procs))
    _hold()


def _hold() -> None:
    print("ready", flush=True)
    sys.stdin.read()
    os._exit(0)


def _start(kind: str, n: int, work: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, f"--child-{kind}", str(n), work],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{kind} child failed")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Kill the child's tree by pid: grandchildren first (found through /proc).
    for pid in _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, stack = [], [root]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _interleaved(floor: Callable[[], float], part: Callable[[], dict[str, float]],
                 repeat: int) -> tuple[list[float], list[dict[str, float]]]:
    """Floors and dumps alternating (after one warm-up dump): floor, dump, floor, ..., floor.

    Dump ``i`` is paired with the mean of the floors just before and after it, so that a slow
    spell of the machine (a shared host: speed here varies by half within minutes) hits both
    sides of a ratio alike.
    """
    part()  # warm-up: imports, first-use caches, page cache of the tools
    floors, runs = [floor()], []
    for _ in range(repeat):
        runs.append(part())
        floors.append(floor())
    return [(a + b) / 2 for a, b in itertools.pairwise(floors)], runs


def floor_mounts(pids: list[int]) -> float:
    t = time.perf_counter()
    for pid in pids:
        os.readlink(f"/proc/{pid}/ns/mnt")
    with open(f"/proc/{pids[0]}/mountinfo", "rb") as f:
        f.read()
    return time.perf_counter() - t


def floor_files(pids: list[int]) -> float:
    t = time.perf_counter()
    for pid in pids:
        d = f"/proc/{pid}/fd"
        i = f"/proc/{pid}/fdinfo"
        for name in os.listdir(d):
            os.readlink(f"{d}/{name}")
            fd = os.open(f"{i}/{name}", os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
            os.stat(f"{d}/{name}")
    return time.perf_counter() - t


def run_dump(pid: int, out_parent: str) -> dict[str, float]:
    from criu_fw.dump import dump

    d = tempfile.mkdtemp(dir=out_parent)
    os.rmdir(d)
    res = dump(pid, d)
    shutil.rmtree(d)
    return dict(res.timings)


def bench_mounts(n: int, repeat: int, out: str) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="criu-fw-bench-m-")
    try:
        proc = _start("mounts", n, work)
    except BaseException:
        os.rmdir(work)
        raise
    try:
        pids = [proc.pid]
        floors, runs = _interleaved(lambda: floor_mounts(pids),
                                    lambda: run_dump(proc.pid, out), repeat)
        parts = [r["mounts"] + r["check"] + r["write_mounts"] for r in runs]
        content = statistics.median(r["content"] for r in runs)
        with open(f"/proc/{proc.pid}/mountinfo", "rb") as f:
            count = f.read().count(b"\n")
        phases = {k: statistics.median(r[k] for r in runs)
                  for k in ("mounts", "check", "write_mounts")}
        return {"count": count, "part": statistics.median(parts),
                "floor": statistics.median(floors),
                "ratio": statistics.median(p / f for p, f in zip(parts, floors, strict=True)),
                "content": content, **{f"phase_{k}": v for k, v in phases.items()}}
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def bench_files(total: int, repeat: int, out: str) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="criu-fw-bench-f-")
    try:
        proc = _start("files", total, work)
    except BaseException:
        os.rmdir(work)
        raise
    try:
        pids = [proc.pid, *_descendants(proc.pid)]
        floors, runs = _interleaved(lambda: floor_files(pids),
                                    lambda: run_dump(proc.pid, out), repeat)
        parts = [r["files"] + r["write_files"] for r in runs]
        fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)
        return {"fds": fds, "part": statistics.median(parts), "floor": statistics.median(floors),
                "ratio": statistics.median(p / f for p, f in zip(parts, floors, strict=True))}
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mounts", default="1000,10000")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out-dir", default=None,
                    help="where the dumps go (default: the temp dir); on a disk filesystem, "
                         "creating each image file can wait for the journal")
    ap.add_argument("--child-mounts", nargs=2)
    ap.add_argument("--child-files", nargs=2)
    args = ap.parse_args()
    if args.child_mounts:
        _child_mounts(int(args.child_mounts[0]), args.child_mounts[1])
    if args.child_files:
        _child_files(int(args.child_files[0]), args.child_files[1])
    out = tempfile.mkdtemp(prefix="criu-fw-bench-out-", dir=args.out_dir)
    print(f"images written under {args.out_dir or tempfile.gettempdir()}", flush=True)
    try:
        rows = []
        for n in (int(x) for x in args.mounts.split(",") if x):
            r = bench_mounts(n, args.repeat, out)
            rows.append(r)
            print(f"mounts {int(r['count']):>6}: dump mount part {r['part'] * 1e3:8.1f} ms, "
                  f"floor {r['floor'] * 1e3:6.1f} ms, ratio {r['ratio']:5.2f}x "
                  f"(target <= 4x); phases: read+parse+parse_mount "
                  f"{r['phase_mounts'] * 1e3:.1f} ms, re-read check {r['phase_check'] * 1e3:.1f}"
                  f" ms, write {r['phase_write_mounts'] * 1e3:.1f} ms; tmpfs content "
                  f"{r['content'] * 1e3:.0f} ms", flush=True)
        if len(rows) >= 2:
            g = rows[-1]["part"] / rows[0]["part"]
            m = rows[-1]["count"] / rows[0]["count"]
            print(f"growth: {m:.1f}x the mounts -> {g:.1f}x the time (target <= {m * 1.2:.0f}x)")
        if args.files:
            r = bench_files(args.files, args.repeat, out)
            print(f"files {int(r['fds']):>7}: dump files part {r['part']:7.2f} s, "
                  f"floor {r['floor']:5.2f} s, ratio {r['ratio']:5.2f}x "
                  f"(target <= 3x)", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
