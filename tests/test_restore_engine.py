"""The restore engine's planning, ordering and error paths.

Most checks run the whole engine on a dumped tree with RecordingMountOps (nothing is mounted)
and assert on the recorded requests; the kernel-error checks restore for real, in a child's
private namespace, and rely on the autouse fixture that fails a test which changed the
caller's mount table.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from typing import ClassVar

import pytest
from criu_fw import hookimpl
from criu_fw.context import RestoreContext
from criu_fw.driver import DriverState, FsDriver
from criu_fw.errors import MountNotFoundError, RestoreError, SyscallError, UsageError
from criu_fw.kernel.mountinfo import parse, read_mountinfo
from criu_fw.kernel.mountops import Call, Fd, KernelMountOps, RecordingMountOps
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.plan import MountPlan, NewSuperblock, PathRef
from criu_fw.restore import DumpedNamespace, restore
from criu_fw.restore.plans import cgroup_path

MOUNTINFO = """\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 0:40 / /a rw,relatime - tmpfs ta rw,size=1024k
3 2 0:41 / /a/x rw,nosuid,relatime - tmpfs tx rw
4 2 0:42 / /a rw,relatime - tmpfs over rw
5 4 0:43 / /a/k ro,relatime - tmpfs tk rw
6 1 0:40 /sub /b rw,relatime shared:7 - tmpfs ta rw,size=1024k
7 1 0:40 /sub /c rw,relatime shared:7 - tmpfs ta rw,size=1024k
8 1 0:40 /sub/deeper /d rw,relatime master:7 - tmpfs ta rw,size=1024k
"""


def tree_of(text: str = MOUNTINFO) -> MountTree:
    return MountTree.from_mounts(parse(text.encode()), ns_id=9)


def dry(tree: MountTree, **kw: object) -> RecordingMountOps:
    ops = RecordingMountOps()
    restore("/nonexistent", ops=ops, namespaces=[DumpedNamespace.of(9, tree)], **kw)  # type: ignore[arg-type]
    return ops


def test_every_superblock_once_and_binds_from_it() -> None:
    ops = dry(tree_of(), root="/")
    supers = ops.of("new_superblock")
    assert [(c.fstype, c.source, c.params) for c in supers] == [
        ("tmpfs", "ta", (("size", "1024k"),)),
        ("tmpfs", "tx", ()),
        ("tmpfs", "over", ()),
        ("tmpfs", "tk", ()),
    ]
    ta = supers[0].handle
    clones = [c for c in ops.of("clone") if c.other == ta]
    # /a, /b, /c and /d are all cut from the one tmpfs, each at its own root.
    assert sorted(str(c.path) for c in clones) == ["/", "/sub", "/sub", "/sub/deeper"]
    # The root comes from --root.
    assert ops.of("clone")[0] == Call("clone", handle=ops.of("clone")[0].handle, path="/")


def test_overmount_is_attached_after_what_it_covers() -> None:
    ops = dry(tree_of(), root="/")
    handle_of = {}
    for c in ops.calls:
        if c.op in ("new_superblock", "clone") and c.handle is not None:
            handle_of.setdefault(c.source or c.path, c.handle)
    attaches = [c for c in ops.of("attach")]
    order = [c.handle for c in attaches]
    over = handle_of["over"]
    tx = handle_of["tx"]
    tk = handle_of["tk"]
    assert order.index(tx) < order.index(over)
    # The overmount's own child is attached to the overmount itself, not through a path.
    (attach_tk,) = [c for c in attaches if c.handle == tk]
    assert attach_tk.other == over and attach_tk.path == "k"
    (attach_over,) = [c for c in attaches if c.handle == over]
    assert attach_over.path == ""  # stacked on the mount at /a, relative to it


def test_flags_and_propagation_requests() -> None:
    ops = dry(tree_of(), root="/")
    # nosuid on a leaf, ro on a leaf (MOUNT_ATTR_NOSUID = 2, RDONLY = 1), and the --root
    # bind, whose flags were the host mount's, set to the dumped ones explicitly.
    assert sorted(c.flags for c in ops.of("set_attr")) == [0, 1, 2]
    props = [(c.op, c.flags) for c in ops.calls if c.op in ("set_propagation", "set_group")]
    # /b made shared, /c joins it, /d joins the group then becomes a slave.
    assert props == [
        ("set_propagation", 0x100000),
        ("set_group", 0),
        ("set_group", 0),
        ("set_propagation", 0x80000),
    ]


class _LayerFs(FsDriver):
    """A test driver whose superblock takes a directory by descriptor, like overlay."""

    fstypes: ClassVar[tuple[str, ...]] = ("layerfs",)
    name = "layerfs"

    def __init__(self, ref: int, path: str = "/") -> None:
        self.ref, self.path = ref, path

    @hookimpl
    def rebuild_mount(
        self, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        return NewSuperblock("layerfs", "l", (("lowerdir+", PathRef(self.ref, self.path)),))


LAYERED = """\
1 0 0:30 / / rw - tmpfs root rw
2 1 0:31 / /lower rw - tmpfs low rw
3 1 0:32 / /merged rw - layerfs l rw
4 3 0:33 / /merged/in rw - tmpfs in rw
"""


def test_a_layer_is_placed_before_the_superblock_that_uses_it() -> None:
    ops = dry(tree_of(LAYERED), plugins=[_LayerFs(2, "/dir")])
    (call,) = [c for c in ops.of("new_superblock") if c.fstype == "layerfs"]
    assert call.params == (("lowerdir+", Fd(2, "/dir")),)
    low = next(c.handle for c in ops.of("new_superblock") if c.source == "low")
    seq = ops.calls
    attach_low = next(i for i, c in enumerate(seq) if c.op == "attach" and c.handle == low)
    assert attach_low < seq.index(call)


def test_a_cycle_names_the_mounts() -> None:
    cycle = (
        r"in a cycle: create superblock of mount 3 at '/merged' .* needs attach mount 4 at "
        r"'/merged/in' .* needs create mount 3 at '/merged' .* needs create superblock of "
        r"mount 3 at '/merged' \(layerfs, source 'l'\)$"
    )
    with pytest.raises(RestoreError, match=cycle):
        dry(tree_of(LAYERED), plugins=[_LayerFs(4)])


def test_a_missing_dependency_names_both_mounts() -> None:
    with pytest.raises(MountNotFoundError) as err:
        dry(tree_of(LAYERED), plugins=[_LayerFs(77)])
    assert str(err.value) == (
        "mount 3 at '/merged' (layerfs, source 'l'): needs mount 77, which is not in the "
        "images of mount namespace 9"
    )


def test_root_that_cannot_be_rebuilt_needs_root_option() -> None:
    ops = RecordingMountOps()
    with pytest.raises(RestoreError, match=r"mount 1 at '/' \(ext4, source '/dev/sda1'\).*--root"):
        restore("/x", ops=ops, namespaces=[DumpedNamespace.of(9, tree_of())])
    assert ops.calls == []


def test_external_mount_needs_a_mapping(tmp_path: os.PathLike[str]) -> None:
    ns = DumpedNamespace.of(9, tree_of(), external={3: "data"})
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", ops=RecordingMountOps(), namespaces=[ns])
    assert str(err.value) == (
        "mount 3 at '/a/x' (tmpfs, source 'tx'): external mount with key 'data' has no "
        "mapping; give --external mnt[data]:PATH"
    )
    ops = RecordingMountOps()
    data = str(tmp_path)  # a mapping must be there, even for a dry run
    restore("/x", root="/", ops=ops, namespaces=[ns], externals={"data": data})
    assert any(c.op == "clone" and c.path == data and c.other is None for c in ops.calls)


def test_long_string_parameter_is_refused_clearly() -> None:
    with pytest.raises(SyscallError) as err:
        KernelMountOps().new_superblock("overlay", "o", [("lowerdir+", "/" + "x" * 300)])
    assert err.value.errno == errno.EINVAL
    assert "at most 255" in str(err.value)


@pytest.mark.privileged
def test_kernel_refusal_names_the_mount_and_leaves_nothing(tmp_path: os.PathLike[str]) -> None:
    host = read_mountinfo("self")
    root = host.root
    bad = Mount(999999, root.mnt_id, root.dev.__class__(0, 9999), "/", str(tmp_path), "tmpfs",
                "bad", ("rw", "relatime"), ("rw", "bogus_opt"))
    tree = MountTree.from_mounts([*host.mounts, bad])
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", namespaces=[DumpedNamespace.of(1, tree)], detach=True)
    msg = str(err.value)
    assert msg.startswith(f"mount 999999 at {str(tmp_path)!r} (tmpfs, source 'bad'): fsconfig")
    assert "Unknown parameter 'bogus_opt'" in msg
    assert "\n" not in msg


@pytest.mark.privileged
def test_command_runs_in_the_restored_root_and_gives_its_status(tmp_path: os.PathLike[str]) -> None:
    host = read_mountinfo("self")
    root = host.root
    extra = Mount(999998, root.mnt_id, root.dev.__class__(0, 9998), "/", str(tmp_path), "tmpfs",
                  "marker", ("rw", "relatime"), ("rw",))
    tree = MountTree.from_mounts([*host.mounts, extra])
    res = restore(
        "/x", root="/", namespaces=[DumpedNamespace.of(1, tree)],
        command=["sh", "-c", "grep -q ' marker ' /proc/self/mountinfo && test $PWD = / && exit 7"],
    )
    assert res.exit_code == 7


@pytest.mark.privileged
def test_failed_restore_removes_the_mountpoints_it_made(tmp_path: os.PathLike[str]) -> None:
    """--root's tree gets missing mountpoints; a failed restore takes them away again."""
    host = read_mountinfo("self")
    root = host.root
    base = str(tmp_path)
    made = Mount(999997, root.mnt_id, root.dev.__class__(0, 9997), "/", f"{base}/new/a/b",
                 "tmpfs", "made", ("rw", "relatime"), ("rw",))
    file_dir = Mount(999996, root.mnt_id, root.dev.__class__(0, 9996), "/", f"{base}/new2",
                     "tmpfs", "made2", ("rw", "relatime"), ("rw",))
    bad = Mount(999995, root.mnt_id, root.dev.__class__(0, 9995), "/", f"{base}/zz", "tmpfs",
                "bad", ("rw", "relatime"), ("rw", "bogus_opt"))
    tree = MountTree.from_mounts([root, made, file_dir, bad])
    with pytest.raises(RestoreError, match="bogus_opt"):
        restore("/x", root="/", namespaces=[DumpedNamespace.of(1, tree)], detach=True)
    assert os.listdir(base) == []


