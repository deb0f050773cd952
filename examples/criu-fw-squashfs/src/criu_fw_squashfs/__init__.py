"""criu-fw driver for squashfs and erofs images on loop devices (snaps, AppImages,
composefs), published under the ``criu_fw.fsdrivers`` entry point ``squashfs``."""

from __future__ import annotations

from .driver import SquashfsDriver
from .state import LoopState

driver = SquashfsDriver()

__all__ = ["LoopState", "SquashfsDriver", "driver"]
