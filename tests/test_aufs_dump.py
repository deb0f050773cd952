"""Dumping an nginx container on AUFS from a recorded /proc and /sys, and restoring it.

The kernel here has no AUFS (it is not in mainline), so the container cannot run: these tests
dump a recording of a Docker host's /proc and /sys (tests/fixtures/aufs/recording.py) with
``proc_root``/``sys_root``, take identities under a --root directory of plain files, and
restore with a recording mount layer against a recorded /proc/filesystems.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.errors import CriuFwError
from criu_fw.images import read_image
from criu_fw.kernel.mountops import RecordingMountOps
from criu_fw.proto import fdinfo_pb2, mm_pb2
from criu_fw.restore import restore
from fixtures.aufs.recording import (
    AUFS_ROOT_ID,
    BASE_LAYER,
    BRANCHES,
    MOUNTINFO,
    NGINX_LAYER,
    PID,
    SI,
    Fd,
    Mapping_,
    Recording,
    build,
    default_fds,
    default_mappings,
)


def run_dump(rec: Recording, out: Path, root: Path | None = None) -> Path:
    dump(
        rec.pid,
        str(out),
        proc_root=str(rec.proc),
        sys_root=str(rec.sys),
        root=str(root if root is not None else rec.root),
    )
    return out


def files_by_id(img: Path) -> dict[int, fdinfo_pb2.file_entry]:
    return {e.id: e for e in read_image(str(img / "files.img"), fdinfo_pb2.file_entry)}


def file_vmas(img: Path) -> list[tuple[mm_pb2.vma_entry, str, int]]:
    """(vma, file name, file mnt_id) of every file-backed mapping of the dumped nginx."""
    (mm,) = read_image(str(img / f"mm-{PID}.img"), mm_pb2.mm_entry)
    files = files_by_id(img)
    out = []
    for v in mm.vmas:
        if v.status & ((1 << 6) | (1 << 7)):  # VMA_FILE_PRIVATE | VMA_FILE_SHARED
            reg = files[v.shmid].reg
            out.append((v, reg.name, reg.mnt_id))
    return out


def fds(img: Path) -> dict[int, tuple[str, int]]:
    files = files_by_id(img)
    (table,) = [p for p in img.iterdir() if p.name.startswith("fdinfo-")]
    return {
        e.fd: (files[e.id].reg.name, files[e.id].reg.mnt_id)
        for e in read_image(str(table), fdinfo_pb2.fdinfo_entry)
    }


def test_mappings_get_container_paths_and_no_mount(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    img = run_dump(rec, tmp_path / "img")
    got = [(v.start, name, mnt) for v, name, mnt in file_vmas(img)]
    assert got == [
        (0x400000, "/bin/nginx", -1),
        (0x689000, "/bin/nginx", -1),
        (0x7F0000000000, "/lib/x86_64-linux-gnu/libc.so.6", -1),
    ]


def test_fd_with_the_hosts_mount_22_is_fixed_the_others_left_alone(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    img = run_dump(rec, tmp_path / "img")
    assert fds(img) == {
        3: ("/var/log/nginx/access.log", AUFS_ROOT_ID),  # opened through AUFS: right already
        4: ("/dev/null", 92),  # on tmpfs: not the AUFS driver's
        5: ("/bin/nginx", -1),  # opened through map_files: branch path, host mount 22
    }


def test_both_nginx_mappings_share_one_file_and_exe_is_untouched(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    img = run_dump(rec, tmp_path / "img")
    vma_ids = {v.shmid for v, name, _ in file_vmas(img) if name == "/bin/nginx"}
    assert len(vma_ids) == 1  # same container path, same identity under --root
    (mm,) = read_image(str(img / f"mm-{PID}.img"), mm_pb2.mm_entry)
    exe = files_by_id(img)[mm.exe_file_id].reg
    # /proc/PID/exe shows the AUFS path already: left alone, on the container's AUFS root.
    assert (exe.name, exe.mnt_id) == ("/bin/nginx", AUFS_ROOT_ID)


def test_branch_list_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = build(tmp_path / "rec")
    with caplog.at_level(logging.INFO, logger="criu_fw.aufs"):
        run_dump(rec, tmp_path / "img")
    lines = [r.getMessage() for r in caplog.records if r.name == "criu_fw.aufs"]
    assert lines == [f"aufs si={SI} branches={len(BRANCHES)}"] + [
        f"aufs si={SI} br{i} {perm} {path}" for i, (path, perm) in enumerate(BRANCHES)
    ]


@pytest.mark.crit
def test_crit_shows_container_paths(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    img = run_dump(rec, tmp_path / "img")
    out = subprocess.run(
        ["crit", "x", str(img), "mems"], check=True, capture_output=True, text=True
    ).stdout
    assert "00400000-00489000                   r-x /bin/nginx\n" in out
    assert "/lib/x86_64-linux-gnu/libc.so.6" in out
    assert "/var/lib/docker" not in out
    fds_out = subprocess.run(
        ["crit", "x", str(img), "fds"], check=True, capture_output=True, text=True
    ).stdout
    assert "5: /bin/nginx" in fds_out and "/var/lib/docker" not in fds_out


def test_edge_cases_in_one_dump(tmp_path: Path) -> None:
    """Prefix branches, a trailing slash, a link outside every branch, a deleted file and a
    name that is not UTF-8, all in one recorded container."""
    branches = [
        ("/srv/layers/b", "rw"),
        ("/srv/layers/bc/", "ro+wh"),  # a prefix of nothing: /srv/layers/b is not its parent
        (BASE_LAYER, "ro+wh"),
    ]
    odd = os.fsdecode(b"/bin/caf\xe9")
    files = {"/bin/tool": "", "/bin/sh": "", odd: "", "/lib/x86_64-linux-gnu/libc.so.6": ""}
    maps = [
        Mapping_(0x400000, 0x401000, "r-xp", 0, "/srv/layers/bc/bin/tool"),
        Mapping_(0x500000, 0x501000, "r-xp", 0, "/srv/layers/b/bin/sh"),
        Mapping_(0x600000, 0x601000, "r-xp", 0, os.fsdecode(b"/srv/layers/b/bin/caf\xe9")),
        Mapping_(0x700000, 0x701000, "r-xp", 0, "/srv/layers/bcd/outside.so"),
        Mapping_(0x800000, 0x801000, "r-xp", 0, f"{BASE_LAYER}/tmp/gone.so (deleted)"),
        Mapping_(
            0x7F0000000000,
            0x7F0000001000,
            "r-xp",
            0,
            f"{BASE_LAYER}/lib/x86_64-linux-gnu/libc.so.6",
        ),
    ]
    rec = build(tmp_path / "rec", mappings=maps, branches=branches, files=files, fds=[])
    img = run_dump(rec, tmp_path / "img")
    got = {v.start: (name, mnt) for v, name, mnt in file_vmas(img)}
    assert got[0x400000] == ("/bin/tool", -1)
    assert got[0x500000] == ("/bin/sh", -1)
    assert got[0x600000] == ("/bin/caf\\xe9", -1)  # CRIU's string field: escaped, not lost
    # Outside every branch: the path is left as the kernel showed it.
    assert got[0x700000][0] == "/srv/layers/bcd/outside.so"
    # Deleted: mapped by its container path; no file under --root is needed for it.
    assert got[0x800000] == ("/tmp/gone.so", -1)
    assert got[0x7F0000000000] == ("/lib/x86_64-linux-gnu/libc.so.6", -1)


def test_file_missing_under_root_fails_the_dump_naming_it(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    (rec.root / "lib" / "x86_64-linux-gnu" / "libc.so.6").unlink()
    with pytest.raises(
        CriuFwError,
        match=r"driver 'aufs'.*mapping 7f0000000000-7f00001c0000: "
        r"'/lib/x86_64-linux-gnu/libc\.so\.6' \(in AUFS branch br3 .*ENOENT",
    ):
        run_dump(rec, tmp_path / "img")
    assert not (tmp_path / "img").exists()


def test_malformed_sysfs_fails_the_dump_naming_the_file(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    rec.branch_file(2).write_bytes(b"/var/lib/docker/aufs/diff/x=ro=wh\n")
    with pytest.raises(
        CriuFwError,
        match=r"driver 'aufs'.*si_4476a910a24617e6/br2: branch path "
        r"contains '='",
    ):
        run_dump(rec, tmp_path / "img")


def test_round_trip_to_the_exact_aufs_request(tmp_path: Path) -> None:
    rec = build(tmp_path / "rec")
    img = run_dump(rec, tmp_path / "img")
    proc = tmp_path / "restoring-proc"
    proc.mkdir()
    (proc / "filesystems").write_text("nodev\tproc\nnodev\ttmpfs\nnodev\taufs\n")
    ops = RecordingMountOps()
    restore(str(img), ops=ops, proc_root=str(proc))
    (call,) = [c for c in ops.of("new_superblock") if c.fstype == "aufs"]
    br = ":".join(f"{p}={perm}" for p, perm in BRANCHES)
    assert (call.source, call.legacy_data, call.params) == ("none", f"br:{br}", (("br", br),))


def test_default_fixture_is_what_the_docstring_says() -> None:
    # Guard the fixture itself: map_files into two different branches, fd 5 on host mount 22.
    targets = {m.target.rsplit("/", 2)[0] for m in default_mappings()}
    assert any(t.startswith(NGINX_LAYER) for t in targets)
    assert any(t.startswith(BASE_LAYER) for t in targets)
    assert Fd(5, f"{NGINX_LAYER}/bin/nginx", 22) in default_fds()


def test_which_driver_handled_what(tmp_path: Path) -> None:
    from criu_fw.api.tracing import Tracer

    rec = build(tmp_path / "rec")
    tracer = Tracer()
    dump(
        rec.pid,
        str(tmp_path / "img"),
        proc_root=str(rec.proc),
        sys_root=str(rec.sys),
        root=str(rec.root),
        plugins=[tracer],
    )
    parsed = {s.split(" (")[0]: d for h, d, s in tracer.calls("parse_mount")}
    assert parsed == {
        "mount 90 at '/'": "aufs",
        "mount 91 at '/proc'": "generic",
        "mount 92 at '/dev'": "generic",
    }
    vmas = tracer.calls("fixup_vma")
    assert len(vmas) == 3 and {d for _, d, _ in vmas} == {"aufs"}
    by_path = {s.split(" on ")[0]: d for _, d, s in tracer.calls("fixup_fd_path")}
    assert by_path[repr(f"{NGINX_LAYER}/bin/nginx")] == "aufs"  # fdinfo said host mount 22
    assert by_path["'/dev/null'"] == "generic"


def test_volume_over_the_branch_directories_does_not_hide_branch_paths(tmp_path: Path) -> None:
    # A Docker volume at /var: inside the container, /var/lib/docker/aufs/diff/... (where the
    # map_files links point) lands on the volume's mount, not on the AUFS root. The AUFS
    # driver claims that mount, so the links are still turned into container paths.
    mountinfo = MOUNTINFO + (
        "93 90 8:1 /var/lib/docker/volumes/v/_data /var rw,relatime - ext4 /dev/sda1 rw\n"
    )
    rec = build(tmp_path / "rec", mountinfo=mountinfo)
    img = tmp_path / "img"
    dump(
        rec.pid,
        str(img),
        proc_root=str(rec.proc),
        sys_root=str(rec.sys),
        root=str(rec.root),
        externals={"/var": "vol"},
    )
    assert [(name, mnt) for _, name, mnt in file_vmas(img)] == [
        ("/bin/nginx", -1),
        ("/bin/nginx", -1),
        ("/lib/x86_64-linux-gnu/libc.so.6", -1),
    ]
    assert fds(img)[5] == ("/bin/nginx", -1)
