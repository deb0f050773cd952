"""dump -> restore -> dump again: the second images equal the first except for ids.

Also home of :func:`dump_scenario`, the one way the restore tests make images.
"""

from __future__ import annotations

import os

import pytest
from criu_fw.dump import dump
from criu_fw.imageset import read_mount_namespace
from criu_fw.model import Mount, MountTree
from criu_fw.restore import image_namespaces, restore
from criu_fw.testing import NamespaceScenario


def dump_scenario(scn: NamespaceScenario, images: str) -> None:
    """Dump a scenario's process (the host mounts it inherited are recorded by host path)."""
    dump(scn.pid, images, auto_external=True)


def _shape(tree: MountTree) -> list[tuple[object, ...]]:
    """A tree without ids: each mount by its path of mountpoints from the root, in stacking
    order, with everything else that must survive."""
    def key(m: Mount) -> tuple[object, ...]:
        chain = []
        cur: Mount | None = m
        while cur is not None:
            chain.append(cur.mountpoint)
            cur = tree.parent(cur)
        p = m.propagation
        return (
            tuple(reversed(chain)), m.fstype, m.source, m.root, tuple(sorted(m.mount_options)),
            tuple(sorted(m.super_options)), p.shared is not None, p.master is not None,
            p.unbindable,
        )

    return sorted(key(m) for m in tree)


@pytest.mark.privileged
def test_dump_restore_dump_gives_equal_images(tmp_path: os.PathLike[str]) -> None:
    first, second = os.path.join(tmp_path, "first"), os.path.join(tmp_path, "second")
    scn = NamespaceScenario(
        "mkdir -p a b c\n"
        "mount -t tmpfs -o size=2m,mode=750 ta a; echo x > a/f; mkdir a/in\n"
        "mount -t tmpfs tin a/in; mount --bind a b; mount -o remount,bind,ro,nosuid b\n"
        "mount -t tmpfs tc c; mount --make-shared c\n"
    )
    result = None
    try:
        dump_scenario(scn, first)
        result = restore(first, root="/", detach=True)
        dump(result.pid, second, auto_external=True)
    finally:
        if result is not None:
            result.terminate()
        scn.close()
    r1, _ = image_namespaces(first)
    r2, _ = image_namespaces(second)
    t1 = read_mount_namespace(first, r1)
    t2 = read_mount_namespace(second, r2)
    assert _shape(t1.tree) == _shape(t2.tree)
    assert sorted(t1.drivers.values()) == sorted(t2.drivers.values())
    assert len(t1.content) == len(t2.content)
