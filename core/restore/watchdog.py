"""A watchdog that ends what a restore started when its caller is killed (SIGKILL, OOM)
before the restore was handed over: holders that would pause forever holding namespaces
nobody knows of, and the work directory in ``$TMPDIR``.

The caller starts :mod:`.watchdogd` as a small separate program (``python -I -S
watchdogd.py``, the standard library only, in its own session so that a terminal's ^C or a
kill of the caller's process group does not reach it) and keeps a pipe to its stdin; end of
file without ``done`` is the caller's death. What the caller tells it, and when:

* the work directory's name before it is made (no moment where it exists unknown);
* the building child and each holder right after they started (the caller's unreaped
  children: their PIDs are not anyone else's yet; a holder started but not told of exits
  by itself, its stdin closing);
* that the building child became the command, before the caller lets it go on (``GO``);
* ``done`` once the restore was undone by the caller itself, or handed over: the PIDs of a
  detached restore printed (they outlive the caller from then on), or the holders ended
  (:meth:`~criu_fw.restore.RestoreResult.terminate`). The holders of a restore that is not
  detached stay watched as long as they run: they end with the caller at the latest.

The building child is not the watchdog's to end: until the restore is handed over it dies
with its caller (PR_SET_PDEATHSIG) or sees its control pipe close, and undoes what it made on
the host (mountpoints in a ``--root`` tree) itself, through the descriptors it made them
with; the watchdog only waits for it before it removes the work directory under it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from .signals import in_background
from .watchdogd import start_time

#: The write ends of the live watchdogs' pipes: a forked building child closes them at once,
#: or a watchdog would see no end of file while the child lives on after its caller.
OPEN: set[int] = set()


class RestoreWatchdog:
    """The caller's end: starts the watchdog (at once; it starts up while the restore reads
    and plans) and reports to it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if not sys.executable:
            return  # no interpreter to run it with (nor the holders: the restore fails)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S",
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdogd.py")],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, bufsize=0,
        )
        assert self._proc.stdin is not None
        OPEN.add(self._proc.stdin.fileno())

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode() + b"\n")
        except OSError:  # the watchdog itself was killed: the restore goes on unwatched
            self._close()

    def tmp(self, path: str) -> None:
        self._send(f"tmp {os.fsencode(path).hex()}")

    def holder(self, pid: int) -> None:
        self._send(f"holder {pid} {start_time(pid)}")

    def builder(self, pid: int) -> None:
        self._send(f"builder {pid} {start_time(pid)}")

    def command(self, pid: int) -> None:
        self._send(f"command {pid} {start_time(pid)}")

    def pidfile(self, path: str, pid: int) -> None:
        self._send(f"pidfile {os.fsencode(os.path.abspath(path)).hex()} {pid}")

    def done(self) -> None:
        """Nothing is left for it to end: it exits without doing anything."""
        proc = self._proc
        if proc is None:
            return
        self._send("done")
        self._close()
        if proc.poll() is None:
            # It exits as soon as it has read "done" (a Python start, tens of ms, if it had
            # not started yet): reaped in the background rather than waited for.
            in_background(proc.wait, name="criu-fw-watchdog-reaper")

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        OPEN.discard(proc.stdin.fileno())
        with contextlib.suppress(OSError):
            proc.stdin.close()


def close_inherited() -> None:
    """In a forked child: close the watchdogs' pipes (see :data:`OPEN`)."""
    for fd in OPEN:
        with contextlib.suppress(OSError):
            os.close(fd)
