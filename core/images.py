"""CRIU's image framing: magic words, then entries of (u32 size, proto2 payload) to end of file.

An image starts with ``IMG_COMMON`` and the magic of its kind; CRIU writes ``inventory.img``
with the INVENTORY magic alone, and both forms are read. Reading is streaming
(:func:`iter_image`) and validating: every problem raises :class:`~criu_fw.errors.ImageError`
naming the file, the entry number (0-based, as ``crit`` counts them) and what is wrong. A size
word is checked against :data:`MAX_ENTRY_SIZE` before anything is allocated for it, and reads
stop at end of file, so a hostile image can neither exhaust memory nor make a reader hang.

Text fields and non-UTF-8 bytes: CRIU's ``string`` fields are proto2 strings, which Python's
protobuf refuses to fill with bytes that are not UTF-8. criu-fw therefore writes such text into
CRIU's fields backslash-escaped (``b"a\\xff"`` becomes ``"a\\\\xff"``, what ``crit`` can show),
and keeps the exact bytes in its own image (``fwstate.proto``'s ``bytes`` fields). When an image
written by CRIU itself carries raw non-UTF-8 bytes in a string field, Python's protobuf hands
them over as ``bytes``; :func:`text_of` turns either into the model's surrogateescape ``str``.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast, overload

import attrs
from google.protobuf.message import DecodeError, EncodeError, Message

from .errors import ImageError
from .proto import (
    core_pb2,
    fdinfo_pb2,
    fs_pb2,
    fwstate_pb2,
    inventory_pb2,
    mm_pb2,
    mnt_pb2,
    pstree_pb2,
)

if TYPE_CHECKING:
    from .plugins import DriverManager

#: The largest entry a reader accepts. CRIU's largest entries (an mm_entry with thousands of
#: VMAs) stay far below this; a size word above it means a corrupt or hostile image.
MAX_ENTRY_SIZE = 64 << 20

IMG_COMMON = 0x54564319
IMG_SERVICE = 0x55105940

#: Magic words by name: CRIU's (from criu-image-messages.md) and criu-fw's own.
MAGIC: Mapping[str, int] = {
    "INVENTORY": 0x58313116,
    "PSTREE": 0x50273030,
    "IDS": 0x54432030,
    "FDINFO": 0x56213732,
    "FILES": 0x56303138,
    "REG_FILES": 0x50363636,
    "FS": 0x51403912,
    "MM": 0x57492820,
    "VMAS": 0x54123737,
    "MNTS": 0x55563928,
    "CORE": 0x55053847,
    "REMAP_FPATH": 0x59133954,
    "GHOST_FILE": 0x52583605,
    "NS_FILES": 0x61394011,
    # criu-fw's per-mount-namespace extras (fwstate.proto). Chosen outside CRIU's table;
    # crit rejects it as an unknown magic, which is the honest answer.
    "FW_MNTS": 0x46574D31,
}
_MAGIC_NAMES: Mapping[int, str] = {v: k for k, v in MAGIC.items()}

_U32 = struct.Struct("<I")

M = TypeVar("M", bound=Message)


@attrs.frozen
class ImageKind:
    """One kind of image: its magic name, the message of its entries, its file name."""

    name: str
    message: type[Message]
    #: File name pattern, ``{}`` standing for the id (``mountpoints-{}.img``).
    pattern: str
    #: Whether the file starts with IMG_COMMON before the kind's magic (all but inventory).
    common: bool = True

    @property
    def magic(self) -> int:
        return MAGIC[self.name]

    def filename(self, ident: int | str | None = None) -> str:
        if "{}" in self.pattern:
            if ident is None:
                raise ValueError(f"{self.pattern} needs an id")
            return self.pattern.format(ident)
        return self.pattern


#: Every image criu-fw writes or reads, by magic name.
KINDS: Mapping[str, ImageKind] = {
    k.name: k
    for k in (
        ImageKind("INVENTORY", inventory_pb2.inventory_entry, "inventory.img", common=False),
        ImageKind("PSTREE", pstree_pb2.pstree_entry, "pstree.img"),
        ImageKind("IDS", core_pb2.task_kobj_ids_entry, "ids-{}.img"),
        ImageKind("FS", fs_pb2.fs_entry, "fs-{}.img"),
        ImageKind("FDINFO", fdinfo_pb2.fdinfo_entry, "fdinfo-{}.img"),
        ImageKind("FILES", fdinfo_pb2.file_entry, "files.img"),
        ImageKind("MM", mm_pb2.mm_entry, "mm-{}.img"),
        ImageKind("MNTS", mnt_pb2.mnt_entry, "mountpoints-{}.img"),
        ImageKind("FW_MNTS", fwstate_pb2.fw_entry, "fw-mountpoints-{}.img"),
    )
}

_NAME_RES: tuple[tuple[re.Pattern[str], ImageKind], ...] = tuple(
    (re.compile("^" + re.escape(k.pattern).replace(r"\{\}", r"(\d+)") + "$"), k)
    for k in KINDS.values()
)


def kind_of_filename(path: str) -> ImageKind | None:
    """The kind an image file name stands for (``mountpoints-12.img`` -> MNTS), or None."""
    base = os.path.basename(path)
    for rx, kind in _NAME_RES:
        if rx.match(base):
            return kind
    return None


def _kind(kind: str | ImageKind) -> ImageKind:
    if isinstance(kind, ImageKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown image kind {kind!r}; known: {sorted(KINDS)}") from None


def text_of(value: str | bytes) -> str:
    """A string field's value as the model's str (raw bytes from CRIU's images included)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def criu_text(text: str) -> str:
    """``text`` as it may go into a CRIU string field: itself if it is UTF-8, else escaped."""
    raw = os.fsencode(text)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def is_exact_utf8(text: str) -> bool:
    """Whether :func:`criu_text` keeps ``text`` unchanged (no bytes outside UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# writing


def write_image(path: str, kind: str | ImageKind, entries: Iterable[Message]) -> int:
    """Write ``entries`` to ``path`` as an image of ``kind``; returns the number written.

    The file is written in place; publishing atomically (temp file + rename) is the caller's.
    Every entry must be of the kind's message type and have its required fields set.
    """
    k = _kind(kind)
    n = 0
    with open(path, "wb") as f:
        f.write(_head(k))
        for entry in entries:
            f.write(_frame(path, k, n, entry))
            n += 1
    return n


def write_serialized(
    path: str, kind: str | ImageKind, payloads: Iterable[bytes], *, file: BinaryIO | None = None
) -> int:
    """Like :func:`write_image`, for entries already serialized; returns the number written.

    For writers that serialize many entries cheaply (``imageset`` reuses checked message
    templates): each payload must be a complete entry of the kind's message, as
    ``SerializeToString`` gives it; only its size is checked here. One write for the file.
    ``file``: the empty file ``path`` opened earlier by the caller (who closes it); a disk
    filesystem can make creating a file wait for its journal, which the caller can do at a
    quieter moment.
    """
    k = _kind(kind)
    items = payloads if isinstance(payloads, list) else list(payloads)
    sizes = list(map(len, items))
    if sizes and max(sizes) > MAX_ENTRY_SIZE:
        n = next(i for i, size in enumerate(sizes) if size > MAX_ENTRY_SIZE)
        raise ImageError(path, f"entry of {sizes[n]} bytes exceeds {MAX_ENTRY_SIZE}", n)
    # Head, then size word and payload per entry: interleaved by slices (no per-entry loop).
    n = len(items)
    out = [_head(k)] * (2 * n + 1)
    out[1::2] = map(_U32.pack, sizes)
    out[2::2] = items
    if file is not None:
        file.write(b"".join(out))
        return n
    with open(path, "wb") as f:
        f.write(b"".join(out))
    return n


def _head(kind: ImageKind) -> bytes:
    magic = _U32.pack(kind.magic)
    return _U32.pack(IMG_COMMON) + magic if kind.common else magic


def _missing_fields(msg: Message) -> list[str]:
    # Not in the typing stubs, but part of protobuf's public Message API.
    found: list[str] = cast(Any, msg).FindInitializationErrors()
    return found


def _frame(path: str, kind: ImageKind, n: int, entry: Message) -> bytes:
    if type(entry) is not kind.message and not isinstance(entry, kind.message):
        raise ImageError(
            path,
            f"{type(entry).DESCRIPTOR.full_name} given, {kind.name} images hold "
            f"{kind.message.DESCRIPTOR.full_name}",
            n,
        )
    try:
        # Checks the required fields itself (EncodeError): no separate pass over the entry.
        payload = entry.SerializeToString()
    except EncodeError:
        missing = _missing_fields(entry)
        if not missing:
            raise
        raise ImageError(path, f"required field(s) not set: {', '.join(missing)}", n) from None
    if len(payload) > MAX_ENTRY_SIZE:
        raise ImageError(path, f"entry of {len(payload)} bytes exceeds {MAX_ENTRY_SIZE}", n)
    return _U32.pack(len(payload)) + payload


# --------------------------------------------------------------------------------------------
# reading


def _read_exact(f: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of file (regular files never return short)."""
    chunks: list[bytes] = []
    left = size
    if size <= 1 << 20:
        first = f.read(size)
        if len(first) == size or not first:
            return first
        chunks.append(first)
        left -= len(first)
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageError(path, "no such image file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot open: {exc.strerror}") from None


def _read_magic(path: str, f: BinaryIO) -> str:
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise ImageError(path, f"too short for a magic word ({len(head)} bytes)")
    (word,) = _U32.unpack(head)
    if word in (IMG_COMMON, IMG_SERVICE):
        second = _read_exact(f, 4)
        if len(second) < 4:
            raise ImageError(path, "truncated after IMG_COMMON: no image magic")
        (word,) = _U32.unpack(second)
        name = _MAGIC_NAMES.get(word)
        if name is None:
            raise ImageError(path, f"unknown image magic 0x{word:08x}")
        return name
    name = _MAGIC_NAMES.get(word)
    if name == "INVENTORY":  # CRIU writes inventory.img without IMG_COMMON
        return name
    if name is not None:
        raise ImageError(path, f"magic {name} without the IMG_COMMON word before it")
    raise ImageError(path, f"unknown magic 0x{word:08x}: not a CRIU image")


def read_magic(path: str) -> str:
    """The magic name of an image file (``"MNTS"``), validated."""
    with _open(path) as f:
        return _read_magic(path, f)


@overload
def iter_image(path: str, message_type: type[M], kind: str | None = None) -> Iterator[M]: ...
@overload
def iter_image(
    path: str, message_type: None = None, kind: str | None = None
) -> Iterator[Message]: ...
def iter_image(
    path: str, message_type: type[Message] | None = None, kind: str | None = None
) -> Iterator[Message]:
    """Yield the entries of an image one by one, validating as it goes.

    ``kind`` (a magic name) makes any other magic an error; ``message_type`` decodes with that
    message (else the one registered for the file's magic) and must agree with a known magic.
    The file is opened and its magic checked on the first ``next()``.
    """
    with _open(path) as f:
        name = _read_magic(path, f)
        if kind is not None and name != kind:
            raise ImageError(path, f"magic {name} where a {kind} image was expected")
        known = KINDS.get(name)
        if message_type is None:
            if known is None:
                raise ImageError(path, f"criu-fw has no message type for {name} images")
            message_type = known.message
        elif known is not None and known.message is not message_type:
            raise ImageError(
                path,
                f"{name} images hold {known.message.DESCRIPTOR.full_name}, "
                f"not {message_type.DESCRIPTOR.full_name}",
            )
        n = 0
        while True:
            word = _read_exact(f, 4)
            if not word:
                return
            if len(word) < 4:
                raise ImageError(path, f"truncated size word ({len(word)} of 4 bytes)", n)
            (size,) = _U32.unpack(word)
            if size > MAX_ENTRY_SIZE:
                raise ImageError(
                    path, f"entry size {size} exceeds the limit of {MAX_ENTRY_SIZE} bytes", n
                )
            payload = _read_exact(f, size)
            if len(payload) < size:
                raise ImageError(path, f"truncated payload ({len(payload)} of {size} bytes)", n)
            yield _decode(path, n, message_type, payload)
            n += 1


def _decode(path: str, n: int, message_type: type[Message], payload: bytes) -> Message:
    msg = message_type()
    try:
        msg.MergeFromString(payload)
    except DecodeError:
        raise ImageError(
            path, f"garbled {message_type.DESCRIPTOR.full_name} ({len(payload)} bytes)", n
        ) from None
    missing = [] if msg.IsInitialized() else _missing_fields(msg)
    if missing:
        raise ImageError(
            path,
            f"{message_type.DESCRIPTOR.full_name} lacks required field(s) {', '.join(missing)}",
            n,
        )
    return msg


@overload
def read_image(path: str, message_type: type[M], kind: str | None = None) -> list[M]: ...
@overload
def read_image(path: str, message_type: None = None, kind: str | None = None) -> list[Message]: ...
def read_image(
    path: str, message_type: type[Message] | None = None, kind: str | None = None
) -> list[Any]:
    """Every entry of an image (see :func:`iter_image`)."""
    return list(iter_image(path, message_type, kind))


# --------------------------------------------------------------------------------------------
# JSON like `crit show`

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


def message_to_dict(
    msg: Message, pretty: bool = True, hexed: bool = False, mgr: DriverManager | None = None
) -> dict[str, Any]:
    """One entry as ``crit show`` (``pretty``) or ``crit decode`` prints it.

    Set fields only, in field-number order. Differences from crit: ``bytes`` fields of
    criu-fw's own messages are shown as text (backslash-escaped where not UTF-8) instead of
    base64; an ``Any`` shows its type and, where the message type is importable, its fields;
    string fields holding raw non-UTF-8 bytes (crit fails on them) are shown escaped; unknown
    fields (sub-messages criu-fw does not model) are not shown.
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
                return _bytes_text(v) if isinstance(v, bytes) else v
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
    out.update(message_to_dict(inner, pretty, mgr=mgr))
    return out


def image_to_dict(
    path: str, pretty: bool = True, mgr: DriverManager | None = None
) -> dict[str, Any]:
    """An image as ``crit show`` (``pretty``) or ``crit decode`` would give it.

    ``mgr`` resolves the driver states in criu-fw's own image to their drivers' messages
    (without it, only messages already imported are shown field by field).
    """
    name = read_magic(path)
    entries = [message_to_dict(e, pretty, mgr=mgr) for e in iter_image(path)]
    return {"magic": name, "entries": entries}


def image_to_json(path: str, pretty: bool = True, mgr: DriverManager | None = None) -> str:
    """:func:`image_to_dict` as JSON text, indented like ``crit show``."""
    import json

    return json.dumps(image_to_dict(path, pretty, mgr), indent=4)
