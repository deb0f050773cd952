"""What the driver saves per mount (:class:`LoopState`), and the checks on reading it back.

A state read from an image is untrusted: ``from_message`` refuses a path that is not
absolute and normalised, offsets the kernel would not take and options the driver would not
pass (:mod:`.options`), with a ``ValueError`` saying which.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any, ClassVar, Self

import attrs
from criu_fw.driver import DriverState
from google.protobuf.message import Message

from . import loop_pb2, options

#: Longest path the kernel resolves (PATH_MAX, with its NUL).
PATH_MAX = 4095
MAX_OPTIONS = 32
_DEVICE = re.compile(r"(loop[0-9]{1,10})?")
_OFFSET_MAX = (1 << 63) - 1


@attrs.frozen
class FileIdentity:
    """The backing file when it was dumped."""

    dev: int  # st_dev
    ino: int
    size: int
    mtime_ns: int


@attrs.frozen
class LoopState(DriverState):
    """One squashfs or erofs mount on a loop device."""

    MESSAGE: ClassVar[type[Message]] = loop_pb2.loop_state

    backing_file: str
    offset: int
    sizelimit: int
    read_only: bool
    #: None when the dump read a recorded /sys (the file was not there to look at).
    identity: FileIdentity | None
    options: tuple[str, ...]
    device: str = ""

    def source_identity(self) -> str:
        # What the source stands for; the device name changes with every restore.
        parts = [f"offset {self.offset}", f"sizelimit {self.sizelimit}"]
        if self.read_only:
            parts.append("read-only")
        return f"loop device on {self.backing_file} ({', '.join(parts)})"

    def to_message(self) -> loop_pb2.loop_state:
        msg = loop_pb2.loop_state(
            backing_file=os.fsencode(self.backing_file), offset=self.offset,
            sizelimit=self.sizelimit, read_only=self.read_only, options=self.options,
            device=self.device,
        )
        if self.identity is not None:
            ident = self.identity
            msg.dev_major, msg.dev_minor = os.major(ident.dev), os.minor(ident.dev)
            msg.ino, msg.size, msg.mtime_ns = ident.ino, ident.size, ident.mtime_ns
        return msg

    @classmethod
    def from_message(cls, message: Any) -> Self:
        raw = bytes(message.backing_file)
        path = os.fsdecode(raw)
        if (not path.startswith("/") or len(raw) > PATH_MAX or b"\0" in raw
                or posixpath.normpath(path) != path or path.startswith("//")):
            raise ValueError(f"backing file {path!r} is not an absolute, normalised path")
        for name in ("offset", "sizelimit"):
            if getattr(message, name) > _OFFSET_MAX:
                raise ValueError(f"{name} {getattr(message, name)} is beyond any file")
        opts = tuple(message.options)
        if len(opts) > MAX_OPTIONS:
            raise ValueError(f"{len(opts)} options, at most {MAX_OPTIONS} are passed")
        for opt in opts:
            if all(options.problem(fstype, opt) for fstype in options.ALLOWED):
                raise ValueError(f"option {opt!r} is not one squashfs or erofs is given again")
        if not _DEVICE.fullmatch(message.device):
            raise ValueError(f"device {message.device!r} is not a loop device's name")
        return cls(
            backing_file=path, offset=message.offset, sizelimit=message.sizelimit,
            read_only=message.read_only, identity=_identity(message), options=opts,
            device=message.device,
        )


def _identity(message: Any) -> FileIdentity | None:
    fields = ("dev_major", "dev_minor", "ino", "size", "mtime_ns")
    present = [message.HasField(f) for f in fields]
    if not any(present):
        return None
    if not all(present):
        raise ValueError("the backing file's identity is incomplete")
    if message.size > _OFFSET_MAX:
        raise ValueError(f"size {message.size} is beyond any file")
    return FileIdentity(
        os.makedev(message.dev_major, message.dev_minor), message.ino, message.size,
        message.mtime_ns,
    )
