"""The dump engine: :func:`dump` checkpoints a process tree's mounts, files and mappings."""

from __future__ import annotations

from .engine import DumpResult, dump

__all__ = ["DumpResult", "dump"]
