"""The restoring child and the holders: how the restored namespaces come to exist and stay.

One forked, single-threaded child builds every namespace. It unshares a private copy of the
caller's namespace (``base``: everything private, so nothing it mounts propagates back) and,
for each dumped namespace, enters a fresh copy of ``base``, builds the tree under a directory
of its own, and makes it that namespace's root with pivot_root(".", ".") and a lazy unmount
of the old root (:class:`KernelNamespaces`; :mod:`.build` drives it). Each namespace stays
alive through the child's descriptor of it.

It reports to the caller through a pipe, one line each: ``NS <ns_id> <fd>`` for every
namespace, ``READY``, or ``ERR <one line>`` (before either, ``TRACE <n>`` and n bytes: the
trace records of the hooks it called, see :mod:`criu_fw.api.tracing`). The caller then puts
a *holder* into each namespace that needs one: a fresh small process (a new interpreter, not
a fork of the caller, so it keeps neither the caller's memory nor its descriptors) that enters
the namespace through ``/proc/CHILD/fd/FD``, closes every descriptor, names itself
``criu-fw-holder`` and pauses.
When all holders are in, the caller writes ``GO``: the child exits, or, with a command, execs
it in the root namespace (the pipe is close-on-exec: EOF; a failed exec is ``ERR``).

On any failure the child exits and the holders are killed: the namespaces disappear with them,
and the caller's namespace is never touched. The host-side directories are empty afterwards
(the mounts live in namespaces whose roots are no longer under them) and are removed. A
terminating signal is such a failure (:mod:`.signals`): the caller asks the child to stop with
SIGTERM, on which it undoes its work as after an error, and kills it if it takes too long.

Network and IPC namespaces (``restore(netns=..., ipcns=...)``): the child builds in the
caller's unless asked otherwise; then, before it builds anything, it unshares new ones
(``new``) or enters the given namespace files, which the caller opened and checked before the
fork (:func:`open_namespaces`). The holders enter them too, so ``nsenter -t HOLDER -m -n -i``
gives the restored view, and new namespaces live as long as a holder (or the command) does.
A sysfs (keyed by network namespace) or an mqueue (by IPC namespace) made there is the
restore's own; in the caller's namespaces it is this machine's (see
:mod:`criu_fw.kernel.superblocks`).

The child's log records (criu_fw's loggers) go to the caller as ``LOG <level> <logger> <one
line>`` and are logged there, so the caller's logging configuration sees them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Sequence

import attrs

from .. import kernel
from ..api import tracing
from ..errors import CommandNotRunError, RestoreError, UsageError
from ..forking import write_all
from ..kernel.mountops import KernelMountOps
from ..kernel.superblocks import NAMESPACE_NAMES, OPTION
from .signals import SIGNALS, after_fork, forward_to, held, in_background
from .watchdog import RestoreWatchdog, close_inherited

#: Exit status of a child that failed before it could exec the command.
CHILD_FAILED = 125
#: How long a child asked to stop may take to undo its work before it is killed.
STOP_GRACE = 5.0
#: What a holder calls itself (``ps -o comm``, /proc/PID/comm).
HOLDER_NAME = "criu-fw-holder"

#: The holder's program (run with ``python -I -S -c``). stdin: one line, the path of the
#: mount namespace to enter, then (tab-separated) those of the other namespaces to enter;
#: stdout: ``OK`` or ``ERR <why>``. Afterwards it holds no descriptor at all.
HOLDER = r"""
import ctypes, os, signal, sys
os.closerange(3, 1 << 20)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"criu-fw-holder", 0, 0, 0)
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
paths = sys.stdin.readline().rstrip("\n").split("\t")
fds = []
for path in paths:
    try:
        fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        os.write(1, f"ERR cannot open {path}: {exc.strerror}\n".encode())
        sys.exit(1)
