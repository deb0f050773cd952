"""What sysfs says about the loop device a filesystem is mounted from.

``/sys/dev/block/MAJ:MIN`` leads to the block device of a mount's ``dev``; a loop device
with a file attached has a ``loop/`` directory there with ``backing_file`` (the file's path
as the reader's root sees it, `` (deleted)`` appended once it was unlinked), ``offset`` and
``sizelimit``; ``ro`` and ``size`` (in 512-byte sectors) are the device's own. All of it is
read under ``ctx.sys_root``, so a recorded /sys works as well as the live one.
"""

from __future__ import annotations

import os

import attrs
from criu_fw.driver import Dev

#: What sysfs appends to the path of a file that was unlinked.
DELETED = " (deleted)"


@attrs.frozen
class LoopDevice:
    name: str  # "loop3"
    backing_file: str
    offset: int
    sizelimit: int
    read_only: bool
    #: What the device shows, in bytes.
    size: int

    def expected_size(self, file_size: int) -> int:
        """The device's size a file of ``file_size`` bytes gives (the kernel's rule: from
        ``offset`` on, at most ``sizelimit``, in whole 512-byte sectors)."""
        size = max(file_size - self.offset, 0)
        if self.sizelimit and self.sizelimit < size:
            size = self.sizelimit
        return size & ~511


def read_loop_device(sys_root: str, dev: Dev) -> LoopDevice | None:
    """The loop device ``dev`` is, with its file; None when ``dev`` is not a loop device
    with a file attached. Raises OSError/ValueError when sysfs cannot be read as expected."""
    block = os.path.join(sys_root, "dev", "block", f"{dev.major}:{dev.minor}")
    if not os.path.isfile(os.path.join(block, "loop", "backing_file")):
        return None
    # The path ends in a newline sysfs adds; the name itself may end in anything else.
    backing = _read(block, "loop/backing_file")
    if backing.endswith(b"\n"):
        backing = backing[:-1]
    return LoopDevice(
        name=os.path.basename(os.path.realpath(block)),
        backing_file=os.fsdecode(backing),
        offset=int(_read(block, "loop/offset")),
        sizelimit=int(_read(block, "loop/sizelimit")),
        read_only=_read(block, "ro").strip() == b"1",
        size=int(_read(block, "size")) * 512,
    )


def _read(block: str, name: str) -> bytes:
    with open(os.path.join(block, name), "rb") as f:
        return f.read()
