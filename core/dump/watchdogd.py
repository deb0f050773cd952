"""The watchdog program (see :mod:`.watchdog`, whose :class:`~.watchdog.Watchdog` starts it
as ``python -I -S watchdogd.py``): undoes a dump whose dumper died without saying ``done``.

It imports only modules the interpreter has loaded anyway (``os``, ``sys``, ``time``) and
``_signal``, the C module under ``signal`` (whose enums import half the standard library):
the dumper waits for it to run before it stops anything, and a Python start with ``shutil``,
``subprocess``, ``contextlib`` and ``signal`` took three times as long (30 ms against 10 ms
here). Hence try/except where the rest of criu-fw uses ``contextlib.suppress``.
"""

# ruff: noqa: SIM105

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found]  # no stub; signal's plain ints
import os
import sys
import time


def _rmtree(path: str) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` without importing shutil."""
    try:
        for _root, dirs, files, fd in os.fwalk(path, topdown=False):
            for name in files:
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=fd)
                except NotADirectoryError:  # a symlink to a directory
                    try:
                        os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
                except OSError:
                    pass
        os.rmdir(path)
    except OSError:
        pass


def _remove_tree(path: str) -> None:
    # A tar the dumper started may still be writing into it: try again for a moment.
    for _ in range(50):
        _rmtree(path)
        if not os.path.lexists(path):
            return
        time.sleep(0.1)


def _undo_moves(target: str) -> None:
    """Images half moved into an existing directory: without inventory.img, none is valid."""
    if os.path.exists(os.path.join(target, "inventory.img")):
        return  # the move completed: the dump is there
    try:
        names = os.listdir(target)
    except OSError:
        return
    for name in names:
        if name.endswith(".img"):
            try:
                os.unlink(os.path.join(target, name))
            except OSError:
                pass


def main() -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    try:
        os.write(1, b"r")  # running: see Watchdog.wait_ready
    except OSError:
        pass
    tmp: str | None = None
    into: str | None = None
    pinned: dict[int, int] = {}
    for raw in sys.stdin.buffer:
        cmd, _, arg = raw.rstrip(b"\n").partition(b" ")
        if cmd == b"done":
            return
        if cmd == b"stop":
            pid = int(arg)
            if pid not in pinned:
                try:
                    pinned[pid] = os.pidfd_open(pid)
                except OSError:  # gone already: nothing to resume
                    pass
        elif cmd == b"forget":
            for fd in pinned.values():
                os.close(fd)
            pinned.clear()
        elif cmd == b"tmp":
            tmp = os.fsdecode(bytes.fromhex(arg.decode()))
        elif cmd == b"into":
            into = os.fsdecode(bytes.fromhex(arg.decode()))
    # The dumper died without saying "done".
    for fd in pinned.values():
        try:
            signal.pidfd_send_signal(fd, signal.SIGCONT)
        except OSError:
            pass
    if into is not None:
        _undo_moves(into)
    if tmp is not None:
        _remove_tree(tmp)


if __name__ == "__main__":
    main()
