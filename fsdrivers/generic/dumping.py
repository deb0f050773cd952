"""Dump side of the generic driver."""

from __future__ import annotations


class GenericDump:
    """Hook implementations used at dump time."""
