"""``criu-fw show DIR``: the dumped mount trees with what the dump recorded per mount and the
processes' files on each; ``--files``, ``--json``; content archives, deleted roots' bytes and
ghost files shown, not refused; a broken directory is one line naming the file. Run as a
person runs the command, on a real dump."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.images import read_image, write_image
from criu_fw.proto import fdinfo_pb2
from criu_fw.testing import NamespaceScenario

HOLDER = """
import mmap, os, time
f = open("a/m", "r+b")
m = mmap.mmap(f.fileno(), 0)
os.close(os.open("ready", os.O_CREAT | os.O_WRONLY))
time.sleep(100000)
"""

#: A shared tmpfs ``a`` with its bind ``b`` and slave ``s``, an unbindable ``d``, ``e`` a bind
#: of a host directory dumped as external under ``ekey``, ``y`` a bind of a file deleted
#: afterwards (its bytes kept in fw-deleted-*.img); the process holds a/f (fd 7, read),
#: b/g (fd 8, write), a/gone deleted while open (fd 6), and maps a/m shared and writable.
SCRIPT = (
    "mkdir -p a b s d e hd && mount -t tmpfs srcA a && echo hi > a/f && echo mapped > a/m"
    " && mount --make-shared a && mount --bind a b && mount --bind a s && mount --make-slave s"
    " && mount -t tmpfs dd d && mount --make-unbindable d && mount --bind hd e"
    " && printf data > a/x && touch y && mount --bind a/x y && rm a/x"
    " && echo hello > a/gone && exec 6<a/gone && rm a/gone"
    " && exec 7<a/f 8>b/g"
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    """(image directory, the scenario's working directory, the dumped pid)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create mount namespaces")
    images = str(tmp_path_factory.mktemp("show") / "img")
    scn = NamespaceScenario(SCRIPT, keep_running=f"exec {sys.executable} -c '{HOLDER}'")
    try:
        for _ in range(1000):  # the holder's own fds and mapping, after the scenario is ready
            if os.path.exists(f"{scn.workdir}/ready"):
                break
            time.sleep(0.01)
        res = cli("dump", "-t", str(scn.pid), "-D", images, "--external-auto",
                  "--external", f"mnt[{scn.workdir}/e]:ekey")  # fmt: skip
        assert res.returncode == 0, res.stderr
        yield images, os.path.realpath(scn.workdir), scn.pid
    finally:
        scn.close()


def _rows(out: str) -> dict[str, list[str]]:
    """The mount lines of ``show DIR``: mountpoint (drawing stripped) -> the other cells."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 11 and cells[-1].isdigit():
            target = cells[0].lstrip("├└─│ ")
            rows[target.split(" (deleted root")[0]] = [target, *cells[1:]]
    return rows



@pytest.mark.privileged
def test_show_dir_draws_each_mount_with_what_the_dump_recorded(
    dumped: tuple[str, str, int],
) -> None:
    images, w, pid = dumped
    res = cli("show", images)
    assert (res.returncode, res.stderr) == (0, "")
    lines = res.stdout.splitlines()
    assert re.fullmatch(rf"{images}: 1 process, 1 mount namespace, \d+ mounts, \d+ open files, "
                        r"\d+ file mappings, \d+ content images \([\d,]+ bytes\)", lines[0])
    assert lines[2].startswith(f"mount namespace 1 (root; processes {pid}): ")
    assert lines[3].split() == ["TARGET", "SOURCE", "FSTYPE", "DRIVER", "PROPAGATION",
                                "EXTERNAL", "CONTENT", "BYTES", "FILES", "MAPS", "ID"]
    rows = _rows(res.stdout)
    a, b, s, d, e, y = (rows[f"{w}/{n}"] for n in "absdey")
    archive = a[6]
    assert re.fullmatch(r"tmpfs-dev-\d+\.tar\.gz\.img", archive)
    size = str(os.stat(f"{images}/{archive}").st_size)
    shared = a[4]
    assert re.fullmatch(r"shared:\d+", shared)
    # source, fstype, driver, propagation, external, content, bytes, files, maps
    assert a[1:10] == ["srcA", "tmpfs", "generic", shared, "-", archive, size, "4", "1"]
    assert b[1:10] == ["srcA", "tmpfs", "generic", shared, "-", archive, size, "1", "-"]
    assert s[4] == shared.replace("shared", "master")
    assert d[2:5] == ["tmpfs", "generic", "unbindable"] and d[6] != archive
    assert e[5:7] == ["ekey", "-"]
    deleted = next(n for n in os.listdir(images) if n.startswith("fw-deleted-"))
    assert y[0].endswith(f"/y (deleted root: {deleted}, 4 bytes)")
    # Drawn as a tree: the scenario's mounts hang under the root, the last one with └─.
    last = [line for line in lines if f"{w}/" in line][-1]
    assert last.startswith("└─") and all(
        line.startswith("├─") for line in lines if f"{w}/" in line and line != last)
    assert lines[-2].split() == ["PID", "PPID", "MNT_NS", "FILES", "MAPS", "EXE"]
    assert lines[-1].split()[:3] == [str(pid), "0", "1"]


@pytest.mark.privileged
def test_show_dir_files_lists_each_file_under_its_mount(dumped: tuple[str, str, int]) -> None:
    images, w, pid = dumped
    res = cli("show", images, "--files")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"├─{w}/a "))
    assert lines[at + 1:at + 6] == [
        f"│   · {pid} fd 3 rw {w}/a/m",  # the holder's open() of the mapped file
        f"│   · {pid} fd 4 rw {w}/a/m",  # and mmap's own duplicate of it
        f"│   · {pid} fd 6 r {w}/a/gone (deleted)",
        f"│   · {pid} fd 7 r {w}/a/f",
        f"│   · {pid} map rw {w}/a/m",
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith(f"├─{w}/b "))
    assert lines[at + 1] == f"│   · {pid} fd 8 w {w}/b/g"
    assert lines[at + 2].startswith(f"├─{w}/s ")
    # Without --files: counts only.
    assert " · " not in cli("show", images).stdout


@pytest.mark.privileged
def test_show_dir_json(dumped: tuple[str, str, int]) -> None:
    images, w, pid = dumped
    res = cli("show", images, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["format"], doc["image_dir"], doc["root_namespace"]) == (1, images, 1)
    (ns,) = doc["namespaces"]
    assert ns["id"] == 1 and ns["root"] is True
    mounts = {m["mountpoint"]: m for m in ns["mounts"]}
    ids = {m["mnt_id"] for m in ns["mounts"]}
    assert ns["mounts"][0]["depth"] == 0 and all(
        m["parent_id"] in ids for m in ns["mounts"][1:])
    a = mounts[f"{w}/a"]
    assert a["propagation"]["shared"] == mounts[f"{w}/s"]["propagation"]["master"] > 0
    assert a["content"] == {"image": a["content"]["image"],
                            "bytes": os.stat(f"{images}/{a['content']['image']}").st_size}
    assert (a["driver"], a["external"], a["open_files"], a["mapped_areas"]) == (
        "generic", None, 4, 1)
    assert mounts[f"{w}/d"]["propagation"]["unbindable"] is True
    assert mounts[f"{w}/e"]["external"] == "ekey"
    gone = mounts[f"{w}/y"]["deleted_root"]
    assert gone["content"]["bytes"] == 4 and gone["mode"].startswith("100")
    (proc,) = doc["processes"]
    assert (proc["pid"], proc["mnt_ns"]) == (pid, 1)
    by_fd = {f["fd"]: f for f in proc["files"] if f["use"] == "fd"}
    assert by_fd[7] | {"pos": 0} == {
        "pid": pid, "use": "fd", "fd": 7, "type": "REG", "path": f"{w}/a/f",
        "mnt_id": a["mnt_id"], "flags": by_fd[7]["flags"], "access": "r", "pos": 0,
        "size": 3, "areas": 1, "deleted": False}  # fmt: skip
    assert by_fd[6]["deleted"] is True
    (mapping,) = [f for f in proc["files"] if f["use"] == "map" and f["mnt_id"] == a["mnt_id"]]
    assert (mapping["path"], mapping["access"]) == (f"{w}/a/m", "rw")


@pytest.mark.privileged
def test_show_a_content_archive_lists_its_members_like_tar(
    dumped: tuple[str, str, int],
) -> None:
    images, w, _ = dumped
    mounts = json.loads(cli("show", images, "--json").stdout)["namespaces"][0]["mounts"]
    archive = images + "/" + next(
        m["content"]["image"] for m in mounts if m["mountpoint"] == f"{w}/a")
    res = subprocess.run([sys.executable, "-m", "criu_fw", "show", archive], capture_output=True,
                         text=True, check=False, env={**os.environ, "TZ": "UTC"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    head, *members = res.stdout.splitlines()
    size = os.path.getsize(archive)
    assert head == (f"{archive}: content archive (gzip'd tar), {size} bytes; members as tar -tv "
                    "lists them:")  # fmt: skip
    tar = subprocess.run(["tar", "-tvzf", archive], capture_output=True, text=True, check=True,
                         env={**os.environ, "TZ": "UTC"}).stdout.splitlines()  # fmt: skip
    # Same members, modes, owners, sizes, times and names (column widths aside).
    assert [m.split() for m in members] == [t.split() for t in tar]
    assert any(m.split()[-1] == "./f" for m in members)
    doc = json.loads(cli("show", archive, "--json").stdout)
    assert (doc["kind"], doc["bytes"]) == ("content-archive", size)
    assert {"name": "./f", "type": "-", "size": 3}.items() <= next(
        m for m in doc["members"] if m["name"] == "./f").items()


@pytest.mark.privileged
def test_show_deleted_root_bytes_and_ghost_files(dumped: tuple[str, str, int]) -> None:
    images, _, _ = dumped
    name = next(n for n in os.listdir(images) if n.startswith("fw-deleted-"))
    ns_id, mnt_id = name[len("fw-deleted-"):-len(".img")].split("-")
    res = cli("show", f"{images}/{name}")
    assert (res.returncode, res.stdout) == (0, (
        f"{images}/{name}: the bytes of the file that mount {mnt_id} of mount namespace "
        f"{ns_id} had as its root when it was deleted (the restore makes the file again, "
        "binds it and unlinks it): 4 bytes\n"))
    assert json.loads(cli("show", f"{images}/{name}", "--json").stdout) == {
        "kind": "deleted-root", "ns_id": int(ns_id), "mnt_id": int(mnt_id), "bytes": 4}
    shown = [json.loads(cli("show", f"{images}/{n}").stdout)
             for n in sorted(os.listdir(images)) if n.startswith("ghost-file-")]
    assert {g["magic"] for g in shown} == {"GHOST_FILE"}
    assert 6 in [g["content_bytes"] for g in shown]  # a/gone: "hello\n"
    remap = json.loads(cli("show", f"{images}/remap-fpath.img").stdout)
    assert remap["magic"] == "REMAP_FPATH" and len(remap["entries"]) == len(shown)


def _copy(images: str, to: Path) -> Path:
    shutil.copytree(images, to)
    return to


@pytest.mark.privileged
def test_a_broken_directory_is_one_line_naming_the_file(
    dumped: tuple[str, str, int], tmp_path: Path,
) -> None:
    images, _, pid = dumped
    # An fd whose file id names no entry of files.img.
    d = _copy(images, tmp_path / "a")
    fdinfo = next(d.glob("fdinfo-*.img"))
    entries = read_image(str(fdinfo), fdinfo_pb2.fdinfo_entry)
    entries[0].id = 9999
    write_image(str(fdinfo), "FDINFO", entries)
    res = cli("show", str(d))
    assert (res.returncode, res.stdout, res.stderr) == (3, "", (
        f"criu-fw: error: {fdinfo}: entry 0: fd {entries[0].fd} of process {pid}: file id "
        "9999 is not in files.img\n"))
    # A process without its ids image.
    d = _copy(images, tmp_path / "b")
    (d / f"ids-{pid}.img").unlink()
    res = cli("show", str(d))
    assert (res.returncode, res.stderr) == (3, (
        f"criu-fw: error: {d}/ids-{pid}.img: missing: process {pid} of pstree.img has no "
        "ids image\n"))
    # A truncated mount image, as restore and verify would refuse it.
    d = _copy(images, tmp_path / "c")
    mnts = d / "mountpoints-1.img"
    mnts.write_bytes(mnts.read_bytes()[:-3])
    res = cli("show", str(d))
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr.startswith(f"criu-fw: error: {mnts}: entry ") and res.stderr.count(
        "\n") == 1
    # Not an image directory at all.
    res = cli("show", str(tmp_path))
    assert (res.returncode, res.stderr) == (
        3, f"criu-fw: error: {tmp_path}/inventory.img: missing: not a criu-fw image directory\n")


@pytest.mark.privileged
def test_show_options_that_do_not_apply_are_usage_mistakes(
    dumped: tuple[str, str, int],
) -> None:
    images, _, _ = dumped
    res = cli("show", images, "--raw")
    assert (res.returncode, res.stderr) == (
        2, "criu-fw: error: --raw: for an image file; an image directory is shown as a tree\n")
    res = cli("show", f"{images}/pstree.img", "--files")
    assert (res.returncode, res.stderr) == (
        2, f"criu-fw: error: --files: for an image directory; {images}/pstree.img is not a "
        "directory\n")  # fmt: skip
    # An image file is still the JSON it always was.
    res = cli("show", f"{images}/pstree.img")
    assert res.returncode == 0 and json.loads(res.stdout)["magic"] == "PSTREE"


@pytest.mark.privileged
def test_show_a_directory_without_criu_fw_images(
    dumped: tuple[str, str, int], tmp_path: Path,
) -> None:
    """What CRIU's own images hold is shown from them alone (docs/criu-compat.md)."""
    images, w, pid = dumped
    d = _copy(images, tmp_path / "criu")
    for extra in d.glob("fw-*"):
        extra.unlink()
    res = cli("show", str(d))
    assert res.returncode == 0, res.stderr
    rows = _rows(res.stdout)
    archive = rows[f"{w}/a"][6]
    size = str(os.path.getsize(f"{d}/{archive}"))
    assert rows[f"{w}/a"][1:10] == ["srcA", "tmpfs", "generic", rows[f"{w}/a"][4], "-",
                                    archive, size, "4", "1"]  # fmt: skip
    assert rows[f"{w}/s"][4] == rows[f"{w}/a"][4].replace("shared", "master")
    assert rows[f"{w}/y"][0].endswith("/y (deleted root)")  # its bytes were criu-fw's
    assert f"mount namespace 1 (root; processes {pid}): " in res.stdout


def test_show_archive_names_links_and_devices_like_tar(tmp_path: Path) -> None:
    import io
    import tarfile

    path = tmp_path / "tmpfs-dev-9.tar.gz.img"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, kind: bytes, **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, 0, 0o644
            for k, v in kw.items():
                setattr(info, k, v)
            data = b"x" * info.size
            tar.addfile(info, io.BytesIO(data) if data else None)

        add(".", tarfile.DIRTYPE, mode=0o755)
        add("./f", tarfile.REGTYPE, size=5)
        add("./h", tarfile.LNKTYPE, linkname="./f")
        add("./l", tarfile.SYMTYPE, linkname="f", mode=0o777)
        add("./null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("./new\nline", tarfile.REGTYPE)
    env = {**os.environ, "TZ": "UTC"}
    res = subprocess.run([sys.executable, "-m", "criu_fw", "show", str(path)],
                         capture_output=True, text=True, check=False, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1:] == [
        "drwxr-xr-x 0/0         0 1970-01-01 00:00 ./",
        "-rw-r--r-- 0/0         5 1970-01-01 00:00 ./f",
        "hrw-r--r-- 0/0         0 1970-01-01 00:00 ./h link to ./f",
        "lrwxrwxrwx 0/0         0 1970-01-01 00:00 ./l -> f",
        "crw-r--r-- 0/0       1,3 1970-01-01 00:00 ./null",
        "-rw-r--r-- 0/0         0 1970-01-01 00:00 ./new\\x0aline",  # one member, one line
    ]


def test_a_broken_archive_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "tmpfs-dev-9.tar.gz.img"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage")
    res = cli("show", str(path))
    assert res.returncode == 3
    assert res.stderr.startswith(f"criu-fw: error: {path}: not a readable gzip'd tar archive: ")
    assert res.stderr.count("\n") == 1
    link = tmp_path / "fw-deleted-1-2.img"
    link.symlink_to("/etc/hostname")  # never followed
    res = cli("show", str(link))
    assert (res.returncode, res.stderr) == (
        3, f"criu-fw: error: {link}: is a symbolic link, not an image file\n")
