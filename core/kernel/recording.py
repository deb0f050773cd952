"""The recording mount layer: :class:`RecordingMountOps` touches nothing and records every
request as a :class:`Call` (the format is in :mod:`criu_fw.kernel.mountops`), for tests of
drivers and for a dry run."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Sequence

import attrs

from .. import kernel
from ..plan import LoopFile
from .ops import Fd, MountOps, NotOwnedError, ParamArg, host_join


@attrs.frozen
class Call:
    """One recorded mount request (see the table in the module docstring)."""

    op: str
    handle: int | None = None
    other: int | None = None
    path: str | None = None
    fstype: str | None = None
    source: str | None = None
    params: tuple[tuple[str, ParamArg], ...] = ()
    flags: int = 0
    clear: int = 0
    #: ``new_superblock``: the mount(2) data for filesystems the new API cannot create.
    legacy_data: str | None = None
    #: ``new_superblock``: False when the superblock is an existing one (not the restore's).
    owned: bool = True

    def describe(self) -> str:
        """One readable line (``criu-fw restore --dry-run``); handles are shown as ``#N``."""
        h, o = f"#{self.handle}", f"#{self.other}"
        if self.op == "new_superblock" and not self.owned:
            params = ",".join(_show_param(k, v) for k, v in self.params)
            line = f"{h} = existing {self.fstype} superblock, source {self.source!r}, left as it is"
            return line + (f" (options {params} not applied)" if params else "")
        if self.op == "new_superblock":
            params = ",".join(_show_param(k, v) for k, v in self.params)
            line = f"{h} = new {self.fstype} superblock, source {self.source!r}"
            line += f", options {params}" if params else ""
            if self.legacy_data is not None:
                line += f" (mount(2) data if needed: {self.legacy_data!r})"
            return line
        if self.op == "clone":
            where = f"host path {self.path}" if self.other is None else f"{o} at {self.path}"
            return f"{h} = copy of the mount at {where}"
        if self.op == "reopen":
            return f"{h} = the mount at {self.path or '.'} beneath {o}"
        if self.op == "attach":
            if self.other is None:
                return f"attach {h} at host path {self.path}"
            return f"attach {h} to {o} at {self.path or '.'}"
        if self.op == "set_attr":
            return (f"set flags of {h}: {_attr_names(self.flags) or 'rw,relatime'} "
                    f"(clearing {_attr_names(self.clear) or 'nothing'})")
        if self.op == "set_propagation":
            return f"make {h} {_PROPAGATION.get(self.flags, hex(self.flags))}"
        if self.op == "set_group":
            return f"{h} joins the peer group (and master) of {o}"
        if self.op == "reconfigure":
            return f"reconfigure the superblock of {h}: " + ",".join(
                _show_param(k, v) for k, v in self.params
            )
        if self.op == "attach_loop":
            how = ", ".join(f"{k} {v}" for k, v in self.params if v != "0")
            if self.flags & kernel.LO_FLAGS_READ_ONLY:
                how = f"{how}, read-only" if how else "read-only"
            return f"{self.source} = loop device on {self.path}" + (f" ({how})" if how else "")
        if self.op == "restore_content":
            return f"fill {h} from {self.path}"
        return f"{self.op} {h}"


_PROPAGATION = {
    kernel.MS_SHARED: "shared", kernel.MS_SLAVE: "a slave", kernel.MS_PRIVATE: "private",
    kernel.MS_UNBINDABLE: "unbindable",
}
_ATTR_NAMES = (
    (kernel.MOUNT_ATTR_RDONLY, "ro"), (kernel.MOUNT_ATTR_NOSUID, "nosuid"),
    (kernel.MOUNT_ATTR_NODEV, "nodev"), (kernel.MOUNT_ATTR_NOEXEC, "noexec"),
    (kernel.MOUNT_ATTR_NODIRATIME, "nodiratime"), (kernel.MOUNT_ATTR_NOATIME, "noatime"),
    (kernel.MOUNT_ATTR_STRICTATIME, "strictatime"), (kernel.MOUNT_ATTR__ATIME, "atime"),
)


def _attr_names(value: int) -> str:
    names = []
    for bit, name in _ATTR_NAMES:
        if bit == kernel.MOUNT_ATTR__ATIME:
            if value & bit == bit:
                names.append("any atime mode")
        elif value & bit == bit and not (
            bit in (kernel.MOUNT_ATTR_NOATIME, kernel.MOUNT_ATTR_STRICTATIME)
            and value & kernel.MOUNT_ATTR__ATIME == kernel.MOUNT_ATTR__ATIME
        ):
            names.append(name)
    return ",".join(names)


def _show_param(key: str, value: ParamArg) -> str:
    if value is None:
        return key
    if isinstance(value, Fd):
        if value.mnt_id >= 0:
            where = f"{value.path} in mount {value.mnt_id}"
        else:
            where = value.path if value.base is None else host_join(value.base, value.path)
        return f"{key}=<dir {where}>"
    return f"{key}={value}"


