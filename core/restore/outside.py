"""Slaves of peer groups outside the images: taken from the host, or made private on request.

A dumped mount can be a slave of a group that no dumped namespace holds (a container whose
mounts receive the host's, made with ``--propagation slave``). That master cannot be rebuilt
from the images; what the restore does is the user's choice (``outside_masters``):

``host`` (default)
    A mount restored from a host path (``--external``, ``--root``) becomes a slave of the host
    mount that path is on, as long as that mount propagates (shared, or itself a slave): it
    joins that mount's group from the caller's namespace (MOVE_MOUNT_SET_GROUP works across
    namespaces) and is then made a slave, so it receives what the host mounts there, as the
    dumped one did. Any other such mount (a superblock rebuilt from the images, or a host
    mount that is private) fails the restore before anything is mounted, naming the mount.
``private``
    Every such mount is restored private.

``criu-fw verify --outside-masters`` expects the same: a slave of a group outside the restored
namespaces (``host``), or a private mount (``private``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .. import kernel
from ..errors import RestoreError, UsageError
from ..kernel import confine
from ..model import Mount, MountTree
from .plans import MountJob, NamespacePlan

MODES = ("host", "private")

Key = tuple[int, int]  # (dumped namespace id, dumped mount id)


def outside_slaves(plans: Sequence[NamespacePlan]) -> list[tuple[NamespacePlan, Mount]]:
    """Mounts whose master group is in no dumped namespace."""
    groups = {
        m.propagation.shared for p in plans for m in p.mounts if m.propagation.shared is not None
    }
    return [
        (p, m) for p in plans for m in p.mounts
        if m.propagation.master is not None and m.propagation.master not in groups
    ]


def host_masters(
    plans: Sequence[NamespacePlan], mode: str, host: MountTree | None = None
) -> dict[Key, str]:
    """For ``host`` mode: the host mount (its mountpoint, in the caller's namespace) each
    outside slave is to be a slave of; raises :class:`RestoreError` for one that cannot be."""
    if mode not in MODES:
        raise UsageError(f"outside masters: {mode!r} is not one of {', '.join(MODES)}")
    found = outside_slaves(plans)
    if mode == "private" or not found:
        return {}
    if host is None:
        from ..kernel.mountinfo import read_mountinfo

        host = read_mountinfo("self")
    out: dict[Key, str] = {}
    for plan, m in found:
        why = (
            f"{m.describe()}: it was a slave of peer group {m.propagation.master}, which is "
            f"outside the images"
        )
        job = plan.jobs[m.mnt_id]
        if job.sb is not None:
            raise RestoreError(
                f"{why}, and it is rebuilt from the images, not taken from a host mount; "
                f"declare it external at dump time, or restore it private with "
                f"--outside-masters private"
            )
        try:
            mnt_id = _host_mnt_id(job)
        except OSError as exc:
            raise RestoreError(f"{why}; its host path {job.host_path!r}: {exc}") from exc
        src = host.find(mnt_id)
        if src is None:
            raise RestoreError(f"{why}; the host mount of {job.host_path!r} is not in mountinfo")
        if src.propagation.shared is None and src.propagation.master is None:
            raise RestoreError(
                f"{why}; the host mount at {src.mountpoint!r} it is restored from is private, "
                f"so there is nothing to be a slave of; restore it private with "
                f"--outside-masters private"
            )
        out[(plan.ns_id, m.mnt_id)] = src.mountpoint
        out_id = _mount_id_at(src.mountpoint)
        if out_id != src.mnt_id:
            raise RestoreError(
                f"{why}; the host mount at {src.mountpoint!r} is covered by another mount"
            )
    return out


def _host_mnt_id(job: MountJob) -> int:
    """The mount id of a job's host directory, resolved as the restore will (confined)."""
    assert job.base is not None
    base = os.open(job.base, os.O_PATH | os.O_CLOEXEC)
    try:
        fd = confine.open_beneath(base, job.path, confine.GRANTED if job.follow else confine.STRICT)
    finally:
        os.close(base)
    try:
        return kernel.statx_mnt_id("", dirfd=fd, flags=kernel.AT_EMPTY_PATH)
    finally:
        os.close(fd)


def _mount_id_at(path: str) -> int | None:
    try:
        return kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW)
    except OSError:
        return None


def open_masters(paths: Mapping[Key, str]) -> dict[Key, int]:
    """O_PATH descriptors of the host mounts' roots (opened in the caller's namespace)."""
    out: dict[Key, int] = {}
    try:
        for key, path in paths.items():
            out[key] = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        close_all(out)
        raise
    return out


def close_all(fds: Mapping[Key, int]) -> None:
    for fd in fds.values():
        os.close(fd)
