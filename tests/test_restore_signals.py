"""Signals sent to ``criu-fw restore``: what the restore holds or runs is never left behind.

Each test runs the real command (in ``unshare --net --ipc``, with a TMPDIR of its own),
signals it by PID and looks at what a user would: the exit status, whether the holders, the
command or the restoring child still run, and whether a ``criu-fw-restore-*`` work directory
is left.
"""

from __future__ import annotations

import contextlib
import os
import pty
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from criu_fw.restore.signals import in_background
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario

pytestmark = pytest.mark.privileged

SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT]

#: The command line with a driver hook that says it was reached (a marker file) and hangs:
#: ``rebuild_mount`` while the restore plans, ``restore_content`` while the child builds.
SLEEPY_CLI = r"""
import sys, time
from criu_fw import hookimpl
import criu_fw.cli.restore as cli

class Sleepy:
    @hookimpl(wrapper=True)
    def HOOK(self):
        open(sys.argv[1], "w").close()
        time.sleep(60)
        return (yield)

real = cli.restore
cli.restore = lambda *a, **kw: real(*a, **{**kw, "plugins": [Sleepy()], "manager": None})
from criu_fw.cli import main
main(sys.argv[2:], prog_name="criu-fw")
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("signals") / "images")
    with NamespaceScenario("mkdir t; mount -t tmpfs held t; echo x > t/x") as scn:
        dump_scenario(scn, path)
    yield path


@pytest.fixture
def tmpdir(tmp_path: Path) -> Path:
    """The restore's TMPDIR: its work directory must not stay there."""
    d = tmp_path / "tmp"
    d.mkdir()
    return d


def _defaults() -> None:  # pragma: no cover - runs in the forked child
    # As from an interactive shell, whatever the test runner ignores; no core file for QUIT.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _start(argv: list[str], tmpdir: Path) -> subprocess.Popen[str]:
    # unshare execs the command: the PID is criu-fw's.
    return subprocess.Popen(
        ["unshare", "--net", "--ipc", "--", sys.executable, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)}, preexec_fn=_defaults,
        start_new_session=True,  # no controlling terminal: nothing is "typed"
    )


def _restore(images: str, tmpdir: Path, *command: str) -> subprocess.Popen[str]:
    tail = ["--", *command] if command else []
    return _start(["-m", "criu_fw", "restore", "-q", "-D", images, "--root", "/", *tail], tmpdir)


def _first_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no output from the restore: {err}")
    return line


def _wait(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rpartition(b")")[2].split()[1]) == pid:
                        out.append(int(name))
            except OSError:
                pass
    return out


