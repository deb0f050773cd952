"""The AUFS superblock id: mountinfo's ``si=<hex>`` option.

AUFS prints it with ``%lx`` (the address of its superblock info XOR a boot-time mask), so it
is 1 to 16 lower-case hex digits on a 64-bit kernel. The id becomes part of a sysfs path
(``/sys/fs/aufs/si_<id>``), which is why anything else is rejected rather than trusted.
"""

from __future__ import annotations

import re

from criu_fw.driver import DumpError, Mount

#: ``unsigned long`` in hex: at most 16 digits.
SI_MAX_DIGITS = 16
_SI = re.compile(rf"[0-9a-f]{{1,{SI_MAX_DIGITS}}}")


def validate_si(value: str, where: str) -> str:
    """``value`` if it is a superblock id AUFS could have printed; else a DumpError."""
    if _SI.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise DumpError(
            f"{where}: si={shown!r} is not an AUFS superblock id "
            f"(expected 1-{SI_MAX_DIGITS} lower-case hex digits)"
        )
    return value


def superblock_id(mount: Mount) -> str:
    """The validated ``si=`` of an AUFS mount."""
    values = [opt[3:] for opt in mount.super_options if opt.startswith("si=")]
    if not values:
        raise DumpError(f"{mount.describe()}: no si= option; cannot find its AUFS branches")
    if len(values) > 1:
        raise DumpError(f"{mount.describe()}: si= given {len(values)} times: {values!r}")
    return validate_si(values[0], mount.describe())
