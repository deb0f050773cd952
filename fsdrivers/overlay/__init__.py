"""The overlay driver: layers resolved to where they really are, exact rebuilds."""

from __future__ import annotations

from .driver import OverlayDriver

driver = OverlayDriver()

__all__ = ["OverlayDriver", "driver"]
