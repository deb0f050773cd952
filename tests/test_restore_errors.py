"""The error cases of ``criu-fw restore``: one line naming what failed and why, a non-zero exit
status, and nothing left behind (the autouse fixture checks the caller's mount table; each
case also checks that no process of the restore is still alive).

One small scenario is dumped once; every case gets its own copy of the images, spoiled in one
way: a missing directory or file, a truncated or garbled image, an image of a newer format, an
external mount without a mapping, a tmpfs option the kernel refuses.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.fsdrivers.generic import content
from criu_fw.images import KINDS, read_image, write_image
from criu_fw.images.mounts import read_mount_namespace, write_mount_namespace
from criu_fw.model import MountTree
from criu_fw.proto import fwstate_pb2, inventory_pb2
from criu_fw.records import DumpedNamespace
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


@pytest.mark.parametrize("name", ["inventory.img", "mountpoints-1.img"])
def test_missing_image_file(base: tuple[str, str], tmp_path: os.PathLike[str], name: str) -> None:
    images = _copy(base, tmp_path)
    os.unlink(os.path.join(images, name))
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), name)


def test_without_criu_fws_image_the_directory_is_read_as_criu_s(
    base: tuple[str, str], tmp_path: os.PathLike[str]
) -> None:
    """CRIU's images alone say enough for these generic mounts (tmpfs with their archives,
    an external bind, the host's root from --root): the restore works from them."""
    images = _copy(base, tmp_path)
    os.unlink(os.path.join(images, "fw-mountpoints-1.img"))
    assert _restore(images, "--external", f"mnt[data]:{base[1]}/ext").returncode == 0


def test_missing_content_archive(base: tuple[str, str], tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    ns = read_mount_namespace(images, 1)
    (archive,) = [r.content for r in ns if r.mount.source == "ta"]
    os.unlink(os.path.join(images, archive))
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), archive, "'/", "(tmpfs, source 'ta')")


@pytest.mark.parametrize("size", ["small", "large"])
def test_corrupt_content_archive(base: tuple[str, str], tmp_path: os.PathLike[str],
                                 size: str) -> None:
    # A small archive is unpacked in-process and refused at once; a large one goes to a tar
    # that runs while the restore goes on (a content job), whose failure is reported when
    # the restore waits for it (and _restore checks that no tar is left running).
    images = _copy(base, tmp_path)
    ns = read_mount_namespace(images, 1)
    (archive,) = [r.content for r in ns if r.mount.source == "ta"]
    with open(os.path.join(images, archive), "r+b") as f:
        if size == "small":
            f.seek(10)
            f.write(b"\xde\xad" * 64)
        else:
            f.write(os.urandom(content.RESTORE_ARCHIVE + 4096))
    _fails(_restore(images, "--external", "mnt[data]:/tmp"), "(tmpfs, source 'ta')",
           "driver 'generic'", f"{archive}: could not restore the content: ",
           "not a gzip'd tar archive" if size == "small" else "tar (exit 2)")


