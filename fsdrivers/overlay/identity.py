"""Is a layer's file the very file the overlay shows under the same name?

What the overlay reports for a name (``ovl_getattr`` and ``ovl_map_dev_ino`` in
fs/overlayfs/inode.c):

* size, times, mode and owner come from the real file that provides the name: the upper
  file once it was copied up (with ``metacopy=on``, the upper's metadata over the lower's
  data), else the lower one;
* the inode number is the real file's, except after a copy-up: where all layers share one
  filesystem, or ``xino`` maps them into one number space, the overlay keeps the *origin's*
  (the lower file's) number, so that it does not change across copy-up (with ``index=on``
  also for hard links). The upper file then carries an origin xattr
  (``trusted.overlay.origin``, or ``user.overlay.origin`` with ``userxattr``);
* with ``xino`` the layer's fsid is put in the high bits, above the real number; the device
  is the overlay's, or, on several filesystems without xino, a per-layer pseudo device.
  Devices are therefore never compared.

So a layer file is the shown one when size, mtime, ctime and mode agree and either the
numbers agree (up to xino's fsid bits) or the layer file has an origin xattr. ctime cannot be
set from user space: two copy-ups of one origin (two containers from one image) differ in it.
Equal attributes under another number without an origin xattr prove nothing either way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from .walk import Stat

#: The bit above which xino puts the fsid: the real number keeps at least 32 bits.
_XINO_MIN_SHIFT = 32
#: Reading an xattr may fail without meaning "no origin" only in these ways.
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.ENOENT, errno.EPERM, errno.EACCES})


def ino_matches(real: int, shown: int) -> bool:
    """``shown`` is ``real``, or ``real`` with xino's fsid bits on top of it."""
    if real == shown:
        return True
    extra = shown ^ real
    lowest = extra & -extra
    return lowest > real and lowest >> (_XINO_MIN_SHIFT + 1) != 0


def same_file(mine: Stat, shown: Stat, has_origin: Callable[[], bool]) -> bool | None:
    """True: ``mine`` (a layer's file) is what the overlay shows (``shown``); False: it is
    another file; None: no evidence. ``has_origin`` is asked only when the numbers differ."""
    if (mine.size, mine.mtime_ns, mine.ctime_ns, mine.mode) != (
        shown.size,
        shown.mtime_ns,
        shown.ctime_ns,
        shown.mode,
    ):
        return False
    if ino_matches(mine.ino, shown.ino):
        return True
    return True if has_origin() else None


def origin_xattr(features: tuple[tuple[str, str | None], ...]) -> str:
    """The origin xattr's name for an overlay with these feature options."""
    user = any(name == "userxattr" for name, _ in features)
    return "user.overlay.origin" if user else "trusted.overlay.origin"


def has_xattr(path: str, name: str) -> bool:
    """Whether ``path`` (not followed if a symlink) carries xattr ``name``."""
    try:
        os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return False
        raise
    return True


def origin_checker(dirfd: int, name: str, xattr: str) -> Callable[[], bool]:
    """``has_origin`` for entry ``name`` of the directory open as ``dirfd`` (O_PATH is fine:
    the path goes through the fd's /proc link)."""
    return lambda: has_xattr(f"/proc/self/fd/{dirfd}/{name}", xattr)
