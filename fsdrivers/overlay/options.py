"""Overlay's superblock options as mountinfo shows them, parsed into layers and features.

What the kernel shows (measured on 6.18, see linux-mount-facts.md section 2):

* ``lowerdir=`` (mount(2) or one fsconfig string) is the string the mounter passed, escapes
  included: ``\\:`` ``\\,`` and ``\\\\`` stay in it, separators are ``:`` between ordinary
  layers and ``::`` before each data-only layer. mountinfo's octal escapes (``\\054``...)
  are already decoded by :mod:`criu_fw.kernel.mountinfo`.
* ``lowerdir+=`` / ``datadir+=`` (new mount API, one option per layer) are raw paths: no
  overlay escapes, a ``:`` is a ``:``. Layers given by fd show their d_path, relative to the
  mounter's root.
* ``upperdir=`` / ``workdir=`` given as strings keep the user's escapes (the kernel unescapes
  them before the lookup); given by fd they are raw d_paths. Both readings are kept (``text``
  and ``raw``) and layer resolution tries them in that order.
* Everything else is a feature switch. ``uuid=on`` and ``uuid=null`` describe the state of the
  upper directory (the first mount of a fresh upper shows ``uuid=on``), so they are dropped:
  the kernel derives them again. Unknown options are kept as shown, so an option of a newer
  kernel is not silently lost on restore.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

#: Options that only describe state the kernel derives at mount time.
DERIVED = frozenset({"uuid=on", "uuid=null"})
#: Overlay's own limit on lower layers (ordinary plus data-only).
MAX_LOWER_LAYERS = 500


class OverlayOptionError(ValueError):
    """An overlay option string that cannot be understood (the caller names the mount)."""


class Role(enum.Enum):
    UPPER = "upper"
    WORK = "work"
    LOWER = "lower"
    DATA = "data"


@attrs.frozen
class LayerSpec:
    """One layer directory as the mount options name it."""

    role: Role
    #: The path with overlay escapes removed (what the kernel looked up for a string option).
    text: str
    #: The path exactly as shown (differs from ``text`` only where the kernel's reading of a
    #: backslash is ambiguous: upperdir/workdir given by fd).
    raw: str
    #: The option spelling it came from: ``lowerdir``, ``lowerdir+``, ``datadir+``,
    #: ``upperdir`` or ``workdir``.
    option: str

    def spellings(self) -> tuple[str, ...]:
        """The readings to try, most likely first, without duplicates."""
        return (self.text,) if self.raw == self.text else (self.text, self.raw)


@attrs.frozen
class OverlayOptions:
    """Every overlay option of one superblock, split into layers and features."""

    #: Lower layers, topmost first; data-only layers (``Role.DATA``) come last.
    lowers: tuple[LayerSpec, ...]
    upper: LayerSpec | None = None
    work: LayerSpec | None = None
    #: Feature options to pass again on restore, in the kernel's order: ``("index", "on")``,
    #: ``("userxattr", None)``...
    features: tuple[tuple[str, str | None], ...] = ()
    #: The superblock is read-only (``ro`` among the superblock options).
    readonly: bool = False
    #: The layers were given through the new API (``lowerdir+``/``datadir+``).
    new_api: bool = False

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """Every layer directory: upper, work, then the lowers (topmost first)."""
        head = tuple(x for x in (self.upper, self.work) if x is not None)
        return head + self.lowers

    @property
    def data_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.lowers if layer.role is Role.DATA)


def unescape(text: str) -> str:
    """Overlay's own unescaping (``ovl_unescape``): a backslash takes the next char literally."""
    if "\\" not in text:
        return text
    out = []
    chars = iter(text)
    for c in chars:
        if c == "\\":
            c = next(chars, "")
        out.append(c)
    return "".join(out)


