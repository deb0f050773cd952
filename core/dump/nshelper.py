"""The helper process that makes a whole filesystem of another mount namespace readable.

Run as a *script* (``python -I -S nshelper.py``): a fresh, single-threaded interpreter that
imports nothing but the standard library, because setns(CLONE_NEWNS) fails in a multithreaded
process and the dumper may be one. It

1. enters the mount namespace of the target process (pidfd_open + setns),
2. unshares *one* private copy of it and makes every mount private, so that nothing it does
   below propagates back to the dumped namespace, and reads the copy's mountinfo once,
3. finds each requested mount in the copy (given as the chain of ``(dev, root, mountpoint)``
   from the namespace's root mount down to it) before anything changes there,
4. hands out, for each of them, a clone made with ``open_tree(OPEN_TREE_CLONE)`` and no
   ``AT_RECURSIVE`` (a detached copy without children, in which nothing covers anything) as
   soon as it is visible in the copy; one that is not is uncovered layer by layer, lazily
   unmounting what is on top of it, but only once every requested mount inside that covering
   mount's subtree has its clone (a lazy unmount takes the whole subtree away),
5. prints the fd numbers as JSON lines, a batch at a time: with ``batch`` in the request, once
   that many clones are held it sends them and waits for a ``next`` line before closing them
   and going on (a namespace with more hidden filesystems than the descriptor limit is served
   from one copy, not one copy per batch); after the last batch it waits until its stdin
   closes.

So one dump makes one copy of the namespace and reads one mount table, however many of its
filesystems are hidden: the work is a few statx(2) per requested mount plus one umount2(2) per
covering mount, instead of a new copy (and its mountinfo) per hidden filesystem.

The dumper then reads each filesystem through ``/proc/<helper>/fd/<N>``. The private copy
and the detached mounts vanish when the helper exits.

Request (stdin, one JSON line): ``{"pid": P, "targets": [[[maj, min, root_hex, mp_hex], ...]],
"batch": B}`` with paths as hex of their bytes (``batch`` optional: all at once). Replies: one
``{"fds": [[target, N], ...], "last": bool}`` per batch, or ``{"error": "..."}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import struct
import sys
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

SYS_setns, SYS_statx, SYS_open_tree, SYS_pidfd_open = 308, 332, 428, 434
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
MNT_DETACH = 2
OPEN_TREE_CLONE = 1
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
STATX_MNT_ID = 0x1000

#: A mount of the copy: (mount id, parent id, "maj:min", root, mountpoint).
_Row = tuple[int, int, str, bytes, bytes]
#: One requested mount: its chain of (dev, root, mountpoint), the namespace's root mount first.
_Chain = list[tuple[str, bytes, bytes]]


class HelperError(Exception):
    pass


def _err(call: str, what: object) -> HelperError:
    e = ctypes.get_errno()
    return HelperError(f"{call} {what!r}: {os.strerror(e)}")


def _unescape(field: bytes) -> bytes:
    if b"\\" not in field:
        return field
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def _mounts(procfd: int) -> list[_Row]:
    fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=procfd)
    with open(fd, "rb") as f:
        data = f.read()
    out = []
    for line in data.splitlines():
        fld = line.split(b" ")
        root = _unescape(fld[3])
        if root.endswith(b"//deleted") and root != b"//deleted":
            root = root[: -len(b"//deleted")]
        out.append((int(fld[0]), int(fld[1]), fld[2].decode(), root, _unescape(fld[4])))
    return out


def _statx_mnt_id(path: bytes) -> int:
    buf = ctypes.create_string_buffer(256)
    ret = _libc.syscall(SYS_statx, ctypes.c_int(AT_FDCWD), path,
                        ctypes.c_int(AT_SYMLINK_NOFOLLOW), ctypes.c_uint(STATX_MNT_ID), buf)
    if ret < 0:
        raise _err("statx", path)
    return int(struct.unpack_from("<Q", buf.raw, 144)[0])


def _prefixes(path: bytes) -> list[bytes]:
    """``/``, ``/a``, ``/a/b`` for ``/a/b``."""
    out, acc = [b"/"], b""
    for part in path.strip(b"/").split(b"/"):
        if part:
            acc = acc + b"/" + part
            out.append(acc)
    return out


def _at_or_above(mp: bytes, place: bytes) -> bool:
    return mp == b"/" or mp == place or place.startswith(mp + b"/")


def resolve(mounts: list[_Row], chains: list[_Chain]) -> list[list[int]]:
    """Each chain's mount ids in the copy, matched by (dev, root, mountpoint) under the parent.

    Done once, before anything is unmounted: an id found here stays valid for as long as its
    mount is in the copy. A dict keyed by the parent makes it linear in the chains' length
    (a namespace root with 10,000 children is searched once, not once per chain)."""
    ids = {m[0] for m in mounts}
    under: dict[tuple[int, str, bytes, bytes], int] = {}
    for m in mounts:
        parent = m[1] if m[1] in ids and m[1] != m[0] else 0
        # Two mounts with the same key under one parent (a shadow mount of old kernels):
        # the first one, as the copy's table lists them.
        under.setdefault((parent, m[2], m[3], m[4]), m[0])
    out = []
    for chain in chains:
        got: list[int] = []
        parent = 0
        for dev, root, mp in chain:
            hit = under.get((parent, dev, root, mp))
            if hit is None:
                raise HelperError(f"mount {dev} {root!r} at {mp!r} not found in the namespace copy")
            got.append(hit)
            parent = hit
        out.append(got)
    return out


class Uncoverer:
    """Clones of the requested mounts of the one private copy, uncovering as little as it can.

    A requested mount is *visible* when, walking its mountpoint from ``/``, each place shows
    the deepest mount of its chain mounted at or above that place. Otherwise the first place
    that does not shows the *covering* mount (mounted right there). Unmounting it lazily takes
    its whole subtree out of the copy, so every requested mount inside that subtree (its chain
    holds the covering mount's id) is cloned first; those are uncovered the same way, and
    only by mounts inside that subtree (the places above it show mounts of their chains too),
    so the work always ends.
    """

    def __init__(self, chains: list[_Chain], ids: list[list[int]]) -> None:
        self.mps = [[c[2] for c in chain] for chain in chains]
        self.ids = ids
        self.fds: list[int | None] = [None] * len(chains)
        #: Mount id -> the requested mounts whose chain holds it (those inside its subtree).
        self.inside: dict[int, list[int]] = {}
        for t, chain_ids in enumerate(ids):
            for mid in chain_ids:
                self.inside.setdefault(mid, []).append(t)
        #: Clone per copy mount id: a mount requested twice gets the same descriptor.
        self.clone_of: dict[int, int] = {}
        #: The covering mounts unmounted so far (their subtrees left the copy with them).
        self.unmounted: set[int] = set()
        #: Targets cloned and not handed out yet, in the order they were cloned.
        self.fresh: list[int] = []

    def run(self, batch: int | None = None) -> Iterator[tuple[list[tuple[int, int]], bool]]:
        """Batches of (target, clone descriptor), the last one flagged; each batch's clones
        are closed by :meth:`release` before the next is made (``batch`` None: one batch)."""
        limit = batch if batch is not None and batch > 0 else len(self.fds) + 1
        for t, fd in enumerate(self.fds):
            if fd is None:
                self._obtain(t)
            if len(self.fresh) >= limit:
                out, self.fresh = self.fresh, []
                yield [(u, self._fd(u)) for u in out], False
        out, self.fresh = self.fresh, []
        yield [(u, self._fd(u)) for u in out], True

    def _fd(self, t: int) -> int:
        fd = self.fds[t]
        assert fd is not None and fd >= 0
        return fd

    def release(self, handed: list[tuple[int, int]]) -> None:
        """Close a batch's clones; the targets stay done (a later request of the same mount
        is cloned again)."""
        closed = {fd for _, fd in handed}
        for t, _ in handed:
            self.fds[t] = -1
        for mid in [m for m, fd in self.clone_of.items() if fd in closed]:
            del self.clone_of[mid]
        for fd in closed:
            os.close(fd)

    def _obtain(self, first: int) -> None:
        """Clone ``first``, and before it whatever it takes to uncover it."""
        # ``blocked``: on the stack, waiting for the mounts pushed above them. A mount merely
        # pushed (not looked at yet) may be pushed again, higher, by a cover that needs it
        # sooner; a blocked one never can be (it is outside the subtree of the covers that
        # the mounts above it wait for), so meeting one again would mean a loop.
        stack, blocked = [first], set()
        while stack:
            t = stack[-1]
            if self.fds[t] is not None:
                stack.pop()
                blocked.discard(t)
                continue
            cover = self._cover(t)
            if cover is None:
                self.fds[t] = self._clone(t)
                self.fresh.append(t)
                continue
            place, mid = cover
            waiting = [u for u in self.inside.get(mid, ()) if self.fds[u] is None]
            if waiting:
                if not blocked.isdisjoint(waiting):  # only a kernel breaking the rules above
                    raise HelperError(f"cannot uncover {self.mps[t][-1]!r}: {place!r} "
                                      "covers a mount that waits for it")
                blocked.add(t)
                stack.extend(waiting)
                continue
            if _libc.umount2(place, MNT_DETACH) != 0:
                raise _err("umount2", place)
            self.unmounted.add(mid)

    def _cover(self, t: int) -> tuple[bytes, int] | None:
        """The first place on ``t``'s mountpoint that shows a mount not of its chain."""
        mps, ids = self.mps[t], self.ids[t]
        # Most requested mounts are visible: the walk to the mountpoint itself ends on the
        # mount, one statx instead of one per path component. (A covered one's mountpoint
        # may not even exist in what covers it: the walk below finds the cover.)
        try:
            if _statx_mnt_id(mps[-1]) == ids[-1]:
                return None
        except HelperError:
            pass
        k = 0
        for place in _prefixes(mps[-1]):
            # The chain's mountpoints nest (each below its parent's): advance, never rescan.
            while k + 1 < len(mps) and _at_or_above(mps[k + 1], place):
                k += 1
            seen = _statx_mnt_id(place)
            if seen != ids[k]:
                if seen in self.unmounted:  # umount2 said yes and yet it is still there
                    raise HelperError(f"cannot uncover {place!r}")
                return place, seen
        return None

    def _clone(self, t: int) -> int:
        mid = self.ids[t][-1]
        fd = self.clone_of.get(mid)
        if fd is None:
            mp = self.mps[t][-1]
            fd = int(_libc.syscall(SYS_open_tree, ctypes.c_int(AT_FDCWD), mp,
                                   ctypes.c_uint(OPEN_TREE_CLONE)))
            if fd < 0:
                raise _err("open_tree", mp)
            self.clone_of[mid] = fd
        return fd


