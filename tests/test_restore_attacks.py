"""Crafted images against a real restore: nothing outside the new namespaces is touched.

Each test is one class of attack from issue 10. The image directory is written with the
library writer (``crafted_images.write_dir``; content archives with GNU tar), then restored
the way a user would: ``criu-fw restore`` inside fresh network and IPC namespaces
(``unshare --net --ipc``), and again through the library with the tree handed over directly,
which skips the image reader's checks and so proves the restore itself is confined.

Every test has a canary directory the attack aims at, and asserts what a user would see: the
one-line error naming the mount, the canary tree byte for byte unchanged, and the caller's
mount table unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from crafted_images import write_dir
from criu_fw.errors import RestoreError, SyscallError
from criu_fw.fsdrivers.overlay.layers import ResolvedLayer, Verdict
from criu_fw.fsdrivers.overlay.options import LayerSpec, Role
from criu_fw.fsdrivers.overlay.state import OverlayState
from criu_fw.kernel.confine import Maker, open_beneath
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.model import Dev, Mount, MountTree
from criu_fw.restore import DumpedNamespace, restore
from criu_fw.testing import host_mount_table

pytestmark = pytest.mark.privileged

ROOT_DEV = Dev(0, 20)
ARCHIVE = f"tmpfs-dev-{ROOT_DEV.kdev}.tar.gz.img"
RW = ("rw", "relatime")


def root(mnt_id: int = 1) -> Mount:
    return Mount(mnt_id, 0, ROOT_DEV, "/", "/", "tmpfs", "root", RW, ("rw",))


def tmpfs(mnt_id: int, parent: int, mountpoint: str, minor: int) -> Mount:
    return Mount(mnt_id, parent, Dev(0, minor), "/", mountpoint, "tmpfs", "evil", RW, ("rw",))


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A host directory an attack aims at; it must come out byte for byte the same."""
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "keep").write_text("canary\n")
    (c / "sub" / "y").mkdir()
    before, table = snapshot(c), host_mount_table()
    yield c
    assert snapshot(c) == before, "the canary directory changed"
    assert host_mount_table() == table, "the caller's mount table changed"


def snapshot(top: Path) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else p.read_text()
            out.append((str(p.relative_to(top)), kind))
    return sorted(out)


def content(image_dir: Path, build: str) -> str:
    """A root tmpfs archive made by GNU tar from a directory the shell script ``build`` fills
    (run in that directory); returns the image name."""
    src = image_dir.parent / f"{image_dir.name}-content"
    src.mkdir()
    subprocess.run(["sh", "-ec", build], cwd=src, check=True)
    image_dir.mkdir(exist_ok=True)
    subprocess.run(
        ["tar", "--create", "--gzip", "--numeric-owner", f"--file={image_dir / ARCHIVE}",
         f"--directory={src}", "."],
        check=True,
    )
    return ARCHIVE


def craft(
    image_dir: Path, mounts: Sequence[Mount], *, build: str | None = None, **kw: object
) -> str:
    if build is not None:
        kw.setdefault("content", {mounts[0].mnt_id: content(image_dir, build)})
    return write_dir(str(image_dir), mounts, **kw)  # type: ignore[arg-type]