def _running(pid: int) -> bool:
    """Still there and not a zombie (one that init has not reaped yet ended all the same)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def _finish(proc: subprocess.Popen[str], left: list[int]) -> tuple[int, str, str]:
    """Wait for the restore; then every process in ``left`` must end (soon: init reaps what
    the restore did not). Whatever happens, none of them survives the test."""
    try:
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            # A process left behind keeps the pipes open: the restore's own end is not seen.
            pytest.fail("the output never ended: something of the restore still runs")
        _wait(lambda: not any(_running(p) for p in left), "processes of the restore still run",
              timeout=3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in left:  # by PID, only those this test saw the restore start
            if _running(p):
                os.kill(p, signal.SIGKILL)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_ends_the_holders(images: str, tmpdir: Path, sig: signal.Signals) -> None:
    proc = _restore(images, tmpdir)
    holder = int(_first_line(proc))
    with open(f"/proc/{holder}/comm") as f:
        assert f.read().strip() == "criu-fw-holder"
    left = [holder, *_children(proc.pid)]
    proc.send_signal(sig)
    code, _, err = _finish(proc, left)
    # Holding until a signal is how this mode ends: no error line, the status of the signal.
    assert (code, err) == (128 + sig, "")
    assert not os.path.exists(f"/proc/{holder}")  # killed and reaped by criu-fw itself
    assert os.listdir(tmpdir) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_goes_to_the_command(images: str, tmpdir: Path, sig: signal.Signals) -> None:
    proc = _restore(images, tmpdir, "/bin/sh", "-c", "echo $$; exec sleep 60")
    cmd = int(_first_line(proc))
    left = [cmd, *_children(proc.pid)]
    proc.send_signal(sig)
    code, _, err = _finish(proc, left)
    # The command died of it: the status a shell gives.
    assert (code, err) == (128 + sig, "")
    assert not os.path.exists(f"/proc/{cmd}")
    assert os.listdir(tmpdir) == []


def test_command_status_after_a_signal_is_its_own(images: str, tmpdir: Path) -> None:
    script = 'trap "exit 7" TERM; echo $$; while :; do sleep 0.05; done'
    proc = _restore(images, tmpdir, "/bin/sh", "-c", script)
    cmd = int(_first_line(proc))
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc, [cmd])
    assert (code, err) == (7, "")


def test_command_starts_with_no_signal_ignored(images: str, tmpdir: Path) -> None:
    # Python ignores SIGPIPE and SIGXFSZ for itself; `yes | head` must not complain.
    proc = _restore(images, tmpdir, "/bin/sh", "-c", "grep ^SigIgn /proc/self/status")
    code, out, err = _finish(proc, [])
    assert (code, out, err) == (0, "SigIgn:\t0000000000000000\n", "")


#: Counts the SIGINTs it gets in 1.5 s; exits with that count.
COUNT_SIGINT = (
    "import signal, sys, time\n"
    "got = []\n"
    "signal.signal(signal.SIGINT, lambda *a: got.append(1))\n"
    "print('ready', flush=True)\n"
    "time.sleep(1.5)\n"
    "sys.exit(len(got))\n"
)


def test_ctrl_c_reaches_the_command_once(images: str, tmpdir: Path) -> None:
    # On a terminal, Ctrl-C goes to criu-fw and to the command (one process group): criu-fw
    # must not send it a second time.
    argv = ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore",
            "-q", "-D", images, "--root", "/", "--", sys.executable, "-c", COUNT_SIGINT]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child: a session on the terminal
        try:
            _defaults()
            os.execvpe(argv[0], argv, {**os.environ, "TMPDIR": str(tmpdir)})
        finally:
            os._exit(127)
    seen = b""
    status: tuple[int, int] | None = None
    try:
        deadline = time.monotonic() + 20
        while b"ready" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                seen += os.read(fd, 4096)
        assert b"ready" in seen, seen
        os.write(fd, b"\x03")  # the terminal's interrupt character
        with contextlib.suppress(OSError):  # EIO: nobody has the terminal open any more
            while select.select([fd], [], [], 10)[0] and (chunk := os.read(fd, 4096)):
                seen += chunk
        deadline = time.monotonic() + 10
        while not (status := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if status is None or not status[0]:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)
        os.close(fd)
    # The command counted one SIGINT and exited with that; criu-fw with its status.
    assert os.waitstatus_to_exitcode(status[1]) == 1, seen
    assert os.listdir(tmpdir) == []


@pytest.mark.parametrize(("hook", "sig"), [
    ("rebuild_mount", signal.SIGHUP),  # the parent plans
    ("restore_content", signal.SIGTERM),  # the child builds, the holders start
    ("restore_content", signal.SIGINT),
], ids=["planning-SIGHUP", "building-SIGTERM", "building-SIGINT"])
def test_signal_during_start_up_leaves_nothing(images: str, tmpdir: Path, tmp_path: Path,
                                               hook: str, sig: signal.Signals) -> None:
    marker = tmp_path / "reached"
    proc = _start(["-c", SLEEPY_CLI.replace("HOOK", hook), str(marker), "restore", "-q", "-D",
                   images, "--root", "/"], tmpdir)
    _wait(lambda: marker.exists() or proc.poll() is not None, "the restore never got going",
          timeout=20)
    left = _children(proc.pid)
    if hook == "restore_content":
        assert left and os.listdir(tmpdir), "the child and its work directory should exist"
    proc.send_signal(sig)
    code, _, err = _finish(proc, left)
    assert code == 128 + sig, err
    assert err == f"criu-fw: error: interrupted by {sig.name}; the restore was undone\n"
    assert os.listdir(tmpdir) == []


def test_background_threads_never_take_the_terminating_signals() -> None:
    """A process-directed signal taken by a background thread (a reaper in waitpid) left
    the main thread's wait uninterrupted: the hold went on after SIGTERM. Such threads
    block the signals; the caller's own mask is unchanged."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    in_background(time.sleep, 0.5, name="criu-fw-test-bg")
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    (thread,) = [t for t in threading.enumerate() if t.name == "criu-fw-test-bg"]
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    blocked = int(next(x for x in status.splitlines() if x.startswith("SigBlk:")).split()[1], 16)
    for sig in SIGNALS:
        assert blocked & (1 << (sig - 1)), sig.name
    thread.join()
