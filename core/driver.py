"""The public driver API: everything a filesystem driver may import, in one place.

A driver imports from this module (and ``criu_fw`` itself) only; the core's other modules
are free to change between releases, this one changes as :data:`API_VERSION` says. What a
driver is and declares: :mod:`criu_fw.api.base` (re-exported here); the hooks and their
contracts: :mod:`criu_fw.api.hookspecs`. tests/test_driver_api.py checks that the built-in
drivers need nothing else.
"""

from __future__ import annotations

from .api.base import API_VERSION, DriverLike, DriverState, FsDriver, NamedDirectory
from .api.hooks import current_driver, routed_to
from .api.hookspecs import hookimpl
from .context import DumpContext, RestoreContext
from .errors import (
    CriuFwError,
    DriverError,
    DumpError,
    MountNotFoundError,
    RestoreError,
    SyscallError,
)
from .files import FileIdentity, FileMapping, OpenFile
from .fstypes import FSTYPES, FsType, fstype
from .kernel.confine import (
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    open_beneath,
    openat2,
)
from .kernel.mountinfo import read_mountinfo, unescape
from .model import Dev, Mount, MountTree, Propagation
from .plan import (
    BindExternal,
    BindFrom,
    ContentJob,
    ExternalRef,
    LoopFile,
    MountPlan,
    NewSuperblock,
    ParamValue,
    PathRef,
)
from .stash import StashKey

__all__ = [
    "API_VERSION",
    "FSTYPES",
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "BindExternal",
    "BindFrom",
    "ContentJob",
    "CriuFwError",
    "Dev",
    "DriverError",
    "DriverLike",
    "DriverState",
    "DumpContext",
    "DumpError",
    "ExternalRef",
    "FileIdentity",
    "FileMapping",
    "FsDriver",
    "FsType",
    "LoopFile",
    "Mount",
    "MountNotFoundError",
    "MountPlan",
    "MountTree",
    "NamedDirectory",
    "NewSuperblock",
    "OpenFile",
    "ParamValue",
    "PathRef",
    "Propagation",
    "RestoreContext",
    "RestoreError",
    "StashKey",
    "SyscallError",
    "current_driver",
    "fstype",
    "hookimpl",
    "open_beneath",
    "openat2",
    "read_mountinfo",
    "routed_to",
    "unescape",
]
