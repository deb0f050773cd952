"""Small drivers and states shared by test modules (test modules import from here or from
conftest, never from each other)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Self

import attrs
from criu_fw import hookimpl
from criu_fw.driver import DriverState, FsDriver
from criu_fw.hooks import current_driver
from criu_fw.mountinfo import parse_line
from criu_fw.plugins import DriverConfig, DriverManager
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message


@attrs.frozen
class LabelState(DriverState):
    """A third-party-style state travelling in a message criu-fw's protos do not know."""

    MESSAGE: ClassVar[type[Message]] = wrappers_pb2.StringValue

    label: str

    def to_message(self) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=self.label)

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(message.value)


class Ram(FsDriver):
    """A ramfs driver whose parse_mount takes a subset of the hook's arguments."""

    name = "ram"
    fstypes = ("ramfs",)
    state_types = (LabelState,)

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.seen: list[str | None] = []

    @hookimpl
    def parse_mount(self, mount: Any, ctx: object) -> LabelState | None:
        self.seen.append(current_driver())
        if self.fail is not None:
            raise self.fail
        return LabelState(mount.source) if ctx is not None else None


class Wrap:
    """A cross-cutting wrapper plugin (owns no fstype) counting parse_mount calls."""

    name = "wrap"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        self.calls += 1
        return (yield)


MOUNT = parse_line(b"5 1 0:9 / /r rw - ramfs myram rw")


def ram_manager(*plugins: object) -> DriverManager:
    """A manager with only the given plugins (the built-in and installed drivers blocked)."""
    blocked = frozenset({"generic", "overlay", "aufs"})
    return DriverManager(DriverConfig(blocked=blocked, external=False)).load(plugins)
