"""The AUFS rebuild plan and the driver state that carries the branches from dump to restore.

The kernel here has no AUFS (it is not in mainline): a recorded /proc/filesystems says whether
the "restoring kernel" has it, and the plan is checked, not mounted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from criu_fw.context import RestoreContext
from criu_fw.errors import RestoreError
from criu_fw.fsdrivers.aufs.branches import Branch
from criu_fw.fsdrivers.aufs.driver import AufsDriver
from criu_fw.fsdrivers.aufs.rebuild import filesystems, mount_data, plan
from criu_fw.fsdrivers.aufs.state import AufsState
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.plan import NewSuperblock
from criu_fw.proto import aufs_pb2
from fixtures.aufs.recording import BRANCHES, SI

MOUNT = parse_line(f"90 61 0:33 / / rw,relatime - aufs none rw,si={SI},dio,dirperm1".encode())
STATE = AufsState(SI, tuple(Branch(p, perm) for p, perm in BRANCHES))
EXPECTED_BR = "br:" + ":".join(f"{p}={perm}" for p, perm in BRANCHES)

WITH_AUFS = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\taufs\nnodev\toverlay\n"
WITHOUT_AUFS = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n"


def proc_with(tmp_path: Path, text: str) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "filesystems").write_text(text)
    return str(proc)


def test_plan_is_one_legacy_mount_with_branches_in_order(tmp_path: Path) -> None:
    got = plan(MOUNT, STATE, proc_with(tmp_path, WITH_AUFS))
    branches = EXPECTED_BR.removeprefix("br:")
    assert got == NewSuperblock(
        "aufs",
        "none",
        params=(("br", branches), ("dio", None), ("dirperm1", None)),
        legacy_data=f"{EXPECTED_BR},dio,dirperm1",
    )
    assert got.dependencies() == ()


def test_no_aufs_in_proc_filesystems_fails_saying_so(tmp_path: Path) -> None:
    with pytest.raises(
        RestoreError,
        match=r"^this kernel has no aufs "
        r"\(not in .*/proc/filesystems\); nothing was mounted",
    ):
        plan(MOUNT, STATE, proc_with(tmp_path, WITHOUT_AUFS))


def test_filesystems_reads_the_live_proc() -> None:
    assert "tmpfs" in filesystems("/proc")


def test_driver_reads_the_restore_proc_root(tmp_path: Path) -> None:
    proc = proc_with(tmp_path, WITH_AUFS)
    ctx = RestoreContext(image_dir=str(tmp_path), proc_root=proc)
    assert AufsDriver().rebuild_mount(MOUNT, STATE, ctx) == plan(MOUNT, STATE, proc)
    # Without an aufs-capable proc root (the real /proc of a kernel without AUFS, which is
    # why these tests use recordings), the driver refuses.
    if "aufs" not in filesystems("/proc"):
        with pytest.raises(RestoreError, match="this kernel has no aufs"):
            AufsDriver().rebuild_mount(MOUNT, STATE, RestoreContext(image_dir=str(tmp_path)))


@pytest.mark.parametrize("bad", ["/a:b", "/a,b", "/a=b"])
def test_branch_path_the_br_option_cannot_express(tmp_path: Path, bad: str) -> None:
    state = AufsState(SI, (Branch("/top", "rw"), Branch(bad, "ro")))
    with pytest.raises(RestoreError, match=r"branch br1 .* contains .*cannot express"):
        mount_data(MOUNT, state)


def test_missing_state_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RestoreError, match="no AUFS branch list"):
        plan(MOUNT, None, proc_with(tmp_path, WITH_AUFS))


def test_si_and_flags_are_not_carried_over() -> None:
    m = parse_line(f"90 61 0:33 / / ro - aufs none ro,si={SI},xino=/dev/shm/x".encode())
    assert mount_data(m, STATE) == f"{EXPECTED_BR},xino=/dev/shm/x"


def test_state_round_trips_through_its_message_byte_exact() -> None:
    weird = os.fsdecode(b"/layers/caf\xe9 \xff")
    state = AufsState(SI, (Branch(weird, "rw"), Branch("/l/1", "ro+wh")))
    msg = state.to_message()
    assert msg.DESCRIPTOR.full_name == "criu_fw.aufs.aufs_state"
    wire = msg.SerializeToString()
    back = AufsState.from_message(aufs_pb2.aufs_state.FromString(wire))
    assert back == state
    assert os.fsencode(back.branches[0].path) == b"/layers/caf\xe9 \xff"


def test_state_type_is_declared_for_the_core() -> None:
    assert AufsState in AufsDriver.state_types