class RecordingMountOps(MountOps):
    """Records every request in :attr:`calls`; touches neither the kernel nor any file.

    ``shared``: fstypes whose superblocks it takes as handed back by the kernel (not owned),
    as a real restore would get them (a dry run passes
    :func:`~criu_fw.kernel.superblocks.predicted_shared`); every other superblock is owned."""

    def __init__(self, shared: Iterable[str] = ()) -> None:
        self.calls: list[Call] = []
        self._next = 100
        self.shared = frozenset(shared)
        self._owner: dict[int, bool] = {}  # handle -> whether its superblock is owned
        self._indexed = 0

    def _new(self) -> int:
        self._next += 1
        return self._next

    def of(self, op: str) -> list[Call]:
        """The recorded calls of one kind, in order."""
        return [c for c in self.calls if c.op == op]

    def new_superblock(
        self,
        fstype: str,
        source: str,
        params: Sequence[tuple[str, ParamArg]],
        *,
        legacy_data: str | None = None,
        chroot: str | None = None,
    ) -> int:
        h = self._new()
        self.calls.append(
            Call(
                "new_superblock", handle=h, fstype=fstype, source=source, params=tuple(params),
                legacy_data=legacy_data, owned=fstype not in self.shared,
            )
        )
        return h

    def owns(self, handle: int) -> bool:
        # Handles are never reused here: a clone's superblock is its source's (indexed from
        # the calls recorded since the last question, so a dry run of 10,000 mounts stays
        # linear).
        for c in self.calls[self._indexed :]:
            if c.op == "new_superblock" and c.handle is not None:
                self._owner[c.handle] = c.owned
            elif c.op == "clone" and c.handle is not None:
                # A copy of a host mount (no source) is never the restore's.
                self._owner[c.handle] = False if c.other is None else self._owner.get(
                    c.other, False
                )
        self._indexed = len(self.calls)
        return self._owner.get(handle, False)

    def existing_options(self, handle: int) -> tuple[str, ...] | None:
        return None

    def clone(self, src: int | None, path: str) -> int:
        h = self._new()
        self.calls.append(Call("clone", handle=h, other=src, path=path))
        return h

    def recreate(
        self, src: int, path: str, mode: int, owner: tuple[int, int], *,
        link: str | None = None, content: int | None = None,
    ) -> tuple[int, Callable[[], None]]:
        h = self._new()
        self.calls.append(Call("recreate", handle=h, other=src, path=path))
        return h, lambda: None

    def clone_host(self, base: str, path: str, *, follow: bool = False) -> int:
        h = self._new()
        self.calls.append(Call("clone", handle=h, other=None, path=host_join(base, path)))
        return h

    def attach(self, handle: int, parent: int | None, path: str) -> None:
        self.calls.append(Call("attach", handle=handle, other=parent, path=path))

    def set_attr(self, handle: int, attr_set: int, attr_clr: int) -> None:
        self.calls.append(Call("set_attr", handle=handle, flags=attr_set, clear=attr_clr))

    def set_propagation(self, handle: int, flag: int) -> None:
        self.calls.append(Call("set_propagation", handle=handle, flags=flag))

    def set_group(self, src: int, dst: int) -> None:
        self.calls.append(Call("set_group", handle=dst, other=src))

    def reconfigure(self, handle: int, params: Sequence[tuple[str, ParamArg]]) -> None:
        if not self.owns(handle):
            raise NotOwnedError(
                f"refusing to reconfigure the superblock of #{handle}: this restore did not "
                f"create it, so it is left as it is"
            )
        self.calls.append(Call("reconfigure", handle=handle, params=tuple(params)))

    def restore_content(self, handle: int, image: str, fill: Callable[[str], object]) -> None:
        self.calls.append(Call("restore_content", handle=handle, path=image))

    def attach_loop(self, base: str, path: str, loop: LoopFile, *, follow: bool = False) -> str:
        # The file itself was checked when the restore was planned; nothing is opened here.
        h = self._new()
        device = f"<loop #{h}>"
        flags = kernel.LO_FLAGS_AUTOCLEAR | (kernel.LO_FLAGS_READ_ONLY if loop.read_only else 0)
        self.calls.append(Call(
            "attach_loop", handle=h, path=host_join(base, path), source=device, flags=flags,
            params=(("offset", str(loop.offset)), ("sizelimit", str(loop.sizelimit))),
        ))
        return device

    def fsid(self, handle: int) -> int | None:
        return None

    def reopen(self, base: int, path: str) -> int:
        h = self._new()
        self.calls.append(Call("reopen", handle=h, other=base, path=path))
        return h

    def mode_of(self, handle: int, path: str) -> int | None:
        return stat.S_IFDIR | 0o755  # what a recorded plan's mountpoints are

    def close(self, handle: int) -> None:
        self.calls.append(Call("close", handle=handle))
