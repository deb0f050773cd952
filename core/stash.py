"""Typed per-driver scratch space on a dump or restore context (after pytest's Stash).

A driver that needs to remember something across hook calls (AUFS: the branch list of each
superblock, parsed once) creates a module-level ``StashKey[T]`` and keeps its value on
``ctx.stash``; the type checker then knows the value's type, and drivers cannot collide.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key for :class:`Stash`; identity, not name, distinguishes keys."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    # No typing.cast() in these two: it is a call at run time, and drivers ask per mount.
    def __getitem__(self, key: StashKey[T]) -> T:
        return self._data[key]  # type: ignore[return-value]

    def get(self, key: StashKey[T], default: D) -> T | D:
        return self._data.get(key, default)  # type: ignore[return-value]

    def setdefault(self, key: StashKey[T], default: T) -> T:
        if key not in self._data:
            self._data[key] = default
        return self[key]

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._data