def _private_copy(pidfd: int) -> None:
    """Enter the target namespace, then a private copy of it that propagates nowhere."""
    if _libc.syscall(SYS_setns, ctypes.c_int(pidfd), ctypes.c_int(CLONE_NEWNS)) < 0:
        raise _err("setns", "target")
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _err("unshare", "CLONE_NEWNS")
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _err("mount", "/ MS_REC|MS_PRIVATE")


def _raise_nofile() -> None:
    """One descriptor per requested mount is held: a shell's soft limit of 1,024 is too few
    for a namespace with thousands of hidden filesystems; the hard limit is ours to take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(request: dict[str, object]) -> Uncoverer:
    pid = int(request["pid"])  # type: ignore[call-overload]
    chains: list[_Chain] = [
        [(f"{a}:{b}", bytes.fromhex(r), bytes.fromhex(p)) for a, b, r, p in raw]
        for raw in request["targets"]  # type: ignore[attr-defined]
    ]
    _raise_nofile()
    # Our /proc directory, opened before entering the target namespace: a container namespace
    # need not have /proc mounted at all, and the fd keeps showing our current mounts.
    procfd = os.open(f"/proc/{os.getpid()}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pidfd = _libc.syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(0))
    if pidfd < 0:
        raise _err("pidfd_open", pid)
    try:
        _private_copy(pidfd)
    finally:
        os.close(pidfd)
    ids = resolve(_mounts(procfd), chains)
    os.close(procfd)
    return Uncoverer(chains, ids)


def _say(reply: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def main() -> int:
    request = json.loads(sys.stdin.readline())
    batch = request.get("batch")
    try:
        uncover = serve(request)
        for handed, last in uncover.run(batch if isinstance(batch, int) else None):
            _say({"fds": handed, "last": last})
            if last:
                break
            if sys.stdin.readline() != "next\n":
                return 0  # the dumper is gone or done: nothing more to hand out
            uncover.release(handed)
    except (HelperError, OSError) as exc:
        _say({"error": str(exc)})
    # Hold the detached mounts (and the private namespace) until the dumper is done.
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