def _replace_archive(images: str, entries: list[tuple[str, bytes]]) -> str:
    """The tmpfs archive of ``ta`` replaced by one holding ``entries`` (name, data)."""
    ns = read_mount_namespace(images, 1)
    (archive,) = [r.content for r in ns if r.mount.source == "ta"]
    with tarfile.open(os.path.join(images, archive), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_content_archive_escaping_its_filesystem(base: tuple[str, str],
                                                tmp_path: os.PathLike[str]) -> None:
    images = _copy(base, tmp_path)
    archive = _replace_archive(images, [("f", b"x"), ("../../../escaped", b"x")])
    _fails(_restore(images, "--external", f"mnt[data]:{base[1]}/ext"),
           f"at '{base[1]}/a' (tmpfs, source 'ta')", "driver 'generic'",
           f"{archive}: could not restore the content: member ../../../escaped: its name "
           "contains '..'")


@pytest.mark.parametrize("way", ["in-process", "tar"])
def test_content_larger_than_its_filesystem(base: tuple[str, str],
                                            tmp_path: os.PathLike[str], way: str) -> None:
    # ta is a size=1m tmpfs. 2 MiB of zeros make a small archive (unpacked in-process),
    # 2 MiB of random bytes a big one (GNU tar).
    images = _copy(base, tmp_path)
    data = bytes(2 << 20) if way == "in-process" else os.urandom(2 << 20)
    archive = _replace_archive(images, [("f", b"x"), ("big", data)])
    why = "member big: " if way == "in-process" else ""
    _fails(_restore(images, "--external", f"mnt[data]:{base[1]}/ext"),
           f"at '{base[1]}/a' (tmpfs, source 'ta')",
           f"{archive}: could not restore the content: {why}No space left on device (ENOSPC)")


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
    tree = MountTree(tuple(mounts), ns.tree.ns_id)
    kept = {m.mnt_id: ns.record(m.mnt_id)._replace(mount=m) for m in tree}
    write_mount_namespace(images, DumpedNamespace(1, tree, kept))
    line = _fails(_restore(images, "--external", f"mnt[data]:{base[1]}/ext"),
                  f"at '{base[1]}/a' (tmpfs, source 'ta')", "fsconfig",
                  "Unknown parameter 'bogus_opt'")
    assert "Traceback" not in line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip


def test_usage_mistakes_are_one_line_with_status_2(base: tuple[str, str]) -> None:
    images = base[0]
    res = _cli("restore", "-D", images, "--root", "/etc/hostname", "--detach")
    assert (res.returncode, res.stderr) == (
        2, "criu-fw: error: --root '/etc/hostname': not a directory (the root of the restored "
        "tree)\n")  # fmt: skip
    res = _cli("restore", "-D", images, "--root", "/", "--dry-run", "--detach")
    assert (res.returncode, res.stderr) == (
        2, "criu-fw: error: a dry run starts nothing: --detach and a command do not apply\n")
    gone = 2**22 + 12345  # above the largest pid_max the kernel allows: no such process
    res = _cli("verify", "-D", images, "-t", str(gone))
    assert (res.returncode, res.stderr) == (2, f"criu-fw: error: no process {gone}\n")


def _run(
    base: tuple[str, str], *args: str, images: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore", "-D",
         images or base[0], "--root", "/", "--external", f"mnt[data]:{base[1]}/ext", *args],
        capture_output=True, text=True, check=False,
    )


def test_a_command_exits_with_its_own_status(base: tuple[str, str]) -> None:
    res = _run(base, "--", "/bin/sh", "-c", "exit 3")
    assert (res.returncode, res.stderr) == (3, "")


def test_a_command_that_cannot_be_found_or_run_is_127_or_126(base: tuple[str, str]) -> None:
    missing = _run(base, "--", "/no/such/command")
    assert missing.returncode == 127
    assert missing.stderr == ("criu-fw: error: '/no/such/command': not found in the restored "
                              "namespace (No such file or directory)\n")
    # There, and not something to execute (a directory).
    plain = _run(base, "--", "/etc")
    assert plain.returncode == 126
    assert plain.stderr == ("criu-fw: error: '/etc': cannot run it in the restored namespace "
                            "(Permission denied)\n")


def test_criu_fw_failing_before_the_command_is_125(
    base: tuple[str, str], tmp_path: Path
) -> None:
    images = _copy(base, tmp_path)
    os.unlink(os.path.join(images, "inventory.img"))
    res = _run(base, "--", "/bin/sh", "-c", "exit 3", images=images)
    assert res.returncode == 125
    assert res.stderr.startswith("criu-fw: error: ") and res.stderr.count("\n") == 1
    # A usage mistake of criu-fw's too (--root that is not a directory).
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw", "restore", "-D", base[0], "--root", "/etc/hostname",
         "--", "/bin/true"], capture_output=True, text=True, check=False,
    )
    assert res.returncode == 125, res.stderr
