"""The restoring child: a forked, single-threaded process that builds one namespace.

The child unshares a new mount namespace (making everything it inherited private, so nothing
it mounts propagates back), runs the steps, makes the restored root its root with
pivot_root(".", ".") and a lazy unmount of the old root, sets propagation, and then either
execs the command or stays as the namespace's holder. It reports to the parent through a pipe:
``OK`` (holder ready), nothing before EOF (the command was exec'ed: the pipe is close-on-exec),
or ``ERR <one line>``. On any failure it exits, and its namespace, with everything mounted in
it, disappears with it: the caller's namespace is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence

import attrs

from .. import kernel
from ..errors import RestoreError
from ..mountops import KernelMountOps

#: Exit status of a child that failed before it could exec the command.
CHILD_FAILED = 125


@attrs.frozen
class Spawned:
    pid: int
    #: Directory on the host holding the (empty) places the child used; removed by the parent.
    workdir: str


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def spawn(
    build: Callable[[KernelMountOps, str], Callable[[], None]],
    *,
    command: Sequence[str] | None,
    detach: bool,
) -> Spawned:
    """Fork a child that calls ``build(ops, root_path)`` inside a fresh namespace (it returns
    the function to run after pivot_root), and wait until the namespace is complete.

    Raises :class:`RestoreError` with the child's message when it fails."""
    workdir = tempfile.mkdtemp(prefix="criu-fw-restore-")
    root_path = os.path.join(workdir, "root")
    scratch = os.path.join(workdir, "scratch")
    os.mkdir(root_path)
    os.mkdir(scratch)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        os.close(r)
        _child(build, root_path, scratch, w, command, detach)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            report = f.read().decode("utf-8", "replace")
    except BaseException:
        _reap(pid, kill=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if report.startswith("ERR "):
        _reap(pid, kill=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise RestoreError(report[4:].strip())
    if command is None and report.strip() != "OK":
        status = _reap(pid, kill=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise RestoreError(f"the restoring process died without a report (status {status})")
    # The host-side directories are empty here (the mounts live in the child's namespace,
    # whose root is no longer under them), so they can go now.
    shutil.rmtree(workdir, ignore_errors=True)
    return Spawned(pid, workdir)


def _reap(pid: int, kill: bool) -> int:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child(
    build: Callable[[KernelMountOps, str], Callable[[], None]],
    root_path: str,
    scratch: str,
    w: int,
    command: Sequence[str] | None,
    detach: bool,
) -> None:  # pragma: no cover - child process
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        kernel.enter_private_namespace()
        devnull = os.open("/dev/null", os.O_RDWR)
        ops = KernelMountOps(scratch)
        finish = build(ops, root_path)
        os.chdir(root_path)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")
        finish()
        if command is not None:
            os.set_inheritable(w, False)
            os.close(devnull)
            try:
                os.execvp(command[0], list(command))
            except OSError as exc:
                raise RestoreError(
                    f"cannot run {command[0]!r} in the restored namespace: {exc.strerror}"
                ) from exc
        if detach:
            os.setsid()
        os.write(w, b"OK\n")
        os.close(w)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    except BaseException as exc:
        try:
            os.write(w, f"ERR {_one_line(exc)}\n".encode())
        finally:
            os._exit(CHILD_FAILED)
    # The holder: keeps the namespace alive until it is killed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        signal.pause()
