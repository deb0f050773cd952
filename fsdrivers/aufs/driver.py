"""The AUFS driver."""

from __future__ import annotations

from typing import ClassVar

from criu_fw.driver import FsDriver


class AufsDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("aufs",)
    description = "AUFS: branches, map_files branch paths, host mount ids"
