"""Per-mount atime modes and superblock requests that the new mount API cannot carry.

Both are checked for real: a scenario is dumped and restored in private namespaces (atime
modes), and a tmpfs whose parameter is too long for fsconfig is created in a child's private
namespace through the same mount(2) fallback an AUFS branch string takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw import kernel
from criu_fw.errors import RestoreError, SyscallError
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.kernel.mountops import KernelMountOps, RecordingMountOps
from criu_fw.model import Dev, Mount, MountTree
from criu_fw.restore import DumpedNamespace, RestoreResult, restore
from criu_fw.restore.verify import verify
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario

ATIMES = r"""
mkdir -p rel noa strict nodir both
mount -t tmpfs -o relatime trel rel
mount -t tmpfs -o noatime tnoa noa
mount -t tmpfs -o strictatime tstrict strict
mount -t tmpfs -o nodiratime tnodir nodir
mount -t tmpfs -o strictatime,nodiratime tboth both
"""


@pytest.fixture(scope="module")
def atimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, RestoreResult]]:
    images = str(tmp_path_factory.mktemp("atime") / "images")
    scn = NamespaceScenario(ATIMES)
    result: RestoreResult | None = None
    try:
        dump_scenario(scn, images)
        result = restore(images, root="/", detach=True)
        yield scn.workdir, images, result
    finally:
        if result is not None:
            result.terminate()
        scn.close()


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("rel", ["rw", "relatime"]),
        ("noa", ["rw", "noatime"]),
        ("strict", ["rw"]),  # strictatime shows as neither relatime nor noatime
        ("nodir", ["rw", "nodiratime", "relatime"]),
        ("both", ["rw", "nodiratime"]),
    ],
)
def test_atime_modes_come_back(
    atimes: tuple[str, str, RestoreResult], name: str, shown: list[str]
) -> None:
    workdir, _, result = atimes
    live = read_mountinfo(result.pid)
    (m,) = [m for m in live if m.mountpoint == f"{workdir}/{name}"]
    assert sorted(m.mount_options) == sorted(shown)


@pytest.mark.privileged
def test_atime_modes_verify(atimes: tuple[str, str, RestoreResult]) -> None:
    _, images, result = atimes
    assert verify(result.pid, images).differences == ()


# -- superblock parameters too long for fsconfig: mount(2) with the plan's legacy data -------

#: A tmpfs size of 1 MiB spelled in 300 characters (leading zeros: octal 1, then "m").
LONG_SIZE = "0" * 298 + "1m"


def _in_private_namespace(fn: object) -> str:
    """Run ``fn()`` in a forked child inside a fresh private namespace; its result or error."""
    assert callable(fn)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            kernel.enter_private_namespace()
            out = str(fn())
        except BaseException as exc:
            out = f"ERR {type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data


@pytest.mark.privileged
def test_long_parameter_with_legacy_data_takes_mount2(tmp_path: os.PathLike[str]) -> None:
    scratch = os.path.join(tmp_path, "scratch")
    os.mkdir(scratch)

    def make() -> str:
        ops = KernelMountOps(scratch)
        h = ops.new_superblock(
            "tmpfs", "longopt", [("size", LONG_SIZE)], legacy_data=f"size={LONG_SIZE}"
        )
        target = os.path.join(str(tmp_path), "t")
        os.mkdir(target)
        ops.attach(h, None, target)
        (m,) = [m for m in read_mountinfo("self") if m.mountpoint == target]
        # Nothing is left on the scratch directory.
        assert not [x for x in read_mountinfo("self") if x.mountpoint == scratch]
        return f"{m.source} {','.join(m.super_options)}"

    assert _in_private_namespace(make) == "longopt rw,size=1024k"


def test_long_parameter_without_legacy_data_is_refused_clearly() -> None:
    with pytest.raises(SyscallError, match=r"'size' is 300 bytes, the kernel takes at most 255"):
        KernelMountOps("/nonexistent").new_superblock("tmpfs", "t", [("size", LONG_SIZE)])


def test_legacy_data_over_a_page_is_an_error_not_a_cut() -> None:
    data = "size=1m," + ",".join(["nr_inodes=100"] * 400)
    with pytest.raises(SyscallError) as err:
        KernelMountOps("/nonexistent").new_superblock(
            "tmpfs", "t", [("x", "y" * 300)], legacy_data=data
        )
    assert f"mount data is {len(data)} bytes" in str(err.value)
    assert "at most 4095" in str(err.value)


@pytest.mark.privileged
def test_legacy_data_over_a_page_names_the_mount(tmp_path: os.PathLike[str]) -> None:
    from criu_fw import hookimpl
    from criu_fw.driver import FsDriver
    from criu_fw.plan import NewSuperblock

    class Huge(FsDriver):
        fstypes = ("hugefs",)
        name = "hugefs"

        @hookimpl
        def rebuild_mount(self, mount: Mount, state: object, ctx: object) -> NewSuperblock:
            return NewSuperblock("tmpfs", "huge", (("size", LONG_SIZE),),
                                 legacy_data="size=1m" + ",mode=755" * 600)

    root = Mount(1, 0, Dev(0, 9001), "/", "/", "tmpfs", "root", ("rw", "relatime"), ("rw",))
    huge = Mount(2, 1, Dev(0, 9002), "/", "/h", "hugefs", "huge", ("rw", "relatime"), ("rw",))
    tree = MountTree.from_mounts([root, huge], ns_id=1)
    with pytest.raises(RestoreError) as err:
        restore(str(tmp_path), namespaces=[DumpedNamespace.of(1, tree)], plugins=[Huge()],
                detach=True)
    msg = str(err.value)
    assert msg.startswith("mount 2 at '/h' (hugefs, source 'huge'): "), msg
    assert "at most 4095" in msg and "\n" not in msg


@pytest.mark.privileged
def test_dry_run_prints_one_readable_line_per_request(
    atimes: tuple[str, str, RestoreResult],
) -> None:
    import subprocess
    import sys

    _, images, _ = atimes
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw", "restore", "-D", images, "--root", "/", "--dry-run"],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines and not any("Call(" in x for x in lines)
    assert any(x.endswith("= new tmpfs superblock, source 'tstrict'") for x in lines), lines
    assert any(x.startswith("set flags of #") and ": strictatime (clearing " in x
               for x in lines), lines
    assert any(x.startswith("attach #") and " to #" in x for x in lines)
    assert all(x.split()[0] in ("attach", "set", "make", "close", "fill", "reconfigure")
               or x.startswith("#") for x in lines), lines


@pytest.mark.privileged
def test_nosymfollow_comes_back_and_an_unknown_per_mount_option_is_refused(
    tmp_path: Path,
) -> None:
    """Every per-mount flag mountinfo shows is set again; one a restore cannot set fails the
    restore naming it, before anything is mounted (a hardening flag never silently lost)."""
    root = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw", "relatime"), ("rw",))
    proc = Mount(2, 1, Dev(0, 4999), "/", "/proc", "proc", "proc", ("rw",), ("rw",))
    hard = Mount(3, 1, Dev(0, 5000), "/", f"{tmp_path}/h", "tmpfs", "hard",
                 ("rw", "nosuid", "nosymfollow", "relatime"), ("rw",))
    check = (f"grep ' {tmp_path}/h ' /proc/self/mountinfo"
             " | grep -q 'nosuid,relatime,nosymfollow' && exit 7")
    res = restore("/x", root="/", namespaces=[DumpedNamespace.of(1, MountTree.from_mounts(
        [root, proc, hard]))], command=["sh", "-c", check])
    assert res.exit_code == 7
    odd = hard._replace(mount_options=("rw", "idmapped", "relatime"))
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", namespaces=[DumpedNamespace.of(1, MountTree.from_mounts(
            [root, proc, odd]))], ops=RecordingMountOps())
    assert str(err.value).startswith(
        f"mount 3 at '{tmp_path}/h' (tmpfs, source 'hard'): per-mount option 'idmapped' "
        "cannot be restored by this criu-fw"
    )
