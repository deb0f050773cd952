"""Untrusted images: validated and bounded when read, refused with one line naming the image.

Every case crafts an image directory with the library writer (or by hand where the writer
would refuse) and runs the CLI as a user would, ``criu-fw restore --dry-run -D DIR`` and, for
the bounds that hold for any reader, ``criu-fw show FILE``, each with a timeout: what the user
sees is exactly one error line, a non-zero exit status and no traceback, and it comes fast.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar, Self

import attrs
import pytest
from crafted_images import (
    BASE,
    NS,
    ROOT,
    U32,
    A,
    B,
    cli,
    fw_entry,
    head,
    manager,
    mnts_entry,
    paths,
    write_dir,
)
from criu_fw.driver import DriverState
from criu_fw.errors import ImageError
from criu_fw.fsdrivers.overlay.layers import ResolvedLayer, Verdict
from criu_fw.fsdrivers.overlay.options import LayerSpec, Role
from criu_fw.fsdrivers.overlay.state import OverlayState
from criu_fw.images import MAX_FW_ENTRY, MAX_MNT_ENTRY, MAX_MOUNT_IMAGE
from criu_fw.images.check import (
    MAX_MOUNTS,
    MAX_NAMESPACES,
    MAX_OPTION_BYTES,
    MAX_OPTIONS,
    MAX_STATE_ITEMS,
)
from criu_fw.images.mounts import read_mount_namespace
from criu_fw.model import Dev, Mount
from criu_fw.proto import mnt_pb2, overlay_pb2
from criu_fw.records import DeletedRoot

OVL = Mount(4, 1, Dev(0, 40), "/", "/ovl", "overlay", "overlay", ("rw",),
            ("rw", "lowerdir=/l", "upperdir=/u", "workdir=/w"))  # fmt: skip


def restore(image_dir: str | Path) -> subprocess.CompletedProcess[str]:
    return cli("restore", "--dry-run", "-D", str(image_dir))


def refused(res: subprocess.CompletedProcess[str], line: str) -> None:
    """The user sees exactly ``criu-fw: error: LINE`` and a failing exit status."""
    assert (res.returncode, res.stdout, res.stderr) == (3, "", f"criu-fw: error: {line}\n")


def test_good_images_restore_dry(tmp_path: Path) -> None:
    res = restore(write_dir(str(tmp_path)))
    assert res.returncode == 0, res.stderr
    assert "attach" in res.stdout and res.stderr == ""


# -- the files themselves ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inventory.img", f"mountpoints-{NS}.img",
                                  f"fw-mountpoints-{NS}.img"])  # fmt: skip
def test_a_fifo_image_is_refused_without_hanging(tmp_path: Path, name: str) -> None:
    d = write_dir(str(tmp_path / "img"))
    path = os.path.join(d, name)
    os.unlink(path)
    os.mkfifo(path)  # nobody ever writes: a blocking open or read would wait forever
    refused(restore(d), f"{path}: is a FIFO, not an image file")
    refused(cli("show", path, timeout=30), f"{path}: is a FIFO, not an image file")


def test_a_symlinked_image_is_not_followed(tmp_path: Path) -> None:
    d = write_dir(str(tmp_path / "img"))
    _, fw = paths(d)
    os.rename(fw, tmp_path / "elsewhere.img")
    os.symlink(tmp_path / "elsewhere.img", fw)
    refused(restore(d), f"{fw}: is a symbolic link, not an image file")
    refused(cli("show", fw), f"{fw}: is a symbolic link, not an image file")


def test_a_device_is_not_an_image() -> None:
    refused(cli("show", "/dev/zero"), "/dev/zero: is a character device, not an image file")


# -- bounds ----------------------------------------------------------------------------------


def test_an_oversized_entry_is_refused_before_reading(tmp_path: Path) -> None:
    """The case that took 92 s and 2.5 GB: one 60 MiB entry of millions of empty options."""
    d = write_dir(str(tmp_path / "img"))
    _, fw = paths(d)
    payload = b"\x1a\x00" * (30 << 20)
    with open(fw, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(U32.pack(len(payload)) + payload)
    line = f"{fw}: entry 4: entry size {60 << 20} exceeds the limit of {MAX_FW_ENTRY} bytes"
    refused(restore(d), line)
    refused(cli("show", fw), line)
    mnts, _ = paths(d)
    with open(mnts, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(U32.pack(MAX_MNT_ENTRY + 1))
    refused(restore(d), f"{mnts}: entry 3: entry size {MAX_MNT_ENTRY + 1} exceeds the limit "
                        f"of {MAX_MNT_ENTRY} bytes")  # fmt: skip


def test_an_oversized_image_is_refused_before_reading(tmp_path: Path) -> None:
    d = write_dir(str(tmp_path / "img"))
    _, fw = paths(d)
    os.truncate(fw, MAX_MOUNT_IMAGE + 1)  # sparse: nothing is written, nothing must be read
    line = f"{fw}: {MAX_MOUNT_IMAGE + 1} bytes exceed the limit of {MAX_MOUNT_IMAGE} bytes for " \
           "FW_MNTS images"  # fmt: skip
    refused(restore(d), line)
    refused(cli("show", fw), line)


def test_too_many_options(tmp_path: Path) -> None:
    many = A._replace(super_options=("rw",) + ("x",) * MAX_OPTIONS)
    d = write_dir(str(tmp_path / "img"), (ROOT, many))
    _, fw = paths(d)
    line = f"{fw}: entry 2: mount 2: {MAX_OPTIONS + 1} superblock options, more than {MAX_OPTIONS}"
    refused(restore(d), line)
    refused(cli("show", fw), line)


def test_an_option_too_long(tmp_path: Path) -> None:
    long = A._replace(mount_options=("rw", "a" * (MAX_OPTION_BYTES + 1)))
    d = write_dir(str(tmp_path / "img"), (ROOT, long))
    _, fw = paths(d)
    line = (f"{fw}: entry 2: mount 2: per-mount option {'a' * 80!r}... ({MAX_OPTION_BYTES + 1} "
            f"bytes) is longer than {MAX_OPTION_BYTES} bytes")  # fmt: skip
    refused(restore(d), line)
    refused(cli("show", fw), line)


def test_too_many_mounts(tmp_path: Path) -> None:
    d = write_dir(str(tmp_path / "img"))
    mnts, _ = paths(d)
    one = mnt_pb2.mnt_entry(fstype=5, mnt_id=0, root_dev=21, parent_mnt_id=1, flags=0, root="/",
                            mountpoint="/m", source="t", options="")  # fmt: skip
    with open(mnts, "wb") as f:
        for i in range(MAX_MOUNTS + 1):
            one.mnt_id = i + 1
            raw = one.SerializeToString()
            f.write((head("MNTS") if i == 0 else b"") + U32.pack(len(raw)) + raw)
    refused(restore(d), f"{mnts}: entry {MAX_MOUNTS}: more than {MAX_MOUNTS} entries, the limit "
                        "for MNTS images")  # fmt: skip


def test_the_writer_refuses_what_no_reader_accepts(tmp_path: Path) -> None:
    """A dump of more mounts than a restore reads fails at once, not at the restore."""
    many = [ROOT] + [A._replace(mnt_id=i, mountpoint=f"/m{i}") for i in range(2, MAX_MOUNTS + 2)]
    with pytest.raises(ImageError) as err:
        write_dir(str(tmp_path / "img"), many)
    assert str(err.value) == (f"{paths(str(tmp_path / 'img'))[0]}: {MAX_MOUNTS + 1} mounts, more "
                              f"than the {MAX_MOUNTS} a reader accepts")  # fmt: skip


def test_too_many_namespaces(tmp_path: Path) -> None:
    """Each namespace would get a holder process: 101 of them took 1 GB."""
    d = write_dir(str(tmp_path / "img"))
    for i in range(MAX_NAMESPACES):
        open(os.path.join(d, f"mountpoints-{100 + i}.img"), "wb").close()
    refused(restore(d), f"{d}: more than {MAX_NAMESPACES} mount namespaces (mountpoints-*.img); "
                        f"one restore rebuilds at most {MAX_NAMESPACES}, each held by a process")


@pytest.mark.parametrize("name", ["mountpoints-07.img", "mountpoints-\u0663.img",
                                  f"mountpoints-{'9' * 200}.img"])  # fmt: skip
def test_a_mount_image_name_criu_fw_does_not_write(tmp_path: Path, name: str) -> None:
    d = write_dir(str(tmp_path / "img"))
    path = os.path.join(d, name)
    open(path, "wb").close()
    refused(restore(d), f"{path}: not a mount image name criu-fw writes "
                        "(mountpoints-<decimal id>.img)")  # fmt: skip


def test_a_driver_state_with_too_many_items(tmp_path: Path) -> None:
    @attrs.frozen
    class Layers(DriverState):
        MESSAGE: ClassVar[type[overlay_pb2.overlay_state]] = overlay_pb2.overlay_state
        count: int

        def to_message(self) -> overlay_pb2.overlay_state:
            msg = overlay_pb2.overlay_state()
            msg.layers.extend(overlay_pb2.overlay_layer() for _ in range(self.count))
            return msg

        @classmethod
        def from_message(cls, message: Any) -> Self:
            return cls(len(message.layers))

    mounts = (ROOT, OVL)
    d = write_dir(str(tmp_path / "img"), mounts, states={4: Layers(MAX_STATE_ITEMS + 1)})
    _, fw = paths(d)
    n = fw_entry(mounts, 4)
    refused(restore(d), f"{fw}: entry {n}: mount 4 (driver 'overlay'): driver state holds more "
                        f"than {MAX_STATE_ITEMS} items")  # fmt: skip
    refused(cli("show", fw), f"{fw}: entry {n}: driver state holds more than {MAX_STATE_ITEMS} "
                             "items")  # fmt: skip


def test_an_overlay_of_500_layers_with_4k_paths_still_fits(tmp_path: Path) -> None:
    """The largest legitimate mount: 500 lower layers (OVL_MAX_STACK), upper and work, each
    path 4 KiB, given as lowerdir+= options: every cap leaves room for it."""

    def path(i: int) -> str:
        return f"/{i:03d}" + "p" * 4091

    roles = [(Role.UPPER, "upperdir"), (Role.WORK, "workdir")] + [(Role.LOWER, "lowerdir+")] * 500
    layers = [
        ResolvedLayer(
            LayerSpec(role, path(i), path(i), option), 1, path(i), Dev(0, 20), i, "as shown",
            Verdict.CONFIRMED,
        )
        for i, (role, option) in enumerate(roles)
    ]
    options = ("rw", *(f"{ly.spec.option}={ly.spec.text}" for ly in layers))
    ovl = OVL._replace(super_options=options)
    state = OverlayState(layers=layers)
    mounts = (ROOT, ovl)
    d = write_dir(str(tmp_path / "img"), mounts, states={4: state})
    mnts, fw = paths(d)
    assert os.path.getsize(mnts) > 2_000_000 and os.path.getsize(fw) > 6_000_000
    got = read_mount_namespace(d, NS, manager())
    assert got.tree.get(4) == ovl and got.record(4).state == state


# -- what the images say ---------------------------------------------------------------------


BAD_PATHS = [
    ("a/b", "is not absolute"),
    ("/a/../etc", "has a '.' or '..' component"),
    ("/a/./b", "has a '.' or '..' component"),
    ("/a//b", "has an empty component"),
    ("/a/b/", "ends with a slash"),
    ("", "is not absolute"),
]


@pytest.mark.parametrize(("mountpoint", "why"), BAD_PATHS)
def test_a_mountpoint_that_is_not_absolute_and_normalised(
    tmp_path: Path, mountpoint: str, why: str
) -> None:
    """``a/b`` made restore (and --dry-run) loop forever."""
    d = write_dir(str(tmp_path / "img"), (ROOT, A, B._replace(mountpoint=mountpoint)))
    mnts, _ = paths(d)
    refused(restore(d), f"{mnts}: entry 0: mount 3: mountpoint {mountpoint!r} {why}")


@pytest.mark.parametrize(("root", "why"), BAD_PATHS)
def test_a_root_that_is_not_absolute_and_normalised(tmp_path: Path, root: str, why: str) -> None:
    d = write_dir(str(tmp_path / "img"), (ROOT, A, B._replace(root=root)))
    mnts, _ = paths(d)
    refused(restore(d), f"{mnts}: entry 0: mount 3: root {root!r} {why}")


def test_a_path_with_a_nul_byte_or_too_long(tmp_path: Path) -> None:
    d = write_dir(str(tmp_path / "nul"), (ROOT, A, B._replace(mountpoint="/a/b\0/etc")))
    mnts, _ = paths(d)
    refused(restore(d), f"{mnts}: entry 0: mount 3: mountpoint '/a/b\\x00/etc' contains a NUL "
                        "byte")  # fmt: skip
    d = write_dir(str(tmp_path / "long"), (ROOT, A, B._replace(mountpoint="/a/" + "b" * 4093)))
    refused(restore(d), f"{paths(d)[0]}: entry 0: mount 3: mountpoint is 4096 bytes long, more "
                        "than 4095")  # fmt: skip


def test_a_bad_path_that_is_not_utf8_is_named_in_criu_s_image(tmp_path: Path) -> None:
    """Text that is not UTF-8 is in CRIU's image as its raw bytes: that is where it is
    wrong (the first entry: CRIU's order is the reverse of mountinfo's)."""
    bad = os.fsdecode(b"/a/\xff/../b")
    mounts = (ROOT, A, B._replace(mountpoint=bad))
    d = write_dir(str(tmp_path / "img"), mounts)
    mnts, _ = paths(d)
    refused(restore(d), f"{mnts}: entry 0: mount 3: mountpoint {bad!r} has a '.' or '..' "
                        "component")  # fmt: skip


def test_a_deleted_bind_root_is_legitimate(tmp_path: Path) -> None:
    """dentry_path's ``//deleted`` suffix is not part of the root (``root_deleted``)."""
    gone = B._replace(root="/file", mountpoint="/a/f", root_deleted=True)
    d = write_dir(str(tmp_path / "ok"), (ROOT, A, gone))
    assert read_mount_namespace(d, NS, manager()).tree.get(3).root_deleted
    res = restore(d)
    assert res.returncode == 0, res.stderr
    # The suffix itself in the root is a crafted path.
    d = write_dir(str(tmp_path / "bad"), (ROOT, A, gone._replace(root="/file//deleted")))
    refused(restore(d), f"{paths(d)[0]}: entry 0: mount 3: root '/file//deleted' has an empty "
                        "component")  # fmt: skip


