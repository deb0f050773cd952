"""CRIU's image framing: magic words, then entries of (u32 size, proto2 payload) to end of file.

An image starts with ``IMG_COMMON`` and the magic of its kind; CRIU writes ``inventory.img``
with the INVENTORY magic alone, and both forms are read. Reading is streaming
(:func:`iter_image`) and validating: every problem raises :class:`~criu_fw.errors.ImageError`
naming the file, the entry number (0-based, as ``crit`` counts them) and what is wrong.

Images are untrusted. A file is opened without following a symbolic link and without
blocking, and refused unless it is a regular file (a FIFO or a device could block the reader
or never end). Each kind caps the size of its entries (:data:`MAX_ENTRY_SIZE` unless lower),
of the whole image and, for the mount images, the number of entries; a size word is checked
before anything is allocated for it. The mount images' entries are also bounded field by
field (:mod:`criu_fw.images.check`), so a crafted image costs what a real one of its size does.

Text fields and non-UTF-8 bytes: CRIU's ``string`` fields are proto2 strings, which Python's
protobuf refuses to fill with bytes that are not UTF-8. criu-fw therefore writes such text into
CRIU's fields backslash-escaped (``b"a\\xff"`` becomes ``"a\\\\xff"``, what ``crit`` can show),
and keeps the exact bytes in its own image (``fwstate.proto``'s ``bytes`` fields). When an image
written by CRIU itself carries raw non-UTF-8 bytes in a string field, Python's protobuf hands
them over as ``bytes``; :func:`text_of` turns either into the model's surrogateescape ``str``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar, cast, overload

import attrs
from google.protobuf.message import DecodeError, EncodeError, Message

from ..errors import ImageError
from ..proto import (
    core_pb2,
    fdinfo_pb2,
    fs_pb2,
    fwstate_pb2,
    inventory_pb2,
    mm_pb2,
    mnt_pb2,
    pstree_pb2,
    stats_pb2,
)
from .check import MAX_MOUNTS, fw_entry_problem

# An image as crit shows it, from its own module (re-exported: the names are public here).
from .todict import image_to_dict as image_to_dict
from .todict import image_to_json as image_to_json
from .todict import message_to_dict as message_to_dict

#: The largest entry a reader accepts by default. CRIU's largest entries (an mm_entry with
#: thousands of VMAs) stay far below this; a size word above it means a corrupt or hostile
#: image. Kinds whose entries are known to be small set lower caps (:data:`KINDS`).
MAX_ENTRY_SIZE = 64 << 20

#: The largest image file a reader accepts by default. Far above what criu-fw writes for any
#: kind; it bounds what a reader of a crafted image allocates in all.
MAX_IMAGE_BYTES = 1 << 30

#: One mount's CRIU entry: three paths (4 KiB each at most) and the superblock options joined,
#: which for the largest legitimate mount, an overlay of 500 layers with 4 KiB paths given as
#: ``lowerdir+=`` options, come to about 2 MiB.
MAX_MNT_ENTRY = 4 << 20

#: One mount's criu-fw entry: that overlay's option list (about 2 MiB) again, plus its driver
#: state, 502 layers (upper, work, 500 lowers) each carrying the path shown and the path
#: resolved, 4 KiB each: about 4.2 MiB. 6.2 MiB in all.
MAX_FW_ENTRY = 8 << 20

#: A mount image in all. A real 100,000-mount table takes about 80 bytes a mount in each of
#: the two images (8 MB); long container paths make it a few hundred (30 MB).
MAX_MOUNT_IMAGE = 64 << 20

#: The inventory: one entry of a few dozen bytes.
MAX_INVENTORY = 64 << 10

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
    "STATS": 0x57093306,
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
    #: Whether it starts with IMG_SERVICE instead (CRIU's stats images).
    service: bool = False
    #: Caps: bytes per entry, bytes of the whole file, number of entries.
    max_entry: int = MAX_ENTRY_SIZE
    max_bytes: int = MAX_IMAGE_BYTES
    max_entries: int | None = None
    #: Bounds per decoded entry (the entry, its size on disk): why it is out of them, or None.
    bound: Callable[[Message, int], str | None] | None = None

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
        ImageKind("INVENTORY", inventory_pb2.inventory_entry, "inventory.img", common=False,
                  max_entry=MAX_INVENTORY, max_bytes=MAX_INVENTORY),
        ImageKind("PSTREE", pstree_pb2.pstree_entry, "pstree.img"),
        ImageKind("IDS", core_pb2.task_kobj_ids_entry, "ids-{}.img"),
        ImageKind("FS", fs_pb2.fs_entry, "fs-{}.img"),
        ImageKind("FDINFO", fdinfo_pb2.fdinfo_entry, "fdinfo-{}.img"),
        ImageKind("FILES", fdinfo_pb2.file_entry, "files.img"),
        ImageKind("MM", mm_pb2.mm_entry, "mm-{}.img"),
        ImageKind("MNTS", mnt_pb2.mnt_entry, "mountpoints-{}.img", max_entry=MAX_MNT_ENTRY,
                  max_bytes=MAX_MOUNT_IMAGE, max_entries=MAX_MOUNTS),
        # One header entry before the mounts.
        ImageKind("FW_MNTS", fwstate_pb2.fw_entry, "fw-mountpoints-{}.img",
                  max_entry=MAX_FW_ENTRY, max_bytes=MAX_MOUNT_IMAGE,
                  max_entries=MAX_MOUNTS + 1, bound=fw_entry_problem),
        # What the dump kept the processes stopped for (CRIU's stats-dump), one entry.
        ImageKind("STATS", stats_pb2.stats_entry, "stats-dump", service=True, max_entries=1),
    )
}  # fmt: skip

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
    if sizes and max(sizes) > k.max_entry:
        n = next(i for i, size in enumerate(sizes) if size > k.max_entry)
        raise ImageError(path, f"entry of {sizes[n]} bytes exceeds {k.max_entry}", n)
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
    if kind.service:
        return _U32.pack(IMG_SERVICE) + magic
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
    if len(payload) > kind.max_entry:
        raise ImageError(path, f"entry of {len(payload)} bytes exceeds {kind.max_entry}", n)
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


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)  # fmt: skip


def _not_regular(mode: int) -> str:
    what = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    return f"is {what}, not an image file"


def open_image_fd(path: str) -> int:
    """A read descriptor of the image file ``path``, which must be a regular file.

    Images are untrusted: a symbolic link is not followed, and a FIFO, device or socket is
    refused rather than read (it could block the reader or never end); opening does not
    block (O_NONBLOCK), the type is checked on the open descriptor (fstat). Raises
    :class:`~criu_fw.errors.ImageError` naming the file and what it is.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(path, "no such image file") from None
    except OSError as exc:
        # ELOOP: the name is a symbolic link; ENXIO: a socket (nothing to open). Say which.
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if exc.errno in (errno.ELOOP, errno.ENXIO) and not stat.S_ISREG(mode):
            raise ImageError(path, _not_regular(mode)) from None
        raise ImageError(path, f"cannot open: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(path, _not_regular(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(path: str) -> BinaryIO:
    return os.fdopen(open_image_fd(path), "rb")


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
        limits = known if known is not None and known.message is message_type else None
        max_entry = MAX_ENTRY_SIZE if limits is None else limits.max_entry
        max_bytes = MAX_IMAGE_BYTES if limits is None else limits.max_bytes
        max_entries = None if limits is None else limits.max_entries
        bound = None if limits is None else limits.bound
        # Refused before reading when the file says so already; counted while reading too
        # (a file may grow while it is read).
        total = os.fstat(f.fileno()).st_size
        if total > max_bytes:
            raise ImageError(
                path, f"{total} bytes exceed the limit of {max_bytes} bytes for {name} images"
            )
        total = f.tell()
        n = 0
        while True:
            word = _read_exact(f, 4)
            if not word:
                return
            if len(word) < 4:
                raise ImageError(path, f"truncated size word ({len(word)} of 4 bytes)", n)
            if max_entries is not None and n >= max_entries:
                raise ImageError(
                    path, f"more than {max_entries} entries, the limit for {name} images", n
                )
            (size,) = _U32.unpack(word)
            if size > max_entry:
                raise ImageError(
                    path, f"entry size {size} exceeds the limit of {max_entry} bytes", n
                )
            total += 4 + size
            if total > max_bytes:
                raise ImageError(
                    path, f"more than the limit of {max_bytes} bytes for {name} images", n
                )
            payload = _read_exact(f, size)
            if len(payload) < size:
                raise ImageError(path, f"truncated payload ({len(payload)} of {size} bytes)", n)
            msg = _decode(path, n, message_type, payload)
            if bound is not None and (why := bound(msg, size)) is not None:
                raise ImageError(path, why, n)
            yield msg
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
