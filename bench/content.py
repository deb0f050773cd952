"""tmpfs content archives: in-process against one GNU tar per filesystem, dump and restore.

Part 1 (``--count``): N small tmpfs (one file of a few bytes each, as most container tmpfs
are) archived one by one, in-process and by GNU tar, then extracted into N fresh tmpfs both
ways. Part 2 (``--sweep``): one tmpfs of growing size (files x bytes) each way, to see where
in-process stops paying (the limits in fsdrivers/generic/content.py). Every mount is made in
a private mount namespace of a child process; archives go to a temporary directory.

    sudo .venv/bin/python bench/content.py [--count 1000] [--sweep]

Medians of ``--repeat`` rounds, the two ways interleaved (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from criu_fw.fsdrivers.generic import content, gnutar
from criu_fw.testing import NamespaceScenario


def _timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _dump_all(srcs: list[str], outs: list[str], force_tar: bool) -> None:
    for src, out in zip(srcs, outs, strict=True):
        if force_tar:
            gnutar.archive(src, out, src)
        else:
            content.dump(src, out, src)


def _restore_all(archives: list[str], targets: list[str], force_tar: bool) -> None:
    for arc, target in zip(archives, targets, strict=True):
        fd = os.open(arc, os.O_RDONLY)
        try:
            if force_tar:
                gnutar.Extraction(arc, fd, target).wait()
            else:
                job = content.restore(fd, arc, target)
                if not isinstance(job, bool):
                    job.wait()
        finally:
            os.close(fd)


def many(count: int, repeat: int) -> None:
    scn = NamespaceScenario(
        f"for i in $(seq {count}); do mkdir s$i d$i && mount -t tmpfs s s$i && "
        "echo hello > s$i/f && mount -t tmpfs d d$i; done",
        timeout=300,
    )
    try:
        base = f"/proc/{scn.pid}/root{scn.workdir}"
        srcs = [f"{base}/s{i}" for i in range(1, count + 1)]
        dsts = [f"{base}/d{i}" for i in range(1, count + 1)]
        rows: dict[str, list[float]] = {k: [] for k in (
            "dump in-process", "dump GNU tar", "restore in-process", "restore GNU tar")}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeat):
                ours = [f"{tmp}/o{i}" for i in range(count)]
                gnu = [f"{tmp}/g{i}" for i in range(count)]
                rows["dump in-process"].append(_timed(_dump_all, srcs, ours, False))
                rows["dump GNU tar"].append(_timed(_dump_all, srcs, gnu, True))
                scn.sh(f"for i in $(seq {count}); do umount d$i; mount -t tmpfs d d$i; done")
                rows["restore in-process"].append(_timed(_restore_all, ours, dsts, False))
                scn.sh(f"for i in $(seq {count}); do umount d$i; mount -t tmpfs d d$i; done")
                rows["restore GNU tar"].append(_timed(_restore_all, gnu, dsts, True))
                for p in ours + gnu:
                    os.unlink(p)
        print(f"{count} tmpfs of one small file each, median of {repeat}:")
        for k, v in rows.items():
            med = statistics.median(v)
            print(f"  {k:<20} {med:8.3f} s  {med / count * 1e3:7.3f} ms per tmpfs")
    finally:
        scn.close()


def sweep(repeat: int) -> None:
    sizes = [(10, 1000), (200, 1000), (1000, 1000), (2000, 1000), (4000, 1000),
             (100, 40_000), (100, 80_000), (100, 160_000)]
    script = " && ".join(
        f"mkdir w{n}_{b} r{n}_{b} && mount -t tmpfs w w{n}_{b} && mount -t tmpfs r r{n}_{b} && "
        f"python3 -c 'import os\nfor i in range({n}): open(\"w{n}_{b}/f%d\" % i, \"wb\")"
        f".write(os.urandom({b // 2}) + bytes({b - b // 2}))'"
        for n, b in sizes
    )
    scn = NamespaceScenario(script, timeout=300)
    big = {"DUMP_BYTES": 1 << 40, "DUMP_MEMBERS": 1 << 30, "RESTORE_ARCHIVE": 1 << 40,
           "RESTORE_UNPACKED": 1 << 40, "RESTORE_MEMBERS": 1 << 30}
    saved = {k: getattr(content, k) for k in big}
    try:
        base = f"/proc/{scn.pid}/root{scn.workdir}"
        print(f"one tmpfs each way, median of {repeat} (ms): files x bytes: "
              "dump in-process / GNU tar, restore in-process / GNU tar")
        with tempfile.TemporaryDirectory() as tmp:
            for n, b in sizes:
                src, dst = f"{base}/w{n}_{b}", f"{base}/r{n}_{b}"
                t: dict[str, list[float]] = {"di": [], "dg": [], "ri": [], "rg": []}
                for _ in range(repeat):
                    for k, v in big.items():
                        setattr(content, k, v)
                    t["di"].append(_timed(_dump_all, [src], [f"{tmp}/o"], False))
                    t["dg"].append(_timed(_dump_all, [src], [f"{tmp}/g"], True))
                    for way, arc in (("ri", f"{tmp}/o"), ("rg", f"{tmp}/g")):
                        scn.sh(f"umount r{n}_{b}; mount -t tmpfs r r{n}_{b}")
                        t[way].append(_timed(_restore_all, [arc], [dst], way == "rg"))
                    os.unlink(f"{tmp}/o")
                    os.unlink(f"{tmp}/g")
                med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
                print(f"  {n:5d} x {b:7d} B: dump {med['di']:7.1f} / {med['dg']:7.1f}   "
                      f"restore {med['ri']:7.1f} / {med['rg']:7.1f}")
    finally:
        for k, v in saved.items():
            setattr(content, k, v)
        scn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="also the size sweep")
    args = ap.parse_args()
    many(args.count, args.repeat)
    if args.sweep:
        sweep(args.repeat)


if __name__ == "__main__":
    main()
