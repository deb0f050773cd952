"""The generic driver: the fallback for every fstype no other driver owns."""

from __future__ import annotations

from typing import ClassVar

from criu_fw.driver import FsDriver


class GenericDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = (
        "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "devtmpfs",
    )
    fallback = True
    description = "kernel filesystems, tmpfs with content, binds and block-device filesystems"
