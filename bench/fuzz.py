"""Fuzz every reader of untrusted images: outcome counts, time, median per case.

    .venv/bin/python bench/fuzz.py --cases 10000 --seed 0
    .venv/bin/python bench/fuzz.py --cases 10000 --seed 0 --dump   # seed from a real dump (root)

Half the cases are image sets drawn message by message, half a seed set with one to three
files changed byte-wise (``tests/fuzz_targets.py`` says how); each case runs ``read_image`` of
every file, ``image_to_json`` (``criu-fw show``), ``read_mount_namespace`` and the planner
(``restore(..., ops=RecordingMountOps())``). Printed: cases accepted, refused by reason class
(most frequent first), failures (each with its input and traceback), wall time, median and
slowest case, and the growth of the peak resident size. Exit status 1 if anything failed.

``--dump`` makes the seed set by dumping a small private mount namespace (tmpfs with a file,
a bind, an overlay) as root; it is planned with ``--root /`` and its external mapped.
``--mounts N`` instead times reading one N-mount namespace (library writer, validation on).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import fuzz_targets as ft
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

#: Examples per hypothesis run (see :func:`run`).
CHUNK = 500

DUMP_SCRIPT = """
mkdir -p a b ovl l u w ext
mount -t tmpfs -o size=1m ta a; echo x > a/f; mkdir a/l a/u a/w; echo y > a/l/g
mount --bind a b
mount -t overlay overlay -o lowerdir=$PWD/a/l,upperdir=$PWD/a/u,workdir=$PWD/a/w ovl
"""


def dumped_seed(image_dir: str) -> tuple[str, dict[str, str]]:
    """A real dump of a small private namespace; (root, externals) to plan it with."""
    from criu_fw.dump import dump
    from criu_fw.testing import NamespaceScenario

    scn = NamespaceScenario(DUMP_SCRIPT)
    try:
        dump(scn.pid, image_dir, auto_external=True)
    finally:
        scn.close()
    return "/", {}


def run(cases: int, seed_value: int, use_dump: bool, work: str) -> int:
    seed_dir = os.path.join(work, "seed")
    root: str | None = None
    externals = {ft.SEED_EXTERNAL: work}  # the key the structured sets use
    if use_dump:
        root, dumped = dumped_seed(seed_dir)
        externals.update(dumped)
    else:
        ft.write_seed(seed_dir)
    case_dir = os.path.join(work, "case")
    outcomes: list[ft.Outcome] = []
    inputs: list[object] = []
    # Runs of CHUNK examples, each seeded on: one long hypothesis run keeps every example's
    # record (hundreds of MiB by 5,000, and garbage collections of seconds in the timings).
    options = settings(
        max_examples=min(CHUNK, max(cases // 2, 1)), database=None, deadline=None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck), derandomize=False,
    )  # fmt: skip
    slow: list[tuple[float, str]] = []  # the three slowest cases: (seconds, what they were)

    def record(case: object) -> None:
        outcome = ft.run_readers(case_dir, root=root, externals=externals)
        outcomes.append(outcome)
        inputs.append(case if outcome.kind == "failure" else None)
        if len(slow) < 3 or outcome.seconds > slow[0][0]:
            what = f"{outcome.kind} {outcome.reason[:100]}; input {ft.describe(case)}"
            slow[:] = sorted([*slow, (outcome.seconds, what)])[-3:]

    @options
    @given(st.data())
    def structured(data: st.DataObject) -> None:
        files = data.draw(ft.structured_sets())
        ft.write_set(case_dir, files)
        record(files)

    @options
    @given(st.data())
    def mutated(data: st.DataObject) -> None:
        changes = data.draw(ft.mutations(seed_dir))
        ft.apply_mutations(seed_dir, case_dir, changes)
        record(changes)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    chunks = max(cases // 2 // CHUNK, 1)  # --cases 10000: 10 runs of 500 of each kind
    for i in range(chunks):
        seed(seed_value * 1000 + i)(structured)()
    split = len(outcomes)
    for i in range(chunks):
        seed(seed_value * 1000 + 500 + i)(mutated)()
    wall = time.perf_counter() - start
    grown = ft.memory_grown(base)

    kinds = collections.Counter(o.kind for o in outcomes)
    print(f"cases: {len(outcomes)} ({split} structured, {len(outcomes) - split} mutated), "
          f"seed {seed_value}, seed set: {'real dump' if use_dump else 'library writer'}")
    print(f"accepted: {kinds['accepted']}  refused: {kinds['refused']}  "
          f"failures: {kinds['failure']}")
    print("refused by reason class:")
    for reason, n in collections.Counter(
        o.reason for o in outcomes if o.kind == "refused"
    ).most_common():
        print(f"  {n:6d}  {reason}")
    times = [o.seconds for o in outcomes]
    slowest = max(times)
    print(f"time: {wall:.1f} s wall, median {statistics.median(times) * 1000:.1f} ms a case, "
          f"slowest {slowest * 1000:.0f} ms; peak RSS grew by {grown >> 20} MiB")
    for took, what in reversed(slow):
        print(f"  slow: {took * 1000:.0f} ms: {what}")
    failures = [(o, i) for o, i in zip(outcomes, inputs, strict=True) if o.kind == "failure"]
    for outcome, case in failures[:20]:
        print(f"\nFAILURE: {outcome.reason}\ninput: {case!r}\n{outcome.detail}")
    return 1 if failures or grown > ft.MEMORY_LIMIT else 0


def read_big(mounts: int, work: str) -> int:
    """Write one namespace of ``mounts`` mounts, read it back in a fresh process."""
    import subprocess

    from crafted_images import NS, write_dir
    from criu_fw.model import Dev, Mount, Propagation

    ms = [Mount(1, 0, Dev(0, 20), "/", "/", "tmpfs", "root", ("rw",), ("rw",))]
    ms += [
        Mount(i, 1, Dev(0, 21 + i % 50), f"/d{i % 50}", f"/mnt/place/number/{i}", "tmpfs",
              f"t{i % 50}", ("rw", "nosuid", "nodev", "relatime"), ("rw", "size=1024k"),
              Propagation(shared=i % 7 + 1 if i % 3 else None))
        for i in range(2, mounts + 1)
    ]  # fmt: skip
    d = write_dir(os.path.join(work, "big"), ms)
    sizes = {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))}
    # VmHWM, not ru_maxrss: the latter keeps the peak of this (large) process across exec.
    code = (
        "import sys, time\n"
        "from criu_fw.images.mounts import read_mount_namespace\n"
        "from criu_fw.api.loader import load_drivers\n"
        "def hwm():\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(x.split()[1]) for x in f if x.startswith('VmHWM'))\n"
        "mgr = load_drivers()\n"
        "base = hwm()\n"
        "t = time.perf_counter()\n"
        f"ns = read_mount_namespace(sys.argv[1], {NS}, mgr)\n"
        "took = time.perf_counter() - t\n"
        "peak = hwm()\n"
        "print(f'{len(ns.tree)} mounts read in {took:.2f} s; peak RSS {peak >> 10} MiB '"
        "      f'(+{(peak - base) >> 10} MiB over the loaded drivers)')\n"
    )
    print(f"images: {sizes}")
    return subprocess.run([sys.executable, "-c", code, d], check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", action="store_true", help="seed from a real dump (root)")
    parser.add_argument("--mounts", type=int, help="time reading one N-mount namespace instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="criu-fw-fuzz-") as work:
        if args.mounts:
            return read_big(args.mounts, work)
        return run(args.cases, args.seed, args.dump, work)


if __name__ == "__main__":
    sys.exit(main())