@pytest.mark.privileged
def test_external_of_the_wrong_kind_names_the_mount(tmp_path: os.PathLike[str]) -> None:
    host = read_mountinfo("self")
    root = host.root
    base = str(tmp_path)
    os.mkdir(f"{base}/e")
    afile = f"{base}/afile"
    open(afile, "w").close()
    ext = Mount(999994, root.mnt_id, root.dev.__class__(0, 9994), "/", f"{base}/e",
                "tmpfs", "ext", ("rw", "relatime"), ("rw",))
    tree = MountTree.from_mounts([root, ext])
    ns = DumpedNamespace.of(1, tree, external={999994: "k"})
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", namespaces=[ns], externals={"k": afile}, detach=True)
    assert str(err.value) == (
        f"mount 999994 at '{base}/e' (tmpfs, source 'ext'): move_mount on "
        f"'{base.lstrip('/')}/e' failed: EINVAL (Invalid argument) (its source is a file but "
        f"its mountpoint is a directory)"
    )
    # A directory with mounts under it, mapped to a file: refused before anything is made.
    kid = Mount(999993, 999994, root.dev.__class__(0, 9993), "/", f"{base}/e/k", "tmpfs", "kid",
                ("rw", "relatime"), ("rw",))
    ns = DumpedNamespace.of(1, MountTree.from_mounts([root, ext, kid]), external={999994: "k"})
    with pytest.raises(RestoreError, match=r"^mount 999994 at .*: external 'k' is mapped to .*"
                       r"afile', a file, but the dumped mount was a directory"):
        restore("/x", root="/", namespaces=[ns], externals={"k": afile}, ops=RecordingMountOps())


