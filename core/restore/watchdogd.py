"""The restore's watchdog program (see :mod:`.watchdog`, whose
:class:`~.watchdog.RestoreWatchdog` starts it as ``python -I -S watchdogd.py``): ends what a
restore started when its caller died (SIGKILL, OOM) before handing it over.

Lines on stdin:

* ``tmp HEX``: the work directory (the path's bytes in hex), sent before it is made;
* ``holder PID START``: a holder (START: its start time, field 22 of /proc/PID/stat, so that
  a PID reused before it is read here is not taken for it); pinned with a pidfd;
* ``builder PID START``: the building child: the work directory is removed only once it
  has exited (it undoes its work through that directory's mounts; SIGKILL after
  :data:`BUILDER_GRACE` seconds);
* ``command PID START``: the building child became the command: it runs on, and the holders
  of the other namespaces are ended once it exits, as the caller would have;
* ``pidfile HEX PID``: the caller wrote PID into that file (``--pidfile``): removed if it
  still says PID once the holders are ended;
* ``done``: the caller cleaned up or handed the restore over: exit, doing nothing.

End of file without ``done``: SIGKILL to every holder (after the command, if there is one)
and the work directory removed. The building child is sent nothing: it dies with its caller
(PR_SET_PDEATHSIG) or sees its control pipe close, and undoes what it made on the host itself.

Like the dump's watchdog it imports only what the interpreter has loaded anyway, ``_signal``
(the C module under ``signal``) and ``select``: try/except where criu-fw uses
``contextlib.suppress``.
"""

# ruff: noqa: SIM105

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found]  # no stub; signal's plain ints
import os
import select
import sys

#: How long the building child may take to undo its work once its caller died.
BUILDER_GRACE = 30.0


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), None if PID is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pin(arg: bytes) -> int | None:
    """A pidfd of ``PID START``, if that process is still the one meant."""
    pid_text, _, start_text = arg.partition(b" ")
    try:
        fd = os.pidfd_open(int(pid_text))
    except (OSError, ValueError):
        return None  # gone already: nothing to end
    if str(start_time(int(pid_text))).encode() != start_text:
        os.close(fd)  # another process has the PID now (or it has just exited)
        return None
    return fd


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


def _kill(fds: list[int]) -> None:
    for fd in fds:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass


def _exited(fd: int, timeout: float | None = None) -> bool:
    """Wait until the process of pidfd ``fd`` has exited (readable: a zombie counts)."""
    return bool(select.select([fd], [], [], timeout)[0])


def _remove_pidfile(path: str, pid: bytes) -> None:
    """Remove the pidfile the caller wrote, unless someone wrote another PID there since."""
    try:
        with open(path, "rb") as f:
            if f.read() != pid + b"\n":
                return
        os.unlink(path)
    except OSError:
        pass


def main() -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    tmp: str | None = None
    holders: list[int] = []
    command: int | None = None
    builder: int | None = None
    pidfile: tuple[str, bytes] | None = None
    for raw in sys.stdin.buffer:
        cmd, _, arg = raw.rstrip(b"\n").partition(b" ")
        if cmd == b"done":
            return
        if cmd == b"tmp":
            tmp = os.fsdecode(bytes.fromhex(arg.decode()))
        elif cmd == b"holder":
            fd = _pin(arg)
            if fd is not None:
                holders.append(fd)
        elif cmd == b"builder":
            builder = _pin(arg)
        elif cmd == b"command":
            command, builder = _pin(arg), None
        elif cmd == b"pidfile":
            where, _, written = arg.partition(b" ")
            pidfile = os.fsdecode(bytes.fromhex(where.decode())), written
    # The caller died without saying "done".
    if command is not None:
        if tmp is not None:
            _rmtree(tmp)  # the build is complete: nothing uses it any more
        while not _exited(command):
            pass
    _kill(holders)
    if pidfile is not None:
        _remove_pidfile(*pidfile)
    if builder is not None and not _exited(builder, BUILDER_GRACE):
        _kill([builder])
        _exited(builder, 5.0)
    if tmp is not None:
        _rmtree(tmp)


if __name__ == "__main__":
    main()
