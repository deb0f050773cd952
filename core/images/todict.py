"""An image as ``crit show`` (or ``crit decode``) prints it: :func:`image_to_dict`,
:func:`image_to_json`, and :func:`message_to_dict` for one entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from google.protobuf.message import DecodeError, Message

from ..errors import ImageError
from .check import state_problem

if TYPE_CHECKING:
    from ..api.loader import DriverManager

_KDEV_MINORBITS = 20

# Fields crit prints specially (CRIU marks them in its .proto with its own options): hex
# numbers, kernel dev_t as "major:minor", and flag words spelled as names.
_HEX = {
    "criu_fw.criu.mnt_entry": {"flags", "sb_flags"},
    "criu_fw.criu.mm_entry": {
        "mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack",
        "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end",
    },
    "criu_fw.criu.vma_entry": {"start", "end", "madv", "fdflags"},
}  # fmt: skip
_DEV = {"criu_fw.criu.mnt_entry": {"root_dev"}}

_RFILE_FLAGS = (
    ("O_WRONLY", 0o1), ("O_RDWR", 0o2), ("O_CREAT", 0o100), ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400), ("O_TRUNC", 0o1000), ("O_APPEND", 0o2000), ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000), ("FASYNC", 0o20000), ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000), ("O_DIRECTORY", 0o200000), ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000), ("O_CLOEXEC", 0o2000000),
)  # fmt: skip
_MMAP_PROT = (("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4))
_MMAP_FLAGS = (("MAP_SHARED", 0x1), ("MAP_PRIVATE", 0x2), ("MAP_ANON", 0x20),
               ("MAP_GROWSDOWN", 0x100))  # fmt: skip
_VMA_STATUS = (
    ("VMA_AREA_NONE", 0), ("VMA_AREA_REGULAR", 1 << 0), ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2), ("VMA_AREA_VDSO", 1 << 3), ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6), ("VMA_FILE_SHARED", 1 << 7), ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9), ("VMA_AREA_SYSVIPC", 1 << 10), ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12), ("VMA_AREA_AIORING", 1 << 13), ("VMA_UNSUPP", 1 << 31),
)  # fmt: skip
_FLAGS: Mapping[str, Mapping[str, tuple[tuple[str, int], ...]]] = {
    "criu_fw.criu.reg_file_entry": {"flags": _RFILE_FLAGS},
    "criu_fw.criu.vma_entry": {"prot": _MMAP_PROT, "flags": _MMAP_FLAGS, "status": _VMA_STATUS},
}


def _flag_names(value: int, table: tuple[tuple[str, int], ...]) -> str:
    names = [name for name, bit in table if value & bit]
    rest = value & ~sum(bit for _, bit in table)
    if rest:
        names.append(f"0x{rest:x}")
    return " | ".join(names)


def _bytes_text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


class _OutOfBounds(Exception):
    """A nested message that is too large to show (the reason, without image or entry)."""


def message_to_dict(
    msg: Message, pretty: bool = True, hexed: bool = False, mgr: DriverManager | None = None
) -> dict[str, Any]:
    """One entry as ``crit show`` (``pretty``) or ``crit decode`` prints it.

    Set fields only, in field-number order. Differences from crit: ``bytes`` fields of
    criu-fw's own messages are shown as text (backslash-escaped where not UTF-8) instead of
    base64; an ``Any`` shows its type and, where the message type is importable, its fields;
    unknown fields (sub-messages criu-fw does not model) are not shown. A CRIU string field
    holding raw bytes that are not UTF-8 is shown as crit shows it, the bytes' repr.
    """
    desc = msg.DESCRIPTOR
    full = desc.full_name
    if full == "google.protobuf.Any":
        return _any_to_dict(msg, pretty, mgr)
    hex_fields = _HEX.get(full, set())
    dev_fields = _DEV.get(full, set())
    flag_fields = _FLAGS.get(full, {})
    ours = not full.startswith("criu_fw.criu.")
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        is_hex = hexed or field.name in hex_fields

        def conv(v: Any, field: Any = field, is_hex: bool = is_hex) -> Any:
            if field.type == field.TYPE_MESSAGE:
                return message_to_dict(v, pretty, is_hex, mgr)
            if field.type == field.TYPE_ENUM:
                ev = field.enum_type.values_by_number.get(v)
                return ev.name if ev is not None else v
            if field.type == field.TYPE_BYTES:
                if ours:
                    return _bytes_text(v)
                import base64

                return base64.encodebytes(v).decode()
            if field.type == field.TYPE_STRING:
                if not isinstance(v, bytes):
                    return v
                # Raw bytes in a CRIU string field (a path that is not UTF-8, as CRIU
                # writes it): shown as crit shows them, the bytes' repr.
                return _bytes_text(v) if ours else repr(v)
            if field.type == field.TYPE_BOOL:
                return bool(v)
            if pretty and isinstance(v, int):
                if is_hex:
                    return f"0x{v:x}"
                if field.name in dev_fields:
                    return f"{v >> _KDEV_MINORBITS}:{v & ((1 << _KDEV_MINORBITS) - 1)}"
                table = flag_fields.get(field.name)
                if table is not None:
                    return _flag_names(v, table)
            return v

        if field.is_repeated:
            out[field.name] = [conv(v) for v in value]
        else:
            out[field.name] = conv(value)
    return out


def _any_to_dict(msg: Message, pretty: bool, mgr: DriverManager | None) -> dict[str, Any]:
    from google.protobuf import any_pb2, descriptor_pool, message_factory

    anymsg = cast(any_pb2.Any, msg)
    name = anymsg.TypeName()
    out: dict[str, Any] = {"@type": name}
    state_type = mgr.state_type(name) if mgr is not None else None
    cls: type[Message] | None = state_type.MESSAGE if state_type is not None else None
    if cls is None:
        try:  # a driver module imported earlier has put its messages in the default pool
            desc = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            out["value"] = _bytes_text(anymsg.value)
            return out
        cls = message_factory.GetMessageClass(desc)
    inner = cls()
    try:
        anymsg.Unpack(inner)
    except DecodeError:
        out["value"] = _bytes_text(anymsg.value)
        return out
    why = state_problem(inner)
    if why is not None:
        raise _OutOfBounds(why)  # image_to_dict names the image and the entry
    out.update(message_to_dict(inner, pretty, mgr=mgr))
    return out


def image_to_dict(
    path: str, pretty: bool = True, mgr: DriverManager | None = None
) -> dict[str, Any]:
    """An image as ``crit show`` (``pretty``) or ``crit decode`` would give it.

    ``mgr`` resolves the driver states in criu-fw's own image to their drivers' messages
    (without it, only messages already imported are shown field by field).
    """
    from . import iter_image, read_magic  # the package imports this module

    name = read_magic(path)
    entries = []
    for n, e in enumerate(iter_image(path)):
        try:
            entries.append(message_to_dict(e, pretty, mgr=mgr))
        except _OutOfBounds as exc:
            raise ImageError(path, str(exc), n) from None
    return {"magic": name, "entries": entries}


def image_to_json(path: str, pretty: bool = True, mgr: DriverManager | None = None) -> str:
    """:func:`image_to_dict` as JSON text, indented like ``crit show``."""
    import json

    return json.dumps(image_to_dict(path, pretty, mgr), indent=4)
