"""One record per dumped mount, from the dump engine to the image writer and back from the
reader to the planner and verify.

A :class:`MountRecord` says everything the dump learnt about one mount: the mount as the
kernel showed it, the driver that owns it, that driver's state, the external key it was
recorded under (bind-mounted from outside the dumped namespaces) and the image holding its
filesystem's content. A :class:`DumpedNamespace` is a namespace's tree with its records; it
is what :func:`~criu_fw.images.mounts.write_mount_namespace` writes, what
:func:`~criu_fw.images.mounts.read_mount_namespace` returns and what
:func:`~criu_fw.restore.restore` (``namespaces=``) rebuilds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import attrs

from .api.base import DriverState
from .model import Mount, MountTree


@attrs.frozen
class DeletedRoot:
    """A bind whose root file or directory was unlinked after it was mounted
    (:attr:`~criu_fw.model.Mount.root_deleted`): what the restore makes again at the same path
    of the rebuilt source filesystem, binds, and unlinks again (as CRIU does)."""

    #: ``st_mode``: a directory or a regular file, with its permission bits.
    mode: int
    uid: int = 0
    gid: int = 0
    #: A regular file that still has another name: that name, from its filesystem's root.
    link: str | None = None
    #: A regular file without another name: the image (of the image directory) holding its
    #: bytes, raw.
    content: str | None = None
    #: CRIU's images say only that the root was deleted (``mnt_entry.deleted``): it is made
    #: again as CRIU's restore makes it, after its mountpoint in the rebuilt parent: a
    #: directory or an empty regular file, with the mountpoint's permission bits, owned by
    #: root (``mode``, ``uid`` and ``gid`` are then unused).
    like_mountpoint: bool = False


class MountRecord(NamedTuple):
    """What the dump knows of one mount (a named tuple, like :class:`~criu_fw.model.Mount`:
    made in C, once per mount of a 100,000-mount dump)."""

    mount: Mount
    #: The owning driver's name; None (a tree a program builds) lets the restore use the
    #: driver its registry picks for the fstype. Images always name one.
    driver: str | None = None
    #: What the driver's ``parse_mount`` returned for it (None: nothing to keep).
    state: DriverState | None = None
    #: The key it was recorded under when bind-mounted from outside the dumped namespaces.
    external: str | None = None
    #: The image (a file of the image directory) holding its filesystem's content.
    content: str | None = None
    #: Its root was unlinked: what to make again for the bind.
    deleted: DeletedRoot | None = None


@attrs.frozen
class DumpedNamespace:
    """One dumped mount namespace: its tree and a record for each of its mounts."""

    ns_id: int
    tree: MountTree
    #: By mount id. A mount without a record here has a bare one (:meth:`record`).
    records: Mapping[int, MountRecord] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        find = self.tree.find
        for mnt_id, rec in self.records.items():
            if rec.mount.mnt_id != mnt_id or find(mnt_id) is None:
                raise ValueError(
                    f"record of mount {rec.mount.mnt_id} (keyed {mnt_id}) is not a mount of "
                    f"namespace {self.ns_id}"
                )

    @classmethod
    def of(
        cls,
        ns_id: int,
        tree: MountTree,
        *,
        drivers: Mapping[int, str] | None = None,
        states: Mapping[int, DriverState | None] | None = None,
        external: Mapping[int, str] | None = None,
        content: Mapping[int, str] | None = None,
        deleted: Mapping[int, DeletedRoot] | None = None,
    ) -> DumpedNamespace:
        """A namespace from a tree and what is known per mount id (a program that builds a
        tree to restore, a test); an id that is not a mount of ``tree`` is a ValueError."""
        d, s, e, c = drivers or {}, states or {}, external or {}, content or {}
        gone = deleted or {}
        known = {m.mnt_id for m in tree}
        for what, ids in (("drivers", d), ("states", s), ("external", e), ("content", c),
                          ("deleted", gone)):
            stray = sorted(set(ids) - known)
            if stray:
                raise ValueError(f"{what} names mount id(s) {stray} not in namespace {ns_id}")
        records = {
            i: MountRecord(m, d.get(i), s.get(i), e.get(i), c.get(i), gone.get(i))
            for m in tree
            for i in (m.mnt_id,)
        }
        return cls(ns_id, tree, records)

    def record(self, mnt_id: int) -> MountRecord:
        """The record of mount ``mnt_id`` (a bare one where none was given)."""
        got = self.records.get(mnt_id)
        return got if got is not None else MountRecord(self.tree.get(mnt_id))

    def __iter__(self) -> Iterator[MountRecord]:
        """Every mount's record, in the tree's order."""
        get = self.records.get
        for m in self.tree:
            rec = get(m.mnt_id)
            yield rec if rec is not None else MountRecord(m)
