"""Records for what a process has open: file descriptors and file mappings.

These are the dump-side view of a process's files before they become CRIU's ``file_entry``,
``fdinfo_entry`` and ``vma_entry`` messages. Paths are as seen from the process's root, decoded
with surrogateescape; ``mnt_id`` is the kernel's 32-bit mount id, or ``None`` for "no mount"
(CRIU writes -1).
"""

from __future__ import annotations

import attrs

from .model import Dev


@attrs.frozen
class FileIdentity:
    """What names one file for identity checks: device and inode (as fstat/statx report)."""

    dev: Dev
    ino: int


@attrs.frozen
class OpenFile:
    """One open regular file or directory of one process (also cwd and root)."""

    pid: int
    #: The fd number; -1 for cwd, -2 for root, -3 for exe (not an fd but dumped as a file).
    fd: int
    path: str
    flags: int
    pos: int
    mnt_id: int | None
    size: int
    mode: int
    identity: FileIdentity | None = None
    #: The file was unlinked while open (the link had `` (deleted)``).
    deleted: bool = False


@attrs.frozen
class FileMapping:
    """One file-backed memory mapping (a line of /proc/PID/maps with its map_files link)."""

    pid: int
    start: int
    end: int
    pgoff: int
    #: PROT_* bits.
    prot: int
    shared: bool
    path: str
    mnt_id: int | None
    identity: FileIdentity | None = None
    deleted: bool = False
