"""Small drivers, states and process helpers shared by test modules (test modules import
from here or from conftest, never from each other)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import attrs
from criu_fw import hookimpl
from criu_fw.api.hooks import current_driver
from criu_fw.api.loader import DriverConfig, DriverManager
from criu_fw.driver import DriverState, FsDriver
from criu_fw.dump import dump
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.testing import NamespaceScenario
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message


@attrs.frozen
class LabelState(DriverState):
    """A third-party-style state travelling in a message criu-fw's protos do not know."""

    MESSAGE: ClassVar[type[Message]] = wrappers_pb2.StringValue

    label: str

    def to_message(self) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=self.label)

    @classmethod
    def from_message(cls, message: Any) -> Self:
        return cls(message.value)


class Ram(FsDriver):
    """A ramfs driver whose parse_mount takes a subset of the hook's arguments."""

    name = "ram"
    fstypes = ("ramfs",)
    state_types = (LabelState,)

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.seen: list[str | None] = []

    @hookimpl
    def parse_mount(self, mount: Any, ctx: object) -> LabelState | None:
        self.seen.append(current_driver())
        if self.fail is not None:
            raise self.fail
        return LabelState(mount.source) if ctx is not None else None


class Wrap:
    """A cross-cutting wrapper plugin (owns no fstype) counting parse_mount calls."""

    name = "wrap"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        self.calls += 1
        return (yield)


MOUNT = parse_line(b"5 1 0:9 / /r rw - ramfs myram rw")


def ram_manager(*plugins: object) -> DriverManager:
    """A manager with only the given plugins (the built-in and installed drivers blocked)."""
    blocked = frozenset({"generic", "overlay", "aufs"})
    return DriverManager(DriverConfig(blocked=blocked, external=False)).load(plugins)


#: The mount table of the recorded processes of :func:`record_proc`.
MOUNTINFO = (
    "20 1 0:30 / / rw,relatime - tmpfs root rw\n"
    "21 20 0:31 / /data rw,relatime shared:4 - tmpfs data rw\n"
    "22 20 0:31 /sub /mnt rw,relatime shared:4 - tmpfs data rw\n"
)


def record_proc(root: Path, pid: int, ppid: int, fds: dict[int, str]) -> None:
    """A recorded /proc/PID (plain files and links) of a process on :data:`MOUNTINFO`."""
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "fdinfo").mkdir()
    (d / "ns").mkdir()
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (holder) S {ppid} {pid} {pid} 0 -1 0\n")
    (d / "mountinfo").write_text(MOUNTINFO)
    os.symlink("mnt:[4026532001]", d / "ns" / "mnt")
    os.symlink("/", d / "cwd")
    os.symlink("/", d / "root")
    for fd, path in fds.items():
        os.symlink(path, d / "fd" / str(fd))
        mnt_id = 22 if path.startswith("/mnt") else 21
        (d / "fdinfo" / str(fd)).write_text(f"pos:\t5\nflags:\t0100002\nmnt_id:\t{mnt_id}\n")
    (d / "maps").write_text(
        "7f0000000000-7f0000001000 rw-s 00001000 00:1f 12 /data/shm\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
    )


def dump_scenario(scn: NamespaceScenario, images: str) -> None:
    """Dump a scenario's process (the host mounts it inherited are recorded by host path)."""
    dump(scn.pid, images, auto_external=True)


def children_of(me: int) -> dict[int, str]:
    """The children of ``me`` and their states (``Z``: exited, not reaped yet)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                out[int(name)] = fields[0]
    return out


@contextlib.contextmanager
def reaping() -> Iterator[Callable[[], list[int]]]:
    """This test process as the child subreaper for a while: what a killed or failed
    restore leaves running becomes its child. Yields a function listing those children
    (zombies reaped), but for the ones it had before (scenarios, another test's zombies); at
    the end, kills those by PID and reaps them."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    had = set(children_of(os.getpid()))

    def children() -> list[int]:
        for pid, state in children_of(os.getpid()).items():
            if state == "Z" and pid not in had:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        return [p for p, state in children_of(os.getpid()).items()
                if state != "Z" and p not in had]  # fmt: skip

    try:
        yield children
    finally:
        for pid in children():
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        libc.prctl(36, 0, 0, 0, 0)


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` every 20 ms until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


#: Debian's crit (pycriu on the system python), the real reader of CRIU images.
CRIT = "/usr/bin/crit" if os.path.exists("/usr/bin/crit") else (shutil.which("crit") or "crit")


def crit_env() -> dict[str, str]:
    """The environment crit runs in: the system python with its own protobuf, nothing of
    our virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def alive(pids: set[int]) -> list[int]:
    """Which of ``pids`` still exist (a worker not reaped would be a zombie: it exists)."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]
