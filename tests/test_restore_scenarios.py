"""Conformance scenarios: built for real in a private namespace, dumped, restored, verified.

One scenario holds most shapes at once (binds of a directory and of a file, a read-only bind,
a tmpfs mounted twice on one place, a stack over a tmpfs with children, a bind into itself, a
subtree moved under an overmount, shared/slave/shared-and-slave/unbindable mounts with
propagation onto binds, a name with a space, tab, newline and backslash), so the suite builds,
dumps and restores it once. Hidden content is checked by unmounting inside the restored
namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from criu_fw.mountinfo import read_mountinfo
from criu_fw.restore import RestoreResult, restore
from criu_fw.restore.verify import compare_trees, verify
from criu_fw.testing import NamespaceScenario
from test_roundtrip import dump_scenario

pytestmark = pytest.mark.privileged

Restored = tuple[NamespaceScenario, str, RestoreResult]

WEIRD = "sp ace\ttab\nnl\\back"

SCRIPT = r"""
weird="$(printf 'sp ace\ttab\nnl\\back')"
mkdir -p src dstdir ro_dst twice stack inself move_a move_b peers p1 sl ss ub "$weird"
touch dstfile
# a bind of a directory and of a file
mount -t tmpfs tsrc src
mkdir src/d; echo fromdir > src/d/f; echo fromfile > src/file
mount --bind src/d dstdir
mount --bind src/file dstfile
# a read-only bind of a writable mount
mount --bind src ro_dst
mount -o remount,bind,ro ro_dst
# a tmpfs mounted twice on one place
mount -t tmpfs t1 twice; echo low > twice/low
mount -t tmpfs t2 twice; echo high > twice/high
# a tmpfs stacked over a tmpfs that has its own children
mount -t tmpfs s1 stack; mkdir stack/c; mount -t tmpfs s1c stack/c; echo under > stack/c/u
mount -t tmpfs s2 stack; mkdir stack/k; mount -t tmpfs s2k stack/k; echo top > stack/k/t
# a bind of a mount onto a path inside itself
mount -t tmpfs ins inself; mkdir inself/sub; echo self > inself/f
mount --bind inself inself/sub
# a subtree moved (MS_MOVE) under an overmount
mount -t tmpfs mva move_a; mkdir move_a/inner; mount -t tmpfs mvin move_a/inner
echo moved > move_a/inner/m
mount -t tmpfs mvb move_b; mkdir move_b/t; echo hidden > move_b/t/h
mount --move move_a move_b/t
mount -t tmpfs mvover move_b
# shared peers, slaves, shared-and-slave, unbindable; propagation onto binds
mount -t tmpfs pr peers; mount --make-shared peers; mkdir peers/sub
mount --bind peers p1
mount --bind peers sl; mount --make-slave sl
mount --bind peers ss; mount --make-slave ss; mount --make-shared ss
mount -t tmpfs psub peers/sub
mount -t tmpfs ub ub; mount --make-unbindable ub
# names with a space, a tab, a newline and a backslash
mount -t tmpfs weird "$weird"; echo odd > "$weird/o"
"""


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    images = str(tmp_path_factory.mktemp("img") / "images")
    scn = NamespaceScenario(SCRIPT)
    result: RestoreResult | None = None
    try:
        dump_scenario(scn, images)
        result = restore(images, root="/", detach=True)
        yield scn, images, result
    finally:
        if result is not None:
            result.terminate()
        scn.close()


def inside(result: RestoreResult, script: str) -> str:
    res = subprocess.run(
        ["nsenter", "-t", str(result.pid), "-m", "--", "sh", "-c", script],
        capture_output=True, check=False,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode("utf-8", "surrogateescape")


def test_verify_passes_and_trees_match(restored: Restored) -> None:
    scn, images, result = restored
    assert verify(result.pid, images).differences == ()
    # And against the live original, too: the restored tree is the dumped one.
    assert compare_trees(read_mountinfo(scn.pid), read_mountinfo(result.pid)).differences == ()


def test_binds_of_a_directory_and_a_file(restored: Restored) -> None:
    scn, _, result = restored
    w = scn.workdir
    assert inside(result, f"cat {w}/dstdir/f {w}/dstfile") == "fromdir\nfromfile\n"


def test_read_only_bind_of_a_writable_mount(restored: Restored) -> None:
    scn, _, result = restored
    w = scn.workdir
    assert inside(result, f"touch {w}/ro_dst/x 2>/dev/null && echo rw || echo ro") == "ro\n"
    assert inside(result, f"touch {w}/src/x && echo rw") == "rw\n"


def test_stacked_tmpfs_and_hidden_content(restored: Restored) -> None:
    scn, _, result = restored
    w = scn.workdir
    out = inside(result, f"cat {w}/twice/high; umount {w}/twice; cat {w}/twice/low")
    assert out == "high\nlow\n"
    out = inside(result, f"cat {w}/stack/k/t; umount -l {w}/stack; cat {w}/stack/c/u")
    assert out == "top\nunder\n"


def test_bind_into_itself_and_moved_subtree(restored: Restored) -> None:
    scn, _, result = restored
    w = scn.workdir
    assert inside(result, f"cat {w}/inself/sub/f") == "self\n"
    out = inside(result, f"umount {w}/move_b; cat {w}/move_b/t/inner/m; ls {w}/move_b/t")
    assert out == "moved\ninner\n"


def test_propagation_works_after_restore(restored: Restored) -> None:
    scn, _, result = restored
    w = scn.workdir
    # A new mount on a shared mount reaches its peer and its slaves, not the other way round.
    out = inside(
        result,
        f"mkdir -p {w}/peers/new {w}/sl/own; mount -t tmpfs probe {w}/peers/new; "
        f"mount -t tmpfs own {w}/sl/own; "
        f"grep -c ' probe ' /proc/self/mountinfo; grep -c ' own ' /proc/self/mountinfo",
    )
    assert out == "4\n1\n"  # peers, p1, sl, ss


def test_weird_names(restored: Restored) -> None:
    scn, _, result = restored
    path = os.path.join(scn.workdir, WEIRD, "o")
    with open(f"/proc/{result.pid}/root{path}") as f:
        assert f.read() == "odd\n"