def split_lowerdir(value: str) -> list[tuple[str, bool]]:
    """Split a legacy ``lowerdir=`` value into ``(escaped path, data_only)`` pairs.

    ``:`` separates ordinary layers; ``::`` puts a data-only layer after it; a backslash
    escapes the next character (so ``\\:`` is a colon inside a name). Mirrors the kernel's
    ``ovl_parse_param_split_lowerdirs``: three colons in a row, an empty layer, or an ordinary
    layer after a data-only one are errors.
    """
    if not value:
        raise OverlayOptionError("empty lowerdir")
    parts: list[tuple[str, bool]] = []
    cur: list[str] = []
    data_next = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            cur.append(value[i : i + 2])
            i += 2
            continue
        if c == ":":
            double = value.startswith("::", i)
            if double and value.startswith(":::", i):
                raise OverlayOptionError(f"three colons in a row in lowerdir {value!r}")
            if not cur:
                raise OverlayOptionError(f"empty layer in lowerdir {value!r}")
            parts.append(("".join(cur), data_next))
            cur = []
            data_next = data_next or double
            if parts[-1][1] and not double:
                raise OverlayOptionError(
                    f"an ordinary layer follows a data-only layer in lowerdir {value!r}"
                )
            i += 2 if double else 1
            continue
        cur.append(c)
        i += 1
    if not cur:
        raise OverlayOptionError(f"lowerdir {value!r} ends with a separator")
    parts.append(("".join(cur), data_next))
    if parts[0][1]:
        raise OverlayOptionError(f"lowerdir {value!r} starts with a data-only layer")
    return parts


def _feature(name: str, value: str | None) -> tuple[str, str | None]:
    return (name, value)


def parse_options(super_options: Iterable[str]) -> OverlayOptions:
    """Parse an overlay mount's superblock options (mountinfo's last field, already split)."""
    legacy: list[LayerSpec] = []
    plus: list[LayerSpec] = []
    data: list[LayerSpec] = []
    upper = work = None
    features: list[tuple[str, str | None]] = []
    readonly = False
    for opt in super_options:
        name, sep, value = opt.partition("=")
        if opt in ("rw", "ro"):
            readonly = opt == "ro"
        elif opt in DERIVED:
            continue
        elif name == "lowerdir" and sep:
            if legacy:
                raise OverlayOptionError("lowerdir given twice")
            for escaped, data_only in split_lowerdir(value):
                role = Role.DATA if data_only else Role.LOWER
                legacy.append(LayerSpec(role, unescape(escaped), escaped, "lowerdir"))
        elif name in ("lowerdir+", "datadir+") and sep:
            if not value:
                raise OverlayOptionError(f"empty {name}")
            if name == "lowerdir+":
                if data:
                    raise OverlayOptionError("lowerdir+ after datadir+")
                plus.append(LayerSpec(Role.LOWER, value, value, name))
            else:
                data.append(LayerSpec(Role.DATA, value, value, name))
        elif name in ("upperdir", "workdir") and sep:
            if not value:
                raise OverlayOptionError(f"empty {name}")
            role = Role.UPPER if name == "upperdir" else Role.WORK
            spec = LayerSpec(role, unescape(value), value, name)
            if role is Role.UPPER:
                upper = spec
            else:
                work = spec
        else:
            features.append(_feature(name, value if sep else None))
    if legacy and (plus or data):
        raise OverlayOptionError("lowerdir mixed with lowerdir+/datadir+")
    lowers = tuple(legacy) or tuple(plus) + tuple(data)
    if not lowers:
        raise OverlayOptionError("no lower layer (lowerdir, lowerdir+ or datadir+)")
    if all(layer.role is Role.DATA for layer in lowers):
        raise OverlayOptionError("only data-only layers, no ordinary lower layer")
    if len(lowers) > MAX_LOWER_LAYERS:
        raise OverlayOptionError(
            f"{len(lowers)} lower layers, the kernel allows {MAX_LOWER_LAYERS}"
        )
    if (upper is None) != (work is None):
        raise OverlayOptionError("upperdir and workdir must be given together")
    return OverlayOptions(
        lowers=lowers,
        upper=upper,
        work=work,
        features=tuple(features),
        readonly=readonly,
        new_api=bool(plus or data),
    )
