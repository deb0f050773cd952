"""The whole ``criu-fw`` command, timed as a user runs it, next to the mount(2) calls of the tree.

Usage (root): ``.venv/bin/python bench/whole.py [--mounts 1000,10000] [--repeat 3]``

Each repeat, for each size N, is self-contained:

1. a child process enters a private mount namespace and builds about N mounts of issue 12's mix
   (per 6 mounts: a tmpfs holding a file, two tmpfs stacked on one of its subdirectories, three
   binds of another of its subdirectories; every 10th group is shared, with a peer and a slave
   among the binds): one tmpfs superblock per two mounts, a third of them hidden under an
   overmount. The child times each mount(2) call that builds the tree: their sum is the
   *floor*. It then execs ``sleep``, the process that is dumped.
2. ``criu-fw dump -t PID -D DIR --external-auto`` (the host mounts the namespace inherited are
   recorded by host path, as a user dumping such a process would);
3. ``unshare --net --ipc criu-fw restore -D DIR --detach --pidfile F`` (new network and IPC
   namespaces, so that the inherited sysfs and mqueue mounts can be rebuilt without touching the
   host's), after which the holders are killed by PID.

Each command is timed from exec to exit (wall clock) and its peak RSS is the one wait4(2)
reports (the largest single process among the command and the children it waited for). The
figures are medians over the repeats; each ratio is the median of the per-repeat ratios to the
floor measured in that repeat. Every mount is made inside the child's private namespace (and
the restore's new ones); nothing is mounted in the namespace this script runs in.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from criu_fw.images.stats import read_frozen_time

GROUP = 6  # mounts per group of the mix
SHARED_EVERY = 10  # every 10th group is shared

MS_BIND, MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_REC = 0x1000, 0x40000, 0x80000, 0x100000, 0x4000
CLONE_NEWNS = 0x00020000


# --- the child: build the tree, report the floor, become the dumped process ---------------


class _Mounter:
    """mount(2) through libc, summing the time spent inside the calls (the floor)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.c_ulong, ctypes.c_void_p]
        self.spent = 0.0
        self.calls = 0

    def __call__(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
                 data: str | None = None) -> None:
        args = (source.encode() if source else None, target.encode(),
                fstype.encode() if fstype else None, flags, data.encode() if data else None)
        t = time.perf_counter()
        ret = self.libc.mount(*args)
        self.spent += time.perf_counter() - t
        self.calls += 1
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")


def build_tree(mount: _Mounter, work: str, groups: int) -> None:
    """Issue 12's mix under ``work`` (already a private namespace's fresh tmpfs)."""
    for g in range(groups):
        base = f"{work}/g{g}"
        a = f"{base}/a"
        for d in (a, f"{base}/b1", f"{base}/b2", f"{base}/b3"):
            os.makedirs(d)
        mount(f"a{g}", a, "tmpfs", 0, "size=1m")
        for sub in ("d", "e"):
            os.mkdir(f"{a}/{sub}")
        _write(f"{a}/f", f"a{g}")
        mount(f"low{g}", f"{a}/d", "tmpfs", 0, "size=1m")  # hidden by the next one
        _write(f"{a}/d/f", f"low{g}")
        mount(f"top{g}", f"{a}/d", "tmpfs", 0, "size=1m")
        _write(f"{a}/d/f", f"top{g}")
        shared = g % SHARED_EVERY == 0
        if shared:
            mount(None, a, None, MS_SHARED)
        for k in (1, 2, 3):
            mount(f"{a}/e", f"{base}/b{k}", None, MS_BIND)  # a peer of a when a is shared
        if shared:
            mount(None, f"{base}/b2", None, MS_SLAVE)  # one peer, one slave, one private
            mount(None, f"{base}/b3", None, MS_PRIVATE)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


#: The large mix: this many tmpfs share the bytes asked for, in files of FILE_BYTES, half of
#: each file random (incompressible) and half a repeated text (as logs and caches are).
LARGE_TMPFS = 4
FILE_BYTES = 4 << 20


