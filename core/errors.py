"""The error hierarchy of criu-fw.

Every error criu-fw raises on purpose derives from :class:`CriuFwError`; where a builtin fits,
the subclass also derives from it (an image that does not parse is also a ``ValueError``, a
failed syscall is also an ``OSError`` carrying errno and path), so callers can catch either.
``str(error)`` is always one line that names what was wrong: the file, the entry, the mount or
the path, and why. The CLI prints exactly that line.
"""

from __future__ import annotations

import errno as _errno
import os

#: The exit statuses of every ``criu-fw`` command (docs/cli.md): success; differences found
#: (verify only); a usage mistake (bad option or argument, no such process); a failure
#: (a dump or restore that failed, a bad image, a system call or driver that failed); a bug.
EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_INTERNAL = 70
#: ``restore -- CMD`` only: criu-fw itself failed (whatever the kind: CMD's statuses 1 to 3
#: must not be taken for criu-fw's), CMD could not be run, CMD was not found (as ``env``,
#: ``chroot`` and ``timeout`` use them).
EXIT_COMMAND_TOOL = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


class CriuFwError(Exception):
    """Base of every error criu-fw raises on purpose."""

    #: Exit status the CLI uses for this kind of error.
    exit_code: int = EXIT_FAILURE


class UsageError(CriuFwError, ValueError):
    """The caller asked for something that cannot work (bad option, bad argument)."""

    exit_code = EXIT_USAGE


class MountinfoError(CriuFwError, ValueError):
    """A mountinfo line (or a statmount record) could not be understood."""

    def __init__(self, source: str, lineno: int, reason: str, line: bytes = b"") -> None:
        shown = line[:120].decode("utf-8", "backslashreplace")
        detail = f": {shown!r}" if line else ""
        super().__init__(f"{source}: line {lineno}: {reason}{detail}")
        self.source = source
        self.lineno = lineno
        self.reason = reason


class ImageError(CriuFwError, ValueError):
    """An image file is missing, truncated, oversized, garbled or of a newer format."""

    def __init__(self, path: str, reason: str, entry: int | None = None) -> None:
        where = f"{path}: entry {entry}" if entry is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.entry = entry
        self.reason = reason


class DriverError(CriuFwError, RuntimeError):
    """A driver failed, or drivers could not be loaded or combined."""

    def __init__(self, driver: str, message: str) -> None:
        super().__init__(f"driver {driver!r}: {message}")
        self.driver = driver


class DriverConflictError(DriverError, LookupError):
    """Two drivers claim the same filesystem type and the configuration picks neither."""

    def __init__(self, fstype: str, first: str, second: str) -> None:
        CriuFwError.__init__(
            self,
            f"drivers {first!r} and {second!r} both claim fstype {fstype!r}; "
            f"choose one with --prefer {fstype}={first} (or CRIU_FW_PREFER={fstype}={first}), "
            f"or block the other with --block-driver",
        )
        self.driver = second
        self.fstype = fstype
        self.drivers = (first, second)


class DriverLoadError(DriverError, ImportError):
    """A driver package failed to import or to register (fatal only in strict mode)."""

    def __init__(self, driver: str, distribution: str, reason: str) -> None:
        CriuFwError.__init__(self, f"driver {driver!r} from distribution {distribution}: {reason}")
        self.driver = driver
        self.distribution = distribution


class DumpError(CriuFwError, RuntimeError):
    """A checkpoint could not be taken; nothing was published."""


class DumpRefusedError(DumpError, UsageError):
    """A dump refused for what it was asked (``-t`` of a kernel thread or of the dumper's
    own ancestor, an ``--external`` that names no mount): a usage mistake, exit status 2."""


class RestoreError(CriuFwError, RuntimeError):
    """A restore failed; nothing of it stays mounted anywhere."""


class CommandNotRunError(RestoreError):
    """``restore -- CMD``: the namespaces were restored but CMD could not be executed:
    status 127 when it was not found, 126 when it was found and could not run (as a shell,
    ``env`` and ``chroot`` say it)."""

    def __init__(self, message: str, not_found: bool) -> None:
        super().__init__(message)
        self.exit_code = EXIT_NOT_FOUND if not_found else EXIT_CANNOT_RUN


class MountNotFoundError(CriuFwError, KeyError):
    """A mount id or path that the caller expected in a mount tree is not there."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "mount not found"


class SyscallError(CriuFwError, OSError):
    """A system call failed; carries errno, the path concerned and the kernel's own message."""

    def __init__(
        self, call: str, err: int, path: str | None = None, detail: str | None = None
    ) -> None:
        OSError.__init__(self, err, os.strerror(err), path)
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        code = self.errno if self.errno is not None else 0
        name = _errno.errorcode.get(code, str(code))
        where = f" on {self.filename!r}" if self.filename is not None else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.call}{where} failed: {name} ({self.strerror}){extra}"
