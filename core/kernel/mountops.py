"""The mount layer: every mount request of a restore goes through a :class:`MountOps`.

This module gathers it for its users (the restore, drivers' tests, a dry run); the parts
live in :mod:`.ops` (the interface), :mod:`.kernelops`, :mod:`.recording` and
:mod:`.hostfiles` (the host files the kernel layer opens or makes). Two implementations:

* :class:`KernelMountOps` issues the real system calls (the new mount API: fsopen/fsconfig/
  fsmount, open_tree, move_mount, mount_setattr), only ever inside the private mount namespace
  of the restoring child process;
* :class:`RecordingMountOps` touches nothing and records every request as a :class:`Call`, for
  tests of drivers (which exact superblock did the AUFS driver ask for?) and for a dry run.

Mounts are referred to by *handles*: small integers (file descriptors of mounts in the kernel
layer, counters in the recording layer). A handle refers to one mount, attached or detached;
paths below are relative to a handle's mount root unless they start with ``/``.

The recording format (what tests assert on) is one :class:`Call` per request, in order:

=====================  =========================================================================
``op``                 fields set
=====================  =========================================================================
``new_superblock``     ``fstype``, ``source``, ``params`` (values: ``str``, ``None`` for a flag,
                       :class:`Fd` for a directory passed by descriptor), ``handle`` (returned),
                       ``owned`` (False: the kernel hands back a superblock that exists
                       already, whose parameters are not applied; see below)
``clone``              ``handle`` (returned), ``other`` (source handle, or None), ``path``
                       (subpath inside ``other``, or an absolute host path when ``other`` is None)
``attach``             ``handle`` (the mount), ``other`` (parent handle, None for a host path),
                       ``path`` (relative to the parent's root, or absolute)
``set_attr``           ``handle``, ``flags`` (MOUNT_ATTR_* set), ``clear`` (MOUNT_ATTR_* cleared)
``set_propagation``    ``handle``, ``flags`` (MS_SHARED / MS_SLAVE / MS_PRIVATE / MS_UNBINDABLE)
``set_group``          ``other`` (from: a member of the group), ``handle`` (to: joins it)
``reconfigure``        ``handle``, ``params``
``attach_loop``        ``handle`` (a number of its own), ``path`` (the host file), ``source``
                       (the device returned), ``params`` (``offset``, ``sizelimit``),
                       ``flags`` (LO_FLAGS_*: read-only, autoclear)
``restore_content``    ``handle``, ``path`` (the image file name)
``close``              ``handle``
=====================  =========================================================================

Superblocks a restore does not own. Some filesystems keep one superblock per key (sysfs per
network namespace, mqueue per IPC namespace, a block device's filesystem per device; see
:mod:`criu_fw.kernel.superblocks`) and hand the existing one back. :class:`KernelMountOps` asks with
FSCONFIG_CMD_CREATE_EXCL: a new superblock is *owned* (recorded by device); where the kernel
would reuse one (EBUSY) it takes that one with no parameter but the source, not owned, unless
its key is a namespace the restore made itself. Kernels without CREATE_EXCL, and mount(2), are
judged by device: a superblock whose device was mounted before the first one this layer made
is not owned. ``reconfigure`` refuses any superblock that is not owned, whoever asks.
:class:`RecordingMountOps` owns everything except the fstypes it is told are ``shared``.
"""

from __future__ import annotations

from .hostfiles import BackingFileError, open_loop_file, open_param
from .kernelops import LEGACY_DATA_MAX, KernelMountOps
from .ops import Fd, MountOps, NotOwnedError, ParamArg, host_join
from .recording import Call, RecordingMountOps

__all__ = [
    "LEGACY_DATA_MAX",
    "BackingFileError",
    "Call",
    "Fd",
    "KernelMountOps",
    "MountOps",
    "NotOwnedError",
    "ParamArg",
    "RecordingMountOps",
    "host_join",
    "open_loop_file",
    "open_param",
]
