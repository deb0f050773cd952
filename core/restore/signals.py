"""Terminating signals during a restore: nothing it started outlives it, a command gets them.

SIGTERM, SIGHUP, SIGINT and SIGQUIT, while the main thread is inside :func:`interruptible`
(``restore()`` runs in one; ``criu-fw restore`` runs its whole command in one):

* before the restore is complete, end it as an error would: the ``except`` and ``finally``
  blocks of the restore run (the building child is stopped, the holders started so far are
  killed and reaped, the work directory is removed), then every restore that returned inside
  the block is ended too (:func:`track`: the holders of ``criu-fw restore`` holding the
  namespaces, or printing the PID of ``--detach``; the mountpoints it made in a ``--root``
  tree are removed unless it was handed over, ``RestoreResult.settle``), and the block
  raises :class:`RestoreInterrupted`; a block that ends otherwise hands its restores over;
* while a restore's command runs, are sent on to it (:func:`forward_to`,
  :func:`wait_command`; not a second time when the terminal sent them to it already), and
  the restore returns the command's status as usual.

The handler raises at whatever Python instruction is running, so the few steps that must not
be cut in half (a process started whose PID is not recorded yet, a directory made whose name
is not) run in :func:`held`, which delays the signal to their end. Only the first signal
counts: later ones, until the outermost block ends, are ignored so that the clean-up
finishes (SIGKILL ends the caller at once: then the building child, which dies with it, and
the watchdog of :mod:`.watchdog` undo what it started). A signal ignored when the block
began (``nohup``) stays ignored; outside the main thread, where Python runs no handler,
nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

import attrs

from ..errors import RestoreError

#: The signals that end a restore (a command gets them instead while it runs).
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
#: si_code of a signal the kernel sent (<asm-generic/siginfo.h>): a terminal's Ctrl-C, Ctrl-\
#: or hang-up, which goes to the whole foreground process group at once.
_SI_KERNEL = 0x80


class RestoreInterrupted(RestoreError):
    """A terminating signal ended the restore; nothing it started is left."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the restore was undone")
        self.signum = signum
        self.exit_code = 128 + signum


class _Signalled(BaseException):
    """Raised by the handler: a BaseException, like KeyboardInterrupt, so that no driver's
    ``except Exception`` swallows it and no hook call attributes it to a driver."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Terminable(Protocol):
    def terminate(self) -> None: ...

    def settle(self) -> None: ...


@attrs.define
class _State:
    blocks: int = 0  # interruptible() blocks the main thread is in
    held: int = 0  # held() sections it is in
    signum: int = 0  # the first signal, 0 before it came
    raised: bool = False  # _Signalled was raised for it
    target: int = 0  # the running command signals go to
    tracked: list[Terminable] = attrs.field(factory=list)


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.target:
        _forward(_state.target, signum)
        return
    if _state.signum:
        return  # the first one is being dealt with
    _state.signum = signum
    if _state.blocks and not _state.held:
        _raise()


def _raise() -> None:
    _state.raised = True
    raise _Signalled(_state.signum)


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The block in which SIGTERM, SIGHUP, SIGINT and SIGQUIT end the restores it started
    (see the module docstring) and then raise :class:`RestoreInterrupted`. Blocks nest: an
    inner one shares the outer one's handlers and restores."""
    if not _main():
        yield
        return
    old: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int] = {}
    outermost = not _state.blocks
    if outermost:
        _reset()
    _state.blocks += 1
    try:
        for sig in SIGNALS if outermost else ():
            prev = signal.getsignal(sig)
            # None: a handler Python did not install, which it could not put back.
            if prev is not signal.SIG_IGN and prev is not None:
                old[sig] = prev
                signal.signal(sig, _handler)
        yield
    except _Signalled as exc:
        _end_tracked()
        raise RestoreInterrupted(exc.signum) from None
    except RestoreInterrupted:
        _end_tracked()
        raise
    finally:
        _state.blocks -= 1
        if not _state.blocks:
            _close(old)