@pytest.mark.privileged
def test_a_tree_wider_than_the_callers_descriptor_limit_restores(
    tmp_path: os.PathLike[str],
) -> None:
    """The builder holds a descriptor per mount whose propagation is set last: 300 shared
    mounts need more than a soft limit of 128, so it raises its own limit (as CRIU does), and
    the command it runs gets the caller's limit back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1024:
        pytest.skip(f"a hard descriptor limit of {hard} leaves no room to raise")
    base = str(tmp_path)
    root = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw", "relatime"), ("rw",))
    shared = [
        Mount(2 + i, 1, Dev(0, 5000 + i), "/", f"{base}/m{i}", "tmpfs", "wide",
              ("rw", "relatime"), ("rw",), Propagation(shared=100 + i))
        for i in range(300)
    ]
    proc = Mount(400, 1, Dev(0, 4999), "/", "/proc", "proc", "proc", ("rw",), ("rw",))
    tree = MountTree.from_mounts([root, proc, *shared])
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        res = restore(
            "/x", root="/", namespaces=[DumpedNamespace.of(1, tree)],
            command=["sh", "-c", f"test $(ulimit -n) = 128 && grep -c ' {base}/m.* shared:' "
                     f"/proc/self/mountinfo | grep -qx 300 && exit 7"],
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert res.exit_code == 7


@pytest.mark.privileged
def test_shared_mounts_beyond_the_descriptor_budget_are_reopened_by_path(
    tmp_path: os.PathLike[str],
) -> None:
    """Mounts kept only for their propagation give their handles back beyond a quarter of
    the descriptor limit and are found again by path: 600 peer pairs restore under a hard
    limit of 512 (a child of its own: the test's limit stays), where holding every handle
    takes 1,200 descriptors."""
    base = str(tmp_path)
    program = f"""
import sys
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.restore import DumpedNamespace, restore
root = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw", "relatime"), ("rw",))
proc = Mount(2, 1, Dev(0, 4999), "/", "/proc", "proc", "proc", ("rw",), ("rw",))
mounts = [root, proc]
for i in range(600):
    dev, group = Dev(0, 6000 + i), Propagation(shared=100 + i)
    for n, side in enumerate("ab"):
        mounts.append(Mount(10 + 2 * i + n, 1, dev, "/", f"{base}/{{side}}{{i}}", "tmpfs",
                            "wide", ("rw", "relatime"), ("rw",), group))
# A mount made in one of a pair shows in the other: each pair is one peer group again.
check = ("mount -t tmpfs probe {base}/a599 && "
         "grep ' {base}/b599 ' /proc/self/mountinfo | grep -q ' probe ' && exit 7")
res = restore("/x", root="/", namespaces=[DumpedNamespace.of(1, MountTree.from_mounts(mounts))],
              command=["sh", "-c", check])
sys.exit(res.exit_code)
"""
    res = subprocess.run(
        ["prlimit", "--nofile=512:512", sys.executable, "-c", program],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 7, res.stderr[-2000:]


@pytest.mark.privileged
def test_a_cgroup_whose_directory_is_gone_says_so(tmp_path: os.PathLike[str]) -> None:
    """A runtime removes a container's cgroup when it stops; the restore of a cgroup2 mount
    of that directory fails naming the mount and what to do, and creates nothing on this
    machine's hierarchy (it is not the restore's)."""
    base = str(tmp_path)
    gone = f"/criu-fw-test-gone-{os.getpid()}"
    root = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw", "relatime"), ("rw",))
    cg = Mount(2, 1, Dev(0, 4998), gone, f"{base}/cg", "cgroup2", "cgroup2",
               ("rw", "nosuid", "relatime"), ("rw",))
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", namespaces=[DumpedNamespace.of(1, MountTree.from_mounts(
            [root, cg]))], detach=True)
    assert str(err.value) == (
        f"mount 2 at '{base}/cg' (cgroup2, source 'cgroup2'): its root {gone!r} is gone from "
        "this machine's cgroup2 filesystem (a runtime removes a container's cgroup when the "
        "container stops); give the container's new cgroup with --cgroup-root PATH, or restore "
        "before removing the container"
    )


@pytest.mark.privileged
def test_cgroup_root_gives_the_cgroup_mounts_a_new_directory(tmp_path: os.PathLike[str]) -> None:
    """With --cgroup-root, the cgroup mounts of a removed container come back rooted at the
    directory given (here the hierarchy's top, which always exists); a directory that does
    not exist is named."""
    base = str(tmp_path)
    gone = f"/criu-fw-test-gone-{os.getpid()}"
    root = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw", "relatime"), ("rw",))
    cg = Mount(2, 1, Dev(0, 4998), gone, f"{base}/cg", "cgroup2", "cgroup2",
               ("rw", "nosuid", "relatime"), ("rw",))
    sub = Mount(3, 1, Dev(0, 4998), f"{gone}/sub", f"{base}/sub", "cgroup2", "cgroup2",
                ("rw", "nosuid", "relatime"), ("rw",))
    ns = DumpedNamespace.of(1, MountTree.from_mounts([root, cg]))
    res = restore("/x", root="/", namespaces=[ns], cgroup_roots={"cgroup2": "/"},
                  command=["sh", "-c", f"test -e {base}/cg/cgroup.procs && "
                           f"! test -e {base}/cg/cgroup.freeze"])  # only a child cgroup has it
    assert res.exit_code == 0
    missing = f"/criu-fw-test-missing-{os.getpid()}"
    with pytest.raises(RestoreError) as err:
        restore("/x", root="/", detach=True, cgroup_roots={"": missing},
                namespaces=[DumpedNamespace.of(1, MountTree.from_mounts([root, cg, sub]))])
    assert str(err.value).endswith(
        f"{missing!r} (from --cgroup-root) does not exist in this machine's cgroup2 "
        "hierarchy; create the cgroup first"
    )
    with pytest.raises(UsageError, match="PATH must be an absolute path"):
        restore("/x", root="/", detach=True, cgroup_roots={"": "a/../b"}, namespaces=[ns])


def test_cgroup_path_maps_the_top_cgroup_per_hierarchy() -> None:
    """The shortest root of a hierarchy in the namespace is the container's cgroup: it and
    what is below it move to the new directory; a controller-specific PATH wins."""
    def cg(mnt_id: int, minor: int, root: str, opts: tuple[str, ...]) -> Mount:
        return Mount(mnt_id, 1, Dev(0, minor), root, f"/c{mnt_id}", "cgroup", "cgroup",
                     ("ro",), ("rw", *opts))
    top = Mount(1, 0, Dev(8, 1), "/", "/", "ext4", "/dev/sda1", ("rw",), ("rw",))
    mem, mem_sub = cg(2, 30, "/pod/c1", ("memory",)), cg(3, 30, "/pod/c1/app", ("memory",))
    sysd = cg(4, 31, "/pod/c1", ("name=systemd",))
    tree = MountTree.from_mounts([top, mem, mem_sub, sysd])
    roots = {"": "/new", "name=systemd": "/sd"}
    assert cgroup_path(mem, tree, roots) == "/new"
    assert cgroup_path(mem_sub, tree, roots) == "/new/app"
    assert cgroup_path(sysd, tree, roots) == "/sd"
    assert cgroup_path(mem_sub, tree, {}) == "/pod/c1/app"
    assert cgroup_path(top, tree, roots) == "/"
