"""The dump's fast paths give exactly what the plain paths give: parsed mounts, image bytes,
hook results, errors and warnings, monitors and wrappers (bench/dump.py times them)."""

from __future__ import annotations

import gc
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from criu_fw import hookimpl
from criu_fw.driver import DriverState
from criu_fw.dump import dump
from criu_fw.dump.consistency import Recheck
from criu_fw.dump.namespaces import Namespace
from criu_fw.dump.procfs import ProcessGoneError, ProcFS
from criu_fw.errors import DriverError, MountinfoError
from criu_fw.images.mounts import _fw_mount, criu_entry_bytes, criu_mnt_entry, write_mount_namespace
from criu_fw.kernel.mountinfo import parse, parse_line, read_while_written
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.proto import fwstate_pb2
from criu_fw.records import DumpedNamespace
from criu_fw.testing import NamespaceScenario
from helpers import LabelState

# Lines of every shape the parser knows, each repeated so that the table's caches are hit.
LINES = [
    b"1 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard",
    b"2 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw",
    b"3 1 0:40 / /t rw,relatime shared:5 master:3 propagate_from:2 - tmpfs t rw,size=1k",
    b"4 3 0:40 /sub /t/b rw,relatime shared:5 - tmpfs t rw,size=1k",
    b"5 3 0:40 /f//deleted /t/d ro,relatime unbindable - tmpfs t rw,size=1k",
    b"6 3 0:40 /deleted /t/e rw future:7 - tmpfs t rw,size=1k",
    b"7 3 0:41 / /t/a\\040b rw - tmpfs my\\011src rw",
    b"8 3 0:42 / /t/caf\xc3\xa9/\xff rw - tmpfs src\xfe rw,opt=\xfa",
    b"9 3 0:43 / /t/empty rw - tmpfs  rw",
    b"10 3 0:44 / /t/fuse rw - fuse.my\\040fs src rw,user_id=0",
    b"11 3 0:44 //deleted /t/root-named-deleted rw - fuse.sshfs src rw",
    b"12 3 0:45 / /t/x\\134y rw,nosuid - overlay ovl rw,lowerdir=/l\\054x,upperdir=/u",
]


def table(copies: int) -> bytes:
    out = []
    for c in range(copies):
        for line in LINES:
            ident, parent, rest = line.split(b" ", 2)
            parent = b"%d" % (int(parent) + 100 * c) if parent != b"1" else parent
            out.append(b"%d %s %s" % (int(ident) + 100 * c, parent,
                                      rest.replace(b" /t", b" /t%d" % c, 1)))
    return b"\n".join(out) + b"\n"


def test_table_parse_equals_line_by_line() -> None:
    data = table(30)
    fast = list(parse(data, "mi"))
    slow = [parse_line(line, "mi", n) for n, line in enumerate(data.split(b"\n"), 1) if line]
    assert fast == slow and len(fast) == 30 * len(LINES)
    # Built by tuple.__new__ in the fast path: still Mounts, every field where it belongs.
    assert all(type(m) is Mount and m.unique_id is None for m in fast)
    # Shared pieces are shared values, never shared mistakes.
    assert {m.source for m in fast if m.fstype == "tmpfs"} == {"t", "my\tsrc",
                                                              os.fsdecode(b"src\xfe"), ""}
    assert MountTree(tuple(fast)) == MountTree(tuple(slow))


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"13 3 0:46 / /t/z rw - tmpfs t", "expected 3 fields after ' - ', got 2"),
        (b"13 3 0:46 / /t/z rw shared:x - tmpfs t rw", "bad optional field 'shared:x'"),
        (b"13 3 046 / /t/z rw - tmpfs t rw", "bad mount id, parent id or major:minor"),
        (b"x 3 0:46 / /t/z rw - tmpfs t rw", "bad mount id, parent id or major:minor"),
        (b"13 3 0:46 rel /t/z rw - tmpfs t rw", "root and mountpoint must be absolute"),
        (b"13 3 0:46 / rel rw - tmpfs t rw", "root and mountpoint must be absolute"),
        (b"13 3 0:46 / /t/z rw -  t rw", "empty filesystem type"),
        (b"13 3 0:46 / /t/z rw tmpfs t rw", "no ' - ' separator after field 6"),
        (b"13 3 0:46 / /t/z", "no ' - ' separator after field 6"),
    ],
)
def test_a_bad_line_in_a_big_table_fails_as_alone(bad: bytes, reason: str) -> None:
    good = table(5).split(b"\n")
    data = b"\n".join([*good[:40], bad, *good[40:]])
    with pytest.raises(MountinfoError) as alone:
        parse_line(bad, "mi", 41)
    it = parse(data, "mi")
    first = [next(it) for _ in range(40)]  # lazy: the mounts before the bad line come first
    assert first == list(parse(b"\n".join(good[:40])))
    with pytest.raises(MountinfoError) as err:
        next(it)
    assert str(err.value) == str(alone.value)
    assert f"mi: line 41: {reason}" in str(err.value)


def frames(path: Path) -> list[bytes]:
    raw = path.read_bytes()[8:]  # IMG_COMMON and the image's magic
    out = []
    while raw:
        (size,) = struct.unpack("<I", raw[:4])
        out.append(raw[4 : 4 + size])
        raw = raw[4 + size :]
    return out


def test_mount_images_are_those_of_messages_built_one_by_one(tmp_path: Path) -> None:
    mounts = list(parse(table(20)))
    # What only records from elsewhere carry: statmount's unique ids, equal devices in
    # different objects, a uint32-sized id.
    mounts.append(Mount(4294967295, 1, Dev(0, 40), "/", "/big", "tmpfs", "t", ("rw",),
                        ("rw", "size=1k"), Propagation(shared=5), unique_id=1 << 40))
    mounts.append(Mount(0, 1, Dev(0, 40), "/", "/zero", "tmpfs", "t"))
    tree = MountTree(tuple(mounts), ns_id=4026531840)
    ids = [m.mnt_id for m in mounts]
    drivers = {i: ("overlay" if i % 100 == 12 else "generic") for i in ids}
    states: dict[int, DriverState | None] = {i: LabelState(f"s{i}") for i in ids[::7]}
    external = {i: f"key-{i % 3}" for i in ids[::5]}
    content = {i: "tmpfs-dev-1.tar.gz.img" for i in ids[::4]}
    dumped = DumpedNamespace.of(3, tree, drivers=drivers, states=states, external=external,
                                content=content)  # fmt: skip
    write_mount_namespace(str(tmp_path), dumped)
    criu = frames(tmp_path / "mountpoints-3.img")
    assert criu == [criu_entry_bytes(m, external.get(m.mnt_id))
                    for m in reversed(mounts)]  # fmt: skip
    fw = frames(tmp_path / "fw-mountpoints-3.img")[1:]  # after the header
    want = [
        fwstate_pb2.fw_entry(mount=_fw_mount(m, drivers[m.mnt_id], states.get(m.mnt_id),
                                             external.get(m.mnt_id), content.get(m.mnt_id)))
        .SerializeToString()
        for m in mounts
    ]  # fmt: skip
    assert fw == want


def test_mount_images_fail_as_messages_do(tmp_path: Path) -> None:
    # An id protobuf cannot hold fails the same way whether or not a template was made.
    ok = Mount(5, 1, Dev(0, 40), "/", "/a", "tmpfs", "t")
    for bad in (Mount(1 << 32, 1, Dev(0, 40), "/", "/b", "tmpfs", "t"),
                Mount(6, -1, Dev(0, 40), "/", "/b", "tmpfs", "t")):  # fmt: skip
        tree = MountTree((ok, bad))
        with pytest.raises(ValueError):
            criu_mnt_entry(bad)
        with pytest.raises(ValueError):
            drivers = dict.fromkeys((5, bad.mnt_id), "generic")
            write_mount_namespace(str(tmp_path), DumpedNamespace.of(1, tree, drivers=drivers))


@pytest.mark.privileged
def test_the_threaded_recheck_sees_changes_and_vanished_processes(
    scenario: Callable[..., NamespaceScenario],
) -> None:
    scn = scenario("mkdir -p m && mount -t tmpfs t m")
    fs = ProcFS()
    long = "d" * 200  # a table big enough for the thread
    scn.sh(f"for i in $(seq 150); do mkdir -p m/{long}$i && mount -t tmpfs t$i m/{long}$i; done")
    ns = Namespace(1, 0, scn.pid, fs.must_read(scn.pid, "mountinfo"), MountTree(()))
    assert len(ns.raw) > 32768
    stale = attrs.evolve(ns, raw=ns.raw + b"1 1 0:1 / /gone rw - tmpfs t rw\n")
    for ordinary in (False, True):
        check = Recheck(fs, [ns, stale])
        try:
            if ordinary:  # as if sendfile had failed: the ordinary read
                check.close()
                check._sizes = [None, None]
            assert check.changed() == [stale]
        finally:
            check.close()
    check = Recheck(fs, [attrs.evolve(ns, pid=999999999)])
    try:
        with pytest.raises(ProcessGoneError):
            check.changed()
    finally:
        check.close()


@pytest.mark.privileged
def test_parsing_while_the_kernel_writes_is_exact(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path
) -> None:
    # Long names: a table of more than one 64 KiB piece of the copy.
    long = "d" * 200
    scn = scenario(f"for i in $(seq 400); do mkdir -p m/{long}$i && "
                   f"mount -t tmpfs t$i m/{long}$i; done")  # fmt: skip
    path = f"/proc/{scn.pid}/mountinfo"
    got = read_while_written(path)
    assert got is not None
    raw, mounts = got
    with open(path, "rb") as f:
        assert raw == f.read() and len(raw) > 65536
    assert mounts == tuple(parse(raw, path)) and len(mounts) > 400
    assert read_while_written(str(tmp_path / "missing")) is None
    # A small table is read without the thread, to the same result.
    small = read_while_written("/proc/self/mountinfo")
    with open("/proc/self/mountinfo", "rb") as f:
        text = f.read()
    assert small == (text, tuple(parse(text, "/proc/self/mountinfo"))) and len(text) < 32768


@pytest.mark.privileged
@pytest.mark.parametrize("enabled", [True, False])
def test_dump_leaves_the_garbage_collector_as_it_was(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path, enabled: bool
) -> None:
    scn = scenario("mkdir -p m && mount -t tmpfs t m")
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        dump(scn.pid, str(tmp_path / "ok"))
        assert gc.isenabled() is enabled
        with pytest.raises(DriverError):
            dump(scn.pid, str(tmp_path / "failed"), plugins=[Broken()])
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


class Broken:
    """A wrapper that fails every parse_mount (the error is the routed driver's)."""

    name = "broken"

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        raise RuntimeError("broken on purpose")
        yield


def test_mount_images_of_templates_copied_between_peer_groups(tmp_path: Path) -> None:
    # Templates that differ only in the device and the peer groups share one built from
    # scratch: each combination (a group set, then cleared; big and zero values) still gives
    # the bytes of its own message.
    groups = [None, 0, 1, 300, 1 << 31]
    mounts = [
        Mount(10 + n, 1, Dev(n % 3, n % 7 * 1000), "/", f"/m{n}", "tmpfs", "t", ("rw",),
              ("rw", "size=1k"), Propagation(shared=groups[n % 5], master=groups[n // 5 % 5]))
        for n in range(60)
    ]  # fmt: skip
    tree = MountTree(tuple(mounts))
    drivers = dict.fromkeys((m.mnt_id for m in mounts), "generic")
    write_mount_namespace(str(tmp_path), DumpedNamespace.of(2, tree, drivers=drivers))
    criu = frames(tmp_path / "mountpoints-2.img")
    assert criu == [criu_entry_bytes(m) for m in reversed(mounts)]
    fw = frames(tmp_path / "fw-mountpoints-2.img")[1:]
    assert fw == [fwstate_pb2.fw_entry(mount=_fw_mount(m, "generic", None, None, None))
                  .SerializeToString() for m in mounts]  # fmt: skip


def test_mount_images_of_templates_copied_between_superblocks(tmp_path: Path) -> None:
    # Superblocks of one kind (same options, driver, external key) differ in root, source
    # and content image: each copies the first one's pair and still gives its own bytes,
    # whether the content image is set, changed or absent, and whatever came before it
    # (text that is not UTF-8 is built from scratch and leaves the copies alone).
    sources = ["t", "u", os.fsdecode(b"s\xfe"), "v", ""]
    roots = ["/", "/sub", "/a b", os.fsdecode(b"/r\xff")]
    contents = ["tmpfs-dev-1.tar.gz.img", None, "other.img"]
    mounts = [
        Mount(10 + n, 1, Dev(0, 50 + n % 6), roots[n % 4], f"/m{n}", "tmpfs", sources[n % 5],
              ("rw", "relatime"), ("rw", "size=1k"), Propagation(shared=n % 2 or None))
        for n in range(60)
    ]  # fmt: skip
    tree = MountTree(tuple(mounts))
    drivers = dict.fromkeys((m.mnt_id for m in mounts), "generic")
    content = {m.mnt_id: c for n, m in enumerate(mounts) if (c := contents[n % 3]) is not None}
    dumped = DumpedNamespace.of(2, tree, drivers=drivers, content=content)
    write_mount_namespace(str(tmp_path), dumped)
    criu = frames(tmp_path / "mountpoints-2.img")
    assert criu == [criu_entry_bytes(m) for m in reversed(mounts)]
    fw = frames(tmp_path / "fw-mountpoints-2.img")[1:]
    assert fw == [fwstate_pb2.fw_entry(mount=_fw_mount(m, "generic", None, None,
                                                       content.get(m.mnt_id)))
                  .SerializeToString() for m in mounts]  # fmt: skip
