"""The helper process that makes a whole filesystem of another mount namespace readable.

Run as a *script* (``python -I -S nshelper.py``): a fresh, single-threaded interpreter that
imports nothing but the standard library, because setns(CLONE_NEWNS) fails in a multithreaded
process and the dumper may be one. It

1. enters the mount namespace of the target process (pidfd_open + setns),
2. unshares a private copy of it and makes every mount private, so that nothing it does
   below propagates back to the dumped namespace,
3. for every requested mount (given as the chain of ``(dev, root, mountpoint)`` from the
   namespace's root mount down to it), lazily unmounts whatever covers it in the copy, then
   clones that single mount with ``open_tree(OPEN_TREE_CLONE)`` and no ``AT_RECURSIVE``: a
   detached copy without children, in which nothing covers anything,
4. prints the fd numbers as one JSON line and waits until its stdin closes.

The dumper then reads each filesystem through ``/proc/<helper>/fd/<N>``. The private copy
and the detached mounts vanish when the helper exits.

Request (stdin, one JSON line): ``{"pid": P, "targets": [[[maj, min, root_hex, mp_hex], ...]]}``
with paths as hex of their bytes. Reply: ``{"fds": [N, ...]}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

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


#: This process's /proc directory, opened before entering the target namespace: a container
#: namespace need not have /proc mounted at all, and the fd keeps showing our current mounts.
_procfd = -1


def _mounts() -> list[tuple[int, int, str, bytes, bytes]]:
    fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_procfd)
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


_Row = tuple[int, int, str, bytes, bytes]
#: The current copy's mounts (parsed once per copy): (children by parent id, top mounts).
_index: tuple[dict[int, list[_Row]], list[_Row]] | None = None


def _copy_index() -> tuple[dict[int, list[_Row]], list[_Row]]:
    global _index
    if _index is None:
        mounts = _mounts()
        ids = {m[0] for m in mounts}
        kids: dict[int, list[_Row]] = {}
        tops = []
        for m in mounts:
            if m[1] in ids and m[1] != m[0]:
                kids.setdefault(m[1], []).append(m)
            else:
                tops.append(m)
        _index = (kids, tops)
    return _index


def _resolve(chain: list[tuple[str, bytes, bytes]]) -> list[int]:
    """The copy's mount ids of the chain, matched by (dev, root, mountpoint) under the parent."""
    kids, tops = _copy_index()
    out: list[int] = []
    candidates = tops
    for dev, root, mp in chain:
        hit = next((m for m in candidates if (m[2], m[3], m[4]) == (dev, root, mp)), None)
        if hit is None:
            raise HelperError(f"mount {dev} {root!r} at {mp!r} not found in the namespace copy")
        out.append(hit[0])
        candidates = kids.get(hit[0], [])
    return out


def _uncover(chain: list[tuple[str, bytes, bytes]], ids: list[int]) -> bool:
    """Unmount (lazily, in the private copy) whatever hides the chain's last mount.

    Walking the target's mountpoint from ``/``, each place must show the deepest mount of the
    chain mounted at or above it; anything else there is a covering mount and goes.
    Returns whether anything was unmounted (the copy no longer mirrors the namespace).
    """
    changed = False
    mps = [c[2] for c in chain]
    for place in _prefixes(mps[-1]):
        i = max(k for k, mp in enumerate(mps) if mp == b"/" or mp == place
                or place.startswith(mp + b"/"))
        for _ in range(10000):
            if _statx_mnt_id(place) == ids[i]:
                break
            if _libc.umount2(place, MNT_DETACH) != 0:
                raise _err("umount2", place)
            changed = True
        else:
            raise HelperError(f"cannot uncover {place!r}")
    return changed


def _private_copy(pidfd: int) -> None:
    """Enter the target namespace, then a private copy of it that propagates nowhere."""
    global _index
    _index = None
    if _libc.syscall(SYS_setns, ctypes.c_int(pidfd), ctypes.c_int(CLONE_NEWNS)) < 0:
        raise _err("setns", "target")
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _err("unshare", "CLONE_NEWNS")
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _err("mount", "/ MS_REC|MS_PRIVATE")


def serve(request: dict[str, object]) -> list[int]:
    global _procfd
    pid = int(request["pid"])  # type: ignore[call-overload]
    if _procfd < 0:
        _procfd = os.open(f"/proc/{os.getpid()}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pidfd = _libc.syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(0))
    if pidfd < 0:
        raise _err("pidfd_open", pid)
    _private_copy(pidfd)
    fds = []
    for raw in request["targets"]:  # type: ignore[attr-defined]
        chain = [(f"{a}:{b}", bytes.fromhex(r), bytes.fromhex(p)) for a, b, r, p in raw]
        ids = _resolve(chain)
        dirty = _uncover(chain, ids)
        fd = _libc.syscall(SYS_open_tree, ctypes.c_int(AT_FDCWD), chain[-1][2],
                           ctypes.c_uint(OPEN_TREE_CLONE))
        if fd < 0:
            raise _err("open_tree", chain[-1][2])
        fds.append(int(fd))
        if dirty:
            # The next target needs a copy that still has everything: a fresh one.
            _private_copy(pidfd)
    os.close(pidfd)
    return fds


def main() -> int:
    request = json.loads(sys.stdin.readline())
    try:
        reply: dict[str, object] = {"fds": serve(request)}
    except (HelperError, OSError) as exc:
        reply = {"error": str(exc)}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    # Hold the detached mounts (and the private namespace) until the dumper is done.
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
