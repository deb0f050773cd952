"""What a restore used to do silently, said in one line: one key given two paths, a mapping
no mount uses, a dry run that passed where the restore fails, a damaged set of process
images read around. Run as a person runs ``criu-fw restore`` (a real restore in ``unshare
--net --ipc``, with a TMPDIR of its own)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from crafted_images import ROOT, write_dir
from criu_fw.images import write_image
from criu_fw.model import Dev, Mount
from criu_fw.proto import pstree_pb2

pytestmark = pytest.mark.privileged

EXT = Mount(2, 1, Dev(0, 77), "/", "/ext", "tmpfs", "e", ("rw",), ("rw",))
T = Mount(3, 1, Dev(0, 78), "/", "/t", "tmpfs", "t", ("rw",), ("rw",))


def restore(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``criu-fw restore ARGS`` in new network and IPC namespaces (a real one only ever
    runs there), with ``tmp`` as its TMPDIR."""
    return subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore", "-q",
         *args],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    return d


def images(where: Path, key: str = "ek") -> str:
    """A tmpfs root, an external mount under ``key`` at /ext and a tmpfs at /t."""
    return write_dir(str(where / "img"), [ROOT, EXT, T], external={EXT.mnt_id: key})


def a_block_device() -> str:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    pytest.skip("no block device in /dev")


def test_one_key_given_two_paths_is_refused(tmp_path: Path, tmp: Path) -> None:
    img = images(tmp_path)
    res = restore("-D", img, "--dry-run", "--external", f"mnt[ek]:{tmp_path}",
                  "--external", f"mnt[ek]:{tmp}", tmp=tmp)  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (
        2, "", f"criu-fw: error: --external mnt[ek]:{tmp}: key ek is already mapped to "
        f"'{tmp_path}'; give each key one path\n")  # fmt: skip
    dev = a_block_device()
    res = restore("-D", img, "--dry-run", "--external", f"mnt[ek]:{tmp}",
                  "--external", "dev[8:1]:/dev/null", "--external", f"dev[8/1]:{dev}",
                  tmp=tmp)  # fmt: skip
    assert (res.returncode, res.stderr) == (
        2, f"criu-fw: error: --external dev[8/1]:{dev}: device 8:1 is already mapped to "
        "'/dev/null'; give each device one path\n")  # fmt: skip
    # The same path twice is no contradiction.
    res = restore("-D", img, "--dry-run", "--external", f"mnt[ek]:{tmp}",
                  "--external", f"mnt[ek]:{tmp}", tmp=tmp)  # fmt: skip
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert f"copy of the mount at host path {tmp}" in res.stdout


def test_a_mapping_no_mount_uses_is_a_warning(tmp_path: Path, tmp: Path) -> None:
    img = images(tmp_path)
    dev = a_block_device()
    args = ["-D", img, "--external", f"mnt[ek]:{tmp}", "--external", f"mnt[ke]:{tmp_path}",
            "--external", f"dev[8:99]:{dev}"]
    warnings = (
        f"criu-fw: warning: --external mnt[ke]:{tmp_path}: no mount in the images has the "
        "key 'ke'; it is not used\n"
        f"criu-fw: warning: --external dev[8:99]:{dev}: no filesystem in the images was on "
        "device 8:99; it is not used\n"
    )
    dry = restore(*args, "--dry-run", tmp=tmp)
    assert (dry.returncode, dry.stderr) == (0, warnings)
    real = restore(*args, "--detach", tmp=tmp)
    assert (real.returncode, real.stderr) == (0, warnings)
    os.kill(int(real.stdout), 9)  # the holder, by the PID printed
    # Every mapping used: nothing said.
    dry = restore("-D", img, "--external", f"mnt[ek]:{tmp}", "--dry-run", tmp=tmp)
    assert (dry.returncode, dry.stderr) == (0, "")


def test_a_dry_run_fails_where_the_restore_would(tmp_path: Path, tmp: Path) -> None:
    img = images(tmp_path)
    gone = str(tmp_path / "gone")
    for extra, line in [
        (["--external", f"mnt[ek]:{gone}"],
         f"--external mnt[ek]:{gone}: No such file or directory"),
        (["--external", f"mnt[ek]:{tmp}", "--root", gone],
         f"--root {gone!r}: not a directory (the root of the restored tree)"),
        (["--external", f"mnt[ek]:{tmp}", "--allow-host", gone],
         f"--allow-host {gone!r}: no such directory"),
    ]:
        dry = restore("-D", img, *extra, "--dry-run", tmp=tmp)
        real = restore("-D", img, *extra, "--detach", tmp=tmp)
        for res in (dry, real):
            assert (res.returncode, res.stdout, res.stderr) == (
                2, "", f"criu-fw: error: {line}\n"), extra
    # A path the images name under a granted directory (--external-auto's keys) that is not
    # there: a failure, the same line before any request is printed.
    auto = images(tmp_path / "auto", key=gone)
    for mode in ("--dry-run", "--detach"):
        res = restore("-D", auto, "--allow-host", str(tmp_path), mode, tmp=tmp)
        assert (res.returncode, res.stdout, res.stderr) == (
            3, "", f"criu-fw: error: mount 2 at '/ext' (tmpfs, source 'e'): external mount "
            f"{gone!r}: No such file or directory\n")  # fmt: skip
    assert os.listdir(tmp) == []


def test_mount_images_alone_restore_and_a_damaged_process_set_is_refused(
    tmp_path: Path, tmp: Path
) -> None:
    # A directory of mount images alone (no pstree.img, no files.img) is a restore's whole
    # input: criu-fw restore rebuilds mount namespaces only. Nothing to say.
    img = images(tmp_path)
    assert sorted(os.listdir(img)) == [
        "fw-mountpoints-7.img", "inventory.img", "mountpoints-7.img"]  # fmt: skip
    res = restore("-D", img, "--external", f"mnt[ek]:{tmp}", "--dry-run", tmp=tmp)
    assert (res.returncode, res.stderr) == (0, "")
    # pstree.img names a root task whose ids image is missing: damaged, not read around
    # (the namespace came from inventory.img instead, unsaid); show refuses it too.
    write_image(os.path.join(img, "pstree.img"), "PSTREE",
                [pstree_pb2.pstree_entry(pid=42, ppid=0, pgid=42, sid=42)])  # fmt: skip
    line = (f"criu-fw: error: {img}/ids-42.img: missing: process 42 of pstree.img has no ids "
            "image\n")
    res = restore("-D", img, "--external", f"mnt[ek]:{tmp}", "--dry-run", tmp=tmp)
    assert (res.returncode, res.stdout, res.stderr) == (3, "", line)
    show = subprocess.run([sys.executable, "-m", "criu_fw", "show", img], capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip
    assert (show.returncode, show.stderr) == (3, line)
