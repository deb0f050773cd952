"""The overlay driver's fd check costs O(1) per file, whatever the number of overlay mounts.

Builds two private namespaces, one with 1 overlay and one with 1,000 (all on tmpfs), a process
in each holding 200 files open on one overlay, and times ``fixup_fd_path`` over those files
(best of several rounds). Prints both times per file and their ratio (should stay <= 1.3).

Usage: .venv/bin/python bench/overlay_fixups.py [--overlays 1000] [--files 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from criu_fw.fsdrivers.overlay import driver
from criu_fw.testing import NamespaceScenario
from overlay_helpers import at, live_context, open_files, parse, tree_of


def script(overlays: int, files: int) -> str:
    return f"""
mkdir W && mount -t tmpfs w W && mkdir W/low && echo x > W/low/seed
i=0; while [ $i -lt {files} ]; do echo $i > W/low/f$i; i=$((i+1)); done
i=0; while [ $i -lt {overlays} ]; do
  mkdir W/u$i W/w$i W/o$i
  mount -t overlay overlay W/o$i -o lowerdir=$PWD/W/low,upperdir=$PWD/W/u$i,workdir=$PWD/W/w$i
  i=$((i+1)); done
cat > hold.py <<'PY'
import os, sys, time
fds = [os.open(f"W/o0/f{{i}}", os.O_RDONLY) for i in range({files})]
open("held", "w").close()
time.sleep(100000)
PY
{sys.executable} hold.py & echo $! > hold.pid
while [ ! -e held ]; do sleep 0.05; done
"""


def measure(overlays: int, files: int, rounds: int = 7) -> float:
    with NamespaceScenario(script(overlays, files), timeout=300) as s:
        with open(f"{s.workdir}/hold.pid") as f:
            holder = int(f.read())
        ctx = live_context(s)
        tree = tree_of(ctx, s)
        for m in tree:
            if m.fstype == "overlay":
                parse(ctx, tree, m)
        ovl = at(tree, f"{s.workdir}/W/o0")
        recs = [r for r in open_files(holder) if r.mnt_id == ovl.mnt_id]
        assert len(recs) == files, len(recs)
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for r in recs:
                assert driver.fixup_fd_path(file=r, mount=ovl, ctx=ctx) is None
            best = min(best, time.perf_counter() - t0)
        return best / files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--overlays", type=int, default=1000)
    ap.add_argument("--files", type=int, default=200)
    a = ap.parse_args()
    one = measure(1, a.files)
    many = measure(a.overlays, a.files)
    print(f"fixup_fd_path per file: 1 overlay {one * 1e6:.1f} us, "
          f"{a.overlays} overlays {many * 1e6:.1f} us, ratio {many / one:.2f}")


if __name__ == "__main__":
    main()
