"""Restore: rebuild dumped mount namespaces in a fresh private namespace.

``restore(image_dir, ...)`` is the library call behind ``criu-fw restore``;
``verify(pid, image_dir)`` compares a live namespace with the images.
"""

from __future__ import annotations

from ..records import DumpedNamespace, MountRecord
from .engine import RestoreResult, image_namespaces, read_namespaces, restore

__all__ = [
    "DumpedNamespace",
    "MountRecord",
    "RestoreResult",
    "image_namespaces",
    "read_namespaces",
    "restore",
]
