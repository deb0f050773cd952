"""Placeholder: the mount layer (real syscalls, and a recording layer for tests)."""

from __future__ import annotations


class MountOps:
    """Every mount operation of a restore goes through an instance of this class."""
