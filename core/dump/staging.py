"""Where a dump's images are written before they are published, and the publication itself.

All or nothing: images go into a temporary directory ``.NAME.criu-fw-XXXX`` and appear as
``NAME`` only when complete, ``inventory.img`` (the mark of a complete dump, the only thing
restore accepts) last. Normally the temporary directory sits next to the target and is
renamed over it. Where that cannot work (the target is an empty mountpoint, the usual tmpfs
for images, which rename(2) refuses with EBUSY; or its parent is read-only) it sits *inside*
the target and its files are moved out into it, ``inventory.img`` last. Which of the two,
and whether the place is writable at all, is decided before anything is frozen.

The dumper holds an flock on its temporary directory; the next dump into the same place
removes the ones nobody holds (their dumper died). SIGTERM, SIGHUP and SIGINT become a
:class:`DumpInterrupted` error, so the engine's ``finally`` resumes the processes and this
module's :meth:`Staging.abort` removes the images; SIGKILL is the watchdog's job
(:mod:`.watchdog`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from ..errors import DumpError
from ..kernel import statx_mnt_id
from .watchdog import Watchdog

log = logging.getLogger("criu_fw.dump")

INVENTORY = "inventory.img"


class DumpInterrupted(DumpError):
    """The dumper got SIGTERM, SIGHUP or SIGINT: nothing was published."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; the processes were resumed and nothing was "
                         "written")
        self.signum = signum
        self.exit_code = 128 + signum


class _Signalled(BaseException):
    """Raised by the signal handler: a BaseException, like KeyboardInterrupt, so that no
    driver's ``except Exception`` swallows it and no hook call attributes it to a driver."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT end the block with :class:`DumpInterrupted` (once: a second
    signal during the clean-up is ignored, so that the clean-up finishes). A signal that was
    ignored (``nohup``) stays ignored; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise _Signalled(signum)

    old: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, handler)
        yield
    except _Signalled as exc:
        raise DumpInterrupted(exc.signum) from None
    finally:
        for sig, prev in old.items():
            signal.signal(sig, prev)


def _mnt_id(path: str) -> int | None:
    try:
        return statx_mnt_id(path)
    except OSError:
        return None


def _is_mountpoint(target: str) -> bool:
    a, b = _mnt_id(target), _mnt_id(os.path.dirname(target))
    if a is None or b is None:
        return os.path.ismount(target)
    return a != b


def clean_stale(where: str, prefix: str) -> None:
    """Remove the temporary directories ``where/PREFIX*`` whose dumper died (no flock)."""
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(where, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a dump in progress
            log.info("removing %s, left by a dumper that died", path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


class Staging:
    """The temporary image directory of one dump and its way into the target."""

    def __init__(self, target: str, watchdog: Watchdog | None = None) -> None:
        self.target = target
        self.watchdog = watchdog
        self.prefix = f".{os.path.basename(target)}.criu-fw-"
        parent = os.path.dirname(target)
        exists = os.path.lexists(target)
        if exists:
            if not os.path.isdir(target):
                raise DumpError(f"image directory {target}: exists and is not a directory")
            clean_stale(target, self.prefix)
            if os.listdir(target):
                raise DumpError(f"image directory {target}: not empty; give an empty or new one")
        clean_stale(parent, self.prefix)
        #: Whether the images are moved into the existing target (else: renamed as it).
        self.inside = exists and _is_mountpoint(target)
        if not self.inside:
            try:
                self.tmp = tempfile.mkdtemp(prefix=self.prefix, dir=parent)
            except OSError as exc:
                if not exists or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise DumpError(f"cannot create the image directory next to {target}: "
                                    f"{exc.strerror}") from exc
                self.inside = True  # a writable target under a read-only parent
        if self.inside:
            try:
                self.tmp = tempfile.mkdtemp(prefix=self.prefix, dir=target)
            except OSError as exc:
                raise DumpError(f"image directory {target}: cannot write into it: "
                                f"{exc.strerror}") from exc
        if watchdog is not None:
            watchdog.tmp(self.tmp)
        self._lock = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._moved: list[str] = []

    def publish(self) -> None:
        """Make the complete images appear as the target (``inventory.img`` last)."""
        try:
            if self.inside:
                self._move_into()
            else:
                os.rename(self.tmp, self.target)  # replaces an empty directory atomically
                os.chmod(self.target, 0o755)
                _fsync_dir(os.path.dirname(self.target))
        except OSError as exc:
            raise DumpError(f"cannot publish the images as {self.target}: "
                            f"{exc.strerror}") from exc
        self._unlock()

    def _move_into(self) -> None:
        if self.watchdog is not None:
            self.watchdog.into(self.target)
        names = sorted(n for n in os.listdir(self.tmp) if n != INVENTORY)
        for name in names:
            self._moved.append(name)
            os.rename(os.path.join(self.tmp, name), os.path.join(self.target, name))
        _fsync_dir(self.target)
        self._moved.append(INVENTORY)
        os.rename(os.path.join(self.tmp, INVENTORY), os.path.join(self.target, INVENTORY))
        _fsync_dir(self.target)
        os.rmdir(self.tmp)

    def abort(self) -> None:
        """Remove everything this dump wrote (idempotent)."""
        for name in reversed(self._moved):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.target, name))
        self._moved.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _fsync_dir(d: str) -> None:
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
