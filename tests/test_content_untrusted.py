"""Content archives are untrusted input (docs/security.md): what the in-process extractor
refuses, what it leaves to GNU tar, and how it fails.

Archives are crafted with Python's tarfile (which writes any name it is given) and extracted
into real tmpfs of a private namespace; a canary directory next to them must never change.
GNU tar's own behaviour on the same archives is the reference, noted per case.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from criu_fw.errors import RestoreError
from criu_fw.fsdrivers.generic import content, gnutar, tarextract, tarformat
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Entry = tuple[str, bytes, Any]  # name, tarfile type, data (bytes) or link target (str)


def _archive(path: str, entries: list[Entry], fmt: int = tarfile.PAX_FORMAT,
             pax: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o644
            data = None
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            elif kind == tarfile.REGTYPE:
                info.size = len(extra)
                data = io.BytesIO(extra)
            if pax:
                info.pax_headers = dict(pax)
            tar.addfile(info, data)
    return path


@pytest.fixture(scope="module")
def scn() -> Iterator[NamespaceScenario]:
    s = NamespaceScenario(
        "mkdir t small canary && mount -t tmpfs t t && mount -t tmpfs -o size=64k s small"
        " && echo precious > canary/file"
    )
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def target(scn: NamespaceScenario) -> Iterator[str]:
    scn.sh("umount t && mount -t tmpfs t t")
    yield f"/proc/{scn.pid}/root{scn.workdir}/t"
    # Whatever an archive tried, the canary next to the target is as it was.
    assert scn.sh("ls -A canary && cat canary/file") == "file\nprecious\n"


def _restore(archive: str, where: str) -> object:
    fd = os.open(archive, os.O_RDONLY)
    try:
        job = content.restore(fd, archive, where)
    finally:
        os.close(fd)
    return job


def _refused(archive: str, where: str, *fragments: str) -> str:
    with pytest.raises(RestoreError) as err:
        _restore(archive, where)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{os.path.basename(archive)}: could not restore the content: ")
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _listing(where: str) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(where):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            link = f" -> {os.readlink(path)}" if os.path.islink(path) else ""
            out.append(os.path.relpath(path, where) + link)
    return sorted(out)


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./x/../y", ".."])
def test_dotdot_in_a_name_is_refused_before_anything_is_written(
    tmp_path: Any, target: str, name: str,
) -> None:
    # GNU tar: "Member name contains '..'", the member skipped, exit status 2.
    arc = _archive(str(tmp_path / "a.tgz"), [("ok", tarfile.REGTYPE, b"1"),
                                             (name, tarfile.REGTYPE, b"x")])
    _refused(arc, target, f"member {name}: its name contains '..'")
    assert _listing(target) == []


def test_an_absolute_name_lands_inside(tmp_path: Any, target: str) -> None:
    # GNU tar: "Removing leading `/' from member names", extracted inside.
    arc = _archive(str(tmp_path / "a.tgz"), [("/abs/f", tarfile.REGTYPE, b"1")])
    assert _restore(arc, target) is True
    assert _listing(target) == ["abs", "abs/f"]


def test_no_member_is_created_through_a_symbolic_link(
    tmp_path: Any, target: str, scn: NamespaceScenario,
) -> None:
    # GNU tar: "s/f: Cannot open: Not a directory" (s is a placeholder until the end).
    for link in (f"{scn.workdir}/canary", "../canary", "."):
        arc = _archive(str(tmp_path / "a.tgz"), [
            ("s", tarfile.SYMTYPE, link), ("s/file", tarfile.REGTYPE, b"overwritten"),
        ])
        _refused(arc, target, "member s/file: s is not a directory")
        scn.sh("umount t && mount -t tmpfs t t")


def test_a_member_replaces_a_link_instead_of_writing_through_it(
    tmp_path: Any, target: str, scn: NamespaceScenario,
) -> None:
    # GNU tar's default: an existing non-directory is removed first.
    arc = _archive(str(tmp_path / "a.tgz"), [
        ("s", tarfile.SYMTYPE, f"{scn.workdir}/canary/file"),
        ("s", tarfile.REGTYPE, b"mine"),
    ])
    assert _restore(arc, target) is True
    assert _listing(target) == ["s"]
    with open(os.path.join(target, "s"), "rb") as f:
        assert f.read() == b"mine"


@pytest.mark.parametrize("link,why", [
    ("../../canary/file", "its link target contains '..'"),
    ("/etc/hostname", "which the archive did not make before"),
    ("s/file", "which the archive did not make before"),
])
def test_hard_links_stay_inside(tmp_path: Any, target: str, scn: NamespaceScenario,
                                link: str, why: str) -> None:
    # GNU tar strips leading '/' and '../' from link targets, then fails to find them.
    arc = _archive(str(tmp_path / "a.tgz"), [
        ("s", tarfile.SYMTYPE, f"{scn.workdir}/canary"), ("h", tarfile.LNKTYPE, link),
    ])
    _refused(arc, target, "member h: a hard link to" if "make" in why else "member h:", why)


def test_a_hard_link_to_a_symbolic_link_is_to_the_link(
    tmp_path: Any, target: str, scn: NamespaceScenario,
) -> None:
    arc = _archive(str(tmp_path / "a.tgz"), [
        ("s", tarfile.SYMTYPE, f"{scn.workdir}/canary/file"), ("h", tarfile.LNKTYPE, "s"),
    ])
    assert _restore(arc, target) is True
    assert os.path.islink(os.path.join(target, "h"))
    assert os.lstat(os.path.join(target, "h")).st_ino == os.lstat(
        os.path.join(target, "s")).st_ino


def test_a_directory_is_not_replaced_by_a_link(tmp_path: Any, target: str) -> None:
    arc = _archive(str(tmp_path / "a.tgz"), [
        ("d", tarfile.DIRTYPE, None), ("d/f", tarfile.REGTYPE, b"1"),
        ("d", tarfile.SYMTYPE, "/"),
    ])
    _refused(arc, target, "member d: File exists (EEXIST)")


@pytest.mark.parametrize("spoil,why", [
    (lambda raw: b"not gzip at all" + raw, "not a gzip'd tar archive"),
    (lambda raw: raw[: len(raw) // 2], "the gzip stream is cut short"),
    (lambda raw: gzip.compress(gzip.decompress(raw)[:600]), "the archive ends inside its data"),
    (lambda raw: gzip.compress(b"\x01" * 512 + gzip.decompress(raw)),
     "a damaged header after the start"),
])
def test_a_corrupt_archive_is_one_line(tmp_path: Any, target: str, spoil: Any,
                                       why: str) -> None:
    arc = _archive(str(tmp_path / "a.tgz"), [("f", tarfile.REGTYPE, b"x" * 5000)])
    with open(arc, "rb") as f:
        raw = f.read()
    with open(arc, "wb") as f:
        f.write(spoil(raw))
    _refused(arc, target, why)
    assert _listing(target) == []


@pytest.mark.parametrize("case", ["bomb", "pax", "type", "text-acl", "two-streams"])
def test_what_the_reader_leaves_to_gnu_tar_goes_there_untouched(
    tmp_path: Any, target: str, monkeypatch: pytest.MonkeyPatch, case: str,
) -> None:
    arc = str(tmp_path / "a.tgz")
    if case == "bomb":
        # Tiny compressed, big unpacked: not unpacked into memory.
        monkeypatch.setattr(content, "RESTORE_UNPACKED", 1 << 20)
        _archive(arc, [("zeros", tarfile.REGTYPE, bytes(4 << 20))])
    elif case == "pax":
        _archive(arc, [("f", tarfile.REGTYPE, b"1")], pax={"LIBARCHIVE.xattr.user.x": "eA=="})
    elif case == "type":
        _archive(arc, [("label", tarfile.GNUTYPE_LONGNAME.replace(b"L", b"V"), None)],
                 fmt=tarfile.GNU_FORMAT)
    elif case == "text-acl":
        _archive(arc, [("f", tarfile.REGTYPE, b"1")],
                 pax={"SCHILY.acl.access": "user::rw-\nuser:1000:r--\ngroup::r--\n"
                                           "mask::r--\nother::r--\n"})
    else:
        _archive(arc, [("f", tarfile.REGTYPE, b"1")])
        with open(arc, "ab") as f:
            f.write(gzip.compress(b""))
    job = _restore(arc, target)
    assert isinstance(job, gnutar.Extraction)
    job.wait()


def test_a_full_filesystem_names_the_member(tmp_path: Any, scn: NamespaceScenario) -> None:
    small = f"/proc/{scn.pid}/root{scn.workdir}/small"
    arc = _archive(str(tmp_path / "a.tgz"), [
        ("fits", tarfile.REGTYPE, b"1" * 1000),
        ("dir/big\nname", tarfile.REGTYPE, os.urandom(200_000)),
    ])
    # One line whatever the name holds.
    _refused(arc, small, "member dir/big\\nname: No space left on device (ENOSPC)")


def test_a_deep_path_is_made_one_directory_at_a_time(tmp_path: Any, target: str) -> None:
    deep = "/".join(["d"] * 1500) + "/f"  # deeper than Python's recursion limit
    arc = _archive(str(tmp_path / "a.tgz"), [(deep, tarfile.REGTYPE, b"bottom")])
    assert _restore(arc, target) is True
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        assert os.listdir(fd) == ["f"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("pax,why", [
    ({"uid": "99999999999"}, "an impossible owner 99999999999:0"),
    ({"gid": "-1"}, "an impossible owner 0:-1"),
    ({"mtime": "1" + "0" * 30}, "an impossible modification time"),
])
def test_impossible_values_are_refused(tmp_path: Any, target: str, pax: dict[str, str],
                                       why: str) -> None:
    arc = _archive(str(tmp_path / "a.tgz"), [("f", tarfile.REGTYPE, b"1")], pax=pax)
    _refused(arc, target, f"member f: {why}")
    assert _listing(target) == []


def _seed_archive() -> bytes:
    """An uncompressed archive with one member of most kinds, PAX and GNU headers."""
    buf = io.BytesIO()
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, kind, extra in [
                ("d", tarfile.DIRTYPE, None), ("d/f" + "x" * 120, tarfile.REGTYPE, b"data" * 50),
                ("d/s", tarfile.SYMTYPE, "f"), ("h", tarfile.LNKTYPE, "d/s"),
                ("p", tarfile.FIFOTYPE, None),
            ]:
                info = tarfile.TarInfo(name if fmt == tarfile.PAX_FORMAT else f"g/{name}")
                info.type = kind
                if kind == tarfile.LNKTYPE and fmt == tarfile.GNU_FORMAT:
                    extra = f"g/{extra}"
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = extra
                data = None
                if kind == tarfile.REGTYPE:
                    info.size = len(extra)
                    data = io.BytesIO(extra)
                info.pax_headers = {"SCHILY.xattr.user.k": "v"} if fmt == tarfile.PAX_FORMAT \
                    else {}
                tar.addfile(info, data)
    return buf.getvalue()


def test_mutated_archives_fail_cleanly(scn: NamespaceScenario) -> None:
    """Seeded byte mutations of a valid archive: each one is extracted, left to GNU tar, or
    refused with one of the reader's errors; nothing else escapes (no other exception, no
    hang), and nothing lands outside the target (the fixture's canary)."""
    seed = _seed_archive()
    rng = random.Random(0)
    outcomes: dict[str, int] = {}
    where = f"/proc/{scn.pid}/root{scn.workdir}/t"
    for case in range(400):
        data = bytearray(seed)
        for _ in range(rng.choice((1, 2, 8))):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256) if rng.random() < 0.7 else ord(rng.choice("0/.\n= "))
        if case % 40 == 0:
            scn.sh("umount t && mount -t tmpfs t t")
        root = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
        try:
            tarextract.extract(bytes(data), root, max_members=100)
            kind = "extracted"
        except (tarformat.BadArchive, tarformat.NeedsGnuTar, tarextract.MemberError) as exc:
            kind = type(exc).__name__
            assert "\n" not in str(exc)
        finally:
            os.close(root)
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("extracted", 0) > 50 and outcomes.get("BadArchive", 0) > 20, outcomes
    assert scn.sh("ls -A canary && cat canary/file") == "file\nprecious\n"
