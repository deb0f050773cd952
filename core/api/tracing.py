"""A cross-cutting tracing plugin: every hook call, whichever driver it goes to, timed.

It owns no fstype; it wraps each hook with ``@hookimpl(wrapper=True)``, so it sees the calls
the core routes to any driver (built-in, third-party or passed by the caller)::

    tracer = Tracer()
    mgr = load_drivers(plugins=[tracer])
    ...
    for rec in tracer.records:
        print(rec)  # parse_mount -> overlay: mount 83 at '/ovl' (...): OverlayState(...) 0.1 ms

From the command line: ``criu-fw --trace COMMAND`` prints one line per call on stderr.
Records go to the ``criu_fw.trace`` logger (DEBUG) and to ``emit`` if one is given.

Hooks also run in processes forked from the caller's: the restore's builder and its fill
workers, the dump's content workers. There ``emit`` and the logger are called as anywhere
(in that process), and the records travel back with what the process reports (see
:func:`forked`), so that ``records`` holds every call, whichever process made it.
"""

from __future__ import annotations

import logging
import pickle
import time
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from .hooks import current_driver
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ..files import FileMapping, OpenFile
    from ..model import Mount
    from ..plan import MountPlan
    from .base import DriverState

log = logging.getLogger("criu_fw.trace")

R = TypeVar("R")
_RESULT_MAX = 160


@attrs.frozen
class TraceRecord:
    """One hook call: which hook, which driver, on what, with which outcome, how long."""

    hook: str
    driver: str | None
    subject: str
    result: str
    error: str | None
    seconds: float

    def __str__(self) -> str:
        outcome = f"raised {self.error}" if self.error is not None else self.result
        return (
            f"{self.hook} -> {self.driver or '?'}: {self.subject}: {outcome} "
            f"({self.seconds * 1000:.3f} ms)"
        )


def _subject(mount: Mount | None, item: object = None) -> str:
    where = mount.describe() if mount is not None else "no mount"
    if item is None:
        return where
    return f"{getattr(item, 'path', item)!r} on {where}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _RESULT_MAX else text[: _RESULT_MAX - 3] + "..."


class Tracer:
    """Records (and logs) every hook call; ``records`` keeps them in call order (those made
    in a forked process when that process reports)."""

    name = "tracing"

    def __init__(self, emit: Callable[[str], None] | None = None, keep: bool = True) -> None:
        self.emit = emit
        self.keep = keep
        self.records: list[TraceRecord] = []
        _TRACERS[id(self)] = self

    def calls(self, hook: str | None = None) -> list[tuple[str, str | None, str]]:
        """``(hook, driver, subject)`` of every recorded call (of ``hook`` only, if given)."""
        return [(r.hook, r.driver, r.subject) for r in self.records if hook in (None, r.hook)]

    def _record(self, rec: TraceRecord) -> None:
        if self.keep:
            if _forked is not None:
                _forked.append((id(self), rec))
            else:
                self.records.append(rec)
        log.debug("%s", rec)
        if self.emit is not None:
            self.emit(f"trace: {rec}")

    def _wrap(self, hook: str, subject: str) -> Generator[None, R, R]:
        driver = current_driver()
        start = time.perf_counter()
        try:
            result = yield
        except BaseException as exc:
            self._record(TraceRecord(hook, driver, subject, "", _short(exc),
                                     time.perf_counter() - start))
            raise
        self._record(TraceRecord(hook, driver, subject, _short(result),
                                 None, time.perf_counter() - start))
        return result

    @hookimpl(wrapper=True)
    def parse_mount(self, mount: Mount) -> Generator[None, Any, DriverState | None]:
        return (yield from self._wrap("parse_mount", _subject(mount)))

    @hookimpl(wrapper=True)
    def fixup_fd_path(
        self, file: OpenFile, mount: Mount | None
    ) -> Generator[None, Any, OpenFile | None]:
        return (yield from self._wrap("fixup_fd_path", _subject(mount, file)))

    @hookimpl(wrapper=True)
    def fixup_vma(
        self, vma: FileMapping, mount: Mount | None
    ) -> Generator[None, Any, FileMapping | None]:
        return (yield from self._wrap("fixup_vma", _subject(mount, vma)))

    @hookimpl(wrapper=True)
    def rebuild_mount(self, mount: Mount) -> Generator[None, Any, MountPlan | None]:
        return (yield from self._wrap("rebuild_mount", _subject(mount)))

    @hookimpl(wrapper=True)
    def dump_content(self, mount: Mount, path: str) -> Generator[None, Any, str | None]:
        return (yield from self._wrap("dump_content", _subject(mount, path)))

    @hookimpl(wrapper=True)
    def restore_content(
        self, mount: Mount, image: str
    ) -> Generator[None, Any, bool | None]:
        return (yield from self._wrap("restore_content", _subject(mount, image)))


#: This process's tracers by id: a forked process's records come back under the same id (a
#: fork keeps every object at its address).
_TRACERS: weakref.WeakValueDictionary[int, Tracer] = weakref.WeakValueDictionary()
#: In a forked process (after :func:`forked`): the records made here, for the parent.
_forked: list[tuple[int, TraceRecord]] | None = None


def forked() -> None:
    """Call first in a process just forked from one whose tracers keep records: from now on
    records made here wait for :func:`handed_back` (this copy of ``records`` is never seen)."""
    global _forked
    _forked = []


def handed_back() -> bytes:
    """The records made here since :func:`forked`, for the parent's :func:`take_back`
    (empty when there are none: nothing need travel)."""
    if not _forked:
        return b""
    data = pickle.dumps(_forked)
    _forked.clear()
    return data


def take_back(data: bytes) -> None:
    """Records a forked child handed back (from this very program, pickled by
    :func:`handed_back`): into their tracers' ``records`` here, or on to this process's own
    parent when it is a forked one too."""
    if not data:
        return
    items: list[tuple[int, TraceRecord]] = pickle.loads(data)
    if _forked is not None:
        _forked.extend(items)
        return
    for key, rec in items:
        tracer = _TRACERS.get(key)
        if tracer is not None and tracer.keep:
            tracer.records.append(rec)
