"""Image directories written by the library writer, for tests of what readers do with them.

A dump writes its images through the same calls (``write_mount_namespace``, ``write_image``);
here the tree is given, so a test can say exactly what a crafted image holds. Used by
``test_image_validation.py`` and the fuzz targets (``fuzz_targets.py``).
"""

from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence

from criu_fw.api.loader import DriverManager, load_drivers
from criu_fw.driver import DriverState
from criu_fw.images import IMG_COMMON, MAGIC, write_image
from criu_fw.images.mounts import write_mount_namespace
from criu_fw.model import Dev, Mount, MountTree
from criu_fw.proto import core_pb2, inventory_pb2
from criu_fw.records import DeletedRoot, DumpedNamespace

NS = 7
U32 = struct.Struct("<I")

ROOT = Mount(1, 0, Dev(0, 20), "/", "/", "tmpfs", "root", ("rw",), ("rw",))
A = Mount(2, 1, Dev(0, 21), "/", "/a", "tmpfs", "ta", ("rw",), ("rw", "size=1024k"))
B = Mount(3, 2, Dev(0, 21), "/", "/a/b", "tmpfs", "ta", ("rw",), ("rw", "size=1024k"))
BASE = (ROOT, A, B)


@functools.cache
def manager() -> DriverManager:
    return load_drivers()


def head(kind: str) -> bytes:
    """The magic words an image of ``kind`` starts with (not the inventory's)."""
    return U32.pack(IMG_COMMON) + U32.pack(MAGIC[kind])


def write_inventory(image_dir: str, ns_id: int = NS) -> None:
    ids = core_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1, sighand_id=1,
                                       mnt_ns_id=ns_id)  # fmt: skip
    inv = inventory_pb2.inventory_entry(img_version=2, root_ids=ids)
    write_image(os.path.join(image_dir, "inventory.img"), "INVENTORY", [inv])


def write_dir(
    image_dir: str,
    mounts: Sequence[Mount] = BASE,
    *,
    drivers: Mapping[int, str] | None = None,
    states: Mapping[int, DriverState | None] = {},
    external: Mapping[int, str] = {},
    content: Mapping[int, str] = {},
    deleted: Mapping[int, DeletedRoot] = {},
    ns_id: int = NS,
) -> str:
    """An image directory holding ``mounts`` as namespace ``ns_id`` (the root namespace);
    drivers default to the registry's owners. Returns ``image_dir``."""
    os.makedirs(image_dir, exist_ok=True)
    if drivers is None:
        drivers = {m.mnt_id: manager().owner(m.fstype) for m in mounts}
    dumped = DumpedNamespace.of(ns_id, MountTree(tuple(mounts)), drivers=drivers, states=states,
                                external=external, content=content,
                                deleted=deleted)  # fmt: skip
    write_mount_namespace(image_dir, dumped)
    write_inventory(image_dir, ns_id)
    return image_dir


def paths(image_dir: str, ns_id: int = NS) -> tuple[str, str]:
    """The MNTS and FW_MNTS image of namespace ``ns_id``."""
    return (os.path.join(image_dir, f"mountpoints-{ns_id}.img"),
            os.path.join(image_dir, f"fw-mountpoints-{ns_id}.img"))  # fmt: skip


def mnts_entry(mounts: Sequence[Mount], mnt_id: int) -> int:
    """The entry of a mount in the MNTS image (CRIU's reverse order)."""
    return len(mounts) - 1 - [m.mnt_id for m in mounts].index(mnt_id)


def fw_entry(mounts: Sequence[Mount], mnt_id: int) -> int:
    """The entry of a mount in the FW_MNTS image (after the header, in kernel order)."""
    return 1 + [m.mnt_id for m in mounts].index(mnt_id)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``criu-fw ARGS`` as a user runs it; a run longer than ``timeout`` fails the test."""
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip
