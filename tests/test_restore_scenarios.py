"""Conformance scenarios: built for real in a private namespace, dumped, restored, verified.

One scenario holds most shapes at once (binds of a directory and of a file, a read-only bind,
a tmpfs mounted twice on one place, a stack over a tmpfs with children, a bind into itself, a
subtree moved under an overmount, shared/slave/shared-and-slave/unbindable mounts with
propagation onto binds, a name with a space, tab, newline and backslash), so the suite builds,
dumps and restores it once. Hidden content is checked by unmounting inside the restored
namespace. Separately: a container-like namespace (a tmpfs root after pivot_root holding a static
busybox shell, /proc, an overmount) restored without --root and run with a command, and two
processes in two mount namespaces, both restored and verified.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.restore import RestoreResult, image_namespaces, restore
from criu_fw.restore.verify import compare_trees, verify, verify_namespaces
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario

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


# -- a container-like namespace: tmpfs root after pivot_root, a static shell in it -----------

CONTAINER = r"""
bb=$(command -v busybox || echo /bin/busybox)
mkdir root; mount -t tmpfs -o mode=755 rootfs root
mkdir -p root/bin root/proc root/data root/over root/old
cp "$bb" root/bin/busybox
for a in sh cat ls sleep umount; do ln -s busybox root/bin/$a; done
mount -t proc proc root/proc
mount -t tmpfs -o size=1m data root/data; echo payload > root/data/p
mount -t tmpfs under root/over; echo hidden > root/over/h
mount -t tmpfs top root/over; echo top > root/over/t
cd root; pivot_root . old; /bin/umount -l /old; cd /
"""


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (shutil.which("busybox") or os.path.exists("/bin/busybox")):
        pytest.skip("busybox-static is not installed (scripts/bootstrap.sh installs it)")
    images = str(tmp_path_factory.mktemp("ctr") / "images")
    scn = NamespaceScenario(CONTAINER)
    try:
        # The process lives in the container: its mount table is the container's only.
        with open(f"/proc/{scn.pid}/mountinfo") as f:
            assert [line.split()[4] for line in f] == ["/", "/proc", "/data", "/over", "/over"]
        dump_scenario(scn, images)
    finally:
        scn.close()
    yield images


def test_container_shell_runs_after_restore_without_root(container: str) -> None:
    """The dumped process is gone; the root comes back from the tmpfs archive alone."""
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw", "restore", "-D", container, "--",
         "/bin/sh", "-c", "echo ok; cat /data/p; test $PWD = / && exit 3"],
        capture_output=True, check=False,
    )
    assert (res.returncode, res.stdout, res.stderr) == (3, b"ok\npayload\n", b"")


def test_container_detached_verifies_and_hides_what_it_hid(container: str) -> None:
    # --root is given but not needed: a tmpfs root is rebuilt from the images all the same.
    result = restore(container, root="/", detach=True)
    try:
        assert verify(result.pid, container).differences == ()
        assert os.path.islink(f"/proc/{result.pid}/root/bin/sh")
        out = subprocess.run(
            ["nsenter", "-t", str(result.pid), "-m", "-r", "--", "/bin/sh", "-c",
             "cat /over/t; umount /over; cat /over/h; ls /; cat /proc/self/mounts | wc -l"],
            capture_output=True, check=False,
        )
        assert out.returncode == 0, out.stderr
        # Nothing of the restore's scaffolding is left: the namespace shows its 5 mounts.
        assert out.stdout.decode().split() == [
            "top", "hidden", "bin", "data", "old", "over", "proc", "4"
        ]
    finally:
        result.terminate()


# -- two processes in two mount namespaces --------------------------------------------------

# ``both`` (private) and ``peer`` (shared) exist before the second namespace is made, so the two
# namespaces show one superblock each, and ``peer`` is one peer group across them.
TWO = r"""
mkdir -p one two both peer
mount -t tmpfs one one; echo first > one/f
mount -t tmpfs both both; echo made-before > both/b
mount -t tmpfs peer peer; mount --make-shared peer; mkdir peer/sub
unshare -m --propagation unchanged sh -c \
    'mount -t tmpfs two two; echo second > two/f; mount --bind two one; exec sleep 100000' &
while ! grep -q ' two ' /proc/$!/mountinfo 2>/dev/null; do sleep 0.02; done
"""


def test_two_processes_in_two_namespaces(tmp_path: os.PathLike[str]) -> None:
    images = os.path.join(tmp_path, "images")
    scn = NamespaceScenario(TWO)
    result: RestoreResult | None = None
    try:
        dump_scenario(scn, images)
        root_ns, ids = image_namespaces(images)
        assert len(ids) == 2
        other = next(i for i in ids if i != root_ns)
        result = restore(images, root="/", detach=True)
        assert sorted(result.holders) == sorted(ids)
        w = scn.workdir
        seen = {}
        for ns_id, pid in result.holders.items():
            assert verify(pid, images, ns_id).differences == ()
            with open(f"/proc/{pid}/root{w}/one/f") as f:
                seen[ns_id] = f.read()
            assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert seen == {root_ns: "first\n", other: "second\n"}
        # Each holder's namespace is its own: the two are different namespaces.
        a, b = (os.readlink(f"/proc/{p}/ns/mnt") for p in result.holders.values())
        assert a != b
        # Verifying one namespace against the other's images finds the difference.
        assert verify(result.holders[root_ns], images, other).differences != ()
        # Both namespaces together: superblocks and the peer group shared across them.
        assert verify_namespaces(result.holders, images).differences == ()
        cli = subprocess.run(
            [sys.executable, "-m", "criu_fw", "verify", "-D", images,
             "-t", str(result.holders[root_ns]), "-t", f"{other}={result.holders[other]}"],
            capture_output=True, text=True, check=False,
        )
        assert (cli.returncode, cli.stdout.startswith("verify: OK")) == (0, True), cli.stdout

        root_pid, other_pid = result.holders[root_ns], result.holders[other]
        # One superblock: what one namespace writes, the other reads.
        sh(root_pid, f"echo from-root > {w}/both/new")
        assert sh(other_pid, f"cat {w}/both/new {w}/both/b") == "from-root\nmade-before\n"
        sh(other_pid, f"echo from-other > {w}/peer/x")
        assert sh(root_pid, f"cat {w}/peer/x") == "from-other\n"
        # One peer group across the namespaces: a mount in one appears in the other.
        sh(root_pid, f"mount -t tmpfs probe {w}/peer/sub")
        assert sh(other_pid, "grep -c ' probe ' /proc/self/mountinfo") == "1\n"

        # A copy instead of the shared superblock (and a new group instead of the shared
        # one) passes each namespace on its own, but not both together.
        sh(other_pid, f"umount {w}/both; mount -t tmpfs both {w}/both; "
                      f"umount -l {w}/peer; mount -t tmpfs peer {w}/peer; "
                      f"mount --make-shared {w}/peer")
        assert verify(other_pid, images, other).differences == ()
        diffs = verify_namespaces(result.holders, images).differences
        ns2 = f"mount namespace {other}"
        assert f"{ns2}: {w}/both: shares its filesystem with {w}/both (mount namespace " \
               f"{root_ns}) in the images, with none live" in diffs
        assert f"{ns2}: {w}/peer: propagation: shared with {w}/peer (mount namespace " \
               f"{root_ns}) in the images, shared with none live" in diffs
    finally:
        if result is not None:
            result.terminate()
        scn.close()


def sh(pid: int, script: str) -> str:
    res = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout
