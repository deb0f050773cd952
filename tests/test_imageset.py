"""The mount-namespace image codec: a real private namespace written and read back exactly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import attrs
import pytest
from criu_fw import images
from criu_fw.api.loader import DriverManager, load_drivers
from criu_fw.driver import DriverState, FsDriver
from criu_fw.errors import ImageError
from criu_fw.images.mounts import (
    FORMAT_VERSION,
    DumpedNamespace,
    read_mount_namespace,
    write_mount_namespace,
)
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.proto import fwstate_pb2, mnt_pb2
from criu_fw.testing import NamespaceScenario
from google.protobuf.message import Message
from helpers import LabelState


class LabelDriver(FsDriver):
    name = "labelfs"
    fstypes = ("criufwlabelfs",)
    state_types = (LabelState,)


def manager(*extra: object) -> DriverManager:
    return load_drivers(plugins=extra)


WEIRD = r"""
mkdir -p play
mount -t tmpfs -o size=4m,mode=755 playfs play
cd play
mkdir "a b" "$(printf 't\tab')" "$(printf 'n\nl')" 'back\slash' "$(printf 'x\377y')"
mkdir shared peer slave unb over lower upper work merged "$(printf 'low\376er')"
mount -t tmpfs spaced "a b"
mount -t tmpfs -o ro,nosuid,noexec "$(printf 'src\tx')" "$(printf 't\tab')"
mount -t tmpfs newline "$(printf 'n\nl')"
mount -t tmpfs 'back\src' 'back\slash'
mount -t tmpfs "$(printf 'bin\377src')" "$(printf 'x\377y')"
mount -t tmpfs -o size=1m shr shared
mount --make-shared shared
mount --bind shared peer
mount --bind shared slave
mount --make-slave slave
mount -t tmpfs unb unb
mount --make-unbindable unb
mount -t tmpfs first over
mount -t tmpfs second over
echo data > "$(printf 'low\376er')/f"
mount -t overlay ovl -o "lowerdir=$(printf 'low\376er'),upperdir=upper,workdir=work" merged
touch "a b/file" "a b/target"
mount --bind "a b/file" "a b/target"
rm "a b/file"
"""


def dump(scn: NamespaceScenario, mgr: DriverManager) -> tuple[MountTree, dict[int, str]]:
    tree = read_mountinfo(scn.pid, ns_id=os.stat(f"/proc/{scn.pid}/ns/mnt").st_ino)
    return tree, {m.mnt_id: mgr.owner(m.fstype) for m in tree}


@pytest.mark.privileged
def test_round_trip_of_a_real_namespace(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path
) -> None:
    scn = scenario(WEIRD)
    mgr = manager(LabelDriver())
    tree, drivers = dump(scn, mgr)
    play = f"{scn.workdir}/play"
    by_place = {m.mountpoint: m for m in tree}
    weird = by_place[play + os.fsdecode(b"/x\xffy")]
    states: dict[int, DriverState | None] = {weird.mnt_id: LabelState("ünïcode")}
    external = {by_place[f"{play}/a b"].mnt_id: "ext-key-1"}
    content = {weird.mnt_id: f"tmpfs-dev-{weird.dev.kdev}.tar.gz.img"}
    # The scenario really has what the test is about.
    assert by_place[f"{play}/a b/target"].root_deleted
    assert by_place[f"{play}/slave"].propagation.master is not None
    assert by_place[f"{play}/unb"].propagation.unbindable
    assert any(m.fstype == "overlay" and not images.is_exact_utf8(",".join(m.super_options))
               for m in tree)  # fmt: skip

    dumped = DumpedNamespace.of(7, tree, drivers=drivers, states=states, external=external,
                                content=content)  # fmt: skip
    written = write_mount_namespace(str(tmp_path), dumped)
    assert written == ["mountpoints-7.img", "fw-mountpoints-7.img"]
    got = read_mount_namespace(str(tmp_path), 7, mgr)
    assert isinstance(got, DumpedNamespace)
    assert got.tree == tree
    assert list(got.tree.mounts) == list(tree.mounts)  # same order, every field equal
    assert got == dumped

    # CRIU's image: reverse mountinfo order, raw bytes, CRIU's fields as CRIU 4.2 fills them.
    crit_view = images.read_image(str(tmp_path / "mountpoints-7.img"), mnt_pb2.mnt_entry)
    assert [e.mnt_id for e in crit_view] == [m.mnt_id for m in reversed(tree.mounts)]
    e = {x.mnt_id: x for x in crit_view}
    w = e[weird.mnt_id]
    assert w.mountpoint == os.fsencode(f"{play}/x") + b"\xffy"
    assert w.source == b"bin\xffsrc"
    assert w.fstype == mnt_pb2.TMPFS and not w.HasField("fsname")
    ro = by_place[f"{play}/t\tab"]
    assert e[ro.mnt_id].flags == 0x1 | 0x2 | 0x8 | 0x200000  # ro,nosuid,noexec,relatime
    assert e[ro.mnt_id].sb_flags == 0x1 and "ro" not in e[ro.mnt_id].options.split(",")
    ext = e[next(iter(external))]
    assert ext.ext_key == "ext-key-1" and not ext.HasField("ext_mount")
    assert e[by_place[f"{play}/a b/target"].mnt_id].deleted
    slave = by_place[f"{play}/slave"]
    assert e[slave.mnt_id].master_id == slave.propagation.master
    assert e[slave.mnt_id].flags & 0x80000  # MS_SLAVE
    assert e[tree.root.mnt_id].master_id == (tree.root.propagation.master or 0)
    root_dev = tree.root.dev
    assert e[tree.root.mnt_id].root_dev == (root_dev.major << 20) | root_dev.minor


def mount(mnt_id: int, parent: int, place: str, **kw: Any) -> Mount:
    return Mount(mnt_id, parent, Dev(0, 40 + mnt_id), "/", place, kw.pop("fstype", "tmpfs"),
                 "src", ("rw",), ("rw",), **kw)  # fmt: skip


SMALL = MountTree(
    (
        mount(1, 0, "/", fstype="ext4"),
        mount(2, 1, "/tmp", propagation=Propagation(shared=3, propagate_from=9)),
        mount(3, 2, "/tmp/x", fstype="fuse.sshfs", unique_id=1 << 40),
    ),
    ns_id=4026531840,
)


def write_small(tmp_path: Path, **kw: Any) -> None:
    drivers = dict.fromkeys((1, 2, 3), "generic")
    write_mount_namespace(str(tmp_path), DumpedNamespace.of(1, SMALL, drivers=drivers, **kw))


def test_round_trip_synthetic_and_unsupported_fstypes(tmp_path: Path) -> None:
    write_small(tmp_path)
    got = read_mount_namespace(str(tmp_path), 1, manager())
    assert got.tree == SMALL and got.tree.ns_id == 4026531840
    entries = images.read_image(str(tmp_path / "mountpoints-1.img"), mnt_pb2.mnt_entry)
    # CRIU finds its code by the name without a subtype; AUTO + fsname for what it lacks.
    fuse = next(e for e in entries if e.mnt_id == 3)
    assert fuse.fstype == mnt_pb2.FUSE and not fuse.HasField("fsname")
    disk = next(e for e in entries if e.mnt_id == 1)
    assert (disk.fstype, disk.fsname) == (mnt_pb2.AUTO, "ext4")
    shared = next(e for e in entries if e.mnt_id == 2)
    assert (shared.shared_id, shared.master_id) == (3, 0)
    # Shared, and strictatime (neither relatime nor noatime shows).
    assert shared.flags == 0x100000 | 0x1000000


def test_unknown_state_type(tmp_path: Path) -> None:
    write_small(tmp_path, states={2: LabelState("x")})
    path = tmp_path / "fw-mountpoints-1.img"
    with pytest.raises(ImageError) as e:
        read_mount_namespace(str(tmp_path), 1, manager())
    assert str(e.value) == (
        f"{path}: entry 2: mount 2 (driver 'generic'): driver state of type "
        "'google.protobuf.StringValue' is unknown to the loaded drivers"
    )
    got = read_mount_namespace(str(tmp_path), 1, manager(LabelDriver()))
    assert [r.state for r in got] == [None, LabelState("x"), None]


def rewrite_fw(tmp_path: Path, edit: Callable[[list[fwstate_pb2.fw_entry]], object]) -> str:
    path = str(tmp_path / "fw-mountpoints-1.img")
    entries = images.read_image(path, fwstate_pb2.fw_entry)
    edit(entries)
    images.write_image(path, "FW_MNTS", entries)
    return path


def read_error(tmp_path: Path) -> str:
    with pytest.raises(ImageError) as e:
        read_mount_namespace(str(tmp_path), 1, manager())
    return str(e.value)


def test_newer_format_version(tmp_path: Path) -> None:
    write_small(tmp_path)

    def bump(entries: list[fwstate_pb2.fw_entry]) -> None:
        entries[0].header.format_version = FORMAT_VERSION + 1
        entries[0].header.writer = "criu-fw 9.0"

    path = rewrite_fw(tmp_path, bump)
    assert read_error(tmp_path) == (
        f"{path}: entry 0: written by a newer criu-fw (criu-fw 9.0, format version "
        f"{FORMAT_VERSION + 1}); this criu-fw 0.1.0 reads up to version {FORMAT_VERSION}"
    )


def test_missing_and_inconsistent_images(tmp_path: Path) -> None:
    write_small(tmp_path)
    path = rewrite_fw(tmp_path, lambda entries: entries.pop())
    assert read_error(tmp_path) == (
        f"{path}: truncated: the header announces 3 mounts, the image holds 2"
    )

    def drop_count(entries: list[fwstate_pb2.fw_entry]) -> None:
        entries[0].header.mount_count = 2

    rewrite_fw(tmp_path, drop_count)
    assert read_error(tmp_path) == (
        f"{tmp_path}/mountpoints-1.img: mount id(s) [3] have no entry in fw-mountpoints-1.img"
    )
    # Lost among others: named. The only one gone: the directory reads as CRIU's alone.
    (tmp_path / "fw-mountpoints-9.img").write_bytes(b"")
    os.unlink(path)
    assert read_error(tmp_path) == f"{path}: no such image file"
    os.unlink(tmp_path / "fw-mountpoints-9.img")
    assert read_error(tmp_path) == (
        f"{tmp_path}/mountpoints-1.img: entry 1: mount 2 at '/tmp' (tmpfs, source 'src'): its "
        "content archive tmpfs-dev-42.tar.gz.img is missing (CRIU archives every tmpfs but the "
        "root of the dump)"
    )
    with pytest.raises(ImageError, match="header is for mount namespace 1, not 2"):
        os.rename(tmp_path / "mountpoints-1.img", tmp_path / "mountpoints-2.img")
        write_small(tmp_path)
        os.rename(tmp_path / "fw-mountpoints-1.img", tmp_path / "fw-mountpoints-2.img")
        read_mount_namespace(str(tmp_path), 2, manager())


def test_writer_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no driver given for mount 3 at '/tmp/x'"):
        dumped = DumpedNamespace.of(1, SMALL, drivers={1: "generic", 2: "generic"})
        write_mount_namespace(str(tmp_path), dumped)
    with pytest.raises(ValueError, match=r"external names mount id\(s\) \[9\]"):
        write_small(tmp_path, external={9: "x"})


def _private_message() -> type[Message]:
    """A state message in a pool of its own: only its driver can tell what it is."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    f = descriptor_pb2.FileDescriptorProto(name="x/private.proto", package="xpriv",
                                           syntax="proto3")  # fmt: skip
    m = f.message_type.add(name="Priv")
    m.field.add(name="layers", number=1, type=9, label=3)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("xpriv.Priv"))


PRIV = _private_message()


@attrs.frozen
class PrivState(DriverState):
    MESSAGE: ClassVar[type[Message]] = PRIV
    layers: tuple[str, ...]

    def to_message(self) -> Message:
        return PRIV(layers=list(self.layers))

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(tuple(message.layers))


class PrivDriver(FsDriver):
    name = "privfs"
    fstypes = ("criufwprivfs",)
    state_types = (PrivState,)


def test_state_in_a_private_pool_round_trips_and_shows(tmp_path: Path) -> None:
    write_small(tmp_path, states={3: PrivState(("a", "b"))})
    mgr = manager(PrivDriver())
    assert read_mount_namespace(str(tmp_path), 1, mgr).record(3).state == PrivState(("a", "b"))
    path = str(tmp_path / "fw-mountpoints-1.img")
    shown = images.image_to_dict(path, mgr=mgr)["entries"][3]["mount"]["state"]
    assert shown == {"@type": "xpriv.Priv", "layers": ["a", "b"]}
    raw = images.image_to_dict(path)["entries"][3]["mount"]["state"]
    assert raw == {"@type": "xpriv.Priv", "value": "\n\x01a\n\x01b"}
