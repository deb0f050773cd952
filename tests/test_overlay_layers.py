"""Layer resolution on real overlays in private namespaces: where each layer really is now."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from criu_fw.errors import DumpError
from criu_fw.fsdrivers.overlay.layers import Verdict, namespace_path
from criu_fw.fsdrivers.overlay.options import Role
from criu_fw.fsdrivers.overlay.rebuild import rebuild_overlay
from criu_fw.plan import ExternalRef, NewSuperblock, PathRef
from criu_fw.testing import NamespaceScenario
from overlay_helpers import at, live_context, parse, tree_of

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]

# Lower on its own tmpfs, upper and work on another tmpfs (W).
BASIC = """
mkdir W && mount -t tmpfs w W && mkdir W/low W/up W/wk W/ovl
mount -t tmpfs low W/low && mkdir W/low/a W/low/b
echo a > W/low/a/fa; echo b > W/low/b/fb; echo u > W/up/fu
mount -t overlay overlay W/ovl \\
  -o lowerdir=$PWD/W/low/a:$PWD/W/low/b,upperdir=$PWD/W/up,workdir=$PWD/W/wk
"""


def with_usr(root: str) -> str:
    """Shell lines that make the host's programs usable after pivot_root into ``root``."""
    return (
        f"mkdir -p {root}/usr {root}/proc && mount --bind /usr {root}/usr && "
        f"mount -t proc proc {root}/proc && "
        f"for d in bin lib lib64 sbin; do ln -s usr/$d {root}/$d; done"
    )


def describe(state: object, tree: object) -> list[tuple[str, str, str]]:
    return [
        (x.spec.role.value, namespace_path(tree, x), x.found)  # type: ignore[arg-type]
        for x in state.layers  # type: ignore[attr-defined]
    ]


def test_upper_and_lower_on_separate_tmpfs(scenario: Scn) -> None:
    s = scenario(BASIC)
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    ovl = at(tree, f"{W}/ovl")
    state = parse(ctx, tree, ovl)
    assert describe(state, tree) == [
        ("upper", f"{W}/up", "as shown"),
        ("work", f"{W}/wk", "as shown"),
        ("lower", f"{W}/low/a", "as shown"),
        ("lower", f"{W}/low/b", "as shown"),
    ]
    assert all(x.verdict is Verdict.CONFIRMED for x in state.layers)
    low, w = at(tree, f"{W}/low"), at(tree, W)
    assert [(x.mnt_id, x.path) for x in state.layers] == [
        (w.mnt_id, "/up"),
        (w.mnt_id, "/wk"),
        (low.mnt_id, "/a"),
        (low.mnt_id, "/b"),
    ]
    # Layer mounts are claimed, so old-kernel reports on them reach the overlay driver.
    assert ctx.claimants(tree.ns_id, low.mnt_id) == ("overlay",)
    assert ctx.claimants(tree.ns_id, w.mnt_id) == ("overlay",)
    plan = rebuild_overlay(ovl, state, None)  # type: ignore[arg-type]
    assert plan == NewSuperblock(
        "overlay",
        "overlay",
        (
            ("lowerdir+", PathRef(low.mnt_id, "/a")),
            ("lowerdir+", PathRef(low.mnt_id, "/b")),
            ("upperdir", PathRef(w.mnt_id, "/up")),
            ("workdir", PathRef(w.mnt_id, "/wk")),
        ),
    )
    assert plan.dependencies() == (low.mnt_id, w.mnt_id)
    # Round trip through the state's protobuf message.
    again = type(state).from_message(state.to_message())
    assert [(x.mnt_id, x.path, x.dev, x.ino, x.verdict) for x in again.layers] == [
        (x.mnt_id, x.path, x.dev, x.ino, x.verdict) for x in state.layers
    ]