@pytest.mark.parametrize(("deleted", "why"), [
    (DeletedRoot(0o20644), "deleted root mode 0o20644 is not a directory's or a regular file's"),
    (DeletedRoot(0o100644, link="/../etc/shadow"),
     "deleted root link '/../etc/shadow' has a '.' or '..' component"),
    (DeletedRoot(0o40755, link="/keep"),
     "a deleted root link is for a regular file, to another of its names"),
    (DeletedRoot(0o100644, content="../../etc/passwd"),
     "deleted root content image '../../etc/passwd' is not fw-deleted-<ns>-<mount>.img"),
])
def test_a_deleted_root_record_is_checked(tmp_path: Path, deleted: DeletedRoot, why: str) -> None:
    """What the restore would make again in a rebuilt filesystem: only a directory or a
    regular file, linked only to a clean path, its bytes only from an image of its own."""
    gone = B._replace(root="/file", mountpoint="/a/f", root_deleted=True)
    mounts = (ROOT, A, gone)
    d = write_dir(str(tmp_path), mounts, deleted={3: deleted})
    refused(restore(d), f"{paths(d)[1]}: entry {fw_entry(mounts, 3)}: mount 3: {why}")


def test_a_deleted_root_record_needs_a_deleted_root(tmp_path: Path) -> None:
    d = write_dir(str(tmp_path), BASE, deleted={3: DeletedRoot(0o40755)})
    refused(restore(d), f"{paths(d)[1]}: entry {fw_entry(BASE, 3)}: mount 3: a deleted root "
                        "recorded for a mount whose root was not deleted")  # fmt: skip


