"""A filesystem on a block device (ext4 on a loop device) dumped from a real namespace.

The source string in the images names a path in whichever /dev the restorer sees, so a
restore mounts such a filesystem only from a device the operator names with
``--external dev[MAJ:MIN]:DEVICE``, and only if it holds the dumped filesystem (its fsid).
Restores run in fresh network and IPC namespaces (the dumped tree holds this machine's
kernel filesystems too).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.images.mounts import read_mount_namespace
from criu_fw.restore import image_namespaces
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``make(name)``: a fresh 16 MiB ext4 on a loop device; detached at the end (lazily
    while a namespace still has it mounted)."""
    made: list[str] = []

    def make(name: str) -> str:
        img = tmp_path / f"{name}.ext4"
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
        dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        made.append(dev)
        return dev

    yield make
    for dev in made:
        subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def externals(images: str) -> list[str]:
    _, ids = image_namespaces(images)
    keys = {r.external for i in ids for r in read_mount_namespace(images, i) if r.external}
    return [f"--external=mnt[{k}]:{k}" for k in sorted(keys) if k.startswith("/")]


def test_ext4_on_a_loop_device_needs_the_device_named(
    scenario: Scn, loops: Callable[[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dev = loops("data")
    rdev = os.stat(dev).st_rdev
    maj_min = f"{os.major(rdev)}:{os.minor(rdev)}"
    s = scenario(f"mkdir data && mount {dev} data && echo on-disk > data/f")
    images = str(tmp_path / "img")
    with caplog.at_level(logging.INFO, logger="criu_fw"):
        dump(s.pid, images, auto_external=True)
    # The dump says (with -v) what a restore will need.
    assert f"a restore mounts it again only from a device the operator names: " \
           f"--external dev[{maj_min}]:DEVICE" in caplog.text
    base = ["restore", "-D", images, "--root", "/", *externals(images)]

    out = cli(*base, "--dry-run")
    assert out.returncode != 0
    assert out.stderr.strip().endswith(
        f"ext4 is mounted from a block device ({dev!r} in the images), and a restore mounts "
        f"one only from a device the operator names; give --external dev[{maj_min}]:DEVICE"
    ), out.stderr
    assert f"at '{s.workdir}/data' (ext4, source '{dev}')" in out.stderr

    # Another ext4 given for it: mounted, found to be another filesystem, refused.
    other = loops("other")
    out = cli(*base, f"--external=dev[{maj_min}]:{other}", "--detach")
    assert out.returncode != 0
    assert "the device given holds another filesystem" in out.stderr, out.stderr

    out = cli(*base, f"--external=dev[{maj_min}]:{dev}", "--detach")
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    try:
        got = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", f"{s.workdir}/data/f"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert got.stdout == "on-disk\n", got.stderr
    finally:
        os.kill(pid, 9)


def test_a_device_grant_must_be_a_block_device(tmp_path: Path) -> None:
    out = cli("restore", "-D", str(tmp_path), f"--external=dev[7:0]:{tmp_path}", "--dry-run")
    assert out.returncode != 0
    assert out.stderr.strip() == (
        f"criu-fw: error: --external dev[7:0]:{tmp_path}: not a block device"
    ), out.stderr
