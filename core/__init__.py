"""criu-fw: the filesystem half of Linux checkpoint/restore, with one driver per filesystem.

Library entry points: :func:`criu_fw.dump.dump`, :func:`criu_fw.restore.restore`; drivers
write ``from criu_fw import hookimpl``. Nothing here loads plugins at import time.
"""

from __future__ import annotations

from .drivertypes import DriverState, FsDriver
from .errors import CriuFwError
from .hookspecs import hookimpl
from .model import Dev, Mount, MountTree, Propagation
from .plugins import DriverConfig, DriverManager, load_drivers

__version__ = "0.1.0"

__all__ = [
    "CriuFwError",
    "Dev",
    "DriverConfig",
    "DriverManager",
    "DriverState",
    "FsDriver",
    "Mount",
    "MountTree",
    "Propagation",
    "__version__",
    "hookimpl",
    "load_drivers",
]