def test_other_texts(tmp_path: Path) -> None:
    cases: list[tuple[Mount, dict[int, str], str]] = [
        (B._replace(fstype=""), {}, "empty fstype"),
        (B._replace(fstype="tmp\nfs"), {}, "fstype 'tmp\\nfs' is not printable text"),
        (B._replace(source="ta\0x"), {}, "source 'ta\\x00x' contains a NUL byte"),
        (B._replace(super_options=("rw", "size=1m\0")), {},
         "option 'size=1m\\x00' contains a NUL byte"),
        (B, {3: "../../../etc/shadow"},
         "content image '../../../etc/shadow' is not a plain file name in the image directory"),
    ]  # fmt: skip
    for i, (bad, content, why) in enumerate(cases):
        mounts = (ROOT, A, bad)
        d = write_dir(str(tmp_path / str(i)), mounts, content=content,
                      drivers=dict.fromkeys((1, 2, 3), "generic"))  # fmt: skip
        _, fw = paths(d)
        refused(restore(d), f"{fw}: entry 3: mount 3: {why}")


def test_mount_ids_are_unique(tmp_path: Path) -> None:
    mounts = (ROOT, A, B._replace(mnt_id=2))
    d = write_dir(str(tmp_path / "img"), mounts, drivers={1: "generic", 2: "generic"})
    refused(restore(d), f"{paths(d)[0]}: entry 1: mount id 2 appears twice")


