"""The listmount/statmount reader agrees with the mountinfo reader on live namespaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest
from criu_fw.errors import SyscallError
from criu_fw.kernel import statmount as sm
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.kernel.statmount import read_statmount
from criu_fw.model import MountTree
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.skipif(not sm.available(), reason="no listmount/statmount (Linux < 6.8)")


def assert_same(by_stat: MountTree, by_info: MountTree) -> None:
    """Equal mount by mount (every field but unique_id, which only statmount has)."""
    got = [m._replace(unique_id=None) for m in by_stat]
    want = list(by_info)
    diffs = [f"statmount {g}\nmountinfo {w}" for g, w in zip(got, want, strict=False) if g != w]
    assert len(got) == len(want), ([m.mountpoint for m in got], [m.mountpoint for m in want])
    assert not diffs, "\n".join(diffs)


def test_own_namespace_read_only() -> None:
    """The caller's namespace: read, never changed (the autouse fixture checks that)."""
    by_stat = read_statmount()
    assert_same(by_stat, read_mountinfo())
    uids = [m.unique_id for m in by_stat]
    assert all(u is not None and u >= 1 << 31 for u in uids), uids
    assert len(set(uids)) == len(uids)


# Every kind of mount whose report could differ between the two interfaces.
SCRIPT = r"""
mkdir base
mount -t tmpfs -o size=1m,mode=711 'src with space' base
cd base
mkdir -p a b c d e f g ro over unb "$(printf 'sp ace\ttab\\back')" "$(printf 'bad\377\376')" \
    "$(printf 'new\nline')" lo up wk ovl opts nosrc
mount -t tmpfs -o size=64k srcA a
mkdir a/sub && mount --make-shared a
mount --bind a b && mount --make-slave b && mount --make-shared b
mount --bind b c && mount --make-slave c
mount --bind a d
mount -t tmpfs inner a/sub
mount --bind -o ro a ro 2>/dev/null || { mount --bind a ro; mount -o remount,bind,ro ro; }
mount -t tmpfs under over && mount -t tmpfs top over
mount -t tmpfs u unb && mount --make-unbindable unb
mount -t tmpfs "$(printf 'weird,src\tx')" "$(printf 'sp ace\ttab\\back')"
mount -t tmpfs nonutf8 "$(printf 'bad\377\376')"
mount -t tmpfs nl "$(printf 'new\nline')"
mount -t tmpfs -o nosuid,nodev,noexec,noatime,nodiratime,sync opts opts
touch file g2 && mount --bind file g2
mkdir -p e/deleted && mount --bind e/deleted f && rmdir e/deleted
mkdir lo/l && mount -t overlay ovl -o lowerdir=lo/l,upperdir=up,workdir=wk ovl
# A superblock made by the new mount API without a "source": mountinfo shows "none".
"$PY" -c 'from criu_fw import kernel as k
fd = k.fsopen("tmpfs"); k.fsconfig(fd, k.FSCONFIG_CMD_CREATE); m = k.fsmount(fd)
k.move_mount(m, "", k.AT_FDCWD, "nosrc", k.MOVE_MOUNT_F_EMPTY_PATH)'
"""


@pytest.mark.privileged
def test_both_readers_agree_on_a_hostile_namespace(
    scenario: Callable[..., NamespaceScenario],
) -> None:
    s = scenario(SCRIPT, env={"PY": sys.executable})
    by_info = read_mountinfo(s.pid)
    by_stat = read_statmount(s.pid)
    assert_same(by_stat, by_info)
    base = os.path.realpath(s.workdir) + "/base"
    mine = {m.mountpoint[len(base) :]: m for m in by_stat if m.mountpoint.startswith(base)}
    # The scenario really has what the comparison is meant to cover.
    assert mine["/b"].propagation.shared and mine["/b"].propagation.master
    assert mine["/c"].propagation.master == mine["/b"].propagation.shared
    assert mine["/unb"].propagation.unbindable
    assert mine["/f"].root_deleted
    assert mine["/ro"].readonly
    assert "sync" in mine["/opts"].super_options and "noatime" in mine["/opts"].mount_options
    assert mine["/sp ace\ttab\\back"].source == "weird,src\tx"
    assert os.fsencode(base) + b"/bad\xff\xfe" in {os.fsencode(m.mountpoint) for m in by_stat}
    assert mine["/ovl"].fstype == "overlay" and mine["/ovl"].super_option("upperdir")
    assert mine["/nosrc"].source == "none"
    assert mine["/g2"].root.endswith("/base/file") or mine["/g2"].root == "/file"
    assert len([m for m in by_stat if m.mountpoint == base + "/over"]) == 2
    assert by_stat.lookup(base + "/over").source == "top"


@pytest.mark.privileged
def test_unique_ids_and_namespace_id(scenario: Callable[..., NamespaceScenario]) -> None:
    s = scenario("mkdir t && mount -t tmpfs t t")
    fd = os.open(f"/proc/{s.pid}/ns/mnt", os.O_RDONLY)
    try:
        theirs = sm.mntns_id(fd)
        ids = sm.listmount(mnt_ns_fd=fd)  # the namespace given by fd instead of by id
    finally:
        os.close(fd)
    with open("/proc/self/ns/mnt") as own:
        assert sm.mntns_id(own.fileno()) != theirs
    assert ids == sm.listmount(mnt_ns_id=theirs)
    tree = read_statmount(s.pid)
    assert [m.unique_id for m in tree] == ids
    st = sm.statmount(ids[-1], sm.MOUNT_MASK, mnt_ns_id=theirs)
    assert st.mnt_ns_id == theirs
    assert st.mnt_point == os.fsencode(os.path.realpath(s.workdir)) + b"/t"
    # Without the namespace id, the other namespace's mount is not found from here.
    with pytest.raises(SyscallError, match=r"statmount.*ENOENT"):
        sm.statmount(ids[-1])


def test_listmount_batches_and_statmount_buffer_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    everything = sm.listmount()
    assert sm.listmount(batch=1) == everything == sorted(everything)
    normal = sm.statmount(everything[0])
    # A buffer too small for the strings is grown, not truncated.
    monkeypatch.setattr(sm, "_INITIAL_BUF", sm._FIXED_SIZE + 8)
    assert sm.statmount(everything[0]) == normal
