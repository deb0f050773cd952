"""What ``criu-fw show FILE`` says of the files of an image directory that are not plain
CRIU images: content archives (a gzip'd tar, ``tmpfs-dev-<dev>.tar.gz.img``), the raw bytes
of a bind's deleted root file (``fw-deleted-<ns>-<mnt>.img``) and CRIU's ghost files (an
entry, then the deleted file's bytes).

Files are untrusted like every image: opened without following a symbolic link, refused
unless regular (:func:`~criu_fw.images.open_image_fd`), and every problem is one
:class:`~criu_fw.errors.ImageError` naming the file. An archive is read as a stream, member
headers only, never extracted; members are yielded as they come, so a listing of a million
members holds one at a time.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import time
import zlib
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from ..errors import ImageError
from ..proto import remap_pb2
from . import image_to_dict, iter_image, message_to_dict, open_image_fd, read_magic
from .mounts import _DELETED_NAME

if TYPE_CHECKING:
    from ..api.loader import DriverManager

GZIP_MAGIC = b"\x1f\x8b"

#: CRIU images criu-fw writes whose kinds the generic reader does not hold (the ghost files'
#: layout is not entries to the end: the file's bytes follow the one entry).
_EXTRA_MESSAGES = {"REMAP_FPATH": remap_pb2.remap_file_path_entry}

FileKind = Literal["archive", "deleted", "image"]


def file_kind(path: str) -> FileKind:
    """What the file at ``path`` is: a content ``archive`` (gzip magic), a ``deleted`` root's
    bytes (by its name, whose bytes can be anything) or an ``image`` (anything else, read as
    a CRIU image). A file that cannot be opened raises ImageError naming it."""
    if _DELETED_NAME.fullmatch(os.path.basename(path)):
        os.close(open_image_fd(path))  # the same checks, and errors, as any image
        return "deleted"
    fd = open_image_fd(path)
    try:
        head = os.pread(fd, 2, 0)
    finally:
        os.close(fd)
    return "archive" if head == GZIP_MAGIC else "image"


@attrs.frozen
class Member:
    """One archive member as ``tar -tv`` shows it."""

    name: str
    #: ``-`` file, ``d`` directory, ``l`` symbolic link, ``h`` hard link, ``c``/``b``
    #: device, ``p`` FIFO, ``?`` anything else.
    type: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    #: The target of a symbolic or hard link.
    link: str | None = None
    #: A device node's numbers.
    device: tuple[int, int] | None = None

    def line(self) -> str:
        """The member as ``tar -tv`` prints it (names escaped: one member, one line)."""
        from ..treeview import shown

        perms = stat.filemode(self.mode)[1:]
        owner = f"{self.uname or self.uid}/{self.gname or self.gid}"
        size = f"{self.device[0]},{self.device[1]}" if self.device else str(self.size)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.mtime))
        name = self.name + "/" if self.type == "d" and not self.name.endswith("/") else self.name
        text = f"{self.type}{perms} {owner} {size:>9} {when} {shown(name)}"
        if self.link is not None:
            text += (" -> " if self.type == "l" else " link to ") + shown(self.link)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": _text(self.name), "type": self.type, "mode": f"{self.mode & 0o7777:04o}",
            "uid": self.uid, "gid": self.gid, "uname": self.uname, "gname": self.gname,
            "size": self.size, "mtime": self.mtime,
            "link": None if self.link is None else _text(self.link),
            "device": None if self.device is None else list(self.device),
        }  # fmt: skip


def _text(name: str) -> str:
    """A name for JSON: bytes that are not UTF-8 backslash-escaped, as in images' JSON."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_TYPES = {
    tarfile.REGTYPE: "-", tarfile.AREGTYPE: "-", tarfile.CONTTYPE: "-",
    tarfile.GNUTYPE_SPARSE: "-", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
    tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p",
}  # fmt: skip


def _member(m: tarfile.TarInfo) -> Member:
    kind = _TYPES.get(m.type, "?")
    link = m.linkname if kind in ("l", "h") else None
    device = (m.devmajor, m.devminor) if kind in ("c", "b") else None
    return Member(m.name, kind, m.mode, m.uid, m.gid, m.uname, m.gname, m.size, int(m.mtime),
                  link, device)  # fmt: skip


def archive_members(path: str) -> Iterator[Member]:
    """The members of the content archive ``path`` in archive order, read as a stream.

    Raises ImageError naming the file where it is not a gzip'd tar or is cut short."""
    with os.fdopen(open_image_fd(path), "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|gz") as tar:
                for m in tar:
                    yield _member(m)
                    # A stream's members are not kept: one at a time, however many.
                    tar.members = []  # type: ignore[attr-defined]
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ImageError(path, f"not a readable gzip'd tar archive: {reason}") from None


def archive_header(path: str) -> str:
    """The line before the members: what the file is and its size."""
    fd = open_image_fd(path)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return f"{path}: content archive (gzip'd tar), {size} bytes; members as tar -tv lists them:"


def archive_to_dict(path: str) -> dict[str, Any]:
    """The archive for programs: ``{"kind": "content-archive", "format": "tar+gzip",
    "bytes": N, "members": [...]}`` (docs/cli.md)."""
    members = [m.to_dict() for m in archive_members(path)]
    return {"kind": "content-archive", "format": "tar+gzip",
            "bytes": os.stat(path).st_size, "members": members}  # fmt: skip


def deleted_to_dict(path: str) -> dict[str, Any]:
    """A deleted root's bytes: which mount they are for and how many there are."""
    m = _DELETED_NAME.fullmatch(os.path.basename(path))
    if m is None:
        raise ImageError(path, "not a fw-deleted-<ns>-<mount>.img name")
    fd = open_image_fd(path)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    ns_id, mnt_id = (int(x) for x in os.path.basename(path)[len("fw-deleted-"):-4].split("-"))
    return {"kind": "deleted-root", "ns_id": ns_id, "mnt_id": mnt_id, "bytes": size}


def deleted_line(path: str) -> str:
    d = deleted_to_dict(path)
    return (f"{path}: the bytes of the file that mount {d['mnt_id']} of mount namespace "
            f"{d['ns_id']} had as its root when it was deleted (the restore makes the file "
            f"again, binds it and unlinks it): {d['bytes']} bytes")  # fmt: skip


_U32 = struct.Struct("<I")


def image_dict(path: str, pretty: bool = True, mgr: DriverManager | None = None) -> dict[str, Any]:
    """:func:`~criu_fw.images.image_to_dict`, also for the deleted-file images criu-fw writes
    as CRIU does: ``remap-fpath.img`` and ``ghost-file-<id>.img`` (whose one entry is
    followed by the file's bytes: shown as their count, ``content_bytes``)."""
    name = read_magic(path)
    if name == "GHOST_FILE":
        entries = iter_image(path, remap_pb2.ghost_file_entry)
        try:
            entry = next(entries, None)  # only the first: the file's bytes follow it
        finally:
            cast(Generator[Any, None, None], entries).close()
        if entry is None:
            raise ImageError(path, "empty ghost file image: no entry")
        fd = open_image_fd(path)
        try:
            head = os.pread(fd, 12, 0)
            total = os.fstat(fd).st_size
        finally:
            os.close(fd)
        (size,) = _U32.unpack(head[8:12])
        return {"magic": name, "entries": [message_to_dict(entry, pretty)],
                "content_bytes": total - 12 - size}  # fmt: skip
    message = _EXTRA_MESSAGES.get(name)
    if message is None:
        return image_to_dict(path, pretty, mgr)
    return {"magic": name,
            "entries": [message_to_dict(e, pretty) for e in iter_image(path, message)]}
