"""Did anyone change a dumped mount table while the dump read it? Two checks answer together.

* :class:`MountWatch` polls the kernel's change events of each namespace's mount table.
  A ``/proc/PID/mountinfo`` descriptor remembers the namespace's event count when it is
  opened and poll(2) reports POLLPRI once it moved: a watch opened before the table is first
  read sees every mount, unmount, move and remount until the end of the dump, including one
  that is undone again before a re-read could notice. It costs one poll.
* :class:`Recheck` reads each table again and compares the text. It is needed because the
  event count does not move for everything: a propagation change made with mount(2)
  (``mount --make-shared``/``--make-private``/``--make-slave``/``--make-unbindable``) leaves it
  alone on this kernel (6.18, measured; mount_setattr(2) does move it).

The dump takes its snapshot when the re-read starts, right after the processes' files and
mappings are read: the tables read first are the tables at that instant (the re-read
compares equal), and the watch proves that nothing was mounted, unmounted or moved from the
first read to the end. What is read after the snapshot (tmpfs content, through private copies
of the mounts) depends on no propagation setting, so a propagation change after it does not
make the images disagree with one another. The re-read is the kernel's work, done in a thread
while the content is archived and the images are written.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading

from ..errors import CriuFwError
from .namespaces import Namespace, read_mountinfo_raw
from .procfs import ProcFS

#: More than any mount table (100,000 mounts make about 10 MB): one call reads it all.
_ONE_CALL = 1 << 30
#: Below this, the re-read is done directly (a few hundred mounts).
_SMALL = 32 << 10


class MountWatch:
    """The change events of the mount tables of some processes' namespaces, each from when
    :meth:`add` was called for it."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # by pid

    def add(self, pid: int, path: str) -> None:
        """Start watching the namespace of ``pid`` (``path``: its mountinfo), before its table
        is first read. A table that cannot be opened is not watched: reading it fails anyway,
        with the usual error."""
        if pid in self._fds:
            return
        with contextlib.suppress(OSError):
            self._fds[pid] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def changed(self) -> set[int]:
        """The pids whose namespace's mount table had an event since :meth:`add`."""
        if not self._fds:
            return set()
        poller = select.poll()
        by_fd = {}
        for pid, fd in self._fds.items():
            poller.register(fd, select.POLLPRI | select.POLLERR)
            by_fd[fd] = pid
        return {by_fd[fd] for fd, ev in poller.poll(0) if ev & (select.POLLPRI | select.POLLERR)}

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


class Recheck:
    """The re-read of every table, the kernel's part in a thread, from construction on.

    A seq_file gives a page per read(2), and a thread retakes the GIL after each one: with
    the main thread busy, that is a switch interval (5 ms) per page. So the thread makes one
    system call per namespace, sendfile(2) of the whole text into a memfd, and
    :meth:`changed` reads the memfds back. Anything unusual (no memfd, no splice for the
    file, a vanished process) is read again the ordinary way, which also raises the ordinary
    errors.
    """

    def __init__(self, fs: ProcFS, namespaces: list[Namespace]) -> None:
        self._fs = fs
        self._namespaces = namespaces
        self._fds: list[tuple[int, int] | None] = [
            _open_pair(fs, ns) if len(ns.raw) >= _SMALL else None for ns in namespaces
        ]
        self._sizes: list[int | None] = [None] * len(namespaces)
        # A small table is read again right here (a thread would cost more than it saves),
        # so that every table is re-read from the same moment on.
        self._read: list[bytes | None] = [
            _read_now(fs, ns) if fds is None else None
            for ns, fds in zip(namespaces, self._fds, strict=True)
        ]
        going = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(going,),
                                        name="criu-fw-mount-recheck", daemon=True)  # fmt: skip
        if any(self._fds):
            self._thread.start()
            # Until the thread is in its system call: it needs the GIL to get there, and
            # this thread, busy writing images when there is no content to archive, would
            # keep it waiting up to a switch interval (5 ms).
            going.wait()

    def _run(self, going: threading.Event) -> None:
        going.set()  # the GIL goes back at the system call right after this
        for i, fds in enumerate(self._fds):
            if fds is None:
                continue
            with contextlib.suppress(OSError):  # then read the ordinary way in changed()
                self._sizes[i] = os.sendfile(fds[1], fds[0], None, _ONE_CALL)

    def changed(self) -> list[Namespace]:
        """The namespaces whose mount table read differently now."""
        self._join()
        out = []
        for ns, fds, size, now in zip(self._namespaces, self._fds, self._sizes, self._read,
                                      strict=True):
            if now is None and fds is not None and size is not None and size < _ONE_CALL:
                now = os.pread(fds[1], size + 1, 0)
                if len(now) != size:
                    now = None
            if now is None:
                now = read_mountinfo_raw(self._fs, ns.pid)
            if now != ns.raw:
                out.append(ns)
        return out

    def _join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()

    def close(self) -> None:
        self._join()
        for fds in self._fds:
            if fds is not None:
                os.close(fds[0])
                os.close(fds[1])
        self._fds = [None] * len(self._fds)


def _read_now(fs: ProcFS, ns: Namespace) -> bytes | None:
    """The table's text, or None where it cannot be read now (changed() then reads it again
    and raises the usual error)."""
    try:
        return read_mountinfo_raw(fs, ns.pid)
    except CriuFwError:
        return None


def _open_pair(fs: ProcFS, ns: Namespace) -> tuple[int, int] | None:
    """``/proc/PID/mountinfo`` and a memfd to copy it into, or None (read it as usual)."""
    try:
        src = os.open(fs.path(ns.pid, "mountinfo"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return src, os.memfd_create("criu-fw-mountinfo", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        os.close(src)
        return None
