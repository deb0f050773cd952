"""What the AUFS driver saves per mount: the superblock id and its branch list."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar, Self

import attrs
from criu_fw.driver import DriverState
from criu_fw.proto import aufs_pb2
from google.protobuf.message import Message

from .branches import Branch


def _branches(value: Iterable[Branch]) -> tuple[Branch, ...]:
    return tuple(value)


@attrs.frozen
class AufsState(DriverState):
    """``parse_mount``'s result for an AUFS mount; ``rebuild_mount`` builds ``br:`` from it."""

    MESSAGE: ClassVar[type[Message]] = aufs_pb2.aufs_state

    si: str
    branches: tuple[Branch, ...] = attrs.field(converter=_branches)

    def to_message(self) -> aufs_pb2.aufs_state:
        return aufs_pb2.aufs_state(
            si=self.si,
            branches=[
                aufs_pb2.aufs_branch(path=os.fsencode(b.path), perm=b.perm) for b in self.branches
            ],
        )

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(
            si=message.si,
            branches=tuple(Branch(os.fsdecode(b.path), b.perm) for b in message.branches),
        )
