"""Which superblock options the driver passes again, per filesystem type.

Images are untrusted: an option a crafted image adds is passed to the kernel as if the
operator had typed it. Only options that change how the image is read are let through; an
erofs ``device=`` (an extra blob device) or ``fsid=``/``domain_id=`` (an fscache image)
would make the kernel open something outside the granted file, so the dump refuses such a
mount and the restore refuses such an image.
"""

from __future__ import annotations

from collections.abc import Iterable

from criu_fw.driver import ParamValue

#: fstype -> option name -> the values it may take (None: a bare flag; empty: any value).
ALLOWED: dict[str, dict[str, frozenset[str] | None]] = {
    "squashfs": {
        "ro": None,
        "errors": frozenset({"continue", "panic"}),
        "threads": frozenset(),  # single, multi, percpu or a number
    },
    "erofs": {
        "ro": None,
        "user_xattr": None,
        "nouser_xattr": None,
        "acl": None,
        "noacl": None,
        "cache_strategy": frozenset({"disabled", "readahead", "readaround"}),
        "dax": None,
        "directio": None,
    },
}


def problem(fstype: str, option: str) -> str | None:
    """Why ``option`` (``key`` or ``key=value``) of a ``fstype`` mount is not passed, or
    None when it is."""
    known = ALLOWED.get(fstype)
    if known is None:
        return f"fstype {fstype!r} is not squashfs or erofs"
    key, sep, value = option.partition("=")
    if key not in known:
        return f"{fstype} option {option!r} is not one this driver passes again"
    values = known[key]
    if values is None and sep:
        return f"{fstype} option {key!r} takes no value, not {value!r}"
    if values is not None and (not sep or (values and value not in values)):
        return f"{fstype} option {option!r} has a value this driver does not pass"
    if any(c in option for c in ",\0\n") or len(option) > 255:
        return f"{fstype} option {option!r} cannot be passed as one fsconfig string"
    return None


def kept(super_options: Iterable[str]) -> tuple[str, ...]:
    """The superblock options to pass again: mountinfo's, less ``rw`` (the default)."""
    return tuple(o for o in super_options if o != "rw")


def as_params(options: Iterable[str]) -> tuple[tuple[str, ParamValue], ...]:
    """``key=value`` and bare ``key`` as fsconfig parameters."""
    out: list[tuple[str, ParamValue]] = []
    for opt in options:
        key, sep, value = opt.partition("=")
        out.append((key, value if sep else None))
    return tuple(out)