def test_stale_prefix_after_pivot_root(scenario: Scn) -> None:
    s = scenario(
        """
mkdir new && mount -t tmpfs newroot new && mkdir new/l1 new/l2 new/up new/wk new/ovl new/old
echo 1 > new/l1/f1; echo 2 > new/l2/f2; echo 1 > new/l2/decoy
mount -t overlay overlay new/ovl \\
  -o lowerdir=$PWD/new/l1:$PWD/new/l2,upperdir=$PWD/new/up,workdir=$PWD/new/wk
"""
        + with_usr("new")
        + """
cd new && pivot_root . old && cd / && umount -l /old
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    ovl = at(tree, "/ovl")
    assert ovl.super_option("lowerdir") == f"{s.workdir}/new/l1:{s.workdir}/new/l2"
    state = parse(ctx, tree, ovl)
    assert describe(state, tree) == [
        ("upper", "/up", "stale prefix"),
        ("work", "/wk", "stale prefix"),
        ("lower", "/l1", "stale prefix"),
        ("lower", "/l2", "stale prefix"),
    ]
    assert state.role(Role.LOWER)[0].verdict is Verdict.CONFIRMED


def test_relative_layer_paths(scenario: Scn) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && cd W && mkdir l1 l2 up wk ovl && echo x > l2/x
mount -t overlay overlay -o lowerdir=l1:l2,upperdir=up,workdir=wk ovl
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    ovl = at(tree, f"{W}/ovl")
    assert ovl.super_option("lowerdir") == "l1:l2"
    state = parse(ctx, tree, ovl)
    assert describe(state, tree) == [
        ("upper", f"{W}/up", "relative"),
        ("work", f"{W}/wk", "relative"),
        ("lower", f"{W}/l1", "relative"),
        ("lower", f"{W}/l2", "relative"),
    ]


def test_layer_overmounted_after_the_overlay(scenario: Scn) -> None:
    s = scenario(
        BASIC
        + """
mount -t tmpfs cover W/low/a && echo decoy > W/low/a/fa
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    state = parse(ctx, tree, at(tree, f"{W}/ovl"))
    top = state.role(Role.LOWER)[0]
    assert top.found == "overmounted"
    # Read in a childless copy of the mount below, so checked against the overlay too.
    assert top.verdict is Verdict.CONFIRMED
    assert (top.mnt_id, top.path) == (at(tree, f"{W}/low").mnt_id, "/a")
    assert s.sh("cat W/ovl/fa") == "a\n"  # the overlay still shows the covered layer


def test_data_only_layers(scenario: Scn) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/l1 W/d1 W/d2 W/ovl && echo x > W/l1/x
mount -t overlay overlay -o lowerdir=$PWD/W/l1::$PWD/W/d1::$PWD/W/d2 W/ovl
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    ovl = at(tree, f"{W}/ovl")
    state = parse(ctx, tree, ovl)
    assert describe(state, tree) == [
        ("lower", f"{W}/l1", "as shown"),
        ("data", f"{W}/d1", "as shown"),
        ("data", f"{W}/d2", "as shown"),
    ]
    plan = rebuild_overlay(ovl, state, None)  # type: ignore[arg-type]
    assert isinstance(plan, NewSuperblock)
    assert [k for k, _ in plan.params] == ["lowerdir+", "datadir+", "datadir+", "redirect_dir"]


def test_container_root_on_host_layers(scenario: Scn) -> None:
    # A runtime mounts the container's root overlay from host directories and pivots into it:
    # inside, no layer is visible; the dumper sees them on the host.
    s = scenario(
        """
mkdir l1 l2 up wk root && echo 1 > l1/f1 && echo 2 > l2/f2
mount -t overlay overlay -o lowerdir=$PWD/l1:$PWD/l2,upperdir=$PWD/up,workdir=$PWD/wk root
"""
        + with_usr("root")
        + """
mkdir root/old && cd root && pivot_root . old && cd / && umount -l /old
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    root = at(tree, "/")
    assert root.fstype == "overlay"
    state = parse(ctx, tree, root)
    assert [(x.spec.role.value, x.path, x.found) for x in state.layers] == [
        ("upper", f"{s.workdir}/up", "host"),
        ("work", f"{s.workdir}/wk", "host"),
        ("lower", f"{s.workdir}/l1", "host"),
        ("lower", f"{s.workdir}/l2", "host"),
    ]
    assert all(x.external for x in state.layers)
    plan = rebuild_overlay(root, state, None)  # type: ignore[arg-type]
    assert isinstance(plan, NewSuperblock)
    assert plan.params[0] == ("lowerdir+", ExternalRef(path=f"{s.workdir}/l1"))
    assert plan.dependencies() == ()


def test_lost_layer_fails_naming_overlay_and_layer(scenario: Scn) -> None:
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/L W/b W/ovl && mount -t tmpfs gone W/L && mkdir W/L/a
mount -t overlay overlay -o lowerdir=$PWD/W/L/a:$PWD/W/b W/ovl
umount -l W/L
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    ovl = at(tree, f"{s.workdir}/W/ovl")
    with pytest.raises(DumpError) as err:
        parse(ctx, tree, ovl)
    msg = str(err.value)
    assert f"mount {ovl.mnt_id} at {ovl.mountpoint!r} (overlay" in msg
    assert f"lowerdir layer '{s.workdir}/W/L/a' not found" in msg
    assert "\n" not in msg
    # Declared external: no error, and restore binds it from outside.
    ctx = live_context(s, externals={ovl.mountpoint: "ovl"})
    state = parse(ctx, tree_of(ctx, s), ovl)
    assert state.external_key == "ovl" and state.layers == ()


def test_wrong_directory_at_the_shown_path_is_rejected(scenario: Scn) -> None:
    # After the overlay was mounted its lower dir was renamed and another one put in its
    # place: a path with that name exists, but it is not the layer.
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/a W/b W/ovl && echo real > W/a/f
mount -t overlay overlay -o lowerdir=$PWD/W/a:$PWD/W/b W/ovl
mv W/a W/moved && mkdir W/a && echo other > W/a/f
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    with pytest.raises(DumpError, match="are not the layer the overlay shows"):
        parse(ctx, tree, at(tree, f"{s.workdir}/W/ovl"))


def test_bind_of_overlay_shares_state(scenario: Scn) -> None:
    s = scenario(BASIC + "mkdir W/b2 && mount --bind W/ovl W/b2\n")
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    a = parse(ctx, tree, at(tree, f"{s.workdir}/W/ovl"))
    b = parse(ctx, tree, at(tree, f"{s.workdir}/W/b2"))
    assert a is b


# -- copy-up: the overlay shows the origin's inode number -------------------------------------

# Every layer on one tmpfs (W). After a copy-up the overlay reports the *lower* file's inode
# number for the upper file (ovl_getattr: "constant st_ino across copy-up"), so the upper's
# own inode differs from what the overlay shows for that name.
ONE_FS = """
mkdir W && mount -t tmpfs w W && mkdir W/l W/u W/w W/o W/l/d
echo 1 > W/l/f1; echo 2 > W/l/f2; echo 3 > W/l/d/f3
mount -t overlay overlay -o "lowerdir=$PWD/W/l,upperdir=$PWD/W/u,workdir=$PWD/W/w{opts}" W/o
{write}
"""

COPY_UPS = [
    ("", "echo up > W/o/f1"),
    ("", "chmod 600 W/o/f1"),
    (",index=on", "echo up > W/o/f1"),
    (",index=on", "ln W/o/f1 W/o/hard"),  # a hard link: the index makes both the origin's
    (",metacopy=on", "chmod 600 W/o/f1"),  # only metadata copied up
    (",redirect_dir=on", "echo up > W/o/f1 && mv W/o/d W/o/d2 && echo x >> W/o/d2/f3"),
]


def _ino(s: NamespaceScenario, path: str) -> int:
    return int(s.sh(f"stat -c %i {path}"))


@pytest.mark.parametrize(("opts", "write"), COPY_UPS)
def test_copied_up_upper_on_the_lowers_filesystem(scenario: Scn, opts: str, write: str) -> None:
    s = scenario(ONE_FS.format(opts=opts, write=write))
    # What made the identity check misfire: the merged file has the lower's inode number.
    assert _ino(s, "W/o/f1") == _ino(s, "W/l/f1") != _ino(s, "W/u/f1")
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    state = parse(ctx, tree, at(tree, f"{W}/o"))
    assert describe(state, tree) == [
        ("upper", f"{W}/u", "as shown"),
        ("work", f"{W}/w", "as shown"),
        ("lower", f"{W}/l", "as shown"),
    ]
    # The copied-up file is evidence for the upper (the overlay shows the upper's size,
    # times and mode under the origin's inode number), not against it.
    assert [x.verdict for x in state.layers] == [Verdict.CONFIRMED] * 3


def test_copied_up_upper_on_its_own_filesystem_with_xino(scenario: Scn) -> None:
    # Lower on another tmpfs with xino=on: the overlay shows the origin's inode number with
    # the lower's fsid in the high bits.
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/l W/u W/w W/o && mount -t tmpfs l W/l
echo 1 > W/l/f1
mount -t overlay overlay -o lowerdir=$PWD/W/l,upperdir=$PWD/W/u,workdir=$PWD/W/w,xino=on W/o
echo up > W/o/f1
"""
    )
    shown, lower = _ino(s, "W/o/f1"), _ino(s, "W/l/f1")
    assert shown != lower and shown & 0xFFFFFFFF == lower
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    state = parse(ctx, tree, at(tree, f"{W}/o"))
    upper = state.role(Role.UPPER)[0]
    assert (namespace_path(tree, upper), upper.verdict) == (f"{W}/u", Verdict.CONFIRMED)


def test_another_upper_with_copy_ups_of_the_same_lower_is_rejected(scenario: Scn) -> None:
    # Two overlays on one lower, each with a copy-up of f1 (both carry an origin xattr naming
    # the same lower file, and both overlays show its inode number). The first overlay's upper
    # is then renamed and the second's put at its path: that directory is not the layer.
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/l W/u W/w W/o W/u2 W/w2 W/o2 && echo 1 > W/l/f1
mount -t overlay overlay -o lowerdir=$PWD/W/l,upperdir=$PWD/W/u,workdir=$PWD/W/w W/o
mount -t overlay overlay -o lowerdir=$PWD/W/l,upperdir=$PWD/W/u2,workdir=$PWD/W/w2 W/o2
echo up > W/o/f1 && echo other-copy > W/o2/f1
umount W/o2 && mv W/u W/u-moved && mv W/u2 W/u
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    with pytest.raises(DumpError) as err:
        parse(ctx, tree, at(tree, f"{W}/o"))
    msg = str(err.value)
    assert f"upperdir layer '{W}/u' not found" in msg
    # Each directory named once, however many routes led to it.
    assert f"directories at {W}/u are not the layer the overlay shows" in msg


def test_layer_mount_below_the_overlay_is_taken_from_outside_it(scenario: Scn) -> None:
    # The layers' tmpfs stays in the namespace twice: bound inside the overlay (W/o/layers) and
    # outside it (W/st2). Only the outside one can be restored before the overlay.
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir W/st W/st2 W/o && mount -t tmpfs st W/st
mkdir W/st/l W/st/u W/st/w && echo 1 > W/st/l/f1
mount -t overlay overlay W/o -o lowerdir=$PWD/W/st/l,upperdir=$PWD/W/st/u,workdir=$PWD/W/st/w
echo new > W/o/new && mkdir W/o/layers && mount --bind W/st W/o/layers && umount -l W/st
mount --bind W/o/layers W/st2
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    W = f"{s.workdir}/W"
    ovl = at(tree, f"{W}/o")
    state = parse(ctx, tree, ovl)
    outside = at(tree, f"{W}/st2")
    assert [(x.mnt_id, x.path) for x in state.layers] == [
        (outside.mnt_id, "/u"),
        (outside.mnt_id, "/w"),
        (outside.mnt_id, "/l"),
    ]
    plan = rebuild_overlay(ovl, state, None)  # type: ignore[arg-type]
    assert plan.dependencies() == (outside.mnt_id,)
