#!/usr/bin/env python3
"""SIGKILL ``criu-fw dump`` at random points and check what it leaves.

A scenario (a private mount namespace of a child process) with ``--mounts`` mounts, a few
tmpfs holding files, is dumped once to time a whole dump; then ``--kills`` dumps of it are
each killed with SIGKILL after a seeded random delay between the end of Python's start-up
(``criu-fw --version``, timed too) and the end of that time, so that the kills land in the
dump itself. After each kill:

* every process of the scenario runs again (none left stopped; the watchdog resumes them);
* the image directory is either absent or a complete dump (``criu-fw show DIR`` reads it), and
  no temporary ``.NAME.criu-fw-*`` directory is left beside it;
* no process of that dump is left (each dump runs with a marker in its environment, which its
  helpers inherit; /proc is scanned for it).

Prints one line per failure and a summary line; exit status 1 if anything failed.

    python3 scripts/kill_dump.py --kills 200 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from criu_fw.testing import NamespaceScenario

CLI = [sys.executable, "-m", "criu_fw"]


def scenario_script(mounts: int) -> str:
    """``mounts`` mounts: groups of a tmpfs with a file and two binds of it."""
    groups = max(1, mounts // 3)
    return (
        f"for i in $(seq {groups}); do mkdir -p t$i b$i c$i; mount -t tmpfs t t$i; "
        f"head -c 20000 /dev/urandom > t$i/f; mount --bind t$i b$i; mount --bind t$i c$i; "
        f"done\n"
    )


def marked(marker: str) -> list[int]:
    """PIDs of processes whose environment holds ``marker``."""
    needle = marker.encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{name}/environ").read_bytes():
                out.append(int(name))
        except OSError:
            continue
    return out


def stopped(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("State:") and line.split()[1] in ("T", "t"):
                    out.append(pid)
        except OSError:
            continue
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def one_kill(scn: NamespaceScenario, base: Path, delay: float, n: int) -> list[str]:
    target = base / f"img{n}"
    marker = f"CRIU_FW_KILL_DUMP={uuid.uuid4().hex}"
    env = dict(os.environ)
    env[marker.split("=")[0]] = marker.split("=")[1]
    proc = subprocess.Popen(
        [*CLI, "dump", "-q", "-t", str(scn.pid), "-D", str(target), "--root", "/"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems = []
    # The watchdog notices the dumper's end at once; give it a moment to resume and clean.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = marked(marker)
        frozen = stopped(tree_pids(scn.pid))
        stale = [p.name for p in base.iterdir() if p.name.startswith(f".img{n}.criu-fw-")]
        if not left and not frozen and not stale:
            break
        time.sleep(0.05)
    if frozen:
        problems.append(f"processes left stopped: {frozen}")
    if left:
        problems.append(f"processes of the dump left: {left}")
    if stale:
        problems.append(f"temporary directories left: {stale}")
    if target.exists():
        res = subprocess.run([*CLI, "show", str(target)], capture_output=True, text=True)
        if res.returncode != 0:
            problems.append(f"a directory was published that does not read: {res.stderr}")
        shutil.rmtree(target)
    return [f"kill {n} after {delay:.3f} s: {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mounts", type=int, default=300)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="criu-fw-kill-dump-"))
    failures: list[str] = []
    whole = start = 0.0
    try:
        with NamespaceScenario(scenario_script(args.mounts), timeout=120) as scn:
            t0 = time.monotonic()
            subprocess.run([*CLI, "dump", "-q", "-t", str(scn.pid), "-D", str(base / "full"),
                            "--root", "/"], check=True, capture_output=True)
            whole = time.monotonic() - t0
            shutil.rmtree(base / "full")
            t0 = time.monotonic()
            subprocess.run([*CLI, "--version"], check=True, capture_output=True)
            start = min(time.monotonic() - t0, whole)
            for n in range(args.kills):
                delay = rng.uniform(start, whole)
                got = one_kill(scn, base, delay, n)
                failures += got
                for line in got:
                    print(line, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"kill_dump: {args.kills} kills from {start:.2f} s to {whole:.2f} s into a dump of "
          f"{args.mounts} mounts "
          f"(seed {args.seed}): {args.kills - len({f.split(':')[0] for f in failures})} left "
          f"nothing behind, {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