def build_large(mount: _Mounter, work: str, total: int) -> float:
    """``total`` bytes of files in a few tmpfs under ``work``; returns the seconds spent
    writing them, which joins the floor: what putting the content there cost the kernel."""
    per = total // LARGE_TMPFS
    spent = 0.0
    text = (b"criu-fw large mix: a line of a log file that repeats\n" * 100_000)[
        : FILE_BYTES // 2
    ]
    for k in range(LARGE_TMPFS):
        where = f"{work}/large{k}"
        os.makedirs(where)
        mount(f"large{k}", where, "tmpfs", 0, f"size={per + (64 << 20)}")
        for i in range(per // FILE_BYTES):
            data = os.urandom(FILE_BYTES // 2) + text
            t0 = time.perf_counter()
            with open(f"{where}/f{i}", "wb") as f:
                f.write(data)
            spent += time.perf_counter() - t0
    return spent


def child(n: int, work: str, large: int = 0) -> None:
    """Build the tree in a private namespace, print ``ready FLOOR``, then exec ``sleep``."""
    mount = _Mounter()
    if mount.libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    mount.spent, mount.calls = 0.0, 0  # the floor is the tree's mounts only
    mount("bench", work, "tmpfs", 0, "size=256m")
    build_tree(mount, work, max(1, (n - 1) // GROUP))
    if large:
        mount.spent += build_large(mount, work, large)
    print(f"ready {mount.spent!r} {mount.calls}", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir(work)
    os.execvp("sleep", ["sleep", "infinity"])


# --- the parent: time the commands -------------------------------------------------------


class Tree(NamedTuple):
    pid: int
    floor: float
    calls: int
    mounts: int


class Run(NamedTuple):
    seconds: float
    max_rss_kib: int


@contextlib.contextmanager
def tree(n: int, large: int = 0) -> Iterator[Tree]:
    """A child holding about ``n`` mounts in its own namespace (and ``large`` bytes of big
    tmpfs content); killed by PID afterwards."""
    work = tempfile.mkdtemp(prefix="criu-fw-bench-w-")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(n), work, str(large)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        proc.stdout.close()
        if not line or line[0] != b"ready":
            raise RuntimeError(f"the tree's child failed (exit {proc.wait()})")
        with open(f"/proc/{proc.pid}/mountinfo", "rb") as f:
            mounts = f.read().count(b"\n")
        yield Tree(proc.pid, float(line[1]), int(line[2]), mounts)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The namespace died with its only process: ``work`` holds no mounts here.
        shutil.rmtree(work, ignore_errors=True)


def timed(argv: Sequence[str], log: str) -> Run:
    """Run ``argv`` (output to ``log``); wall clock from exec to exit, rusage from wait4."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    t = time.perf_counter()
    pid = os.posix_spawnp(argv[0], list(argv), os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    took = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(argv)} failed:\n{tail}")
    return Run(took, usage.ru_maxrss)


def _cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "criu-fw")
    found = here if os.access(here, os.X_OK) else shutil.which("criu-fw")
    if found is None:
        raise SystemExit("criu-fw not found next to this python nor on PATH")
    return found


def compile_package(cli: str) -> None:
    """Compile criu-fw's bytecode once, as ``pip install`` does for a user: an editable
    install compiles nothing, and with PYTHONDONTWRITEBYTECODE set (this machine's shells)
    every command would compile its 130 modules again (0.08 s of each)."""
    python = os.path.join(os.path.dirname(cli), "python")
    where = subprocess.run([python, "-c", "import criu_fw, os; print(os.path.dirname("
                            "criu_fw.__file__))"], check=True, capture_output=True, text=True)
    subprocess.run([python, "-m", "compileall", "-q", where.stdout.strip()], check=True,
                   stdout=subprocess.DEVNULL)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant of it, by PID (found through /proc)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    todo, order = [pid], []
    while todo:
        p = todo.pop()
        order.append(p)
        todo.extend(kids.get(p, []))
    for p in reversed(order):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


class Repeat(NamedTuple):
    mounts: int
    floor: float
    dump: Run
    restore: Run
    #: How long the dumped processes stayed stopped, from the dump's ``stats-dump``.
    frozen: float


def one_repeat(n: int, out: str, cli: str, large: int = 0, delete: bool = False) -> Repeat:
    """One dump and restore. The images stay until the whole run ends unless ``delete``: on
    ext4, creating a file scans past every inode of its block group freed in the last minute
    or more (``recently_deleted()`` in the inode allocator, a third of the kernel's time for
    the dump's 5,000 archives when the previous repeat's were just removed), which measures
    the deletion, not the dump; ``--delete-between`` keeps that case (a checkpoint replacing
    the previous one)."""
    images = tempfile.mkdtemp(dir=out)
    os.rmdir(images)  # the dump wants a missing or empty directory
    pidfile = os.path.join(out, "holder.pid")
    try:
        # The tree stays until the restore is done: its directory is where the restored
        # namespace's root (--root /) finds the mountpoints.
        with tree(n, large) as t:
            dump = timed([cli, "dump", "-t", str(t.pid), "-D", images, "--external-auto"],
                         os.path.join(out, "dump.log"))
            frozen = read_frozen_time(images)
            if frozen is None:
                raise RuntimeError(f"{images}: the dump wrote no stats-dump")
            restore = timed(["unshare", "--net", "--ipc", "--", cli, "restore", "-D", images,
                             "--root", "/", "--detach", "--pidfile", pidfile],
                            os.path.join(out, "restore.log"))
            with open(pidfile) as f:
                holder = int(f.read())
            try:
                with open(f"/proc/{holder}/mountinfo", "rb") as f:
                    restored = f.read().count(b"\n")
            finally:
                kill_tree(holder)
        if restored != t.mounts:
            raise RuntimeError(f"restored {restored} mounts, dumped {t.mounts}")
        return Repeat(t.mounts, t.floor, dump, restore, frozen)
    finally:
        if delete:
            shutil.rmtree(images, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)


def report(runs: list[Repeat]) -> dict[str, float]:
    floor = statistics.median(r.floor for r in runs)
    out = {"mounts": float(runs[0].mounts), "floor": floor}
    print(f"{runs[0].mounts:>7,} mounts: floor (the mount(2) calls that built the tree) "
          f"{floor:8.3f} s", flush=True)
    for what in ("dump", "restore"):
        got: list[Run] = [getattr(r, what) for r in runs]
        secs = statistics.median(g.seconds for g in got)
        ratio = statistics.median(g.seconds / r.floor for g, r in zip(got, runs, strict=True))
        rss = max(g.max_rss_kib for g in got) / 1024
        out[what] = secs
        print(f"  criu-fw {what:<8} {secs:8.2f} s  floor {floor:7.3f} s  ratio {ratio:7.1f}x "
              f"(target <= 10x)  peak RSS {rss:6.0f} MiB", flush=True)
        if what == "dump":
            frozen = statistics.median(r.frozen for r in runs)
            out["frozen"] = frozen
            print(f"    processes frozen {frozen:6.2f} s  ({frozen / secs:.0%} of the dump; "
                  f"stats-dump's frozen_time)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mounts", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out-dir", default=None, help="where the images go (default: temp dir)")
    ap.add_argument("--large-gib", type=float, default=0.0,
                    help="add this many GiB of files in a few big tmpfs (the floor then "
                         "includes writing them)")
    ap.add_argument("--delete-between", action="store_true",
                    help="remove each repeat's images before the next dump (see one_repeat)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], int(args.child[2]))
    large = int(args.large_gib * (1 << 30))
    cli = _cli()
    compile_package(cli)
    out = tempfile.mkdtemp(prefix="criu-fw-bench-whole-", dir=args.out_dir)
    try:
        rows = []
        for n in (int(x) for x in args.mounts.split(",") if x):
            rows.append(report([one_repeat(n, out, cli, large, args.delete_between)
                                for _ in range(args.repeat)]))
        if len(rows) >= 2:
            m = rows[-1]["mounts"] / rows[0]["mounts"]
            for what in ("dump", "restore"):
                g = rows[-1][what] / rows[0][what]
                print(f"growth: {m:.1f}x the mounts -> {what} {g:.1f}x the time "
                      f"(target <= {m * 1.2:.0f}x)")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