def test_a_mount_whose_parent_is_not_in_the_images(tmp_path: Path) -> None:
    mounts = (ROOT, A, B._replace(parent_id=99))
    d = write_dir(str(tmp_path / "img"), mounts)
    refused(restore(d), f"{paths(d)[0]}: entry {mnts_entry(mounts, 3)}: mount 3: parent mount 99 "
                        "is not in the images, and only the root mount (at '/') may lack one; "
                        "mountpoint '/a/b'")  # fmt: skip


def test_two_roots(tmp_path: Path) -> None:
    other = ROOT._replace(mnt_id=5, dev=Dev(0, 50))
    mounts = (ROOT, A, other)
    d = write_dir(str(tmp_path / "img"), mounts)
    refused(restore(d), f"{paths(d)[0]}: entry {mnts_entry(mounts, 5)}: mount 5: a second mount at "
                        "'/' without a parent in the images (the root is mount 1)")  # fmt: skip


def test_mounts_stacked_on_the_root_are_legitimate(tmp_path: Path) -> None:
    over = A._replace(mountpoint="/")
    on_top = B._replace(mountpoint="/b")
    d = write_dir(str(tmp_path / "img"), (ROOT, over, on_top))
    res = restore(d)
    assert res.returncode == 0, res.stderr


def test_a_parent_chain_that_loops(tmp_path: Path) -> None:
    mounts = (ROOT, A._replace(parent_id=3), B._replace(mountpoint="/a"))
    d = write_dir(str(tmp_path / "img"), mounts)
    refused(restore(d), f"{paths(d)[0]}: entry {mnts_entry(mounts, 2)}: mount 2: parent chain "
                        "2 -> 3 -> 2 loops")  # fmt: skip
    # Without a root, every chain loops.
    pair = (ROOT._replace(parent_id=2), A._replace(mountpoint="/"))
    d = write_dir(str(tmp_path / "noroot"), pair)
    refused(restore(d), f"{paths(d)[0]}: entry {mnts_entry(pair, 1)}: mount 1: no root mount: "
                        "parent chain 1 -> 2 -> 1 loops")  # fmt: skip


def test_a_mount_outside_its_parent(tmp_path: Path) -> None:
    mounts = (ROOT, A, B._replace(mountpoint="/etc"))
    d = write_dir(str(tmp_path / "img"), mounts)
    refused(restore(d), f"{paths(d)[0]}: entry 0: mount 3: mountpoint '/etc' is not at or below "
                        "'/a', the mountpoint of its parent mount 2")  # fmt: skip


def test_the_driver_named_must_be_the_registrys(tmp_path: Path) -> None:
    """An overlay routed to generic would be mounted with its options (host paths) as given."""
    mounts = (ROOT, OVL)
    d = write_dir(str(tmp_path / "img"), mounts, drivers={1: "generic", 4: "generic"})
    _, fw = paths(d)
    refused(restore(d), f"{fw}: entry 2: mount 4: the image names driver 'generic' for fstype "
                        "'overlay', but the loaded drivers give that fstype to 'overlay'")
    d = write_dir(str(tmp_path / "unknown"), BASE, drivers={1: "generic", 2: "zfs", 3: "generic"})
    refused(restore(d), f"{paths(d)[1]}: entry 2: mount 2: the image names driver 'zfs' for "
                        "fstype 'tmpfs', but the loaded drivers give that fstype to 'generic'")
