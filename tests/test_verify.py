"""``criu-fw verify``: passes on a faithful restore, and reports every kind of difference.

The differing namespace is built for real: the dumped scenario's own namespace, changed after
the dump (a mount removed, one added, one with another fstype, source, root, superblock
option, per-mount flag, propagation, unbindable, overlay layers). Each difference is one line,
and the exit status is 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.images.mounts import read_mount_namespace, write_mount_namespace
from criu_fw.records import DumpedNamespace
from criu_fw.restore import restore
from criu_fw.restore.verify import verify
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario

pytestmark = pytest.mark.privileged

SCRIPT = r"""
mkdir -p gone ft src rt opt flag p1 p2 sl unb sub ov lay
mount -t tmpfs gone gone
mount -t tmpfs ft ft
mount -t tmpfs src src
mount -t tmpfs rt rt; mkdir rt/x rt/y; mount --bind rt/x sub
mount -t tmpfs -o size=1m opt opt
mount -t tmpfs flag flag
mount -t tmpfs peers p1; mount --make-shared p1; mount --bind p1 p2
mount --bind p1 sl; mount --make-slave sl
mount -t tmpfs unb unb; mount --make-unbindable unb
mount -t tmpfs lay lay; mkdir lay/l1 lay/l2 lay/u lay/w
mount -t overlay ovl -o lowerdir=lay/l1,upperdir=lay/u,workdir=lay/w ov
"""

CHANGE = r"""
umount gone; mkdir -p extra; mount -t tmpfs extra extra
umount ft; mount -t ramfs ft ft
umount src; mount -t tmpfs other src
umount sub; mount --bind rt/y sub
mount -o remount,size=2m opt
mount -o remount,bind,nosuid flag
mount --make-private p2
mount --make-private sl
mount --make-private unb
umount ov; mount -t overlay ovl -o lowerdir=lay/l2,upperdir=lay/u,workdir=lay/w ov
"""


def cli_verify(images: str, pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "criu_fw", "verify", "-D", images, "-t", str(pid), *extra],
        capture_output=True, text=True, check=False,
    )


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NamespaceScenario, str]]:
    images = str(tmp_path_factory.mktemp("verify") / "images")
    scn = NamespaceScenario(SCRIPT)
    try:
        dump_scenario(scn, images)
        yield scn, images
    finally:
        scn.close()


def test_verify_passes_on_a_faithful_restore(dumped: tuple[NamespaceScenario, str]) -> None:
    scn, images = dumped
    result = restore(images, root="/", detach=True)
    try:
        res = cli_verify(images, result.pid)
    finally:
        result.terminate()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("verify: OK, ") and res.stdout.count("\n") == 1
    # The live original matches its own images as well.
    assert cli_verify(images, scn.pid).returncode == 0


def test_every_kind_of_difference_is_one_line(dumped: tuple[NamespaceScenario, str]) -> None:
    scn, images = dumped
    scn.sh(CHANGE)
    res = cli_verify(images, scn.pid)
    w = scn.workdir
    assert res.returncode == 1
    lay = f"{w}/lay"
    assert sorted(res.stdout.splitlines()) == sorted([
        f"{w}/gone: missing: tmpfs 'gone' root '/'",
        f"{w}/extra: extra mount: tmpfs 'extra' root '/'",
        f"{w}/ft: fstype 'tmpfs' in the images, 'ramfs' live",
        f"{w}/src: source 'src' in the images, 'other' live",
        f"{w}/sub: root '/x' in the images, '/y' live",
        f"{w}/opt: superblock options rw,size=1024k in the images, rw,size=2048k live",
        f"{w}/flag: mount options rw,relatime in the images, rw,nosuid,relatime live",
        f"{w}/unb: unbindable in the images, not live",
        f"{w}/p1: propagation: shared with {w}/p2 in the images, shared with none live",
        f"{w}/p2: propagation: shared with {w}/p1 in the images, private live",
        f"{w}/sl: propagation: slave of {w}/p1, {w}/p2 in the images, no master live",
        f"{w}/ov: layers [upper:{lay}:/u, work:{lay}:/w, lower:{lay}:/l1] in the images, "
        f"[upper:{lay}:/u, work:{lay}:/w, lower:{lay}:/l2] live",
    ])
    assert res.stderr == "verify: 12 difference(s)\n"


def test_verify_errors_are_one_line(tmp_path: os.PathLike[str]) -> None:
    res = cli_verify(os.path.join(tmp_path, "nothing"), os.getpid())
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "nothing" in res.stderr, res.stderr


def test_verify_unknown_namespace(dumped: tuple[NamespaceScenario, str]) -> None:
    scn, images = dumped
    res = cli_verify(images, scn.pid, "--ns", "77")
    assert res.returncode == 2  # a usage mistake (docs/cli.md)
    assert res.stderr.count("\n") == 1 and "no mount namespace 77" in res.stderr, res.stderr


@pytest.mark.privileged
def test_an_overlay_the_images_hold_no_state_for_is_not_read_live(tmp_path: Path) -> None:
    """Verify reads live driver state only where the images have some to compare: an overlay
    recorded as external (no state) whose layers cannot be found live any more gives no
    "cannot be read" line, while another overlay's state is still read and compared."""
    script = (
        "mkdir -p a/l a/u a/w ok t gone && "
        "mount -t overlay o1 -o lowerdir=$PWD/a/l,upperdir=$PWD/a/u,workdir=$PWD/a/w ok && "
        "mount -t tmpfs layers t && mkdir t/l t/u t/w && "
        "mount -t overlay o2 -o lowerdir=$PWD/t/l,upperdir=$PWD/t/u,workdir=$PWD/t/w gone"
    )
    with NamespaceScenario(script) as s:
        images = str(tmp_path / "img")
        dump_scenario(s, images)
        ns = read_mount_namespace(images, 1)
        gone = f"{s.workdir}/gone"
        records = {
            i: r._replace(state=None, external="gone-key") if r.mount.mountpoint == gone else r
            for i, r in ns.records.items()
        }
        os.unlink(os.path.join(images, "mountpoints-1.img"))
        os.unlink(os.path.join(images, "fw-mountpoints-1.img"))
        write_mount_namespace(images, DumpedNamespace(1, ns.tree, records))
        # Its layers lead nowhere now: their tmpfs is detached.
        subprocess.run(["nsenter", "-t", str(s.pid), "-m", "umount", "-l", f"{s.workdir}/t"],
                       check=True)  # fmt: skip
        result = verify(s.pid, images)
    assert not [d for d in result.differences if "cannot be read" in d], result.differences
    # What did change is still seen.
    assert any(d.startswith(f"{s.workdir}/t:") for d in result.differences), result.differences
