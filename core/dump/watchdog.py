"""A watchdog that undoes a dump whose dumper was killed (SIGKILL, OOM): it resumes the
processes the dumper stopped and removes its temporary images.

The dumper starts :mod:`.watchdogd` as a small separate program (``python -I -S
watchdogd.py``, the standard library only, in its own session so that a terminal's ^C or a
kill of the dumper's process group does not reach it) and keeps a pipe to its stdin. It tells
it, one line each:

* ``tmp HEX``: the temporary image directory (the path's bytes in hex);
* ``into HEX``: images are being moved into this existing directory (a mountpoint given as
  ``-D``): without ``inventory.img`` there, every ``*.img`` in it is ours and goes;
* ``stop PID``: sent *before* SIGSTOP, so no stopped process can be missed; the watchdog pins
  the process with a pidfd (a pid reused meanwhile gets nothing);
* ``forget``: everything stopped so far has been resumed (or is left stopped on purpose);
* ``done``: the dumper finished, successfully or after cleaning up itself.

End of file without ``done`` means the dumper died: SIGCONT to every pinned process, then
the temporary directory is removed. The program imports nothing of criu-fw: it must start
fast and work from the file alone.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading


class Watchdog:
    """The dumper's end: starts the watchdog and reports to it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "watchdogd.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, bufsize=0,
        )

    def wait_ready(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) until the watchdog runs.

        Its start (a Python interpreter: about 10 ms of CPU) overlaps with the dumper's own
        (staging, loading the drivers); what is left of it is waited for here, before anything
        is stopped, rather than competing with the dump for the CPUs while the processes are
        stopped (about 1.5 ms of a 1,000-mount table's part on two vCPUs). A watchdog that does
        not answer in time is not waited for further: what the dumper sends it stays in the
        pipe until it reads it.
        """
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        with contextlib.suppress(OSError, ValueError):
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if ready:
                proc.stdout.read(1)  # b"r", or b"" if it died: then the dump is unwatched

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode() + b"\n")
        except OSError:  # the watchdog itself was killed: the dump goes on unwatched
            self._proc = None

    def tmp(self, path: str) -> None:
        self._send(f"tmp {os.fsencode(path).hex()}")

    def into(self, path: str) -> None:
        self._send(f"into {os.fsencode(path).hex()}")

    def stopping(self, pid: int) -> None:
        self._send(f"stop {pid}")

    def forget(self) -> None:
        self._send("forget")

    def done(self) -> None:
        """The dumper cleaned up (or published): the watchdog exits without doing anything."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.write(b"done\n")
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        if proc.poll() is None:
            # It exits as soon as it has started and read "done" (tens of ms for a Python
            # start here): reaped in the background rather than waited for.
            threading.Thread(target=proc.wait, name="criu-fw-watchdog-reaper",
                             daemon=True).start()
