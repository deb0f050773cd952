"""Restoring an AUFS container's mount tree, checked on the recorded mount requests.

The kernel here has no AUFS (it is not in mainline), so nothing can be mounted: the restore
runs with RecordingMountOps, which records every request and touches nothing, and the
"restoring kernel" is a recorded /proc/filesystems.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from criu_fw.errors import RestoreError
from criu_fw.fsdrivers.aufs.branches import Branch
from criu_fw.fsdrivers.aufs.state import AufsState
from criu_fw.kernel.mountinfo import parse
from criu_fw.kernel.mountops import Call, RecordingMountOps
from criu_fw.model import MountTree
from criu_fw.restore import DumpedNamespace, restore
from fixtures.aufs.recording import AUFS_ROOT_ID, BRANCHES, MOUNTINFO, NS_MNT, SI

STATE = AufsState(SI, tuple(Branch(p, perm) for p, perm in BRANCHES))
BR = ":".join(f"{p}={perm}" for p, perm in BRANCHES)


def namespace(mountinfo: str = MOUNTINFO) -> DumpedNamespace:
    tree = MountTree.from_mounts(parse(mountinfo.encode()), ns_id=NS_MNT)
    return DumpedNamespace.of(
        NS_MNT,
        tree,
        drivers={m.mnt_id: "aufs" if m.fstype == "aufs" else "generic" for m in tree},
        states={AUFS_ROOT_ID: STATE},
    )


def fake_proc(tmp_path: Path, has_aufs: bool) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    aufs = "nodev\taufs\n" if has_aufs else ""
    (proc / "filesystems").write_text(f"nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\n\text4\n{aufs}")
    return str(proc)


def test_the_exact_aufs_request(tmp_path: Path) -> None:
    ops = RecordingMountOps()
    restore(
        str(tmp_path),
        ops=ops,
        namespaces=[namespace()],
        proc_root=fake_proc(tmp_path, has_aufs=True),
    )
    supers = ops.of("new_superblock")
    aufs = [c for c in supers if c.fstype == "aufs"]
    assert aufs == [
        Call(
            "new_superblock",
            handle=aufs[0].handle,
            fstype="aufs",
            source="none",
            params=(("br", BR),),
            legacy_data=f"br:{BR}",
        )
    ]
    # It is the first superblock made, and the restored root is attached from it.
    assert supers[0] == aufs[0]
    assert {c.fstype for c in supers} == {"aufs", "proc", "tmpfs"}


def test_superblock_options_travel_with_the_branches(tmp_path: Path) -> None:
    info = MOUNTINFO.replace(f"rw,si={SI}", f"rw,si={SI},dio,dirperm1,xino=/dev/shm/.x")
    ops = RecordingMountOps()
    restore(
        str(tmp_path),
        ops=ops,
        namespaces=[namespace(info)],
        proc_root=fake_proc(tmp_path, has_aufs=True),
    )
    (call,) = [c for c in ops.of("new_superblock") if c.fstype == "aufs"]
    assert call.legacy_data == f"br:{BR},dio,dirperm1,xino=/dev/shm/.x"
    assert call.params == (("br", BR), ("dio", None), ("dirperm1", None), ("xino", "/dev/shm/.x"))


@pytest.mark.parametrize("proc", ["recorded", "real"])
def test_no_aufs_fails_before_any_mount_request(tmp_path: Path, proc: str) -> None:
    # "real": this machine's own /proc/filesystems, which has no aufs.
    proc_root = fake_proc(tmp_path, has_aufs=False) if proc == "recorded" else "/proc"
    ops = RecordingMountOps()
    with pytest.raises(RestoreError) as err:
        restore(str(tmp_path), ops=ops, namespaces=[namespace()], proc_root=proc_root)
    assert str(err.value) == (
        f"mount {AUFS_ROOT_ID} at '/' (aufs, source 'none'): driver 'aufs': "
        f"this kernel has no aufs (not in {proc_root}/filesystems); nothing was mounted"
    )
    assert ops.calls == []
