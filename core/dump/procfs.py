"""Reading /proc (live or recorded) with errors that name what was read and why it failed.

Every read of the dump goes through :class:`ProcFS`, rooted at ``proc_root``: the live
``/proc`` or a recorded directory tree of plain files and symlinks (``mountinfo``,
``fdinfo/N``, ``fd/N`` links, ``maps``, ``map_files/<range>`` links, ``ns/mnt`` ->
``mnt:[4026531840]``, ``stat``, ``status``, ``task/``). Optional entries that a recording
may leave out are read with ``optional=True`` and come back as ``None``.

A process that disappears while it is read (ENOENT/ESRCH on its /proc directory) raises
:class:`ProcessGoneError`, so the dump can say "process N vanished" instead of a bare errno.
"""

from __future__ import annotations

import errno
import os

from ..errors import DumpError, UsageError


class ProcessGoneError(DumpError, ProcessLookupError):
    """A dumped process exited (or never existed) while the dump read it."""

    def __init__(self, pid: int, what: str = "") -> None:
        where = f" (while reading {what})" if what else ""
        super().__init__(f"process {pid} does not exist or vanished during the dump{where}")
        self.pid = pid


class NoSuchProcessError(ProcessGoneError, UsageError):
    """The process to dump is not there (or has exited) before the dump starts: a usage
    mistake (exit status 2), where one that vanishes during the dump is a failure."""

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        from ..kernel.mountinfo import process_gone

        ProcessGoneError.__init__(self, pid)
        live = os.path.realpath(proc_root) == "/proc"
        self.args = ((process_gone(pid, proc_root) if live else None)
                     or f"no process {pid}" + ("" if live else f" in {proc_root}"),)

    def __str__(self) -> str:
        return str(self.args[0])


class ProcReadError(DumpError, OSError):
    """A /proc entry exists but cannot be read."""

    def __init__(self, path: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.message = f"cannot read {path}: {name} ({exc.strerror})"
        DumpError.__init__(self, self.message)
        self.errno = exc.errno
        self.strerror = exc.strerror
        self.filename = path

    def __str__(self) -> str:  # OSError's would be "[Errno 21] ...: 'path'"
        return self.message


_GONE = (errno.ENOENT, errno.ESRCH)


class ProcFS:
    """Paths and reads under one /proc root."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.root = proc_root.rstrip("/") or "/"
        self.live = os.path.realpath(self.root) == "/proc"

    def path(self, pid: int | str, *rel: str) -> str:
        return os.path.join(self.root, str(pid), *rel)

    def _fail(self, pid: int | str, rel: str, path: str, exc: OSError) -> DumpError:
        if exc.errno in _GONE and isinstance(pid, int) and not self.exists(pid):
            return ProcessGoneError(pid, rel)
        return ProcReadError(path, exc)

    def exists(self, pid: int) -> bool:
        """Whether ``pid`` is there and not a zombie (a killed process that nobody reaped
        keeps its /proc directory but has no files, maps or namespace any more)."""
        try:
            with open(self.path(pid, "stat"), "rb") as f:
                state = f.read().rpartition(b")")[2][1:2]
        except FileNotFoundError:
            return os.path.isdir(self.path(pid))  # a recording may lack stat
        except OSError:
            return False
        return state not in (b"Z", b"X")

    def check_alive(self, pid: int, what: str) -> None:
        if self.live and not self.exists(pid):
            raise ProcessGoneError(pid, what)

    def read(self, pid: int | str, rel: str, *, optional: bool = False) -> bytes | None:
        """The bytes of ``/proc/PID/rel``; ``None`` if ``optional`` and it is missing."""
        path = self.path(pid, rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if optional and exc.errno == errno.ENOENT and (
                not isinstance(pid, int) or self.exists(pid)
            ):
                return None
            raise self._fail(pid, rel, path, exc) from exc
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise self._fail(pid, rel, path, exc) from exc
        finally:
            os.close(fd)
        return b"".join(chunks)

    def must_read(self, pid: int | str, rel: str) -> bytes:
        data = self.read(pid, rel)
        assert data is not None
        return data

    def readlink(self, pid: int | str, rel: str, *, optional: bool = False) -> str | None:
        path = self.path(pid, rel)
        try:
            return os.readlink(path)
        except OSError as exc:
            if optional and exc.errno == errno.ENOENT:
                return None
            raise self._fail(pid, rel, path, exc) from exc

    def listdir(self, pid: int | str, rel: str, *, optional: bool = False) -> list[str] | None:
        path = self.path(pid, rel)
        try:
            return os.listdir(path)
        except OSError as exc:
            if optional and exc.errno == errno.ENOENT:
                return None
            raise self._fail(pid, rel, path, exc) from exc

    def pids(self) -> list[int]:
        """Every process id present under the root."""
        try:
            names = os.listdir(self.root)
        except OSError as exc:
            raise ProcReadError(self.root, exc) from exc
        return [int(n) for n in names if n.isdigit()]

    def ns_inode(self, pid: int, kind: str = "mnt") -> int:
        """The inode of ``/proc/PID/ns/<kind>`` (``mnt:[4026531840]`` -> 4026531840)."""
        link = self.readlink(pid, f"ns/{kind}")
        assert link is not None
        __, sep, rest = link.partition(":[")
        if not sep or not rest.endswith("]") or not rest[:-1].isdigit():
            raise DumpError(f"{self.path(pid, 'ns', kind)}: unexpected link {link!r}")
        return int(rest[:-1])
