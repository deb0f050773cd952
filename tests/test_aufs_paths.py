"""Branch paths to container paths, and the fd/mapping fixups of the AUFS driver.

The kernel here has no AUFS (it is not in mainline), so the files below stand in for what
AUFS shows: links into branch directories, and a --root directory with the container's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from criu_fw.context import DumpContext
from criu_fw.errors import DumpError
from criu_fw.files import FileIdentity, FileMapping, OpenFile
from criu_fw.fsdrivers.aufs.branches import Branch
from criu_fw.fsdrivers.aufs.driver import AufsDriver
from criu_fw.fsdrivers.aufs.fixups import stat_under
from criu_fw.fsdrivers.aufs.paths import BranchIndex
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.model import Dev
from fixtures.aufs.recording import (
    BASE_LAYER,
    BRANCHES,
    HOST_MNT_ID,
    NGINX_LAYER,
    SI,
    branch_lines,
    write_branches,
)


def index(*paths: str) -> BranchIndex:
    return BranchIndex.build(Branch(p, "ro") for p in paths)


def test_whole_components_only() -> None:
    idx = index("/a/b", "/a/bc")
    r = idx.resolve("/a/bc/file")
    assert r is not None and (r.branch.path, r.path) == ("/a/bc", "/file")
    r = idx.resolve("/a/b/file")
    assert r is not None and (r.branch.path, r.path) == ("/a/b", "/file")
    assert idx.resolve("/a/bcd/file") is None
    assert idx.resolve("/a/file") is None


def test_longest_branch_wins_whatever_the_order() -> None:
    for order in (("/d", "/d/inner"), ("/d/inner", "/d")):
        r = index(*order).resolve("/d/inner/bin/sh")
        assert r is not None and (r.branch.path, r.path) == ("/d/inner", "/bin/sh")


def test_trailing_and_double_slashes() -> None:
    idx = index("/var/lib/layer/", "/other//dir")
    r = idx.resolve("/var/lib/layer/bin/nginx")
    assert r is not None and r.path == "/bin/nginx" and r.branch.path == "/var/lib/layer/"
    r = idx.resolve("/other/dir/etc/")
    assert r is not None and r.path == "/etc"
    r = idx.resolve("/var/lib/layer/")
    assert r is not None and r.path == "/"


def test_deleted_suffix_stays_on_the_name() -> None:
    r = index("/l").resolve("/l/tmp/x.so (deleted)")
    assert r is not None and r.path == "/tmp/x.so (deleted)"


def test_non_utf8_names_survive() -> None:
    branch = os.fsdecode(b"/layers/caf\xe9")
    r = index(branch).resolve(os.fsdecode(b"/layers/caf\xe9/bin/\xff\xfe"))
    assert r is not None and os.fsencode(r.path) == b"/bin/\xff\xfe"


def test_relative_and_outside_paths_are_not_in_a_branch() -> None:
    idx = index("/l")
    assert idx.resolve("l/x") is None
    assert idx.resolve("/") is None


# -- fixups through the driver -------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path) -> tuple[DumpContext, Path]:
    sys_root = tmp_path / "sys"
    write_branches(sys_root, SI, branch_lines(BRANCHES))
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nginx").write_bytes(b"nginx")
    ctx = DumpContext(image_dir=str(tmp_path / "img"), sys_root=str(sys_root), recorded=True)
    ctx.root = str(root)
    return ctx, root


MOUNT = parse_line(f"90 61 0:33 / / rw,relatime - aufs none rw,si={SI}".encode())


def identity(path: Path) -> FileIdentity:
    st = os.stat(path)
    return FileIdentity(Dev.from_kdev(st.st_dev), st.st_ino)


def test_mapping_in_a_branch_gets_container_path_identity_and_no_mount(
    setup: tuple[DumpContext, Path],
) -> None:
    ctx, root = setup
    branch_ident = FileIdentity(Dev(8, 1), 1000)
    vma = FileMapping(
        42, 0x400000, 0x489000, 0, 5, False, f"{NGINX_LAYER}/bin/nginx", HOST_MNT_ID, branch_ident
    )
    out = AufsDriver().fixup_vma(vma, MOUNT, ctx)
    assert out is not None
    assert out.path == "/bin/nginx"
    assert out.mnt_id is None
    assert out.identity == identity(root / "bin" / "nginx") != branch_ident


def test_fd_with_host_mount_id_is_fixed(setup: tuple[DumpContext, Path]) -> None:
    ctx, root = setup
    f = OpenFile(42, 5, f"{NGINX_LAYER}/bin/nginx", 0, 0, HOST_MNT_ID, 5, 0o100755)
    out = AufsDriver().fixup_fd_path(f, MOUNT, ctx)
    assert out is not None
    assert (out.path, out.mnt_id, out.identity) == (
        "/bin/nginx",
        None,
        identity(root / "bin/nginx"),
    )


def test_link_outside_every_branch_is_left_alone(setup: tuple[DumpContext, Path]) -> None:
    ctx, _ = setup
    f = OpenFile(42, 3, "/var/log/nginx/access.log", 0, 0, 90, 0, 0o100644)
    assert AufsDriver().fixup_fd_path(f, MOUNT, ctx) is None
    vma = FileMapping(42, 0x1000, 0x2000, 0, 5, False, "/usr/lib/other.so", 90)
    assert AufsDriver().fixup_vma(vma, MOUNT, ctx) is None


def test_deleted_file_keeps_deleted_and_needs_no_file_under_root(
    setup: tuple[DumpContext, Path],
) -> None:
    ctx, _ = setup
    # Whether the core strips " (deleted)" into the flag or leaves it on the path, it stays.
    gone = FileMapping(
        42,
        0x1000,
        0x2000,
        0,
        5,
        False,
        f"{BASE_LAYER}/tmp/x.so",
        HOST_MNT_ID,
        FileIdentity(Dev(8, 1), 7),
        deleted=True,
    )
    out = AufsDriver().fixup_vma(gone, MOUNT, ctx)
    assert out is not None and (out.path, out.deleted, out.mnt_id) == ("/tmp/x.so", True, None)
    assert out.identity is None
    suffixed = OpenFile(42, 7, f"{BASE_LAYER}/tmp/y (deleted)", 0, 0, HOST_MNT_ID, 0, 0o100644)
    fixed = AufsDriver().fixup_fd_path(suffixed, MOUNT, ctx)
    assert fixed is not None and fixed.path == "/tmp/y (deleted)" and fixed.mnt_id is None


def test_file_missing_under_root_is_an_error_naming_it(setup: tuple[DumpContext, Path]) -> None:
    ctx, _ = setup
    vma = FileMapping(
        42, 0x7F0000000000, 0x7F00001C0000, 0, 5, False, f"{BASE_LAYER}/lib/libc.so.6", HOST_MNT_ID
    )
    with pytest.raises(
        DumpError,
        match=r"pid 42 mapping 7f0000000000-7f00001c0000: '/lib/libc"
        r"\.so\.6' \(in AUFS branch br3 .*\) cannot be checked under root .*ENOENT",
    ):
        AufsDriver().fixup_vma(vma, MOUNT, ctx)


def test_recorded_dump_without_root_is_an_error(setup: tuple[DumpContext, Path]) -> None:
    ctx, _ = setup
    ctx.root = None
    f = OpenFile(42, 5, f"{NGINX_LAYER}/bin/nginx", 0, 0, HOST_MNT_ID, 5, 0o100755)
    with pytest.raises(DumpError, match=r"pid 42 fd 5: .*needs the container's root.*--root"):
        AufsDriver().fixup_fd_path(f, MOUNT, ctx)


def test_other_fstype_is_not_touched(setup: tuple[DumpContext, Path]) -> None:
    ctx, _ = setup
    tmpfs = parse_line(b"92 90 0:36 / /dev rw - tmpfs tmpfs rw")
    f = OpenFile(42, 5, f"{NGINX_LAYER}/bin/nginx", 0, 0, HOST_MNT_ID, 5, 0o100755)
    assert AufsDriver().fixup_fd_path(f, tmpfs, ctx) is None
    assert AufsDriver().fixup_fd_path(f, None, ctx) is None


def test_stat_under_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "x").write_text("inside")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x").write_text("host")
    # An absolute symlink in the container would point at the host's /lib if followed.
    (root / "lib").symlink_to(str(tmp_path / "lib"))
    assert stat_under(str(root), "/usr/lib/x").st_ino == os.stat(root / "usr/lib/x").st_ino
    with pytest.raises(OSError):
        stat_under(str(root), "/lib/x")
    with pytest.raises(OSError):
        stat_under(str(root), "/usr/../../lib/x")
