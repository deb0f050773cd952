"""What a filesystem driver is (published through :mod:`criu_fw.driver`, the public API).

A driver is any object (usually an instance of
:class:`FsDriver`) that carries

* ``fstypes``: the filesystem types it owns (``"overlay"``; ``"fuse.*"`` for every subtype),
* optionally ``fallback = True``: it handles fstypes nobody claims (only ``generic`` does),
* optionally ``state_types``: the :class:`DriverState` classes its ``parse_mount`` returns,
* optionally ``content_fstypes``: the fstypes whose content its ``dump_content`` saves
  (``None``: every fstype it owns),
* optionally ``parallel_content = True``: its ``dump_content`` may be called in worker
  processes forked from the dumper, one per CPU (it changes nothing in the context that a
  later hook needs, except through ``ctx.in_background`` and its result),
* optionally ``parallel_restore_content = True``: its ``restore_content`` may be called in
  worker processes forked from the restoring process while it makes the mounts (what it
  changes in the context stays there; a ``ContentJob`` it returns is waited for there),
* optionally ``name`` and ``description`` (``criu-fw drivers`` shows them; the entry point's
  name is the one that counts),
* optionally ``api_version = (MAJOR, MINOR)``: the driver API it was written for (see
  :data:`API_VERSION`; a driver needing another major version or a newer minor one is not
  loaded, with a message saying which it needs),
* ``@hookimpl`` methods for the hooks in :mod:`criu_fw.api.hookspecs`.

It is published under the entry-point group ``criu_fw.fsdrivers``; the entry point's name is
the driver's stable name (the one ``--block-driver`` and ``--prefer`` use)::

    [project.entry-points."criu_fw.fsdrivers"]
    zfs = "criu_fw_zfs:driver"
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import attrs
from google.protobuf.message import Message


@attrs.frozen
class NamedDirectory:
    """A directory that a superblock option names (an overlay layer), by where it leads:
    ``mnt_id`` (the dumped or live mount id) and ``path`` below that mount's mountpoint, or
    ``mnt_id is None`` and a path on the host."""

    role: str
    #: The option that spells it (``lowerdir+``, ``upperdir``...).
    option: str
    mnt_id: int | None
    path: str


class DriverState(abc.ABC):
    """A driver's typed per-mount state, saved in criu-fw's own image.

    Subclasses are usually frozen attrs records; they name the protobuf message they travel in
    (the driver's own ``.proto``; the core stores it packed in ``google.protobuf.Any``, so a
    third-party driver never needs a change to criu-fw's protos) and convert both ways.
    """

    MESSAGE: ClassVar[type[Message]]

    @abc.abstractmethod
    def to_message(self) -> Message:
        """The state as an instance of ``MESSAGE``."""

    @classmethod
    @abc.abstractmethod
    def from_message(cls, message: Any) -> Self:
        """Rebuild the state from an instance of ``MESSAGE``."""

    def directories(self) -> tuple[NamedDirectory, ...] | None:
        """The directories this mount's superblock options name, resolved; ``None`` when it
        names none. ``criu-fw verify`` compares such directories by where they lead and
        leaves the options that spell them out of the textual comparison (the same layer
        is ``lowerdir=rel/l`` at dump and ``lowerdir+=/l`` after a restore by descriptor)."""
        return None

    def source_identity(self) -> str | None:
        """What the mount's source stands for when a restore gives it another name (a loop
        device attached again to the same file: ``/dev/loop3`` at dump, ``/dev/loop7``
        after); ``criu-fw verify`` then compares these instead of the source strings. None:
        the source string is what counts."""
        return None


#: The driver API this criu-fw provides, (major, minor). The major version changes when a
#: driver written for the previous one could break: a hook, hook parameter or public name
#: removed or renamed, a hook's arguments or result meaning something else, a context
#: attribute or method removed. The minor version changes when something is added that a
#: driver may use (a hook, an optional parameter, a public name, a context attribute): a
#: driver needing (1, 2) runs on any 1.x with x >= 2.
#:
#: 1.1 added (nothing changed or went away): :class:`~criu_fw.plan.LoopFile` as a
#: ``NewSuperblock`` source, and :meth:`DriverState.source_identity`.
#: 1.2 added ``parallel_content`` (a driver on 1.1 ignores it: its content is archived in
#: the dumper, as before).
#: 1.3 added ``parallel_restore_content`` (a driver on 1.2 ignores it: its content is put
#: back by the restoring process, as before).
API_VERSION: tuple[int, int] = (1, 3)


@runtime_checkable
class DriverLike(Protocol):
    """What the loader reads of a driver object (every attribute but ``fstypes`` optional:
    :class:`FsDriver` declares them all with their defaults)."""

    fstypes: Iterable[str]


def api_problem(obj: object) -> str | None:
    """Why this criu-fw cannot run a driver written for another API version, or None."""
    wanted = getattr(obj, "api_version", API_VERSION)
    if (
        not isinstance(wanted, tuple) or len(wanted) != 2
        or not all(isinstance(v, int) for v in wanted)
    ):
        return f"api_version must be (MAJOR, MINOR), not {wanted!r}"
    major, minor = wanted
    if major != API_VERSION[0] or minor > API_VERSION[1]:
        have = ".".join(map(str, API_VERSION))
        return f"written for driver API {major}.{minor}; this criu-fw provides {have}"
    return None


class FsDriver:
    """Convenience base for drivers; subclasses set ``fstypes`` and add ``@hookimpl`` methods."""

    name: ClassVar[str] = ""
    fstypes: ClassVar[tuple[str, ...]] = ()
    fallback: ClassVar[bool] = False
    state_types: ClassVar[tuple[type[DriverState], ...]] = ()
    content_fstypes: ClassVar[tuple[str, ...] | None] = None
    parallel_content: ClassVar[bool] = False
    parallel_restore_content: ClassVar[bool] = False
    description: ClassVar[str] = ""
    api_version: ClassVar[tuple[int, int]] = (1, 0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fstypes={list(self.fstypes)}>"


def declared_fstypes(obj: object) -> tuple[str, ...]:
    """The fstypes an object declares, validated; an empty tuple for non-drivers."""
    raw = getattr(obj, "fstypes", ())
    if isinstance(raw, str):
        raise TypeError(f"fstypes must be a collection of names, not the string {raw!r}")
    out = []
    for t in raw:
        if not isinstance(t, str) or not t or " " in t:
            raise TypeError(f"bad fstype {t!r} in fstypes")
        out.append(t)
    return tuple(out)

