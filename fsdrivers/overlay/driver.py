"""The overlay driver."""

from __future__ import annotations

from typing import ClassVar

from criu_fw.driver import FsDriver


class OverlayDriver(FsDriver):
    fstypes: ClassVar[tuple[str, ...]] = ("overlay",)
    description = "overlayfs: layer resolution, open-file mount fixes, new-API rebuild"
