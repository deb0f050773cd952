"""The mountinfo parser and the mount model, on text and on real private namespaces."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from criu_fw.errors import MountinfoError
from criu_fw.mountinfo import parse, read_mountinfo
from criu_fw.model import MountTree
from criu_fw.testing import NamespaceScenario

SAMPLE = b"""\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
63 27 0:39 / /tmp/a\\040b rw,nosuid,relatime shared:5 master:3 propagate_from:2 - tmpfs my\\011src rw,size=10k
64 63 0:39 /f//deleted /tmp/a\\040b/tgt ro,relatime unbindable - tmpfs my\\011src rw,size=10k
65 63 0:40 / /tmp/a\\040b rw,relatime - tmpfs x rw
"""


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
