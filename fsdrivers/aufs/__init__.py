"""The AUFS driver: branches from sysfs, branch paths in map_files, wrong host mount ids."""

from __future__ import annotations

from .driver import AufsDriver

driver = AufsDriver()

__all__ = ["AufsDriver", "driver"]