# The mount namespace last: entering it changes the root, the others do not.
for fd, nstype in [(fd, 0) for fd in fds[1:]] + [(fds[0], 0x20000)]:
    if libc.setns(fd, nstype) != 0:
        os.write(1, f"ERR setns: {os.strerror(ctypes.get_errno())}\n".encode())
        sys.exit(1)
    os.close(fd)
os.chdir("/")
os.write(1, b"OK\n")
os.closerange(0, 1 << 20)
while True:
    signal.pause()
"""
assert HOLDER_NAME in HOLDER


@attrs.frozen
class NamespaceJoin:
    """A network or IPC namespace for the restoring child: a new one (``fd`` -1) or the
    namespace file ``where``, opened (``fd``) and checked by the caller."""

    kind: str  # "net" or "ipc"
    flag: int  # its CLONE_NEW* value
    where: str  # "new" or the path given
    fd: int = -1

    @property
    def fresh(self) -> bool:
        return self.fd < 0


_NS_FLAGS = {"net": kernel.CLONE_NEWNET, "ipc": kernel.CLONE_NEWIPC}
_FLAG_NAMES = {
    kernel.CLONE_NEWNET: "a network", kernel.CLONE_NEWIPC: "an IPC",
    kernel.CLONE_NEWNS: "a mount", kernel.CLONE_NEWPID: "a PID",
    kernel.CLONE_NEWCGROUP: "a cgroup", 0x04000000: "a UTS", 0x10000000: "a user",
    0x00000080: "a time",
}


def open_namespaces(*, netns: str | None = None, ipcns: str | None = None) -> list[NamespaceJoin]:
    """Check ``--netns`` / ``--ipcns`` (``new``, or a namespace file such as
    ``/run/netns/NAME`` or ``/proc/PID/ns/net``) before anything is forked: a file must be a
    namespace of that kind. The caller closes the descriptors (:func:`close_namespaces`)."""
    out: list[NamespaceJoin] = []
    try:
        for kind, value in (("net", netns), ("ipc", ipcns)):
            if value is not None:
                out.append(_open_namespace(kind, value))
    except BaseException:
        close_namespaces(out)
        raise
    return out


def _open_namespace(kind: str, value: str) -> NamespaceJoin:
    flag = _NS_FLAGS[kind]
    if value == "new":
        return NamespaceJoin(kind, flag, value)
    usage = f"{OPTION[kind]} {value}"
    example = f"give new, or a namespace file such as /run/netns/NAME or /proc/PID/ns/{kind}"
    if not value:
        raise UsageError(f"{OPTION[kind]}: empty; {example}")
    try:
        fd = os.open(value, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{usage}: cannot open it: {exc.strerror}; {example}") from None
    try:
        got = fcntl.ioctl(fd, kernel.NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise UsageError(f"{usage}: not a namespace file; {example}") from None
        raise UsageError(f"{usage}: cannot read its namespace type: {exc.strerror}") from None
    if got != flag:
        os.close(fd)
        what = _FLAG_NAMES.get(got, f"a type {got:#x}")
        raise UsageError(f"{usage}: {what} namespace, not {_FLAG_NAMES[flag]} namespace")
    return NamespaceJoin(kind, flag, value, fd)


def close_namespaces(joins: Sequence[NamespaceJoin]) -> None:
    for j in joins:
        if j.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(j.fd)


def _enter_namespaces(joins: Sequence[NamespaceJoin]) -> None:  # pragma: no cover - child
    for j in joins:
        name = NAMESPACE_NAMES[j.kind]
        try:
            if j.fresh:
                kernel.unshare(j.flag)
            else:
                kernel.setns(j.fd, j.flag)
                os.close(j.fd)
        except OSError as exc:
            what = f"make a new {name} namespace" if j.fresh else f"enter {j.where}"
            raise RestoreError(f"{OPTION[j.kind]} {j.where}: cannot {what}: {exc}") from exc


class _Report(logging.Handler):
    """The child's log records, sent to the caller (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        if self.fd < 0:
            return  # the report is closed: the caller has what it needs
        try:
            text = " ".join(record.getMessage().split())
            os.write(self.fd, f"LOG {record.levelno} {record.name} {text}\n".encode())
        except OSError:
            pass  # the caller is gone (EPIPE): it reads nothing any more
        except Exception:  # logging must not break the restore
            self.handleError(record)


