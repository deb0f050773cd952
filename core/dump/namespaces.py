"""The mount namespaces of a process tree, and a helper that sees a whole filesystem of one.

Namespaces get CRIU-like small ids (1, 2, ...) in the order the processes (parents first)
reveal them; the kernel's identity is the inode of ``/proc/PID/ns/mnt``. A recording without
``ns/mnt`` links groups processes by identical mountinfo text instead.

:class:`FilesystemViews` runs ``nshelper.py`` in a fresh single-threaded interpreter: the
main process never calls setns, whatever threads it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import DumpError
from ..kernel.mountinfo import parse, read_while_written
from ..model import Mount, MountTree
from . import nshelper
from .procfs import ProcessGoneError, ProcFS
from .procs import Process

if TYPE_CHECKING:
    from .consistency import MountWatch


@attrs.frozen
class Namespace:
    """One dumped mount namespace."""

    #: The small id used in image names (mountpoints-<ns_id>.img) and ids-<pid>.img.
    ns_id: int
    #: The kernel's identity (nsfs inode), or 0 when the recording had no ns link.
    inode: int
    #: A process of the tree inside it (mountinfo and the content helper go through it).
    pid: int
    #: The mountinfo bytes the tree was parsed from (the consistency check compares them).
    raw: bytes = attrs.field(repr=False)
    tree: MountTree = attrs.field(repr=False)


def read_mountinfo_raw(fs: ProcFS, pid: int) -> bytes:
    return fs.must_read(pid, "mountinfo")


def find_namespaces(
    fs: ProcFS, procs: Sequence[Process], watch: MountWatch | None = None
) -> tuple[list[Namespace], dict[int, int]]:
    """Every distinct mount namespace of ``procs`` and, per pid, its namespace's small id.

    ``watch``: told about each table (by the pid it is read through) before it is read."""
    key_of: dict[int, tuple[int, bytes]] = {}
    raws: dict[int, bytes] = {}
    for p in procs:
        link = fs.readlink(p.pid, "ns/mnt", optional=True)
        if link is not None:
            key_of[p.pid] = (fs.ns_inode(p.pid), b"")
        else:
            if watch is not None:
                watch.add(p.pid, fs.path(p.pid, "mountinfo"))
            raw = read_mountinfo_raw(fs, p.pid)
            raws[p.pid] = raw
            key_of[p.pid] = (0, hashlib.sha256(raw).digest())
    ids: dict[tuple[int, bytes], int] = {}
    first: dict[int, int] = {}
    ns_of: dict[int, int] = {}
    for p in procs:
        key = key_of[p.pid]
        if key not in ids:
            ids[key] = len(ids) + 1
            first[ids[key]] = p.pid
        ns_of[p.pid] = ids[key]
    out = []
    for key, ns_id in ids.items():
        pid = first[ns_id]
        source = fs.path(pid, "mountinfo")
        if watch is not None:
            watch.add(pid, source)
        # Live: parsed while the kernel still writes the text (None: the usual way).
        streamed = None if raws.get(pid) or not fs.live else read_while_written(source)
        if streamed is not None:
            raw, mounts = streamed
        else:
            raw = raws.get(pid) or read_mountinfo_raw(fs, pid)
            mounts = tuple(parse(raw, source))
        out.append(Namespace(ns_id, key[0], pid, raw, MountTree(mounts, ns_id)))
    return out, ns_of


def chain_of(tree: MountTree, mount: Mount) -> list[Mount]:
    """``mount`` and its ancestors, the namespace's root mount first."""
    chain = [mount]
    seen = {mount.mnt_id}
    cur = tree.parent(mount)
    while cur is not None and cur.mnt_id not in seen:
        chain.append(cur)
        seen.add(cur.mnt_id)
        cur = tree.parent(cur)
    chain.reverse()
    return chain


#: Requested mounts from which the work is shared by two helpers (each its own copy of the
#: namespace, run at once on two CPUs): below it one helper's start is most of the cost.
SPLIT_AT = 512


