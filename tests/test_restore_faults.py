"""A filesystem that fills while a restore puts its content back: one clear line, status 3,
nothing half-published.

Each case dumps a real tmpfs (``size=4m``, in a scenario's private namespace), then rewrites
its superblock options in the mount images (CRIU's ``mnt_entry.options`` and criu-fw's
``fw-mountpoints``, both written by ``write_mount_namespace``) so that the restored tmpfs is
too small for its archive: ``size=1m`` against 3 MB of content, or ``nr_inodes=20`` against
60 files. Images are untrusted input, so this is a restore's input like any other. Both ways
of extracting are covered: a small archive (compressible content) is unpacked in-process,
a big one (random bytes, more than ``RESTORE_ARCHIVE`` compressed) by GNU tar.

Every restore is the real command in ``unshare --net --ipc``, with ``--root DIR`` (an empty
directory: the mountpoints it creates there must go again) and a TMPDIR of its own (no
``criu-fw-restore-*`` work directory may stay); the test process is the child subreaper
while it runs, so whatever the restore leaves running (a holder, the building child, its
watchdog, a tar) becomes its child and is seen. The caller's mount table is checked by the
autouse fixture of conftest.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.fsdrivers.generic import content
from criu_fw.images.mounts import read_mount_namespace, write_mount_namespace
from criu_fw.model import MountTree
from criu_fw.records import DumpedNamespace
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario, reaping, wait_until

pytestmark = pytest.mark.privileged

#: The installed command (what a user runs), or the module where it is not installed.
_SCRIPT = Path(sys.executable).with_name("criu-fw")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "criu_fw"]

#: What each case puts in the tmpfs ``m`` (mounted ``size=4m,nr_inodes=200``), and the
#: option the images then say instead.
CONTENT = {
    # 3 MB of text: a 10 KB archive, unpacked in-process.
    "size-in-process": ("mkdir m/d; echo small > m/d/small\n"
                        "yes 'a line of text to compress' | head -c 3000000 > m/big",
                        "size=1m"),
    # 3 MB of random bytes: a 3 MB archive, unpacked by GNU tar.
    "size-tar": ("mkdir m/d; echo small > m/d/small\nhead -c 3000000 /dev/urandom > m/big",
                 "size=1m"),
    # 60 small files (and the root): a 2 KB archive, unpacked in-process.
    "inodes-in-process": ("for i in $(seq 60); do echo $i > m/f$i; done", "nr_inodes=20"),
    # 60 files of 40 KB random bytes: a 2.4 MB archive, unpacked by GNU tar.
    "inodes-tar": ("for i in $(seq 60); do head -c 40000 /dev/urandom > m/f$i; done",
                   "nr_inodes=20"),
}

#: The error line after ``... (tmpfs, source 'data'): driver 'generic': ARCHIVE: could not
#: restore the content: ``, as a regular expression.
EXPECTED = {
    "size-in-process": r"member \./big: No space left on device \(ENOSPC\): "
                       r"the filesystem is full \(1 MiB, all in use\)",
    "size-tar": r"No space left on device \(ENOSPC\): the filesystem is full \(1 MiB, all in "
                r"use\): tar \(exit 2\): \./big: Wrote only \d+ of \d+ bytes",
    "inodes-in-process": r"member \./f\d+: No space left on device \(ENOSPC\): "
                         r"the filesystem is full \(20 inodes, all in use\)",
    "inodes-tar": r"No space left on device \(ENOSPC\): the filesystem is full \(20 inodes, "
                  r"all in use\): tar \(exit 2\): \./f\d+: Cannot open: No space left on device",
}


def _restore(images: str, root: Path, tmp: Path, *tail: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "--ipc", "--", *CLI, "restore", "-q", "-D", images,
         "--root", str(root), *tail],
        capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)}, timeout=120,
    )


def _shrink(images: str, option: str) -> str:
    """The tmpfs ``data`` made smaller in the mount images: ``option`` (``key=value``)
    replaces its dumped ``key=``. Returns the name of its content archive."""
    key = option.partition("=")[0] + "="
    ns = read_mount_namespace(images, 1)
    mounts = []
    for m in ns.tree:
        if m.source == "data":
            kept = tuple(o for o in m.super_options if not o.startswith(key))
            m = m._replace(super_options=(*kept, option))
        mounts.append(m)
    tree = MountTree(tuple(mounts), ns.tree.ns_id)
    records = {m.mnt_id: ns.record(m.mnt_id)._replace(mount=m) for m in tree}
    write_mount_namespace(images, DumpedNamespace(1, tree, records))
    (again,) = [r for r in read_mount_namespace(images, 1) if r.mount.source == "data"]
    assert option in again.mount.super_options and again.content is not None
    return again.content


@pytest.mark.parametrize("case", list(CONTENT))
def test_a_full_filesystem_fails_the_restore_cleanly(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path, case: str
) -> None:
    fill, option = CONTENT[case]
    scn = scenario(f"mkdir m\nmount -t tmpfs -o size=4m,nr_inodes=200 data m\n{fill}")
    images = str(tmp_path / "images")
    dump_scenario(scn, images)
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()

    # As dumped, the images restore (and make mountpoints in DIR, which stay: a success);
    # the holder it leaves is ended by its PID.
    ok_root = tmp_path / "ok-root"
    ok_root.mkdir()
    with reaping() as left:
        ok = _restore(images, ok_root, tmp, "--detach")
        assert ok.returncode == 0 and ok.stderr == "", ok.stderr
        holder = int(ok.stdout)
        assert wait_until(lambda: left() == [holder], 10), left()
        os.kill(holder, signal.SIGTERM)
        assert wait_until(lambda: not left(), 10)
    assert os.listdir(ok_root) != []

    archive = _shrink(images, option)
    size = os.path.getsize(os.path.join(images, archive))
    # The way the case means: in-process up to RESTORE_ARCHIVE compressed, else GNU tar.
    assert (size <= content.RESTORE_ARCHIVE) == case.endswith("in-process"), size

    with reaping() as left:
        res = _restore(images, root, tmp, "--detach")
        # Nothing of the restore runs on: no holder, building child, watchdog or tar.
        assert wait_until(lambda: not left(), 10), f"processes left behind: {left()}"
    assert res.returncode == 3, res.stderr
    assert res.stdout == ""  # no holder's PID
    # One line, naming the mount, its driver, the archive, and that its filesystem is full.
    assert res.stderr.count("\n") == 1, res.stderr
    head = (f"criu-fw: error: mount \\d+ at '{re.escape(scn.workdir)}/m' \\(tmpfs, source "
            f"'data'\\): driver 'generic': {re.escape(archive)}: could not restore the "
            "content: ")
    assert re.fullmatch(head + EXPECTED[case] + "\n", res.stderr), res.stderr
    # Nothing half-published: no work directory in TMPDIR, no mountpoint made in DIR (by
    # the time the content is put back, those of the mounts made before it are there: /proc,
    # /sys, /dev), no mount of DIR in the caller's namespace (nor any other: the autouse
    # fixture).
    assert wait_until(lambda: not os.listdir(tmp), 10), os.listdir(tmp)
    assert os.listdir(root) == []
    with open("/proc/self/mountinfo") as f:
        assert str(root) not in f.read()
