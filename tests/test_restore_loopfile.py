"""A superblock made from a file on a loop device the restore attaches (``LoopFile``).

Planning checks happen with RecordingMountOps (nothing is attached or mounted): the file is
used only through a grant, must be the recorded one, and is named in one line when it is
not. The kernel checks attach a real squashfs image in the restoring child's private
namespace and look at the loop devices afterwards: none may stay attached to the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import attrs
import pytest
from criu_fw import hookimpl
from criu_fw.api.loader import DriverConfig, DriverManager
from criu_fw.driver import DriverState, ExternalRef, FsDriver, LoopFile, Mount, NewSuperblock
from criu_fw.errors import RestoreError
from criu_fw.kernel import LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY
from criu_fw.kernel.mountinfo import parse, read_mountinfo
from criu_fw.kernel.mountops import RecordingMountOps
from criu_fw.model import Dev, MountTree
from criu_fw.restore import DumpedNamespace, restore
from criu_fw.restore.verify import compare_trees
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

TREE = """\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 7:3 / /mnt/img ro,relatime - squashfs /dev/loop3 ro,errors=continue
"""
SQUASHFS = "mount 2 at '/mnt/img' (squashfs, source '/dev/loop3')"


class Loopy(FsDriver):
    """Rebuilds every squashfs mount from one given file."""

    name = "loopy"
    fstypes = ("squashfs",)
    api_version = (1, 1)

    def __init__(self, loop: LoopFile) -> None:
        self.loop = loop

    @hookimpl
    def rebuild_mount(self, mount: Mount) -> NewSuperblock:
        return NewSuperblock(mount.fstype, self.loop, (("errors", "continue"),))


def recorded(path: Path, **kw: object) -> LoopFile:
    """A LoopFile for ``path`` as a dump would have recorded it now."""
    st = path.stat()
    return LoopFile(ExternalRef(path=str(path)), size=st.st_size, mtime_ns=st.st_mtime_ns,
                    dev=st.st_dev, ino=st.st_ino, **kw)  # type: ignore[arg-type]


def manager(loop: LoopFile) -> DriverManager:
    return DriverManager(DriverConfig(external=False)).load([Loopy(loop)])


def dry(loop: LoopFile, text: str = TREE, **kw: Any) -> RecordingMountOps:
    ops = RecordingMountOps()
    tree = MountTree.from_mounts(parse(text.encode()), ns_id=9)
    restore("/x", root="/", ops=ops, namespaces=[DumpedNamespace.of(9, tree)],
            manager=manager(loop), **kw)  # fmt: skip
    return ops


def fails(loop: LoopFile, **kw: Any) -> str:
    with pytest.raises(RestoreError) as err:
        dry(loop, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "store" / "app.img"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 8192)
    return path


def test_the_file_is_used_only_when_granted(image: Path) -> None:
    assert fails(recorded(image)) == (
        f"{SQUASHFS}: the loop device's backing file {str(image)!r} is a host path named by "
        f"the images, used only when granted; give --allow-host {image.parent} (or a "
        f"directory above it)"
    )


def test_a_granted_file_is_attached_and_becomes_the_source(image: Path) -> None:
    ops = dry(recorded(image, offset=4096), allow_host=[str(image.parent)])
    (attach,) = ops.of("attach_loop")
    assert attach.path == str(image)
    assert attach.flags == LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY
    assert dict(attach.params) == {"offset": "4096", "sizelimit": "0"}
    (sb,) = ops.of("new_superblock")
    assert sb.source == attach.source
    # Read-only from the start (a read-only device opens only read-only), never reconfigured;
    # and no --external dev[7:3] needed for a device the restore attached itself.
    assert sb.params == (("errors", "continue"), ("ro", None))
    assert ops.of("reconfigure") == []
    assert attach.describe() == (
        f"{attach.source} = loop device on {image} (offset 4096, read-only)"
    )


def test_a_keyed_file_comes_from_the_operators_mapping(image: Path, tmp_path: Path) -> None:
    loop = attrs.evolve(recorded(image), path=ExternalRef(key="app"))
    msg = fails(loop)
    assert msg.endswith("the loop device's backing file with key 'app' has no mapping; give "
                        "--external mnt[app]:PATH")
    ops = dry(loop, externals={"app": str(image)})
    assert ops.of("attach_loop")[0].path == str(image)


def test_a_changed_file_is_refused(image: Path) -> None:
    loop = recorded(image)
    grant = {"allow_host": [str(image.parent)]}
    with open(image, "ab") as f:
        f.write(b"more")
    assert fails(loop, **grant) == (
        f"{SQUASHFS}: the loop device's backing file {str(image)!r}: changed since the dump "
        f"(8196 bytes, 8192 when dumped)"
    )
    os.truncate(image, 8192)
    os.utime(image, ns=(0, loop.mtime_ns + 1))  # type: ignore[operator]
    msg = fails(loop, **grant)
    assert msg.startswith(f"{SQUASHFS}: the loop device's backing file {str(image)!r}: "
                          f"changed since the dump (modified ")
    assert msg.endswith(" UTC when dumped)")


def test_a_gone_file_is_refused(image: Path) -> None:
    loop = recorded(image)
    image.rename(image.with_name("moved"))
    assert fails(loop, allow_host=[str(image.parent)]) == (
        f"{SQUASHFS}: the loop device's backing file {str(image)!r} is gone"
    )


def test_what_is_not_a_regular_file_is_not_opened(image: Path) -> None:
    image.unlink()
    os.mkfifo(image)  # opening it for reading would wait for a writer forever
    assert fails(LoopFile(ExternalRef(path=str(image))), allow_host=[str(image.parent)]) == (
        f"{SQUASHFS}: the loop device's backing file {str(image)!r}: not a regular file"
    )


def test_a_link_out_of_the_granted_directory_is_not_followed(image: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"\0" * 8192)
    link = image.parent / "link.img"
    link.symlink_to(outside)
    msg = fails(LoopFile(ExternalRef(path=str(link))), allow_host=[str(image.parent)])
    assert msg.startswith(f"{SQUASHFS}: the loop device's backing file {str(link)!r} cannot "
                          f"be opened: openat2")
    assert "EXDEV" in msg


def test_offsets_from_an_image_are_checked() -> None:
    with pytest.raises(ValueError, match="offset must be a file offset"):
        LoopFile(ExternalRef(path="/x"), offset=-1)
    with pytest.raises(ValueError, match="sizelimit must be a file offset"):
        LoopFile(ExternalRef(path="/x"), sizelimit=1 << 63)


# -- for real --------------------------------------------------------------------------


def attached_to(path: Path) -> list[str]:
    """The loop devices attached to ``path`` (``losetup -j``)."""
    out = subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [line.split(":", 1)[0] for line in out.splitlines() if line]


def none_attached(path: Path, timeout: float = 5.0) -> bool:
    """Whether every loop device on ``path`` went away (an autoclear device goes when its
    last user does, which for a dead namespace's mount may take a moment)."""
    deadline = time.monotonic() + timeout
    while attached_to(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def squashfs(tmp_path: Path) -> Path:
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs is not installed (Debian's squashfs-tools)")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello").write_text("from the image\n")
    img = tmp_path / "store" / "app.sqfs"
    img.parent.mkdir()
    subprocess.run(["mksquashfs", str(src), str(img), "-quiet", "-noappend"], check=True,
                   capture_output=True)  # fmt: skip
    return img


def real_tree(tmp_path: Path, *extra: Mount) -> MountTree:
    root = read_mountinfo("self").root
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sq = Mount(999990, root.mnt_id, Dev(7, 999), "/", str(mnt), "squashfs", "/dev/loop999",
               ("ro", "relatime"), ("ro", "errors=continue"))
    return MountTree.from_mounts([root, sq, *extra])


def detach_leftovers(path: Path) -> None:
    for dev in attached_to(path):
        subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


@pytest.mark.privileged
def test_a_real_image_is_attached_mounted_and_let_go(squashfs: Path, tmp_path: Path) -> None:
    tree = real_tree(tmp_path)
    # The restored namespace has no /proc: the file it shows says where it comes from.
    check = f"test \"$(cat {tmp_path}/mnt/hello)\" = 'from the image' && exit 7"
    try:
        res = restore("/x", root="/", namespaces=[DumpedNamespace.of(1, tree)],
                      manager=manager(recorded(squashfs)), allow_host=[str(squashfs.parent)],
                      command=["sh", "-c", check])  # fmt: skip
        assert res.exit_code == 7
        # The namespace died with the command: its device went with its last user.
        assert none_attached(squashfs)
    finally:
        detach_leftovers(squashfs)


@pytest.mark.privileged
@pytest.mark.parametrize("how", ["not a filesystem", "a later mount fails"])
def test_a_failed_restore_detaches_its_loop_device(
    squashfs: Path, tmp_path: Path, how: str
) -> None:
    if how == "not a filesystem":
        squashfs.write_bytes(b"\0" * 8192)
        tree = real_tree(tmp_path)
        expect = "squashfs"
    else:
        # Mounted on a directory of the image: the image is attached and mounted first.
        bad = Mount(999991, 999990, Dev(0, 9991), "/", f"{tmp_path}/mnt/sub", "tmpfs", "bad",
                    ("rw", "relatime"), ("rw", "bogus_opt"))
        tree = real_tree(tmp_path, bad)
        expect = "bogus_opt"
    try:
        with pytest.raises(RestoreError, match=expect) as err:
            restore("/x", root="/", namespaces=[DumpedNamespace.of(1, tree)],
                    manager=manager(recorded(squashfs)), allow_host=[str(squashfs.parent)],
                    detach=True)  # fmt: skip
        assert "\n" not in str(err.value)
        assert none_attached(squashfs)
    finally:
        detach_leftovers(squashfs)


# -- verify ------------------------------------------------------------------------------


@attrs.frozen
class OnFile(DriverState):
    """A state whose source stands for a file, whatever the device is called."""

    MESSAGE: ClassVar[type[Message]] = wrappers_pb2.StringValue

    file: str

    def to_message(self) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=self.file)

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(message.value)

    def source_identity(self) -> str:
        return f"loop device on {self.file}"


def test_verify_compares_what_a_loop_device_stands_for() -> None:
    dumped = MountTree.from_mounts(parse(TREE.encode()), ns_id=9)
    live = MountTree.from_mounts(parse(TREE.replace("7:3", "7:8").replace(
        "/dev/loop3", "/dev/loop8").encode()), ns_id=9)  # fmt: skip
    same = compare_trees(dumped, live, states={2: OnFile("/s/a.img")},
                         live_states={2: OnFile("/s/a.img")})  # fmt: skip
    assert same.differences == ()
    other = compare_trees(dumped, live, states={2: OnFile("/s/a.img")},
                          live_states={2: OnFile("/s/b.img")})  # fmt: skip
    assert other.differences == (
        "/mnt/img: source 'loop device on /s/a.img' in the images, 'loop device on /s/b.img' "
        "live",
    )
    # Without states the names are compared as they are.
    assert compare_trees(dumped, live).differences == (
        "/mnt/img: source '/dev/loop3' in the images, '/dev/loop8' live",
    )