class FilesystemViews:
    """Detached, childless copies of some mounts of one namespace, readable by path.

    ``with FilesystemViews(pid, tree, mounts) as paths:`` gives, for each mount, a directory
    (``/proc/<helper>/fd/<N>``) through which its whole filesystem below the mount's root is
    visible, content hidden under overmounts included. Nothing changes in the namespace.

    ``for part, final in FilesystemViews(pid, tree, mounts, batch=B).stream():`` gives them
    a batch at a time instead, as ``(index in mounts, path)`` pairs, each helper holding at
    most about ``B`` copies: a batch's paths are valid until the next one is asked for (the
    helper then closes them and goes on in the same private copy of the namespace). ``final``
    flags the last batch.

    With :data:`SPLIT_AT` mounts or more and two CPUs, two helpers share them (every other
    one): uncovering hidden filesystems (a lazy unmount each, 67 us) and cloning run on both
    CPUs while the dump waits for them, and one helper's next batch is made while the
    other's is read.
    """

    def __init__(self, pid: int, tree: MountTree, mounts: Sequence[Mount],
                 helpers: int | None = None, batch: int | None = None) -> None:
        self.pid = pid
        self.tree = tree
        self.mounts = list(mounts)
        self.batch = batch
        cpus = len(os.sched_getaffinity(0))
        self.n = helpers if helpers is not None else (
            2 if cpus > 1 and len(self.mounts) >= SPLIT_AT else 1)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> list[str]:
        assert self.batch is None, "batches come from stream(): each is closed after its turn"
        paths: list[str] = [""] * len(self.mounts)
        for part, _ in self.stream():
            for i, path in part:
                paths[i] = path
        return paths

    def stream(self) -> Iterator[tuple[list[tuple[int, str]], bool]]:
        if not self.mounts:
            yield [], True
            return
        try:
            shares = [self.mounts[k::self.n] for k in range(self.n)]
            for _ in shares:
                self.procs.append(_SPARE.pop() if _SPARE else _start_helper())
            for proc, share in zip(self.procs, shares, strict=True):
                self._ask(proc, share)
            active = list(range(self.n))
            while active:
                for k in list(active):
                    handed, last = self._answer(self.procs[k])
                    if last:
                        active.remove(k)
                    # Index t of helper k's share is mounts[k + t * n].
                    yield [(k + t * self.n, path) for t, path in handed], not active
                    if not last:
                        self._next(self.procs[k])
        except BaseException:
            self._stop()
            raise

    def _ask(self, proc: subprocess.Popen[bytes], share: list[Mount]) -> None:
        targets = [
            [[c.dev.major, c.dev.minor, os.fsencode(c.root).hex(),
              os.fsencode(c.mountpoint).hex()] for c in chain_of(self.tree, m)]
            for m in share
        ]
        request: dict[str, object] = {"pid": self.pid, "targets": targets}
        if self.batch is not None:
            request["batch"] = self.batch
        self._send(proc, json.dumps(request) + "\n")

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], line: str) -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except OSError:
            pass  # it died: its answer says why

    def _next(self, proc: subprocess.Popen[bytes]) -> None:
        self._send(proc, "next\n")

    def _answer(self, proc: subprocess.Popen[bytes]) -> tuple[list[tuple[int, str]], bool]:
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            reply: dict[str, Any] = (
                json.loads(line) if line else {"error": _stderr(proc) or "helper died"})
        except (OSError, ValueError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if "error" in reply:
            if not os.path.isdir(f"/proc/{self.pid}/ns"):
                raise ProcessGoneError(self.pid, "its mount namespace")
            raise DumpError(
                f"namespace helper for process {self.pid}: {reply['error']}"
            )
        handed = [(int(t), f"/proc/{proc.pid}/fd/{int(fd)}") for t, fd in reply["fds"]]
        return handed, bool(reply.get("last", True))

    def _stop(self) -> None:
        """Let the helpers go: their stdin closes, they exit. Not waited for here: tearing
        down a private copy of 10,000 mounts takes the kernel 40 ms a helper, which goes on
        beside the dump; :func:`reap_helpers` waits for them at its end."""
        procs, self.procs = self.procs, []
        _let_go(procs)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def close(self) -> None:
        """Let the helpers go (after :meth:`stream`; a ``with`` block does it itself)."""
        self._stop()


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None:
        return ""
    try:
        proc.wait(timeout=5)
        return proc.stderr.read().decode("utf-8", "replace").strip().splitlines()[-1]
    except (subprocess.TimeoutExpired, IndexError, OSError):
        return ""


#: Helpers let go of and not reaped yet (see :meth:`FilesystemViews._stop`).
_LEAVING: list[subprocess.Popen[bytes]] = []
#: Helpers started ahead and not asked anything yet (see :func:`start_helpers`).
_SPARE: list[subprocess.Popen[bytes]] = []


def _let_go(procs: list[subprocess.Popen[bytes]]) -> None:
    """Close the helpers' pipes (their stdin's end: they exit) and leave them to
    :func:`reap_helpers`."""
    for proc in procs:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    _LEAVING.extend(procs)


def _start_helper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", nshelper.__file__],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
    )


def start_helpers(n: int) -> None:
    """Start ``n`` helpers now, before the processes are frozen: an interpreter takes 20 to
    30 ms to start, which the dump then no longer waits for while they are. A helper does
    nothing until it is asked (it reads its request first); the ones never asked go with
    :func:`reap_helpers`."""
    while len(_SPARE) < n:
        _SPARE.append(_start_helper())


def reap_helpers() -> None:
    """Let the helpers never asked go, and wait for every helper let go of (the dump calls
    this before it returns): one still there after 10 s is killed."""
    spare, _SPARE[:] = list(_SPARE), []
    _let_go(spare)
    while _LEAVING:
        proc = _LEAVING.pop()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
