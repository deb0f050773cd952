"""Layers the namespace's paths no longer lead to, end to end: on a mount moved (MS_MOVE) after
the overlay was mounted, under a directory a later mount covers, on a mount a later mount is
stacked on, on a mount whose ancestor a later mount hides. Each is found and confirmed
against the overlay at dump, restored, and compared by verify."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from criu_fw.fsdrivers.overlay.layers import Verdict, namespace_path
from criu_fw.fsdrivers.overlay.state import OverlayState
from criu_fw.images.mounts import read_mount_namespace
from criu_fw.restore import image_namespaces
from criu_fw.restore.verify import verify
from criu_fw.testing import NamespaceScenario
from overlay_helpers import at, checkpoint, inside, layer_options, live_tree, restored

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]

LAYERS = "mkdir -p {a} {b} && echo 1 > {a}/f1 && echo 2 > {b}/f2 && echo 2 > {b}/f1\n"
MOUNT = "mount -t overlay overlay -o lowerdir=$PWD/{a}:$PWD/{b} {ovl}\n"

CASES = {
    # name: (script, overlay mountpoint, where the layers are now, how they are found)
    "moved": (
        "mkdir W && mount -t tmpfs w W && mkdir W/a W/b W/ovl && mount -t tmpfs la W/a\n"
        + LAYERS.format(a="W/a/l1", b="W/a/l2")
        + MOUNT.format(a="W/a/l1", b="W/a/l2", ovl="W/ovl")
        # A decoy where l1 was: the overlay shows another f1, so it is not the layer.
        + "mount --move W/a W/b && mkdir W/a/l1 && echo decoy > W/a/l1/f1\n",
        "W/ovl",
        ("W/b/l1", "W/b/l2"),
        "moved",
    ),
    "parent overmounted": (
        "mkdir W && mount -t tmpfs w W && mkdir W/ovl\n"
        + LAYERS.format(a="W/p/l1", b="W/p/l2")
        + MOUNT.format(a="W/p/l1", b="W/p/l2", ovl="W/ovl")
        + "mount -t tmpfs cover W/p && mkdir W/p/l1 W/p/l2 && echo decoy > W/p/l1/f1\n",
        "W/ovl",
        ("W/p/l1", "W/p/l2"),
        "hidden",
    ),
    "layer mount stacked on": (
        "mkdir W && mount -t tmpfs w W && mkdir W/low W/ovl && mount -t tmpfs low W/low\n"
        + LAYERS.format(a="W/low/l1", b="W/low/l2")
        + MOUNT.format(a="W/low/l1", b="W/low/l2", ovl="W/ovl")
        + "mount -t tmpfs cover W/low\n",
        "W/ovl",
        ("W/low/l1", "W/low/l2"),
        "hidden",
    ),
    "ancestor of the layer mount covered": (
        "mkdir W X && mount -t tmpfs w W && mkdir W/low X/ovl && mount -t tmpfs low W/low\n"
        + LAYERS.format(a="W/low/l1", b="W/low/l2")
        + MOUNT.format(a="W/low/l1", b="W/low/l2", ovl="X/ovl")
        + "mount -t tmpfs cover W\n",
        "X/ovl",
        ("W/low/l1", "W/low/l2"),
        "hidden",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_or_moved_layers(scenario: Scn, tmp_path: os.PathLike[str], case: str) -> None:
    script, ovl_at, now, how = CASES[case]
    s = scenario(script)
    D = s.workdir
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    ns, _ = image_namespaces(images)
    dumped = read_mount_namespace(images, ns)
    ovl = at(dumped.tree, f"{D}/{ovl_at}")
    state = dumped.record(ovl.mnt_id).state
    assert isinstance(state, OverlayState)
    assert [(namespace_path(dumped.tree, x), x.found) for x in state.layers] == [
        (f"{D}/{p}", how) for p in now
    ]
    # Checked against the overlay (it shows f1 of the top layer), not just "a directory".
    assert {x.verdict for x in state.layers} == {Verdict.CONFIRMED}
    with restored(images, root="/") as pid:
        live = at(live_tree(pid), f"{D}/{ovl_at}")
        assert layer_options(live) == tuple(f"lowerdir+={D}/{p}" for p in now)
        assert inside(pid, f"cat {D}/{ovl_at}/f1 {D}/{ovl_at}/f2") == "1\n2\n"
        assert verify(pid, images).differences == ()


def test_covered_overlay_is_still_checked(scenario: Scn, tmp_path: os.PathLike[str]) -> None:
    # The overlay itself is under a later mount: its layers are checked against a childless
    # copy of it (without one, nothing could confirm them).
    s = scenario(
        "mkdir W && mount -t tmpfs w W && mkdir W/ovl\n"
        + LAYERS.format(a="W/l1", b="W/l2")
        + MOUNT.format(a="W/l1", b="W/l2", ovl="W/ovl")
        + "mount -t tmpfs cover W/ovl && echo on-top > W/ovl/f1\n"
    )
    D = s.workdir
    images = f"{tmp_path}/img"
    checkpoint(s.pid, images)
    ns, _ = image_namespaces(images)
    dumped = read_mount_namespace(images, ns)
    ovl = next(m for m in dumped.tree if m.fstype == "overlay")
    state = dumped.record(ovl.mnt_id).state
    assert isinstance(state, OverlayState)
    assert [(namespace_path(dumped.tree, x), x.verdict) for x in state.layers] == [
        (f"{D}/W/l1", Verdict.CONFIRMED),
        (f"{D}/W/l2", Verdict.CONFIRMED),
    ]
    with restored(images, root="/") as pid:
        assert inside(pid, f"cat {D}/W/ovl/f1") == "on-top\n"
        assert verify(pid, images).differences == ()
