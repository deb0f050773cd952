"""fixup_fd_path / fixup_vma on real overlays: confirmed on today's kernel, mapped back from the
layer where an old kernel reported the layer's mount and path."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator

import attrs
import pytest
from criu_fw.errors import DumpError
from criu_fw.fsdrivers.overlay import driver
from criu_fw.fsdrivers.overlay.index import index_of
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.testing import NamespaceScenario
from overlay_helpers import (
    at,
    live_context,
    mappings,
    ns_id,
    open_files,
    parse,
    record_process,
    tree_of,
)

pytestmark = pytest.mark.privileged

Scn = Callable[..., NamespaceScenario]

# Lower on its own tmpfs, upper on W; fds held by the process that stays alive:
# 3 a lower file, 4 an upper file, 5 a copied-up file, 6 a file deleted while open,
# 7 the lower file opened directly on the layer's mount.
FILES = """
mkdir W && mount -t tmpfs w W && mkdir W/low W/up W/wk W/ovl
mount -t tmpfs low W/low && mkdir W/low/a
echo lower > W/low/a/fa; echo copy > W/low/a/fc; echo gone > W/low/a/fd; echo up > W/up/fu
mount -t overlay overlay W/ovl -o lowerdir=$PWD/W/low/a,upperdir=$PWD/W/up,workdir=$PWD/W/wk
echo more >> W/ovl/fc
"""
HOLD = "exec 3<W/ovl/fa 4<W/ovl/fu 5<W/ovl/fc 6<W/ovl/fd 7<W/low/a/fa\nrm W/ovl/fd\n"

# A second process maps four overlay files, unlinks the last, then says so with a file.
MMAP = """
cat > m.py <<'PY'
import mmap, os, sys, time
keep = []
for p in sys.argv[1:]:
    f = open(p, "rb")
    keep.append((f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)))
    f.close()
