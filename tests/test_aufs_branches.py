"""AUFS superblock ids and branch lists, read from recorded sysfs trees.

The kernel here has no AUFS (it is not in mainline), so these tests use recorded
/sys/fs/aufs trees: plain files laid out as AUFS lays them out.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from criu_fw.context import DumpContext
from criu_fw.errors import DumpError
from criu_fw.fsdrivers.aufs.branches import Branch, log_lines, read_branches
from criu_fw.fsdrivers.aufs.driver import SUPERBLOCKS, AufsDriver, superblock
from criu_fw.fsdrivers.aufs.sbid import superblock_id
from criu_fw.kernel.mountinfo import parse_line, unescape
from criu_fw.model import MountTree
from fixtures.aufs.recording import BRANCHES, SI, branch_lines, write_branches

AUFS_LINE = f"90 61 0:33 / / rw,relatime - aufs none rw,si={SI}".encode()


def test_si_is_read_from_the_superblock_options() -> None:
    assert superblock_id(parse_line(AUFS_LINE)) == SI


@pytest.mark.parametrize(
    "si",
    ["", "4476a910a24617eg", "../../etc", "4476A910", "1" * 17, "0x12", "12 34"],
)
def test_si_that_aufs_could_not_have_printed_is_rejected(si: str) -> None:
    escaped = si.replace(" ", "\\040")
    line = f"90 61 0:33 / / rw - aufs none rw,si={escaped}".encode()
    with pytest.raises(DumpError, match=r"mount 90 at '/' \(aufs.*is not an AUFS superblock id"):
        superblock_id(parse_line(line))


def test_missing_si_is_an_error_naming_the_mount() -> None:
    with pytest.raises(DumpError, match=r"mount 90 at '/'.*no si= option"):
        superblock_id(parse_line(b"90 61 0:33 / / rw - aufs none rw,dio"))


def test_branches_are_read_in_numeric_order(tmp_path: Path) -> None:
    lines = branch_lines([(f"/layers/l{i}", "ro+wh") for i in range(12)])
    write_branches(tmp_path, SI, lines)
    got = read_branches(str(tmp_path), SI, "m")
    # br10 and br11 after br9, not after br1 (lexical order would put them there).
    assert [b.path for b in got] == [f"/layers/l{i}" for i in range(12)]


def test_branch_paths_are_unescaped_byte_for_byte(tmp_path: Path) -> None:
    raw = b"/var/lib/my\\040layer/caf\xe9\\134x=rr+wh\n"  # a space, a latin-1 byte, a backslash
    write_branches(tmp_path, SI, [raw, b"/top=rw\n"])
    got = read_branches(str(tmp_path), SI, "m")
    assert os.fsencode(got[0].path) == b"/var/lib/my layer/caf\xe9\\x"
    assert got[0].perm == "rr+wh"
    assert got[1] == Branch("/top", "rw")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"/a/b\n", "no '='"),
        (b"/a/b=x=rw\n", "branch path contains '='"),
        (b"/a/b=rx\n", "unknown branch permission 'rx'"),
        (b"/a/b=ro+WH\n", "unknown branch permission"),
        (b"a/b=rw\n", "is not absolute"),
        (b"/a=rw\n/b=rw\n", "more than one line"),
    ],
)
def test_malformed_branch_file_is_named_in_the_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    write_branches(tmp_path, SI, [b"/top=rw\n", content])
    with pytest.raises(DumpError, match=re.escape(f"si_{SI}/br1: ") + ".*" + re.escape(message)):
        read_branches(str(tmp_path), SI, "mount 90")


def test_missing_branch_in_the_middle(tmp_path: Path) -> None:
    d = write_branches(tmp_path, SI, branch_lines([("/a", "rw"), ("/b", "ro"), ("/c", "ro")]))
    (d / "br1").unlink()
    with pytest.raises(DumpError, match=r"mount 90: .*/br1 is missing while br2 exists"):
        read_branches(str(tmp_path), SI, "mount 90")


def test_no_branches_and_no_sysfs_directory(tmp_path: Path) -> None:
    (tmp_path / "fs" / "aufs" / f"si_{SI}").mkdir(parents=True)
    with pytest.raises(DumpError, match=r"no br0 in .*lists no branches"):
        read_branches(str(tmp_path), SI, "mount 90")
    with pytest.raises(DumpError, match=r"cannot list AUFS branches in .*si_1234: ENOENT"):
        read_branches(str(tmp_path), "1234", "mount 90")


def test_1000_branches_are_fine_but_not_1001(tmp_path: Path) -> None:
    lines = branch_lines([(f"/l/{i}", "ro") for i in range(1001)])
    d = write_branches(tmp_path, SI, lines[:1000], extras=False)
    assert len(read_branches(str(tmp_path), SI, "mount 90")) == 1000
    (d / "br1000").write_bytes(lines[1000])
    with pytest.raises(DumpError, match="has br1000: more than 1000 branches"):
        read_branches(str(tmp_path), SI, "mount 90")


def test_log_lines_are_stable_and_reversible() -> None:
    weird = os.fsdecode(b"/d/a b\tc\\d\xff")
    lines = log_lines("abc", (Branch("/d/top", "rw"), Branch(weird, "ro+wh")))
    assert lines == [
        "aufs si=abc branches=2",
        "aufs si=abc br0 rw /d/top",
        "aufs si=abc br1 ro+wh /d/a\\040b\\011c\\134d\\377",
    ]
    # The documented way back: split into five fields, unescape the last.
    assert unescape(lines[2].split(" ", 4)[4].encode()) == os.fsencode(weird)


def test_branches_are_parsed_once_per_superblock_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_branches(tmp_path, SI, branch_lines(BRANCHES))
    ctx = DumpContext(image_dir=str(tmp_path / "img"), sys_root=str(tmp_path))
    root = parse_line(AUFS_LINE)
    # The same superblock in a second namespace (another mount id, same si).
    other = parse_line(f"120 100 0:33 / / rw - aufs none rw,si={SI}".encode())
    drv = AufsDriver()
    with caplog.at_level(logging.INFO, logger="criu_fw.aufs"):
        first = drv.parse_mount(root, MountTree([root]), ctx)
        # Removing the sysfs files proves the second call does not read them again.
        for f in (tmp_path / "fs" / "aufs" / f"si_{SI}").iterdir():
            f.unlink()
        second = drv.parse_mount(other, MountTree([other]), ctx)
    assert first == second
    assert [b.path for b in first.branches] == [p for p, _ in BRANCHES]  # type: ignore[union-attr]
    assert list(ctx.stash[SUPERBLOCKS]) == [SI]
    assert superblock(other, ctx).index is superblock(root, ctx).index
    logged = [r.getMessage() for r in caplog.records]
    assert logged[0] == f"aufs si={SI} branches=4"
    assert logged[1] == f"aufs si={SI} br0 rw {BRANCHES[0][0]}"
    assert len(logged) == 5  # one header and four branches, logged once


def test_unreadable_branch_file_is_named(tmp_path: Path) -> None:
    d = write_branches(tmp_path, SI, branch_lines([("/a", "rw")]))
    (d / "br1").mkdir()  # a br file that cannot be read as one
    with pytest.raises(DumpError, match=r"mount 90: cannot read .*/br1: EISDIR"):
        read_branches(str(tmp_path), SI, "mount 90")
