"""The generic driver: every filesystem no other driver claims (proc, sysfs, tmpfs, binds...)."""

from __future__ import annotations

from .driver import GenericDriver

driver = GenericDriver()

__all__ = ["GenericDriver", "driver"]
