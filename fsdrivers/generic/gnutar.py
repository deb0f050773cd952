"""GNU tar, for the filesystems and archives that are not done in-process (see
:mod:`.content`): one ``tar`` process each, with CRIU's options."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from criu_fw.driver import DumpError, RestoreError

from . import gzipchunks
from .tarextract import used_up

log = logging.getLogger("criu_fw.generic")

#: What compresses tar's output: gzip's format, in members that store what does not
#: compress (:mod:`.gzipchunks`; CRIU's ``--gzip`` spent 14 s on half a GiB of random bytes).
GZIP_PROGRAM = " ".join(
    shlex.quote(a) for a in (sys.executable, "-I", "-S", gzipchunks.__file__)
)

#: GNU tar options matching CRIU's tmpfs archives (criu/mount.c), plus xattrs and ACLs.
TAR_OPTIONS: tuple[str, ...] = (
    "--create", f"--use-compress-program={GZIP_PROGRAM}", "--no-unquote", "--no-wildcards",
    "--one-file-system", "--check-links", "--preserve-permissions", "--sparse",
    "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
)

TAR_EXTRACT: tuple[str, ...] = (
    "tar", "--extract", "--gzip", "--xattrs", "--xattrs-include=*", "--numeric-owner",
    "--sparse", "-p",
)

#: How tar (run with LC_ALL=C) says ENOSPC: strerror's words, or a short write's.
_ENOSPC = ("No space left on device", "Wrote only")

#: tar's closing words, which say that it failed but not why.
_TAR_EPILOGUE = ("Error is not recoverable", "Child returned status", "Exiting with failure")


def tar_error(lines: list[str]) -> str:
    """The line of tar's (or gzip's) stderr that says why: the first that is not one of its
    closing remarks (``tar: Error is not recoverable: exiting now`` hides a full disk)."""
    for line in lines:
        text = line.removeprefix("tar: ")
        if text and not text.startswith(_TAR_EPILOGUE):
            return text
    return lines[-1].removeprefix("tar: ") if lines else ""


#: setpriv(1) runs tar with a parent-death signal: a tar left in the background by a dump
#: (or a restore) that is SIGKILLed goes with it instead of reading on after the processes
#: were resumed. Without setpriv, tar runs as it is.
_SETPRIV = shutil.which("setpriv")


def _dies_with_us(argv: list[str]) -> list[str]:
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else argv


def archive(path: str, out: str, what: str) -> None:
    """Archive the tree at ``path`` into ``out``; ``what`` names the mount in messages."""
    Archiving(path, out, what).wait()


class Archiving:
    """A tar archiving one filesystem (the shape of a :class:`~criu_fw.plan.ContentJob`).

    tar starts in the filesystem (its working directory, set before it runs), so the
    directory ``path`` names need not outlive this call: the job can be waited for later,
    after the view that ``path`` goes through is gone."""

    def __init__(self, path: str, out: str, what: str) -> None:
        self.out, self.what = os.path.abspath(out), what
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait/cancel
        try:
            self._proc = subprocess.Popen(
                _dies_with_us(["tar", *TAR_OPTIONS, f"--file={self.out}", "."]), cwd=path,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errors,
                env={**os.environ, "LC_ALL": "C"},
            )
        except OSError as exc:
            self._errors.close()
            raise DumpError(f"archiving {what} into {out} failed: cannot run tar: "
                            f"{exc.strerror}") from exc

    def done(self) -> bool:
        return self._proc.poll() is not None

    def wait(self) -> None:
        code = self._proc.wait()
        with self._errors:
            self._errors.seek(0)
            err = self._errors.read(8192).decode("utf-8", "replace").strip().splitlines()
        if code == 1:
            # Files changed while tar read them (GNU tar's "some files differ"): a warning.
            log.warning("%s: tar: %s", self.what, err[-1] if err else "files changed")
        elif code != 0:
            raise DumpError(
                f"archiving {self.what} into {self.out} failed: "
                f"{tar_error(err) or f'tar exit status {code}'}"
            )

    def cancel(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        self._errors.close()


class Extraction:
    """A tar unpacking a content archive, running while the restore goes on (a
    :class:`~criu_fw.plan.ContentJob`). tar's messages go to an unnamed file, not a pipe,
    so a chatty tar never blocks waiting for a reader."""

    def __init__(self, archive: str, fd: int, path: str) -> None:
        # The archive is handed over by descriptor (opened and checked by the core: a
        # regular file of the image directory), never by a name tar would open itself.
        self.archive = archive
        self.path = path
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait/cancel
        try:
            self._proc = subprocess.Popen(
                _dies_with_us([*TAR_EXTRACT, "--file", "-", "--directory", path]),
                stdin=fd, stdout=subprocess.DEVNULL, stderr=self._errors,
                env={**os.environ, "LC_ALL": "C"},  # its words quoted in an English line
            )
        except OSError as exc:
            self._errors.close()
            raise RestoreError(
                f"{os.path.basename(archive)}: cannot run tar: {exc.strerror}"
            ) from exc

    def done(self) -> bool:
        return self._proc.poll() is not None

    def wait(self) -> None:
        code = self._proc.wait()
        with self._errors:
            if code == 0:
                return
            self._errors.seek(0)
            lines = self._errors.read(4096).decode("utf-8", "replace").splitlines()
        detail = " ".join((tar_error(lines) or " ".join(lines)).split())
        raise RestoreError(
            f"{os.path.basename(self.archive)}: could not restore the content: "
            f"{self._full(lines)}tar (exit {code}): {detail[:300]}"
        )

    def _full(self, lines: list[str]) -> str:
        """GNU tar says "Wrote only N of M bytes" (or "Cannot open: No space left on
        device", out of inodes) when the filesystem is full: say so first, and which limit
        (the words of the in-process way, :func:`.tarextract.used_up`)."""
        if not any(words in line for line in lines for words in _ENOSPC):
            return ""  # another failure, whatever the filesystem holds
        try:
            why = used_up(os.statvfs(self.path))
        except OSError:
            return ""
        return f"No space left on device (ENOSPC): {why}: " if why else ""

    def cancel(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        self._errors.close()
