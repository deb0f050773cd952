"""The driver author's kit (``pip install criu-fw[testing]``): tests of criu-fw and of
third-party drivers on real namespaces, no mocks.

* :class:`NamespaceScenario`: a child process in a private mount namespace that ran a script;
* :func:`~criu_fw.testing.roundtrip.round_trip`: dump it, restore it in fresh network and IPC
  namespaces, verify, clean up;
* :class:`~criu_fw.api.tracing.Tracer` (which driver got which hook call),
  :func:`~criu_fw.driver.routed_to` (calling a hook method directly as the core would),
  :class:`~criu_fw.kernel.mountops.RecordingMountOps` (a restore that records its mount calls:
  for filesystems the kernel lacks), :func:`~criu_fw.testing.compare.image_differences` (two
  image directories compared, ids aside).

Every mount these helpers make happens inside a private mount namespace of a child process:
``unshare -m --propagation private`` starts it, and it is ended by its PID.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType

READY = "criu-fw-scenario-ready"

#: Working directories of the scenarios this process closed (see :func:`closed_workdirs`).
_closed: list[str] = []


def closed_workdirs() -> list[str]:
    """Working directories of scenarios this process has closed. A restore with ``--root /``
    creates the dumped mountpoints again under that root, so such a directory can come back
    on the host's filesystem after its scenario is gone; test suites remove them."""
    return list(_closed)


def host_mount_table() -> list[str]:
    """The caller's mount table without ids, to check that nothing leaked into it."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().decode("utf-8", "backslashreplace").splitlines()
    # Fields 1-2 are ids that may be reused; the rest identifies a mount.
    return sorted(" ".join(line.split(" ")[2:]) for line in lines)


class NamespaceScenario:
    """A shell script run in a fresh private mount namespace; the process then stays alive
    (sleeping) so that it can be dumped, inspected or entered.

    ``NamespaceScenario(script).pid`` is the scenario's process, whose cwd is ``workdir``
    (a fresh directory under /tmp that the script may use as its playground).
    """

    def __init__(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        keep_running: str = "exec sleep 100000",
    ) -> None:
        self.workdir = tempfile.mkdtemp(prefix="criu-fw-scn-")
        full = f"set -e\ncd {self.workdir}\n{script}\necho {READY}\n{keep_running}\n"
        # stderr goes to a file: background children of the script may keep a pipe open forever.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the scenario
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", full],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while READY.encode() + b"\n" not in buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            chunk = os.read(fd, 65536) if ready else None
            if not chunk:
                self._stderr.seek(0)
                err = self._stderr.read().decode("utf-8", "replace")
                self.close()
                what = (
                    "did not get ready in time" if chunk is None else "failed before it was ready"
                )
                raise RuntimeError(f"scenario {what}: {buf.decode('utf-8', 'replace')}{err}")
            buf += chunk
        out = [buf.decode("utf-8", "replace").split(READY + "\n", 1)[0]]
        self.output = "".join(out)
        self.pid = self.proc.pid

    def run(
        self, argv: Sequence[str], check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the scenario's mount namespace (nsenter, by PID)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *argv],
            capture_output=True,
            check=check,
            input=input,
        )

    def sh(self, script: str, check: bool = True) -> str:
        res = self.run(
            ["sh", "-c", f"cd {self.workdir} 2>/dev/null || true; {script}"], check=False
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"scenario command failed ({res.returncode}): {script}\n{res.stderr.decode()}"
            )
        return res.stdout.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        # The namespace died with its last process, so the workdir holds no mounts here:
        # removing it only touches what the script created on the host's /tmp.
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir not in _closed:
            _closed.append(self.workdir)

    def __enter__(self) -> NamespaceScenario:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