def _send_traces(w: int, *, only_if_room: bool = False) -> None:  # pragma: no cover
    """The trace records made in the child (see :mod:`criu_fw.api.tracing`): ``TRACE <n>``
    and n bytes; none, nothing. ``only_if_room``: after a failure the caller may have
    stopped reading (a signal): sent only if the pipe holds it whole, never waited for."""
    data = tracing.handed_back()
    if not data:
        return
    message = b"TRACE %d\n" % len(data) + data
    if only_if_room:
        try:
            queued = struct.unpack("i", fcntl.ioctl(w, termios.FIONREAD, b"\0" * 4))[0]
            if len(message) > fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) - queued:
                return
        except OSError:
            return
    write_all(w, message)


def _take_traces(report: int, line: str) -> None:
    """The child's ``TRACE <n>`` line and its n bytes, into the caller's tracers."""
    size = int(line.split()[1])
    chunks, got = [], 0
    while got < size:
        chunk = os.read(report, min(size - got, 1 << 20))
        if not chunk:
            raise RestoreError("the restoring process's report was cut short")
        chunks.append(chunk)
        got += len(chunk)
    tracing.take_back(b"".join(chunks))


def _relog(line: str) -> None:
    """A ``LOG`` line of the child, logged here as the child's logger would have."""
    _, level, rest = line.rstrip("\n").split(" ", 2)
    name, _, text = rest.partition(" ")
    logging.getLogger(name).log(int(level), "%s", text)


@attrs.frozen
class Spawned:
    #: The child's PID once it exec'ed the command (0 when there is no command).
    pid: int
    #: Holder PID by namespace id.
    holders: dict[int, int]


