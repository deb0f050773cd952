"""The mountinfo parser and the mount model, on text and on real private namespaces."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from criu_fw.errors import MountinfoError, MountNotFoundError
from criu_fw.kernel.mountinfo import parse, read_mountinfo, unescape
from criu_fw.model import MountTree
from criu_fw.testing import NamespaceScenario

SAMPLE = (
    b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    b"27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    b"63 27 0:39 / /tmp/a\\040b rw,nosuid,relatime shared:5 master:3 propagate_from:2"
    b" - tmpfs my\\011src rw,size=10k\n"
    b"""\
64 63 0:39 /f//deleted /tmp/a\\040b/tgt ro,relatime unbindable - tmpfs my\\011src rw,size=10k
65 63 0:40 / /tmp/a\\040b rw,relatime - tmpfs x rw
"""
)


def test_parse_decodes_escapes_and_fields() -> None:
    mounts = list(parse(SAMPLE))
    assert [m.mnt_id for m in mounts] == [22, 27, 63, 64, 65]
    m = mounts[2]
    assert m.mountpoint == "/tmp/a b"
    assert m.source == "my\tsrc"
    assert m.propagation.shared == 5 and m.propagation.master == 3
    assert m.propagation.propagate_from == 2
    assert m.mount_options == ("rw", "nosuid", "relatime")
    assert m.super_options == ("rw", "size=10k")
    assert m.super_option("size") == "10k"
    d = mounts[3]
    assert d.root == "/f" and d.root_deleted and d.readonly and d.propagation.unbindable


def test_tree_lookups() -> None:
    tree = MountTree(tuple(parse(SAMPLE)))
    assert tree.root.mnt_id == 27
    assert [c.mnt_id for c in tree.children(63)] == [64, 65]
    # 65 is stacked on the same place as 63 and hides 63 and its child 64.
    assert tree.lookup("/tmp/a b/tgt").mnt_id == 65
    assert tree.lookup("/proc/self").mnt_id == 22
    assert tree.lookup("/etc").mnt_id == 27
    over = tree.overmounts()
    assert {m.mnt_id for m in over[65]} == {63, 64}
    assert [m.mnt_id for m in tree.topo_order()][:2] == [27, 22]
    assert {m.mnt_id for m in tree.by_dev(tree.get(63).dev)} == {63, 64}


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1 2 0:1 / /x rw", "separator"),
        (b"x 2 0:1 / /x rw - tmpfs a rw", "mount id"),
        (b"1 2 0:1 / /x rw - tmpfs a", "3 fields"),
        (b"1 2 0:1 rel /x rw - tmpfs a rw", "absolute"),
    ],
)
def test_bad_lines_name_the_line(line: bytes, reason: str) -> None:
    with pytest.raises(MountinfoError, match=rf"mi: line 2: .*{reason}"):
        list(parse(b"27 1 254:0 / / rw - ext4 /dev/vda rw\n" + line + b"\n", "mi"))


@pytest.mark.privileged
def test_real_namespace_with_hostile_names(scenario: Callable[..., NamespaceScenario]) -> None:
    names = ["sp ace", "t\tab", "new\nline", "back\\slash", "bad\xff\xfeutf8"]
    script = "mount -t tmpfs base base_mnt\n".replace("base_mnt", "base")
    setup = ["mkdir base", script]
    for i, _ in enumerate(names):
        setup.append(f'mkdir "base/$(printf "%b" "$N{i}")"')
        setup.append(f'mount -t tmpfs src{i} "base/$(printf "%b" "$N{i}")"')
    # Every byte that is not ASCII alphanumeric travels as a printf %b octal escape, so the
    # shell creates the exact byte names (newline and 0xff included).
    env = {
        f"N{i}": "".join(c if c.isascii() and c.isalnum() else f"\\0{ord(c):03o}" for c in n)
        for i, n in enumerate(names)
    }
    s = scenario("\n".join(setup), env=env)
    tree = read_mountinfo(s.pid)
    base = os.path.realpath(s.workdir) + "/base"
    seen = {os.fsencode(m.mountpoint): m for m in tree if m.mountpoint.startswith(base + "/")}
    for i, n in enumerate(names):
        want = os.fsencode(base) + b"/" + n.encode("latin-1")
        assert want in seen, (want, list(seen))
        assert seen[want].source == f"src{i}"
    assert tree.lookup(base + "/sp ace/x").source == "src0"


def test_unescape_is_exact() -> None:
    # "\134040" is a backslash followed by the text "040", not a space.
    assert unescape(b"a\\134040b") == b"a\\040b"
    assert unescape(b"\\040\\011\\012\\134") == b" \t\n\\"
    assert unescape(b"no escapes") == b"no escapes"
    (m,) = parse(b"1 1 0:1 /r\\134x /m\\377\\376\\040x rw - tmpfs s\\134 rw\n")
    assert m.root == "/r\\x" and m.source == "s\\"
    assert os.fsencode(m.mountpoint) == b"/m\xff\xfe x"


def test_raw_non_utf8_bytes_survive() -> None:
    (m,) = parse(b"1 1 0:1 / /caf\xc3\xa9/\xff rw - tmpfs src\xfe rw,opt=\xfa\n")
    assert os.fsencode(m.mountpoint) == b"/caf\xc3\xa9/\xff"
    assert m.mountpoint.startswith("/caf\u00e9/")
    assert os.fsencode(m.source) == b"src\xfe"
    assert os.fsencode(m.super_options[1]) == b"opt=\xfa"


def test_optional_fields_and_deleted_roots() -> None:
    lines = [
        b"1 1 0:1 / / rw - ext4 /dev/x rw",
        # Unknown optional fields (newer kernels) are accepted and ignored.
        b"2 1 0:2 / /a rw shared:7 future:3 - tmpfs t rw",
        # A directory really named "deleted" is not a deleted root; "//deleted" is.
        b"3 1 0:2 /x/deleted /b rw - tmpfs t rw",
        b"4 1 0:2 /x//deleted /c rw - tmpfs t rw",
        b"5 1 0:2 /a\\040b//deleted /d rw - tmpfs t rw",
        # An empty source is an empty field (two spaces in a row).
        b"6 1 0:3 / /e rw - tmpfs  rw",
    ]
    ms = {m.mnt_id: m for m in parse(b"\n".join(lines))}
    assert ms[2].propagation.shared == 7 and ms[2].propagation.master is None
    assert (ms[3].root, ms[3].root_deleted) == ("/x/deleted", False)
    assert (ms[4].root, ms[4].root_deleted) == ("/x", True)
    assert (ms[5].root, ms[5].root_deleted) == ("/a b", True)
    assert ms[6].fstype == "tmpfs" and ms[6].source == ""


def test_escaped_fstype_and_fuse_subtype() -> None:
    (m,) = parse(b"1 1 0:1 / / rw - fuse.my\\040fs src rw\n")
    assert m.fstype == "fuse.my fs"


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1 2 0:1 / /x rw shared:x - tmpfs a rw", "bad optional field 'shared:x'"),
        (b"1 2 01 / /x rw - tmpfs a rw", "major:minor"),
        (b"1 2 0:1 / /x rw -  a rw", "empty filesystem type"),
        (b"1 2 0:1 / x rw - tmpfs a rw", "absolute"),
    ],
)
def test_more_bad_lines(line: bytes, reason: str) -> None:
    with pytest.raises(MountinfoError, match=rf"/proc/9/mountinfo: line 1: .*{reason}"):
        list(parse(line, "/proc/9/mountinfo"))


def test_tree_orders_parents_first_and_resolves_stacked_roots() -> None:
    text = b"\n".join(
        [
            # The kernel may list a child before its parent (ids are reused); stacked roots.
            b"30 20 0:5 / /a/b rw - tmpfs ab rw",
            b"20 10 0:4 / /a rw - tmpfs a rw",
            b"10 1 0:1 / / rw - ext4 root rw",
            b"11 10 0:2 / / rw - tmpfs over-root rw",
            b"40 11 0:6 / /a rw - tmpfs a-on-top rw",
        ]
    )
    tree = MountTree(tuple(parse(text)))
    order = [m.mnt_id for m in tree.topo_order()]
    assert order.index(10) < order.index(20) < order.index(30)
    assert order.index(11) < order.index(40)
    assert sorted(order) == [10, 11, 20, 30, 40]
    assert tree.root.mnt_id == 11
    # / is covered by 11, so /a is 11's child 40, not 10's child 20.
    assert tree.lookup("/a/b/c").mnt_id == 40
    assert tree.relative_path(tree.get(30), "/a/b/c/d") == "/c/d"
    assert 10 in {m.mnt_id for m in tree.overmounts()[11]}


def test_tree_without_root_says_so() -> None:
    tree = MountTree(tuple(parse(b"5 4 0:1 / /x rw - tmpfs t rw")))
    with pytest.raises(MountNotFoundError, match="no root mount"):
        tree.lookup("/x")
    with pytest.raises(MountNotFoundError, match="mount id 9 is not in mount namespace"):
        tree.get(9)


@pytest.mark.privileged
def test_real_deleted_bind_root_and_overmount(scenario: Callable[..., NamespaceScenario]) -> None:
    s = scenario(
        "mkdir -p t d/gone m && mount -t tmpfs t t && mkdir t/gone"
        " && mount --bind t/gone d && rmdir t/gone"
        " && mount -t tmpfs low m && mount -t tmpfs high m"
    )
    tree = read_mountinfo(s.pid)
    base = os.path.realpath(s.workdir)
    d = tree.lookup(base + "/d")
    assert (d.root, d.root_deleted, d.source) == ("/gone", True, "t")
    assert tree.lookup(base + "/m/x").source == "high"
    low = next(m for m in tree if m.source == "low")
    assert low in tree.overmounts()[tree.lookup(base + "/m").mnt_id]