def restore_cli(image_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``criu-fw restore --detach`` in fresh network and IPC namespaces; a holder it leaves is
    ended by its PID."""
    out = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore",
         "-D", image_dir, "--detach", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if out.returncode == 0:
        for line in out.stdout.split("\n"):
            if line.strip():
                os.kill(int(line.split()[0]), 9)
    return out


def refused(out: subprocess.CompletedProcess[str], *parts: str) -> str:
    """The restore failed with one line on stderr that holds every part."""
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def library(mounts: Sequence[Mount], image_dir: Path | str = "/nonexistent",
            drivers: Mapping[int, str] | None = None, **kw: object) -> str:
    """The same tree restored through the library, without the image reader's checks."""
    tree = MountTree(tuple(mounts), 1)
    ns = DumpedNamespace.of(1, tree, drivers=drivers or {}, **kw)  # type: ignore[arg-type]
    with pytest.raises(RestoreError) as err:
        restore(str(image_dir), namespaces=[ns], detach=True)
    return str(err.value)


# -- mountpoints ---------------------------------------------------------------------------


def test_mountpoint_with_dotdot(tmp_path: Path, canary: Path) -> None:
    evil = tmpfs(2, 1, f"/a/../../../../..{canary}/evil", 30)
    out = restore_cli(craft(tmp_path / "img", [root(), evil]))
    refused(out, "mount 2")
    msg = library([root(), evil])
    assert msg.startswith(f"mount 2 at '{evil.mountpoint}'") and "'..' component" in msg
    # Below the planner's check, the resolution itself refuses '..' too.
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(SyscallError, match=r"'\.\.' is not allowed"):
            open_beneath(fd, evil.mountpoint.lstrip("/"))
        with pytest.raises(SyscallError, match=r"'\.\.' is not allowed"):
            Maker().open_or_make(fd, evil.mountpoint.lstrip("/"), is_dir=True)
    finally:
        os.close(fd)
    assert not (canary / "evil").exists()


def test_mountpoint_through_a_symlink_in_restored_content(tmp_path: Path, canary: Path) -> None:
    """The root tmpfs's archive holds links to the canary; mounts are made beneath them."""
    build = f"mkdir d && ln -s {canary} d/abs && ln -s ../../../../../../..{canary} d/rel"
    for n, link in enumerate(("abs", "rel")):
        images = tmp_path / f"img-{link}"
        evil = tmpfs(2, 1, f"/d/{link}/sub/evil", 30)
        out = restore_cli(craft(images, [root(), evil], build=build))
        refused(out, f"mount 2 at '/d/{link}/sub/evil'", "symbolic link")
        msg = library([root(), evil], images, content={1: ARCHIVE})
        assert "symbolic link" in msg, (n, msg)


def test_mountpoint_through_the_restored_proc(tmp_path: Path, canary: Path) -> None:
    """/proc/self/root of the image's own proc mount leads to the restorer's root."""
    proc = Mount(2, 1, Dev(0, 31), "/", "/proc", "proc", "proc", RW, ("rw",))
    evil = tmpfs(3, 2, f"/proc/self/root{canary}/sub/evil", 32)
    images = tmp_path / "img"
    out = restore_cli(craft(images, [root(), proc, evil], build="mkdir proc"))
    refused(out, "mount 3", "symbolic link")
    assert "symbolic link" in library([root(), proc, evil], images, content={1: ARCHIVE})


# -- bind roots ----------------------------------------------------------------------------


def test_bind_root_through_a_symlink_or_a_magic_link(tmp_path: Path, canary: Path) -> None:
    build = f"mkdir d mnt proc && ln -s {canary} d/link"
    bind = Mount(2, 1, ROOT_DEV, "/d/link", "/mnt", "tmpfs", "root", RW, ("rw",))
    images = tmp_path / "img"
    out = restore_cli(craft(images, [root(), bind], build=build))
    refused(out, "mount 2 at '/mnt'", "symbolic link")
    assert "symbolic link" in library([root(), bind], images, content={1: ARCHIVE})
    # A bind of proc's /self/root (a magic link to the restorer's root).
    proc = Mount(2, 1, Dev(0, 31), "/", "/proc", "proc", "proc", RW, ("rw",))
    magic = Mount(3, 1, Dev(0, 31), "/self/root", "/mnt", "proc", "proc", RW, ("rw",))
    images = tmp_path / "img2"
    out = restore_cli(craft(images, [root(), proc, magic], build=build))
    refused(out, "mount 3 at '/mnt'")
    msg = library([root(), proc, magic], images, content={1: ARCHIVE})
    assert msg.startswith("mount 3 at '/mnt'") and "link" in msg, msg


# -- host filesystems and host paths ---------------------------------------------------------


def test_block_device_filesystem_of_the_host(tmp_path: Path, canary: Path) -> None:
    """An ext4 mount of this machine's own root device is not mounted from its source."""
    host_root = read_mountinfo("self").root
    if host_root.dev.major == 0:
        pytest.skip("this machine's root is not on a block device")
    disk = Mount(2, 1, host_root.dev, "/", "/host", host_root.fstype, host_root.source, RW,
                 ("rw",))
    dev = f"{host_root.dev.major}:{host_root.dev.minor}"
    out = restore_cli(craft(tmp_path / "img", [root(), disk]))
    refused(out, "mount 2 at '/host'", f"--external dev[{dev}]:DEVICE")
    assert f"--external dev[{dev}]:DEVICE" in library([root(), disk])


def test_external_key_that_is_a_host_path(tmp_path: Path, canary: Path) -> None:
    ext = Mount(2, 1, Dev(0, 40), "/x", "/ext", "tmpfs", "t", RW, ("rw",))
    out = restore_cli(craft(tmp_path / "img", [root(), ext], external={2: str(canary)}))
    refused(out, "mount 2 at '/ext'", f"--external mnt[{canary}]:PATH")
    assert "has no mapping" in library([root(), ext], external={2: str(canary)})


def _overlay(canary: Path, mnt_id: int = 2) -> tuple[Mount, OverlayState]:
    ovl = Mount(mnt_id, 1, Dev(0, 50), "/", "/ovl", "overlay", "overlay", RW,
                ("rw", f"lowerdir={canary}/sub", f"upperdir={canary}/u", f"workdir={canary}/w"))

    def layer(role: Role, option: str, path: str) -> ResolvedLayer:
        return ResolvedLayer(LayerSpec(role, path, path, option), None, path, Dev(0, 1), 1,
                             "host", Verdict.CONFIRMED)

    state = OverlayState((
        layer(Role.UPPER, "upperdir", f"{canary}/u"),
        layer(Role.WORK, "workdir", f"{canary}/w"),
        layer(Role.LOWER, "lowerdir", f"{canary}/sub"),
    ))
    return ovl, state


def test_overlay_layers_on_host_paths(tmp_path: Path, canary: Path) -> None:
    """Layers named by host path (upper and work would be written) need --allow-host."""
    ovl, state = _overlay(canary)
    out = restore_cli(craft(tmp_path / "img", [root(), ovl], states={2: state}))
    refused(out, "mount 2 at '/ovl'", "is a host path named by the images",
            f"--allow-host {canary}")
    msg = library([root(), ovl], drivers={2: "overlay"}, states={2: state})
    assert f"--allow-host {canary}" in msg


def test_overlay_routed_to_another_driver(tmp_path: Path, canary: Path) -> None:
    """The images say 'generic' for an overlay: its host paths would go to the kernel as
    strings; the registry's driver is the one used, or the restore fails naming both."""
    ovl, _ = _overlay(canary)
    out = restore_cli(craft(tmp_path / "img", [root(), ovl], drivers={1: "generic", 2: "generic"}))
    refused(out, "generic", "overlay")
    msg = library([root(), ovl], drivers={1: "generic", 2: "generic"})
    assert msg.startswith("mount 2 at '/ovl'") and "'generic'" in msg and "'overlay'" in msg


# -- --root -------------------------------------------------------------------------------


def _root_tree(*more: Mount) -> list[Mount]:
    disk = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", RW, ("rw",))
    return [disk, *more]


def test_escape_from_root_by_link_or_dotdot(tmp_path: Path, canary: Path) -> None:
    tree_root = tmp_path / "rootdir"
    (tree_root / "e").mkdir(parents=True)
    (tree_root / "d").symlink_to(canary)
    for n, bind_root in enumerate(("/d", "/d/sub", "/e/../../canary")):
        bind = Mount(2, 1, Dev(8, 1), bind_root, "/e", "ext4", "/dev/sda1", RW, ("rw",))
        images = craft(tmp_path / f"img{n}", _root_tree(bind))
        out = restore_cli(images, "--root", str(tree_root))
        refused(out, "mount 2")
        with pytest.raises(RestoreError) as err:
            tree = MountTree(tuple(_root_tree(bind)), 1)
            restore("/x", root=str(tree_root), namespaces=[DumpedNamespace.of(1, tree)],
                    detach=True)
        assert str(err.value).startswith("mount 2 at '/e'"), str(err.value)
        assert "symbolic link" in str(err.value) or "'..' component" in str(err.value)
    assert sorted(os.listdir(tree_root)) == ["d", "e"]


def test_failed_restore_never_deletes_through_a_planted_link(
    tmp_path: Path, canary: Path
) -> None:
    """Mountpoints made in --root's tree are removed after a failure, through the descriptors
    they were made with: a link planted in restored content (here /new/a -> canary) neither
    gets a directory made beneath it nor has one removed beneath it."""
    tree_root = tmp_path / "rootdir"
    tree_root.mkdir()
    images = tmp_path / "img"
    new = Mount(2, 1, Dev(0, 60), "/", "/new", "tmpfs", "t", RW, ("rw",))
    deep = tmpfs(3, 2, "/new/a/sub/y", 61)
    build = f"ln -s {canary} a"
    archive = f"tmpfs-dev-{Dev(0, 60).kdev}.tar.gz.img"
    content(images, build)
    os.rename(images / ARCHIVE, images / archive)
    craft(images, _root_tree(new, deep), content={2: archive})
    out = restore_cli(str(images), "--root", str(tree_root))
    refused(out, "mount 3 at '/new/a/sub/y'", "symbolic link")
    assert os.listdir(tree_root) == []  # /new was made for the restore, and removed again


def test_undo_leaves_what_was_swapped_for_a_link(tmp_path: Path, canary: Path) -> None:
    """Undo removes an entry only if it is still the one made: a directory replaced by a
    link to the canary (which has an entry of the same name) is left alone."""
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    maker = Maker()
    try:
        os.close(maker.open_or_make(fd, "x/y", True))
        os.close(maker.open_or_make(fd, "x/f", False))
    finally:
        os.close(fd)
    assert sorted(os.listdir(top / "x")) == ["f", "y"]
    os.rename(top / "x", top / "moved")
    (top / "x").symlink_to(canary / "sub")  # canary/sub/y exists
    maker.undo()
    assert (top / "x").is_symlink()  # the name now holds a link: not what was made, kept
    # What was made inside x went, through x's own descriptor, wherever x was moved.
    assert os.listdir(top / "moved") == []


def test_volatile_overlay_work_directory_left_marked(tmp_path: Path) -> None:
    """A volatile overlay leaves work/incompat/volatile in its work directory and the kernel
    refuses to mount that directory again with a bare EINVAL; the restore names the marker
    and what to do, before mounting anything."""
    host = tmp_path / "layers"
    ovl, state = _overlay(host)
    state = OverlayState(state.layers, features=(("volatile", None),))
    for d in ("u", "sub", "w/work/incompat/volatile"):
        (host / d).mkdir(parents=True, exist_ok=True)
    tree = MountTree((root(), ovl), 1)
    ns = DumpedNamespace.of(1, tree, drivers={2: "overlay"}, states={2: state})
    with pytest.raises(RestoreError) as err:
        restore("/nonexistent", namespaces=[ns], detach=True, allow_host=[str(host)])
    assert str(err.value) == (
        f"mount 2 at '/ovl' (overlay, source 'overlay'): driver 'overlay': the work directory "
        f"'{host}/w' holds "
        "work/incompat/volatile, left by the volatile overlay (still mounted, or unmounted or "
        "crashed since); the kernel refuses to mount it again. Stop the source container; if "
        f"its upper directory is known to be complete, remove "
        f"'{host}/w/work/incompat/volatile'"
    )
