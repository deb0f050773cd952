"""The overlay driver's file checks cost O(1) per file, whatever the number of overlay mounts.

Builds two private namespaces, one with 1 overlay and one with 1,000 (all on tmpfs), and a
process in each that holds ``--files`` files of the first overlay open and mapped. Times, per
file (best of several rounds):

* ``fd check``: ``fixup_fd_path`` confirming an fd the kernel reports on the overlay;
* ``vma check``: ``fixup_vma`` confirming a mapping the same way;
* ``fd remap`` / ``vma remap``: the same records as a misreporting kernel shows them (the
  layer's mount and path; this kernel cannot produce that, so the records are rewritten and
  the dump's decision is set to "misreports"), mapped back to the overlay through the layer
  index.

The first overlay has its own lower directory; the other 999 share another one, so a layer
path leads to exactly one overlay. Prints the four times at both sizes and their ratios
(target: at most 1.3x apart).

Usage: .venv/bin/python bench/overlay_fixups.py [--overlays 1000] [--files 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import attrs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from criu_fw.context import DumpContext
from criu_fw.fsdrivers.overlay import driver
from criu_fw.fsdrivers.overlay.index import index_of
from criu_fw.model import Mount
from criu_fw.testing import NamespaceScenario
from overlay_helpers import at, live_context, mappings, open_files, parse, tree_of

KINDS = ("fd check", "vma check", "fd remap", "vma remap")


def script(overlays: int, files: int) -> str:
    return f"""
mkdir W && mount -t tmpfs w W && mkdir W/low0 W/lowx && echo x > W/lowx/seed
i=0; while [ $i -lt {files} ]; do echo $i > W/low0/f$i; i=$((i+1)); done
i=0; while [ $i -lt {overlays} ]; do
  mkdir W/u$i W/w$i W/o$i
  low=W/lowx; [ $i -eq 0 ] && low=W/low0
  mount -t overlay overlay W/o$i -o lowerdir=$PWD/$low,upperdir=$PWD/W/u$i,workdir=$PWD/W/w$i
  i=$((i+1)); done
cat > hold.py <<'PY'
import mmap, os, time
keep = []
for i in range({files}):
    fd = os.open(f"W/o0/f{{i}}", os.O_RDONLY)
    keep.append((fd, mmap.mmap(fd, 0, prot=mmap.PROT_READ)))
open("held", "w").close()
time.sleep(100000)
PY
{sys.executable} hold.py & echo $! > hold.pid
while [ ! -e held ]; do sleep 0.05; done
"""


def best(call: Callable[[], None], n: int, rounds: int) -> float:
    out = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        out = min(out, time.perf_counter() - t0)
    return out / n


def _run(
    hook: str, items: Sequence[object], mount: Mount, ctx: DumpContext, want: object
) -> Callable[[], None]:
    arg = "file" if hook == "fixup_fd_path" else "vma"
    fn = getattr(driver, hook)

    def call() -> None:
        for it in items:
            got = fn(**{arg: it, "mount": mount, "ctx": ctx})
            assert got == want if want is None else got is not None and got.mnt_id == want
    return call


def measure(overlays: int, files: int, rounds: int = 7) -> dict[str, float]:
    with NamespaceScenario(script(overlays, files), timeout=600) as s:
        with open(f"{s.workdir}/hold.pid") as f:
            holder = int(f.read())
        ctx = live_context(s)
        tree = tree_of(ctx, s)
        for m in tree:
            if m.fstype == "overlay":
                parse(ctx, tree, m)
        W = f"{s.workdir}/W"
        ovl, w = at(tree, f"{W}/o0"), at(tree, W)
        # One fd per file (an mmap object holds a dup of the fd it maps).
        fds = list({r.path: r for r in open_files(holder) if r.mnt_id == ovl.mnt_id}.values())
        maps = [m for m in mappings(holder) if m.mnt_id == ovl.mnt_id]
        assert len(fds) == len(maps) == files, (len(fds), len(maps))
        out = {
            "fd check": best(_run("fixup_fd_path", fds, ovl, ctx, None), files, rounds),
            "vma check": best(_run("fixup_vma", maps, ovl, ctx, None), files, rounds),
        }
        # As a misreporting kernel shows them: the lower directory's mount and path.
        index_of(ctx).misreports.update({"fd": True, "map": True})

        def on_layer(path: str) -> str:
            return path.replace(f"{W}/o0/", f"{W}/low0/")

        bad_fds = [attrs.evolve(r, path=on_layer(r.path), mnt_id=w.mnt_id) for r in fds]
        bad_maps = [attrs.evolve(m, path=on_layer(m.path), mnt_id=w.mnt_id) for m in maps]
        out["fd remap"] = best(_run("fixup_fd_path", bad_fds, w, ctx, ovl.mnt_id), files, rounds)
        out["vma remap"] = best(_run("fixup_vma", bad_maps, w, ctx, ovl.mnt_id), files, rounds)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--overlays", type=int, default=1000)
    ap.add_argument("--files", type=int, default=200)
    a = ap.parse_args()
    one = measure(1, a.files)
    many = measure(a.overlays, a.files)
    print(f"per file, 1 overlay vs {a.overlays} overlays ({a.files} files):")
    for kind in KINDS:
        print(
            f"  {kind:10s} {one[kind] * 1e6:7.1f} us  {many[kind] * 1e6:7.1f} us  "
            f"ratio {many[kind] / one[kind]:.2f}"
        )


if __name__ == "__main__":
    main()
