"""Hidden filesystems in one dump: stacked many deep, hidden inside hidden subtrees, more of
them than the descriptor soft limit. Each tmpfs's archive must hold its own bytes, whatever
covers it, and nothing of what covers it.

The namespace helper (``core/dump/nshelper.py``) makes one private copy of the namespace per
dump and uncovers layer by layer in it; these scenarios are the orders in which that can go
wrong (a covering mount unmounted before a hidden mount inside it was cloned).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.dump.namespaces import FilesystemViews
from criu_fw.images import read_image
from criu_fw.kernel.mountinfo import parse
from criu_fw.model import MountTree
from criu_fw.proto import mnt_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scenario = Callable[..., NamespaceScenario]


def _archives(out: Path) -> dict[str, dict[str, bytes]]:
    """Per tmpfs source name: the regular files of its content archive (name -> bytes)."""
    got: dict[str, dict[str, bytes]] = {}
    for m in read_image(str(out / "mountpoints-1.img"), mnt_pb2.mnt_entry):
        path = out / f"tmpfs-dev-{m.root_dev}.tar.gz.img"
        if path.exists() and m.source not in got:
            with tarfile.open(path) as tar:
                files: dict[str, bytes] = {}
                for member in tar.getmembers():
                    f = tar.extractfile(member) if member.isfile() else None
                    files[member.name] = f.read() if f is not None else b""
            got[m.source] = files
    return got


LAYERS = 40


def test_many_tmpfs_stacked_at_one_place(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(
        "mkdir s && mount -t tmpfs base s && mkdir s/at && echo under > s/at/f\n"
        f"for i in $(seq 1 {LAYERS}); do mount -t tmpfs L$i s/at; echo layer$i > s/at/f; done\n"
    )
    dump(scn.pid, str(tmp_path / "img"))
    got = _archives(tmp_path / "img")
    # Only the top layer is visible; every one below it is archived with its own file.
    for i in range(1, LAYERS + 1):
        assert got[f"L{i}"]["./f"] == f"layer{i}\n".encode()
    # The directory the stack sits on keeps what was written there before the first layer.
    assert got["base"]["./at/f"] == b"under\n"


#: Hidden mounts inside subtrees that are themselves covered, three levels down: P (at n) is
#: covered by C, C by D; Q under Q2 inside P; R under R2 inside C; S under S2 inside R. And T,
#: hidden not where it is mounted but two directories up, by O.
NESTED = """
mkdir n
mount -t tmpfs P n; mkdir n/x; echo under-q > n/x/under; echo p > n/p
mount -t tmpfs Q n/x; echo q > n/x/f
mount -t tmpfs Q2 n/x; echo q2 > n/x/f
mount -t tmpfs C n; mkdir n/x; echo under-r > n/x/under; echo c > n/c
mount -t tmpfs R n/x; echo r > n/x/f; mkdir n/x/y; echo under-s > n/x/y/under
mount -t tmpfs S n/x/y; echo s > n/x/y/f
mount -t tmpfs S2 n/x/y; echo s2 > n/x/y/f
mount -t tmpfs R2 n/x; echo r2 > n/x/f
mount -t tmpfs D n; echo d > n/d
mkdir -p m/a/b; mount -t tmpfs T m/a/b; echo t > m/a/b/f; mount -t tmpfs O m; echo o > m/f
"""


def test_hidden_mounts_inside_covered_subtrees(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(NESTED)
    dump(scn.pid, str(tmp_path / "img"))
    got = _archives(tmp_path / "img")
    want = {
        "P": {"./p": b"p\n", "./x/under": b"under-q\n"},
        "Q": {"./f": b"q\n"}, "Q2": {"./f": b"q2\n"},
        "C": {"./c": b"c\n", "./x/under": b"under-r\n"},
        "R": {"./f": b"r\n", "./y/under": b"under-s\n"},
        "S": {"./f": b"s\n"}, "S2": {"./f": b"s2\n"}, "R2": {"./f": b"r2\n"},
        "D": {"./d": b"d\n"}, "T": {"./f": b"t\n"}, "O": {"./f": b"o\n"},
    }
    for source, files in want.items():
        regular = {k: v for k, v in got[source].items() if k != "." and v}
        assert regular == files, source


def test_more_hidden_filesystems_than_the_descriptor_soft_limit(scenario: Scenario) -> None:
    """A shell's soft limit (1,024) below the number of hidden tmpfs must not fail a dump:
    the helper holds one descriptor per filesystem and takes the hard limit for itself."""
    scn = scenario("mkdir s; for i in $(seq 1 120); do mount -t tmpfs L$i s; "
                   "echo layer$i > s/f; done")
    with open(f"/proc/{scn.pid}/mountinfo", "rb") as f:
        raw = f.read()
    tree = MountTree(tuple(parse(raw, "mountinfo")), 1)
    layers = [m for m in tree.mounts if m.source.startswith("L")]
    assert len(layers) == 120
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = len(os.listdir("/proc/self/fd")) + 40  # room for the pipes, not for 120 clones
    assert limit < len(layers) <= hard
    asked = [*layers, layers[0]]  # one of them asked for twice
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with FilesystemViews(scn.pid, tree, asked) as paths:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the helper has started
            for m, path in zip(asked, paths, strict=True):
                with open(f"{path}/f", "rb") as f:
                    assert f.read() == f"layer{m.source[1:]}\n".encode()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: OT, on OD's directory a/t, is hidden by OM, which holds OU: uncovering OT must wait for
#: OU's clone even when OU is asked for first; all of it sits on OP, hidden by OD.
ORDERS = """
mkdir o
mount -t tmpfs OP o; echo op > o/f
mount -t tmpfs OD o; echo od > o/f; mkdir -p o/a/t
mount -t tmpfs OT o/a/t; echo ot > o/a/t/f
mount -t tmpfs OM o/a; echo om > o/a/f; mkdir o/a/u
mount -t tmpfs OU o/a/u; echo ou > o/a/u/f
"""
SOURCES = {"OP", "OD", "OT", "OM", "OU", "P", "Q", "Q2", "C", "R", "S", "S2", "R2", "D", "T", "O"}


def test_views_are_right_in_any_request_order(scenario: Scenario) -> None:
    """The dump asks in mount-table order, the overlay driver in its own; both must work."""
    scn = scenario(ORDERS + NESTED)
    with open(f"/proc/{scn.pid}/mountinfo", "rb") as f:
        tree = MountTree(tuple(parse(f.read(), "mountinfo")), 1)
    ours = [m for m in tree.mounts if m.fstype == "tmpfs" and m.source in SOURCES]
    assert len(ours) == len(SOURCES)
    orders = [ours, ours[::-1]] + [random.Random(seed).sample(ours, len(ours))
                                   for seed in range(6)]
    for asked in orders:
        with FilesystemViews(scn.pid, tree, asked) as paths:
            seen = {m.source: _first_file(path) for m, path in zip(asked, paths, strict=True)}
        assert seen == {m.source: m.source.lower().encode() + b"\n" for m in ours}, asked


def _first_file(path: str) -> bytes:
    """The one file every tmpfs of these scenarios holds at its top (``f``, or ``p``...)."""
    for name in ("f", "p", "c", "d"):
        with contextlib.suppress(FileNotFoundError), open(f"{path}/{name}", "rb") as f:
            return f.read()
    return b""


@pytest.mark.privileged
def test_more_filesystems_than_a_quarter_of_the_hard_limit_are_viewed_in_batches(
    scenario: Scenario, tmp_path: Path
) -> None:
    """The helper holds a descriptor per filesystem; under a hard limit of 256 (a dumper
    of its own, so this test's limit stays) 300 tmpfs are viewed 64 at a time."""
    scn = scenario(
        "for i in $(seq 300); do mkdir m$i && mount -t tmpfs t$i m$i && echo $i > m$i/f; done"
    )
    out = tmp_path / "img"
    res = subprocess.run(
        ["prlimit", "--nofile=256:256", sys.executable, "-m", "criu_fw", "dump",
         "-t", str(scn.pid), "-D", str(out), "--external-auto"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stderr
    mounts = {m.mountpoint: m for m in read_image(str(out / "mountpoints-1.img"),
                                                  mnt_pb2.mnt_entry)}  # fmt: skip
    for i in (1, 150, 300):
        kdev = mounts[f"{scn.workdir}/m{i}"].root_dev
        with tarfile.open(out / f"tmpfs-dev-{kdev}.tar.gz.img") as tar:
            f = tar.extractfile("./f")
            assert f is not None and f.read() == f"{i}\n".encode()


@pytest.mark.parametrize("helpers", [1, 2])
def test_views_come_in_batches_from_one_copy_in_any_request_order(
    scenario: Scenario, helpers: int,
) -> None:
    """A namespace with more filesystems than a helper may hold at once is served from its
    one private copy a batch at a time (issue 12: a copy per batch made 100,000 mounts cost
    five copies): every filesystem comes once, hidden ones included, each batch readable
    until the next is asked for, and closed then."""
    scn = scenario(ORDERS + NESTED)
    with open(f"/proc/{scn.pid}/mountinfo", "rb") as f:
        tree = MountTree(tuple(parse(f.read(), "mountinfo")), 1)
    ours = [m for m in tree.mounts if m.fstype == "tmpfs" and m.source in SOURCES]
    for seed in range(4):
        asked = random.Random(seed).sample(ours, len(ours))
        seen: dict[str, bytes] = {}
        sizes: list[int] = []
        held: list[int] = []
        views = FilesystemViews(scn.pid, tree, asked, helpers=helpers, batch=3)
        try:
            for part, final in views.stream():
                sizes.append(len(part))
                for i, path in part:
                    assert asked[i].source not in seen
                    seen[asked[i].source] = _first_file(path)
                # What each helper holds: the earlier batches' copies were closed.
                held.extend(_clones(pid) for pid in {p.split("/")[2] for _, p in part})
                assert not final or len(seen) == len(asked)
        finally:
            views.close()
        assert seen == {m.source: m.source.lower().encode() + b"\n" for m in ours}, asked
        assert len(sizes) > 2 * helpers  # batches of about 3, not one per helper
        # Never all of a helper's share at once (a batch may run over by the mounts that
        # must be cloned before a cover is taken away).
        assert max(held) < len(ours) // helpers, held


def _clones(pid: str) -> int:
    """How many detached mounts (directories) the helper ``pid`` holds open."""
    fds = os.listdir(f"/proc/{pid}/fd")
    return sum(os.path.isdir(f"/proc/{pid}/fd/{fd}") for fd in fds)