class KernelNamespaces:
    """Moves the restoring child between namespaces (see :class:`.build.Namespaces`)."""

    def __init__(self, roots: dict[int, str]) -> None:
        self.roots = roots
        self.base = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.fds: dict[int, int] = {}
        self.current: int | None = None

    def begin(self, ns_id: int) -> str:
        if self.current is not None:
            kernel.setns(self.base, kernel.CLONE_NEWNS)
        # A copy of ``base``, whose mounts are all private: so are the copies.
        kernel.unshare(kernel.CLONE_NEWNS)
        self.fds[ns_id] = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.current = ns_id
        return self.roots[ns_id]

    def seal(self, ns_id: int, root_path: str) -> None:
        os.chdir(root_path)
        kernel.pivot_root(".", ".")
        kernel.umount2(".", kernel.MNT_DETACH)
        os.chdir("/")

    def enter(self, ns_id: int) -> None:
        if self.current != ns_id:
            # setns also moves root and cwd to the namespace's root: the restored one.
            kernel.setns(self.fds[ns_id], kernel.CLONE_NEWNS)
            self.current = ns_id

    def release(self) -> None:
        """Let go of the namespaces built so far (the restore failed; the process is back
        in ``base``)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.current = None

    def close(self) -> None:
        for fd in (self.base, *self.fds.values()):
            os.close(fd)
        self.fds.clear()


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@attrs.define
class _Holder:
    pid: int
    to: int  # its stdin
    back: int  # its stdout


def _start_holder(detach: bool) -> _Holder:
    if not sys.executable:
        raise RestoreError("no Python interpreter to run the namespace holder with")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-I", "-S", "-c", HOLDER],
            {"PATH": "/usr/bin:/bin"},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=detach,
        )
    except OSError:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise
    os.close(in_r)
    os.close(out_w)
    return _Holder(pid, in_w, out_r)


def _read_line(fd: int) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        out += chunk
    return out


def spawn(
    build: Callable[[KernelMountOps, KernelNamespaces], None],
    ns_ids: Sequence[int],
    *,
    command: Sequence[str] | None,
    detach: bool,
    join: Sequence[NamespaceJoin] = (),
    holders: dict[int, int] | None = None,
    watchdog: RestoreWatchdog | None = None,
    builders: list[Builder] | None = None,
) -> Spawned:
    """Fork the child that calls ``build(ops, namespaces)`` (it must end in the root
    namespace, ``ns_ids[0]``), put holders into the namespaces, and return once they are
    complete. Raises :class:`RestoreError` with the child's message when it fails.

    ``join``: the network/IPC namespaces to build in (see :func:`open_namespaces`); the
    holders enter them too. ``holders``: where each holder's PID goes as soon as it starts
    (by namespace id; the caller's ``RestoreResult.holders``, which a signal ends, see
    :mod:`.signals`); one that a failure ends is taken out again. ``watchdog``: told of the
    work directory, the holders and the command (see :mod:`.watchdog`).

    Without a command, the child stays until the restore is handed over: it goes into
    ``builders`` (a :class:`Builder`), which keeps what it made on the host or undoes it.
    With a command, the signals of :mod:`.signals` go to it from its exec on."""
    wanted = list(ns_ids) if command is None else list(ns_ids[1:])
    into: dict[int, int] = {} if holders is None else holders
    waiting: list[Builder] = [] if builders is None else builders
    started: dict[int, _Holder] = {}
    workdir = ""
    pid = 0
    report = control = -1
    try:
        with held():  # made and named at once: the finally below removes it
            workdir = _workdir(watchdog)
        roots = {ns: os.path.join(workdir, f"root-{k}") for k, ns in enumerate(ns_ids)}
        scratch = os.path.join(workdir, "scratch")
        for path in (*roots.values(), scratch):
            os.mkdir(path)
        sys.stdout.flush()
        sys.stderr.flush()
        caller = os.getpid()
        with held():  # a child whose PID is known, pipe ends the finally closes
            r, w = os.pipe()
            report = r
            cr, cw = os.pipe()
            control = cw
            try:
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
                    try:
                        close_inherited()
                        os.close(r)
                        os.close(cw)
                        _child(build, ns_ids, roots, scratch, w, cr, command, join, caller)
                    finally:
                        os._exit(CHILD_FAILED)  # never back into the caller's stack
            finally:
                os.close(w)
                os.close(cr)
            if watchdog is not None:
                watchdog.builder(pid)
        # The holders start while the child builds the namespaces (posix_spawn blocks the
        # caller until the exec, and an interpreter takes a while to start): after the fork,
        # so their start overlaps the build and the child holds none of their pipes.
        for ns in wanted:
            with held():  # started and recorded at once
                started[ns] = h = _start_holder(detach)
                into[ns] = h.pid
                if watchdog is not None:
                    watchdog.holder(h.pid)
        fds: dict[int, int] = {}
        while True:
            line = _read_line(report).decode("utf-8", "replace")
            if line.startswith("ERR "):
                raise RestoreError(line[4:].strip())
            if line.startswith("LOG "):
                _relog(line)
                continue
            if line.startswith("TRACE "):
                _take_traces(report, line)
                continue
            if not line:
                status, pid = _reap(pid), 0
                raise RestoreError(
                    f"the restoring process died without a report (status {status})"
                )
            if line.startswith("NS "):
                _, ns_text, fd_text = line.split()
                fds[int(ns_text)] = int(fd_text)
            elif line == "READY\n":
                break
        others = "".join(f"\t/proc/{pid}/ns/{j.kind}" for j in join)
        for ns, h in started.items():
            os.write(h.to, f"/proc/{pid}/fd/{fds[ns]}{others}\n".encode())
        for ns, h in started.items():
            answer = _read_line(h.back).decode("utf-8", "replace").strip()
            if answer != "OK":
                why = answer[4:] if answer.startswith("ERR ") else "it exited"
                raise RestoreError(f"the holder of mount namespace {ns} did not start: {why}")
        if command is not None:
            # From GO on, the signals are the command's: one that comes before the exec
            # ends the child (it has nothing left to undo) as it would end the command. The
            # watchdog lets it run on too, then.
            if watchdog is not None:
                watchdog.command(pid)
            forward_to(pid)
        with contextlib.suppress(BrokenPipeError):  # it died of one: its status says so
            os.write(control, b"GO\n")
        rest = os.read(report, 4096).decode("utf-8", "replace")
        if rest.startswith("ERR "):
            raise RestoreError(rest[4:].strip())
        if rest.startswith("EXEC "):
            raise CommandNotRunError(rest[7:].strip(), not_found=rest[5] == "1")
        if command is None:
            # End of the report without an error: nothing can fail any more. The child waits
            # to be told whether to keep what it made; the caller's result tells it.
            with held():
                waiting.append(Builder(pid, control))
                pid, control = 0, -1
    except BaseException:
        forward_to(0)
        with held():  # the clean-up is not cut short
            for ns, h in started.items():
                _reap(h.pid)
                into.pop(ns, None)
            if pid:
                _stop(pid)
        raise
    finally:
        with held():
            for fd in (report, control, *(x for h in started.values() for x in (h.to, h.back))):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    return Spawned(pid, into)


def _workdir(watchdog: RestoreWatchdog | None) -> str:
    """``$TMPDIR/criu-fw-restore-XXXXXXXX``, made after the watchdog was told its name (a
    caller killed in between leaves nothing it does not know of)."""
    top = tempfile.gettempdir()
    while True:
        path = os.path.join(top, f"criu-fw-restore-{secrets.token_hex(6)}")
        if watchdog is not None:
            watchdog.tmp(path)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # another's: the next name (the watchdog removes only the last)
        return path


@attrs.define
class Builder:
    """The building child of a restore without a command, once the holders are in: it keeps
    what it made on the host (mountpoints in a ``--root`` tree) when told to (:meth:`keep`,
    the restore handed over) and removes it when its control pipe closes without that
    (:meth:`undo`: the restore was ended before; or its caller died)."""

    pid: int
    control: int

    def keep(self) -> None:
        if self.control < 0:
            return
        with held():
            with contextlib.suppress(OSError):  # it died: what it made is left as it was
                os.write(self.control, b"KEEP\n")
            self._close()
            _reap_later(self.pid)

    def undo(self) -> None:
        if self.control < 0:
            return
        with held():
            self._close()  # end of file: it undoes and exits
            _wait_for(self.pid)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.control)
        self.control = -1


def _reap_later(pid: int) -> None:
    in_background(os.waitpid, pid, 0, name="criu-fw-reap")


def _stop(pid: int) -> int:
    """End the child: SIGTERM first, so that it undoes what it made on the host (mountpoints
    in a --root tree) and stops its content jobs as after any error (:func:`.signals.after_fork`);
    SIGKILL when it has not exited after :data:`STOP_GRACE` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return _wait_for(pid)


