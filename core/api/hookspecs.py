"""The hooks a filesystem driver implements: the contract between the core and its drivers.

Every hook is *per mount*: the core calls exactly one driver, the one that owns the mount's
fstype (see :mod:`criu_fw.api.loader`), never "all drivers until one answers". Cross-cutting
plugins (tracing, dry run) that are not drivers may wrap any hook with
``@hookimpl(wrapper=True)``; they see every call, whichever driver it goes to.

All hooks are ``firstresult``: a driver returns a value, or ``None`` for the documented default.
An exception raised in a hook reaches the caller as :class:`criu_fw.errors.DriverError` naming
the driver (the original exception is chained as ``__cause__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ..context import DumpContext, RestoreContext
    from ..files import FileMapping, OpenFile
    from ..model import Mount, MountTree
    from ..plan import ContentJob, MountPlan
    from .base import DriverState

PROJECT = "criu_fw"

hookspec = pluggy.HookspecMarker(PROJECT)
#: The one marker drivers need: ``from criu_fw import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def parse_mount(mount: Mount, tree: MountTree, ctx: DumpContext) -> DriverState | None:
    """Read the driver-specific state of one mount.

    Phase: dump, once per mount of every dumped namespace, parents before children, after the
    whole mount table of every namespace has been read (``ctx.trees`` is complete).

    :param mount: The mount as the kernel reported it; records are frozen, the driver cannot
        change it.
    :param tree: The mount namespace the mount belongs to.
    :param ctx: The dump; the driver may keep typed scratch data on ``ctx.stash`` and may
        call ``ctx.claim_files`` to receive ``fixup_fd_path``/``fixup_vma`` calls for files the
        kernel reports on another mount (an overlay's layers).

    :returns: A :class:`~criu_fw.driver.DriverState` saved in criu-fw's state image and handed
        back to ``rebuild_mount`` at restore; ``None`` when the mountinfo entry says all there
        is to say.

    A mount that cannot be dumped (a layer that cannot be found, a malformed option) raises an
    exception whose message names the mount and what is wrong; the dump then fails as a whole.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def fixup_fd_path(file: OpenFile, mount: Mount | None, ctx: DumpContext) -> OpenFile | None:
    """Correct the path or mount of one open file where the kernel reports them wrongly.

    Phase: dump, once per open file (and cwd, root, exe) of every dumped process. Called on
    the driver that owns ``mount`` and on drivers that claimed the kernel's mount id with
    ``ctx.claim_files``.

    :param file: The file as /proc reported it: path from the process's root, ``mnt_id`` from
        fdinfo, identity from fstat.
    :param mount: The mount the core found for the file: the one with the kernel's mount id in
        the process's namespace, else the one its path lands on; ``None`` if neither exists.
    :param ctx: The dump.

    :returns: A corrected copy (``attrs.evolve(file, path=..., mnt_id=...)``; ``mnt_id=None``
        writes CRIU's "no mount", -1), or ``None`` when the kernel's report is right.
        A driver that cannot *check* a file must raise, naming the file: "nothing to fix" and
        "could not check" are different outcomes.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def fixup_vma(vma: FileMapping, mount: Mount | None, ctx: DumpContext) -> FileMapping | None:
    """Correct the path or mount of one file mapping where the kernel reports them wrongly.

    Phase: dump, once per file-backed mapping of every dumped process, with the same routing
    as :func:`fixup_fd_path` (the path comes from /proc/PID/map_files, the identity from
    stat'ing that link).

    :param vma: The mapping as /proc/PID/maps and map_files reported it.
    :param mount: The mount the core found for the mapped file, or ``None``.
    :param ctx: The dump.

    :returns: A corrected copy (``attrs.evolve(vma, path=..., mnt_id=...)``), or ``None`` when
        the kernel's report is right. As for open files, "could not check" must raise.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def rebuild_mount(
    mount: Mount, state: DriverState | None, ctx: RestoreContext
) -> MountPlan | None:
    """Say how to recreate one dumped mount.

    Phase: restore, once per *superblock* of every restored namespace, for the first mount of
    that superblock in parent-before-child order; the core makes the other mounts of the same
    superblock as binds from it.

    :param mount: The dumped mount (ids are the dumped kernel's).
    :param state: What this driver's ``parse_mount`` returned for it at dump, or ``None``.
    :param ctx: The restore; ``ctx.tree`` is the dumped namespace being rebuilt.

    :returns: A plan (:mod:`criu_fw.plan`): a new superblock with its parameters (directories
        given as :class:`~criu_fw.plan.PathRef` become dependencies and are passed by file
        descriptor; its source may be a :class:`~criu_fw.plan.LoopFile`, a file the core
        attaches to a loop device), a bind from an already restored mount, or an external
        path. ``None`` means the core's default: a new superblock of ``mount.fstype`` from
        ``mount.source`` and ``mount.super_options``.

    The driver must not issue mount calls itself; the core's mount layer (``ctx.ops``) does.
    A driver that knows the mount cannot be restored here raises, saying why, before anything
    was mounted (the core asks every driver for its plan before the first mount call).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def dump_content(mount: Mount, path: str, ctx: DumpContext) -> str | None:
    """Save the content of a filesystem that would otherwise be lost (tmpfs).

    Phase: dump, once per superblock, after ``parse_mount``.

    :param mount: A mount of the superblock.
    :param path: A directory through which the *whole* filesystem of ``mount`` is readable,
        content hidden under overmounts included (the core provides a copy of the mount that
        has no children, so nothing covers anything). Read-only: the driver must not change it.
    :param ctx: The dump; the image goes into ``ctx.image_dir``.

    :returns: The name of the image file written into ``ctx.image_dir``, or ``None`` when
        this filesystem needs no content saved (kernel filesystems, disk-backed ones). A
        driver may leave the writing to a job it started (``ctx.in_background``): the core
        waits for it while the processes are still frozen.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def restore_content(
    mount: Mount, image: str, path: str, ctx: RestoreContext
) -> bool | ContentJob | None:
    """Put saved content back into a freshly created filesystem.

    Phase: restore, once per superblock whose ``dump_content`` wrote an image, right after the
    superblock is created and before anything is mounted on top of it.

    :param mount: The dumped mount.
    :param image: The image file name ``dump_content`` returned (inside ``ctx.image_dir``).
    :param path: Where the new, still empty filesystem is reachable; the driver writes there
        and nowhere else.
    :param ctx: The restore.

    :returns: ``True`` once restored; a :class:`~criu_fw.plan.ContentJob` when the work
        was started and goes on by itself (a process writing into ``path``: the core makes
        other superblocks meanwhile and waits for the job before it needs the content, and
        cancels it if the restore fails); ``None`` if this driver does not handle that image
        (the restore then fails naming the image: content is never silently dropped).

    .. versionadded:: 0.1
    """