def _close(old: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int]) -> None:
    """The outermost block ends. A signal noted but not acted on (it came in a held()
    section that ended with another exception, or just now) is not lost: the restores are
    ended and the process gets it again, under its own handlers."""
    for sig, prev in old.items():
        signal.signal(sig, prev)
    pending = 0 if _state.raised else _state.signum
    if pending:
        _end_tracked()
    # Whatever was not ended is handed over now (a no-op for what was ended).
    for result in _state.tracked:
        result.settle()
    _reset()
    if pending:
        signal.raise_signal(pending)


def _end_tracked() -> None:
    for result in _state.tracked:
        result.terminate()


def _reset() -> None:
    _state.signum = 0
    _state.raised = False
    _state.target = 0
    _state.tracked = []


def _main() -> bool:
    """Python runs signal handlers in the main thread only: the state is that thread's."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A signal that comes during the block is acted on at its end (the block starts a
    process or makes a directory and records it for the clean-up)."""
    if not _main():
        yield
        return
    _state.held += 1
    try:
        yield
    finally:
        _state.held -= 1
    if _state.signum and not _state.raised and not _state.held and _state.blocks:
        _raise()


def track(result: Terminable) -> bool:
    """End ``result`` (``terminate()``) if a signal ends the outermost block: its holders
    were started inside it, and the caller may not have it yet. Otherwise hand it over
    (``settle()``) when that block ends, however it ends, unless it was before. False
    outside a block (or the main thread): then the caller settles it itself."""
    if _main() and _state.blocks:
        _state.tracked.append(result)
        return True
    return False


def in_background(target: Callable[..., object], *args: object, name: str) -> None:
    """Run ``target(*args)`` in a daemon thread that never gets :data:`SIGNALS`.

    A signal sent to the process goes to any thread that does not block it. One taken by a
    background thread sitting in waitpid(2) does not interrupt the main thread's own wait
    (the hold's waitid): its handler never ran, and ``criu-fw restore`` held on after a
    SIGTERM (1 run in 10 to 50 of tests/test_restore_signals.py). The thread is started with
    them blocked, which it keeps; the main thread's mask is put back at once."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        threading.Thread(target=target, args=args, name=name, daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def forward_to(pid: int) -> None:
    """From now on, send the signals to ``pid`` (the command: it runs) instead of ending
    the restore; ``forward_to(0)`` stops that. Call it with the command still unreaped, so
    that its PID cannot be another process's."""
    if _main() and _state.blocks:
        _state.target = pid


def wait_command(pid: int) -> None:
    """Wait until the command ``pid`` (see :func:`forward_to`) exits; it is left unreaped.

    A signal the terminal sent (Ctrl-C) went to the whole process group, the command
    included: it is not sent a second time (that would cut short what the command does on
    the first one). Only the signal's origin tells the two apart, so the signals are taken
    here with sigtimedwait() rather than by the handler; in other threads (a caller's), the
    handler still passes on what they get."""
    watched = {s for s in SIGNALS if signal.getsignal(s) is _handler} | {signal.SIGCHLD}
    if not (_main() and _state.target == pid):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        # Its SIGCHLD stays pending while blocked: an exit after the check wakes the wait.
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            info = signal.sigtimedwait(watched, 1.0)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_code == _SI_KERNEL and _in_our_group(pid):
                continue  # the terminal sent it to the command too
            _forward(pid, info.si_signo)
    finally:
        # What came since is delivered now, to the handler: it forwards it.
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _in_our_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == os.getpgrp()
    except OSError:
        return False


def after_fork() -> None:
    """In the forked restoring child: the first of the signals ends what it is doing with an
    exception (it then undoes what it made on the host and stops its content jobs, as after
    any error); it forwards nothing and tracks nothing of its parent's."""
    pending = _state.signum
    _reset()
    _state.blocks, _state.held = 1, 0  # it never leaves the parent's block or section
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)
    if pending:
        # It came between the fork and here (the parent's handler only noted it).
        _state.signum = pending
        _raise()


__all__ = [
    "SIGNALS", "RestoreInterrupted", "forward_to", "held", "interruptible", "track",
    "wait_command",
]
