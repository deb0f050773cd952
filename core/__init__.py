"""criu-fw: the filesystem half of Linux checkpoint/restore, with one driver per filesystem.

Library entry points: :func:`criu_fw.dump.dump`, :func:`criu_fw.restore.restore`; drivers
write ``from criu_fw import hookimpl``. Nothing here loads plugins at import time.

The names below are imported when first asked for (PEP 562): ``import criu_fw`` itself
imports nothing else, so that the ``criu-fw`` command can catch a Ctrl-C that comes while
Python imports the rest (:mod:`criu_fw.entry`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api.base import DriverState, FsDriver
    from .api.hookspecs import hookimpl
    from .api.loader import DriverConfig, DriverManager, load_drivers
    from .errors import CriuFwError
    from .model import Dev, Mount, MountTree, Propagation

__version__ = "0.1.0"

_WHERE = {
    "DriverState": ".api.base", "FsDriver": ".api.base", "hookimpl": ".api.hookspecs",
    "DriverConfig": ".api.loader", "DriverManager": ".api.loader",
    "load_drivers": ".api.loader", "CriuFwError": ".errors", "Dev": ".model",
    "Mount": ".model", "MountTree": ".model", "Propagation": ".model",
}


if not TYPE_CHECKING:  # the checker sees the imports above; a typo stays an error there

    def __getattr__(name: str) -> object:
        where = _WHERE.get(name)
        if where is None:
            raise AttributeError(f"module 'criu_fw' has no attribute {name!r}")
        value = getattr(importlib.import_module(where, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


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