os.unlink(sys.argv[-1])
open("mapped", "w").close()
time.sleep(100000)
PY
PYTHON m.py W/ovl/fa W/ovl/fu W/ovl/fc W/ovl/fd &
echo $! > m.pid
while [ ! -e mapped ]; do sleep 0.05; done
""".replace("PYTHON", sys.executable)


@pytest.fixture
def held(scenario: Scn) -> NamespaceScenario:
    return scenario(FILES + HOLD)


def test_files_on_lower_upper_copied_up_and_deleted_need_no_fix(held: NamespaceScenario) -> None:
    ctx = live_context(held)
    tree = tree_of(ctx, held)
    W = f"{held.workdir}/W"
    ovl = at(tree, f"{W}/ovl")
    parse(ctx, tree, ovl)
    files = {f.fd: f for f in open_files(held.pid)}
    assert {fd: files[fd].path for fd in (3, 4, 5, 6)} == {
        3: f"{W}/ovl/fa",
        4: f"{W}/ovl/fu",
        5: f"{W}/ovl/fc",
        6: f"{W}/ovl/fd",
    }
    assert files[6].deleted
    # What makes a naive check misfire: fstat's device is the layer's pseudo device.
    assert files[3].identity is not None and files[3].identity.dev != ovl.dev
    for fd in (3, 4, 5, 6):
        f = files[fd]
        assert f.mnt_id == ovl.mnt_id
        assert driver.fixup_fd_path(file=f, mount=ovl, ctx=ctx) is None, f
    # Opened directly on the layer mount (which the driver claimed): a real layer file, kept.
    low = at(tree, f"{W}/low")
    assert files[7].mnt_id == low.mnt_id
    assert driver.fixup_fd_path(file=files[7], mount=low, ctx=ctx) is None
    # Probed: this kernel reports overlay files (open and mapped) on the overlay.
    assert index_of(ctx).misreports == {"fd": False, "map": False}
    assert index_of(ctx).decided_by == {"fd": "probe", "map": "probe"}


def test_wrong_report_is_an_error_naming_the_file(held: NamespaceScenario) -> None:
    ctx = live_context(held)
    tree = tree_of(ctx, held)
    ovl = at(tree, f"{held.workdir}/W/ovl")
    parse(ctx, tree, ovl)
    lower = next(f for f in open_files(held.pid) if f.fd == 3)
    other = attrs.evolve(lower, path=f"{held.workdir}/W/ovl/fu")
    with pytest.raises(DumpError, match=r"pid \d+ fd/3 .*/W/ovl/fu'.* is another file now"):
        driver.fixup_fd_path(file=other, mount=ovl, ctx=ctx)
    missing = attrs.evolve(lower, path=f"{held.workdir}/W/ovl/nope")
    with pytest.raises(DumpError, match=r"fd/3 .*/W/ovl/nope'.*not found"):
        driver.fixup_fd_path(file=missing, mount=ovl, ctx=ctx)


def test_mmapped_files_need_no_fix(scenario: Scn) -> None:
    s = scenario(FILES + MMAP)
    with open(f"{s.workdir}/m.pid") as f:
        mapper = int(f.read())
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    ovl = at(tree, f"{s.workdir}/W/ovl")
    parse(ctx, tree, ovl)
    maps = [m for m in mappings(mapper) if "/W/ovl/" in m.path]
    assert sorted(os.path.basename(m.path) for m in maps) == ["fa", "fc", "fd", "fu"]
    assert [m.deleted for m in maps if m.path.endswith("/fd")] == [True]
    for m in maps:
        assert m.mnt_id == ovl.mnt_id
        assert driver.fixup_vma(vma=m, mount=ovl, ctx=ctx) is None, m


@pytest.fixture
def recording() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="criu-fw-rec-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def record(held: NamespaceScenario, into: str, release: str) -> None:
    """A recorded /proc view: the live mountinfo and a kernel release string."""
    os.makedirs(f"{into}/{held.pid}")
    os.makedirs(f"{into}/sys/kernel")
    shutil.copyfile(f"/proc/{held.pid}/mountinfo", f"{into}/{held.pid}/mountinfo")
    with open(f"{into}/sys/kernel/osrelease", "w") as f:
        f.write(release + "\n")


def test_old_kernel_layer_report_maps_back_to_the_overlay(
    held: NamespaceScenario, recording: str
) -> None:
    # This kernel cannot produce the pre-4.2 misreport, so it is reproduced with a recorded
    # /proc: a 4.1 release string, and file records carrying what those kernels showed, the
    # layer's mount id and the path inside the layer. The real overlay stands behind --root.
    from criu_fw.context import DumpContext

    record(held, recording, "4.1.13-100.fc21.x86_64")
    nid = ns_id(held.pid)
    tree = read_mountinfo(held.pid, proc_root=recording, ns_id=nid)
    ctx = DumpContext(
        image_dir=recording,
        proc_root=recording,
        trees={nid: tree},
        recorded=True,
        root=f"/proc/{held.pid}/root",
    )
    W = f"{held.workdir}/W"
    ovl, low, w = at(tree, f"{W}/ovl"), at(tree, f"{W}/low"), at(tree, W)
    parse(ctx, tree, ovl)
    live = {f.fd: f for f in open_files(held.pid)}
    # As 4.1 showed them: fa on the lower tmpfs, fu on W (the upper's mount).
    fa = attrs.evolve(live[3], path=f"{W}/low/a/fa", mnt_id=low.mnt_id, identity=None)
    fu = attrs.evolve(live[4], path=f"{W}/up/fu", mnt_id=w.mnt_id, identity=None)
    fixed = driver.fixup_fd_path(file=fa, mount=low, ctx=ctx)
    assert fixed is not None
    assert (fixed.path, fixed.mnt_id) == (f"{W}/ovl/fa", ovl.mnt_id)
    fixed = driver.fixup_fd_path(file=fu, mount=w, ctx=ctx)
    assert fixed is not None
    assert (fixed.path, fixed.mnt_id) == (f"{W}/ovl/fu", ovl.mnt_id)
    # The lower copy of a copied-up file is not what the overlay shows: a real layer file.
    fc = attrs.evolve(live[5], path=f"{W}/low/a/fc", mnt_id=low.mnt_id, identity=None)
    assert driver.fixup_fd_path(file=fc, mount=low, ctx=ctx) is None
    # A file on the layer mount outside any layer directory is left alone.
    wk = attrs.evolve(live[4], path=f"{W}/wk", mnt_id=w.mnt_id, identity=None)
    assert driver.fixup_fd_path(file=wk, mount=w, ctx=ctx) is None


def test_recent_release_in_a_recording_does_not_remap(
    held: NamespaceScenario, recording: str
) -> None:
    from criu_fw.context import DumpContext

    record(held, recording, "6.18.0")
    nid = ns_id(held.pid)
    tree = read_mountinfo(held.pid, proc_root=recording, ns_id=nid)
    ctx = DumpContext(
        image_dir=recording,
        proc_root=recording,
        trees={nid: tree},
        recorded=True,
        root=f"/proc/{held.pid}/root",
    )
    W = f"{held.workdir}/W"
    low = at(tree, f"{W}/low")
    parse(ctx, tree, at(tree, f"{W}/ovl"))
    live = {f.fd: f for f in open_files(held.pid)}
    fa = attrs.evolve(live[7], identity=None)
    assert driver.fixup_fd_path(file=fa, mount=low, ctx=ctx) is None


# -- whether the kernel misreports: decided by behaviour, end to end through dump() ----------


def _files_img(images: str) -> dict[str, int]:
    """files.img as {path: mnt_id}."""
    from criu_fw.images import image_to_dict

    return {
        e["reg"]["name"]: e["reg"]["mnt_id"]
        for e in image_to_dict(f"{images}/files.img")["entries"]
    }


def _dump_recording(held: NamespaceScenario, rec: str, out: str, **reports: object) -> None:
    from criu_fw.dump import dump

    record_process(held.pid, rec, "5.4.0-150-generic", **reports)  # type: ignore[arg-type]
    dump(held.pid, out, proc_root=rec, root=f"/proc/{held.pid}/root")


def _misreporting_dump(
    held: NamespaceScenario, recording: str, tmp_path: os.PathLike[str]
) -> tuple[dict[str, int], str]:
    # What a distribution kernel after 4.2 showed (this one cannot): the process's exe on the
    # overlay, but the same file, open and mapped, on the lower layer's mount and path. The
    # release (5.4) says "fixed"; the process's own reports say otherwise, and win.
    W = f"{held.workdir}/W"
    tree = read_mountinfo(held.pid, ns_id=ns_id(held.pid))
    ovl, low, w = at(tree, f"{W}/ovl"), at(tree, f"{W}/low"), at(tree, W)
    images = f"{tmp_path}/img"
    _dump_recording(
        held,
        f"{recording}/proc",
        images,
        exe=f"{W}/ovl/fa",
        fds={
            3: (f"{W}/low/a/fa", low.mnt_id),  # the exe's file, reported on the layer
            4: (f"{W}/up/fu", w.mnt_id),  # an upper file, reported on the upper's mount
            5: (f"{W}/low/a/fc", low.mnt_id),  # the lower copy of a copied-up file
        },
        maps=[(0x400000, 0x401000, "r-xp", low.dev, 3, f"{W}/low/a/fa")],
    )
    files = _files_img(images)
    assert files[f"{W}/ovl/fa"] == ovl.mnt_id  # exe and fd 3: one file, on the overlay
    assert files[f"{W}/ovl/fu"] == ovl.mnt_id
    assert f"{W}/up/fu" not in files
    # Not what the overlay shows under that name: a real layer file, left where it is.
    assert files[f"{W}/low/a/fc"] == low.mnt_id
    return files, W


def test_recorded_misreport_seen_in_the_processes_own_files_is_fixed_in_the_images(
    held: NamespaceScenario, recording: str, tmp_path: os.PathLike[str]
) -> None:
    _misreporting_dump(held, recording, tmp_path)


def test_recorded_misreported_mapping_is_fixed_in_the_images(
    held: NamespaceScenario, recording: str, tmp_path: os.PathLike[str]
) -> None:
    files, W = _misreporting_dump(held, recording, tmp_path)
    assert f"{W}/low/a/fa" not in files  # the mapping went to the overlay with fd 3


def test_recorded_report_on_the_overlay_keeps_layer_files_on_the_layer(
    held: NamespaceScenario, recording: str, tmp_path: os.PathLike[str]
) -> None:
    # The same process, but one fd and one mapping are reported on the overlay (mount id,
    # overlay device in maps): the kernel reports right, so the files reported on the
    # layer's mount were opened there, and stay there.
    W = f"{held.workdir}/W"
    tree = read_mountinfo(held.pid, ns_id=ns_id(held.pid))
    ovl, low = at(tree, f"{W}/ovl"), at(tree, f"{W}/low")
    images = f"{tmp_path}/img"
    _dump_recording(
        held,
        f"{recording}/proc",
        images,
        exe=f"{W}/ovl/fa",
        fds={3: (f"{W}/low/a/fa", low.mnt_id), 6: (f"{W}/ovl/fu", ovl.mnt_id)},
        maps=[
            (0x400000, 0x401000, "r-xp", low.dev, 3, f"{W}/low/a/fa"),
            (0x500000, 0x501000, "r--s", ovl.dev, 4, f"{W}/ovl/fu"),
        ],
    )
    files = _files_img(images)
    assert files[f"{W}/low/a/fa"] == low.mnt_id
    assert files[f"{W}/ovl/fu"] == ovl.mnt_id


def test_probe_finds_a_file_below_top_level_directories(scenario: Scn) -> None:
    # A container root has only directories at its top: the probe looks further down, so the
    # release is not what decides.
    s = scenario(
        """
mkdir W && mount -t tmpfs w W && mkdir -p W/l/usr/bin W/l/etc W/u W/w W/o
echo x > W/l/usr/bin/sh
mount -t overlay overlay W/o -o lowerdir=$PWD/W/l,upperdir=$PWD/W/u,workdir=$PWD/W/w
"""
    )
    ctx = live_context(s)
    tree = tree_of(ctx, s)
    parse(ctx, tree, at(tree, f"{s.workdir}/W/o"))
    assert index_of(ctx).misreports == {"fd": False, "map": False}
    assert index_of(ctx).decided_by == {"fd": "probe", "map": "probe"}