def _wait_for(pid: int) -> int:
    """Wait :data:`STOP_GRACE` seconds for the child to exit, then kill it."""
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    return _reap(pid)


def _reap(pid: int, kill: bool = True) -> int:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _expect(control: int, word: bytes) -> None:  # pragma: no cover - child process
    """The caller's next word; anything else (end of file: it gave up, or died) fails."""
    if _read_line(control) != word:
        raise RestoreError("the restore was given up before it was complete")


def _child(
    build: Callable[[KernelMountOps, KernelNamespaces], None],
    ns_ids: Sequence[int],
    roots: dict[int, str],
    scratch: str,
    w: int,
    control: int,
    command: Sequence[str] | None,
    join: Sequence[NamespaceJoin] = (),
    caller: int = 0,
) -> None:  # pragma: no cover - child process
    ops = KernelMountOps(scratch, fresh=[j.kind for j in join if j.fresh], guard=held)
    try:
        after_fork()
        tracing.forked()
        # A process group of its own while it builds: a SIGKILL of the caller's whole group
        # (``kill -9 -PGID``, a job killed by its shell) does not reach it, and the caller's
        # death is then the SIGTERM below: it undoes what it made on the host (mountpoints
        # in a --root tree), which nothing else can. A command joins the caller's group again.
        group = os.getpgid(0)
        os.setpgid(0, 0)
        # Until the restore is complete, the caller's death (SIGKILL) is a SIGTERM here: the
        # same undo as after a signal. Its thread, in fact; it waits in spawn() meanwhile.
        kernel.parent_death_signal(signal.SIGTERM)
        if os.getppid() != caller:
            raise RestoreError("the restore's caller is gone")  # died before the prctl
        logger = logging.getLogger("criu_fw")
        report = _Report(w)
        logger.handlers = [report]
        logger.propagate = False  # not through the handlers the fork copied
        kernel.enter_private_namespace()
        # Before anything is built: superblocks keyed by these namespaces are made in them.
        _enter_namespaces(join)
        spaces = KernelNamespaces(roots)
        limit = kernel.raise_nofile()
        try:
            build(ops, spaces)
            _send_traces(w)
            for ns in ns_ids:
                os.write(w, f"NS {ns} {spaces.fds[ns]}\n".encode())
            os.write(w, b"READY\n")
            _expect(control, b"GO\n")
            if command is None:
                # Nothing can fail any more: the caller goes on (end of the report). What
                # was made stays only when the restore is handed over (Builder.keep); the
                # caller's death or end before that undoes it as a failure would.
                os.close(w)
                w = report.fd = -1
                _expect(control, b"KEEP\n")
        except BaseException:
            # A signal now would cut the undo short: it is acted on at its end.
            with held():
                # Mountpoints made in a --root tree are on the caller's filesystem: remove
                # them from the base namespace, where nothing is mounted on them (removing a
                # mountpoint of another namespace detaches what is mounted there).
                kernel.setns(spaces.base, kernel.CLONE_NEWNS)
                # The restored namespaces go first (nothing else holds them yet, or holders
                # about to be killed): their mounts come off the mountpoints made, so undo
                # sees those directories themselves.
                spaces.release()
                ops.undo()
            raise
        ops.forget()
        if command is None:
            os._exit(0)
        # Nothing is undone any more: a signal now just ends the child, and the command
        # gets them as the caller had them (default or ignored); its life is its own.
        kernel.parent_death_signal(0)
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        # The command (and what it starts) gets the caller's limit, not the builder's, and
        # its process group: the terminal's job, whose signals and input are the command's.
        kernel.restore_nofile(limit)
        try:
            os.setpgid(0, group)
        except OSError as exc:  # the caller's group is gone: CMD stays in the builder's
            logging.getLogger("criu_fw.restore").warning(
                "the command runs in a process group of its own, not the caller's (%s): it "
                "may not read the terminal", exc.strerror)
        os.close(control)
        spaces.close()
        os.set_inheritable(w, False)
        # What Python ignores for itself (subprocess's restore_signals): the command gets
        # the default, as from a shell (`yes | head` ends quietly).
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(command[0], list(command))
        except OSError as exc:
            what = "not found" if exc.errno == errno.ENOENT else "cannot run it"
            # EXEC, not ERR: the caller's error says which (126 or 127, docs/cli.md).
            os.write(w, f"EXEC {exc.errno == errno.ENOENT:d} {command[0]!r}: {what} in the "
                        f"restored namespace ({exc.strerror})\n".encode())
            os._exit(CHILD_FAILED)
    except BaseException as exc:
        try:
            if w >= 0:
                with contextlib.suppress(Exception):
                    # A failed restore's calls are the ones worth reading.
                    _send_traces(w, only_if_room=True)
                os.write(w, f"ERR {_one_line(exc)}\n".encode())
        finally:
            os._exit(CHILD_FAILED)
