"""``criu-fw merge``: criu-fw's mount images put into an image directory CRIU wrote for the
same processes, under CRIU's numbers for the mount namespaces.

CRIU 4.2 is not packaged here: its directory is made as CRIU lays it out, from the same dump's
process images, with CRIU's own namespace number (9, from its counter) in each
``ids-<pid>.img`` and a mount image of CRIU's under that number. The merged directory must
then restore (criu-fw reads the root namespace from pstree and ids, as CRIU does) to the
dumped tree: a deleted bind root's bytes included, whose image is renamed with its reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from criu_fw.images import read_image, write_image
from criu_fw.proto import core_pb2, fwstate_pb2, pstree_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "criu_fw"]
SCRIPT = r"""
mkdir t; mount -t tmpfs src t
mkdir -p t/src/sub t/b1; echo hello > t/src/sub/f
printf 'only\000name' > t/src/gone-file; touch t/b2
mount --bind t/src/sub t/b1
mount --bind t/src/gone-file t/b2
rm t/src/gone-file
"""
SHOW = r"""
grep " $W/t" /proc/self/mountinfo | cut -d' ' -f4,5 | sort
echo ==; cat $W/t/b2; echo; cat $W/t/b1/f
"""
CRIU_NS = 9


def _table(pid: int, workdir: str) -> str:
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return "".join(sorted(
        f"{f[3]} {f[4]}\n" for f in (line.split() for line in lines)
        if f[4].startswith(f"{workdir}/t")
    ))


def _criu_dir(fw: Path, where: Path) -> Path:
    """A directory as CRIU 4.2 writes one for the same dump: its process images, its own
    namespace number in each ids image, and a mount image of its own under that number."""
    where.mkdir()
    for p in fw.iterdir():
        if p.name.startswith(("pstree", "inventory", "files", "fdinfo", "fs-", "mm-")):
            shutil.copy(p, where / p.name)
    for p in fw.glob("ids-*.img"):
        ids = read_image(str(p), core_pb2.task_kobj_ids_entry, kind="IDS")
        ids[0].mnt_ns_id = CRIU_NS
        write_image(str(where / p.name), "IDS", ids)
    (where / f"mountpoints-{CRIU_NS}.img").write_bytes(
        (fw / "mountpoints-1.img").read_bytes())  # CRIU's own, replaced by the merge
    return where


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    base = tmp_path_factory.mktemp("merge")
    with NamespaceScenario(SCRIPT) as scn:
        img = base / "fw"
        subprocess.run([*CLI, "dump", "-q", "-t", str(scn.pid), "-D", str(img), "--root", "/"],
                       check=True, capture_output=True, timeout=60)
        return img, scn.workdir, _table(scn.pid, scn.workdir)


def test_merged_images_restore_the_dumped_tree(
    dumped: tuple[Path, str, str], tmp_path: Path
) -> None:
    fw, workdir, before = dumped
    criu = _criu_dir(fw, tmp_path / "criu")
    res = subprocess.run([*CLI, "merge", "-D", str(fw), "--into", str(criu)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"(mount namespaces criu-fw -> CRIU: 1 -> {CRIU_NS}; 1 of CRIU's replaced)" in (
        res.stdout)
    names = sorted(os.listdir(criu))
    assert f"mountpoints-{CRIU_NS}.img" in names and f"fw-mountpoints-{CRIU_NS}.img" in names
    assert "mountpoints-1.img" not in names and "fw-mountpoints-1.img" not in names
    assert not [n for n in names if n.startswith(".criu-fw-merge-")]
    deleted = [n for n in names if n.startswith("fw-deleted-")]
    assert len(deleted) == 1 and deleted[0].startswith(f"fw-deleted-{CRIU_NS}-")
    assert (criu / deleted[0]).read_bytes() == b"only\0name"
    archives = sorted(n for n in names if n.startswith("tmpfs-dev-"))
    assert archives == sorted(p.name for p in fw.glob("tmpfs-dev-*.img"))
    # criu-fw's own image says CRIU's number, and names the renamed deleted root.
    entries = read_image(str(criu / f"fw-mountpoints-{CRIU_NS}.img"), fwstate_pb2.fw_entry,
                         kind="FW_MNTS")
    assert entries[0].header.ns_id == CRIU_NS
    assert [e.mount.deleted_root.content_image for e in entries[1:]
            if e.mount.deleted_root.HasField("content_image")] == deleted
    # CRIU's tools read the mount image.
    crit = subprocess.run(["crit", "decode", "-i", str(criu / f"mountpoints-{CRIU_NS}.img")],
                          capture_output=True, text=True, timeout=60)
    assert crit.returncode == 0 and '"magic": "MNTS"' in crit.stdout
    res = subprocess.run(
        ["unshare", "--net", "--ipc", *CLI, "restore", "-q", "-D", str(criu), "--root", "/",
         "--", "/bin/sh", "-c", SHOW],
        capture_output=True, text=True, timeout=60,
        env={"W": workdir, "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == before + "==\nonly\0name\nhello\n"


def test_a_dump_of_other_processes_is_refused(
    dumped: tuple[Path, str, str], tmp_path: Path
) -> None:
    fw, _, _ = dumped
    criu = _criu_dir(fw, tmp_path / "criu")
    tree = read_image(str(criu / "pstree.img"), pstree_pb2.pstree_entry, kind="PSTREE")
    old = tree[0].pid
    tree[0].pid = old + 100000
    write_image(str(criu / "pstree.img"), "PSTREE", tree)
    os.rename(criu / f"ids-{old}.img", criu / f"ids-{old + 100000}.img")
    before = sorted(os.listdir(criu))
    res = subprocess.run([*CLI, "merge", "-D", str(fw), "--into", str(criu)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr == (
        f"criu-fw: error: {fw} and {criu} are dumps of different process trees (root process "
        f"{old} and {old + 100000})\n")
    assert sorted(os.listdir(criu)) == before


def test_a_merge_that_fails_leaves_crius_directory_as_it_was(
    dumped: tuple[Path, str, str], tmp_path: Path
) -> None:
    fw, _, _ = dumped
    broken = tmp_path / "fw"
    shutil.copytree(fw, broken)
    for p in broken.glob("fw-deleted-*.img"):
        p.unlink()  # named by fw-mountpoints, gone: found while copying
    criu = _criu_dir(fw, tmp_path / "criu")
    before = {p.name: p.read_bytes() for p in criu.iterdir()}
    res = subprocess.run([*CLI, "merge", "-D", str(broken), "--into", str(criu)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert res.stderr.startswith(f"criu-fw: error: {broken}/fw-deleted-1-")
    assert res.stderr.endswith(".img: no such image file\n")
    assert {p.name: p.read_bytes() for p in criu.iterdir()} == before


@pytest.mark.parametrize("attack", ["link-in-dump", "link-in-criu-dir", "dir-in-the-way"])
def test_links_and_what_is_in_the_way_are_refused_before_anything_changes(
    dumped: tuple[Path, str, str], tmp_path: Path, attack: str
) -> None:
    """Images are untrusted on both sides: a link in the dump is not followed (it would copy
    any file of the host into CRIU's directory), a link or a directory where a file is to
    go is not written through or half-replaced."""
    fw, _, _ = dumped
    src = tmp_path / "fw"
    shutil.copytree(fw, src)
    criu = _criu_dir(fw, tmp_path / "criu")
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    archive = next(src.glob("tmpfs-dev-*.tar.gz.img")).name
    if attack == "link-in-dump":
        (src / archive).unlink()
        (src / archive).symlink_to("/etc/hostname")
    elif attack == "link-in-criu-dir":
        (criu / archive).symlink_to(victim)
    else:
        (criu / archive).mkdir()
        (criu / archive / "x").write_text("x")
    before = sorted(os.listdir(criu))
    crius = (criu / f"mountpoints-{CRIU_NS}.img").read_bytes()
    res = subprocess.run([*CLI, "merge", "-D", str(src), "--into", str(criu)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    want = {"link-in-dump": f"{src}/{archive}: is a symbolic link, not an image file",
            "link-in-criu-dir": f"{criu}/{archive}: is in the way: not a regular file",
            "dir-in-the-way": f"{criu}/{archive}: is in the way: not a regular file"}[attack]
    assert res.stderr.startswith(f"criu-fw: error: {want}"), res.stderr
    assert sorted(os.listdir(criu)) == before
    assert (criu / f"mountpoints-{CRIU_NS}.img").read_bytes() == crius
    assert victim.read_text() == "untouched\n"
