"""The error cases of ``criu-fw restore``: one line naming what failed and why, a non-zero exit
status, and nothing left behind (the autouse fixture checks the caller's mount table; each
case also checks that no process of the restore is still alive).

One small scenario is dumped once; every case gets its own copy of the images, spoiled in one
way: a missing directory or file, a truncated or garbled image, an image of a newer format, an
external mount without a mapping, a tmpfs option the kernel refuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from criu_fw.dump import dump
from criu_fw.images import KINDS, read_image, write_image
from criu_fw.imageset import read_mount_namespace, write_mount_namespace
from criu_fw.model import MountTree
from criu_fw.proto import fwstate_pb2, inventory_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

SCRIPT = r"""
mkdir -p a e ext
mount -t tmpfs -o size=1m ta a; echo x > a/f
mount --bind ext e
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    images = str(tmp_path_factory.mktemp("err") / "images")
    scn = NamespaceScenario(SCRIPT)
    try:
        dump(scn.pid, images, auto_external=True, externals={f"{scn.workdir}/e": "data"})
        yield images, scn.workdir
    finally:
        scn.close()


def _restore(images: str, *extra: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw", "restore", "-D", images, "--root", "/", *extra,
         "--", "/bin/true"],
        capture_output=True, text=True, check=False,
    )
    # No process of this restore (the CLI's forked children carry its command line) survives.
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if images.encode() in f.read():
                    alive.append(pid)
        except OSError:
            continue
    assert alive == [], f"processes left behind: {alive}"
    return res


def _copy(base: tuple[str, str], tmp: os.PathLike[str]) -> str:
    dst = os.path.join(tmp, "images")
    shutil.copytree(base[0], dst)
    return dst


def _fails(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("\n") == 1, res.stderr
    for frag in fragments:
        assert frag in res.stderr, res.stderr
    return res.stderr


def test_the_base_images_restore(base: tuple[str, str]) -> None:
    assert _restore(base[0], "--external", f"mnt[data]:{base[1]}/ext").returncode == 0


def test_missing_image_directory(tmp_path: os.PathLike[str]) -> None:
    where = os.path.join(tmp_path, "absent")
    _fails(_restore(where), where, "no such image directory")


@pytest.mark.parametrize("name", ["inventory.img", "mountpoints-1.img", "fw-mountpoints-1.img"])
def test_missing_image_file(base: tuple[str, str], tmp_path: os.PathLike[str], name: str) -> None:
    images = _copy(base, tmp_path)
    os.unlink(os.path.join(images, name))
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), name)


def test_missing_content_archive(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    ns = read_mount_namespace(images, 1)
    (archive,) = [ns.content[m.mnt_id] for m in ns.tree if m.source == "ta"]
    os.unlink(os.path.join(images, archive))
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), archive, "'/", "(tmpfs, source 'ta')")


def test_corrupt_content_archive(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    # tar runs while the restore goes on (a content job); its failure is reported when the
    # restore waits for it, and _restore checks that no tar is left running.
    images = _copy(base, tmp_path)
    ns = read_mount_namespace(images, 1)
    (archive,) = [ns.content[m.mnt_id] for m in ns.tree if m.source == "ta"]
    with open(os.path.join(images, archive), "r+b") as f:
        f.seek(10)
        f.write(b"\xde\xad" * 64)
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), "(tmpfs, source 'ta')",
           "driver 'generic'", f"{archive}: tar could not restore the content")


@pytest.mark.parametrize("spoil", ["truncate", "garble", "magic"])
def test_corrupt_image(base: tuple[str, str], tmp_path: os.PathLike[str], spoil: str) -> None:
    images = _copy(base, tmp_path)
    path = os.path.join(images, "fw-mountpoints-1.img")
    with open(path, "rb") as f:
        data = f.read()
    if spoil == "truncate":
        data = data[: len(data) - 7]
    elif spoil == "garble":
        data = data[:12] + b"\xff" * 40 + data[52:]
    else:
        data = b"\x00\x11\x22\x33" + data[4:]
    with open(path, "wb") as f:
        f.write(data)
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), "fw-mountpoints-1.img")


def _rewrite(path: str, kind: str, message: type, change: Callable[[object], None]) -> None:
    entries = read_image(path, message, kind=kind)
    change(entries[0])
    write_image(path, KINDS[kind], entries)


def test_newer_inventory_version(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    _rewrite(os.path.join(images, "inventory.img"), "INVENTORY", inventory_pb2.inventory_entry,
             lambda e: setattr(e, "img_version", 9))
    _fails(_restore(images), "inventory.img", "image version 9 is newer")


def test_newer_criu_fw_format(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    _rewrite(os.path.join(images, "fw-mountpoints-1.img"), "FW_MNTS", fwstate_pb2.fw_entry,
             lambda e: setattr(e.header, "format_version", 99))  # type: ignore[attr-defined]
    _fails(_restore(images), "fw-mountpoints-1.img", "format version 99")


def test_external_key_without_mapping(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    line = _fails(_restore(images), "external mount with key 'data' has no mapping",
                  "give --external mnt[data]:PATH")
    assert f"at '{base[1]}/e'" in line


def test_kernel_refuses_an_option(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    ns = read_mount_namespace(images, 1)
    mounts = [
        m._replace(super_options=(*m.super_options, "bogus_opt=1"))
        if m.source == "ta" else m
        for m in ns.tree
    ]
    write_mount_namespace(
        images, 1, MountTree(tuple(mounts), ns.tree.ns_id), drivers=ns.drivers,
        states=ns.states, external=ns.external, content=ns.content,
    )
    line = _fails(_restore(images, "--external", f"mnt[data]:{base[1]}/ext"),
                  f"at '{base[1]}/a' (tmpfs, source 'ta')", "fsconfig",
                  "Unknown parameter 'bogus_opt'")
    assert "Traceback" not in line
