"""criu-fw: the filesystem half of Linux checkpoint/restore, with one driver per filesystem.

Library entry points: :func:`criu_fw.dump.dump`, :func:`criu_fw.restore.restore`; drivers
write ``from criu_fw import hookimpl``. Nothing here loads plugins at import time.
"""

from __future__ import annotations

from .api.base import DriverState, FsDriver
from .api.hookspecs import hookimpl
from .api.loader import DriverConfig, DriverManager, load_drivers
from .errors import CriuFwError
from .model import Dev, Mount, MountTree, Propagation

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
