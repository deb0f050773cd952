"""Restore side of the generic driver."""

from __future__ import annotations


class GenericRebuild:
    """Hook implementations used at restore time."""
