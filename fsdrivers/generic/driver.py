"""The generic driver: the fallback for every fstype no other driver owns.

Its dump side (content archives, external mounts) lives in ``dumping.py`` and its restore side
in ``rebuilding.py``; this class only puts them together and declares what it owns.
"""

from __future__ import annotations

from typing import ClassVar

from criu_fw.driver import DriverState, FsDriver

from .blockdev import BlockDevState
from .dumping import GenericDump
from .rebuilding import GenericRebuild


class GenericDriver(GenericDump, GenericRebuild, FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = (
        "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "devtmpfs",
    )
    fallback = True
    state_types: ClassVar[tuple[type[DriverState], ...]] = (BlockDevState,)
    description = "kernel filesystems, tmpfs with content, binds and block-device filesystems"
