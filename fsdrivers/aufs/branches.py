"""AUFS branches as sysfs lists them: ``/sys/fs/aufs/si_<id>/br0``, ``br1``, ...

Each ``brN`` holds one line, ``<path>=<permission>``: the branch directory (escaped like
mountinfo: control characters, space, backslash and DEL as ``\\ooo``) and its permission
(``rw``, ``ro``, ``rr``, with attributes such as ``+wh`` or ``+nolwh``). ``br0`` is the top
branch. The same directory has other files (``brid0``, ``xi_path``) that are not branches.

The branch list is logged, one line per branch, in this stable format (logger
``criu_fw.aufs``, level INFO), for tools that rebuild the branch directories before restore::

    aufs si=<id> branches=<count>
    aufs si=<id> br<N> <permission> <path>

``<path>`` is last and escaped as sysfs escapes it (plus bytes that are not UTF-8, as
``\\ooo``), so ``line.split(" ", 4)`` and an octal unescape give the path back byte for byte.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time

import attrs
from criu_fw.driver import DumpError, unescape

log = logging.getLogger("criu_fw.aufs")

#: AUFS creates at most br0..br999 in sysfs; more means something is not what we think.
MAX_BRANCHES = 1000
_BUSY_RETRIES = 20
_BR_NAME = re.compile(r"br([0-9]+)")
# The base permission and any number of "+attribute"s, as au_optstr_br_perm() writes them.
PERMISSION = re.compile(r"(rw|ro|rr)(\+[a-z][a-z0-9_]*)*")
# What aufs's au_esc_chars escapes (0x01-0x20, backslash, DEL); we also escape NUL.
_ESCAPED = frozenset(range(0x21)) | {0x5C, 0x7F}


@attrs.frozen
class Branch:
    """One branch: its directory on the dumped host (surrogateescape ``str``) and permission."""

    path: str
    perm: str

    @property
    def writable(self) -> bool:
        return self.perm.startswith("rw")


def sysfs_dir(sys_root: str, si: str) -> str:
    return os.path.join(sys_root, "fs", "aufs", f"si_{si}")


def _parse_br(data: bytes, where: str) -> Branch:
    text = data[:-1] if data.endswith(b"\n") else data
    if not text:
        raise DumpError(f"{where}: empty; expected '<path>=<permission>'")
    if b"\n" in text:
        raise DumpError(f"{where}: more than one line; expected '<path>=<permission>'")
    if text.count(b"=") > 1:
        # '=' is not escaped by sysfs, and AUFS's own br: option splits at the first '=',
        # so the path cannot be told apart from the permission (nor passed back to mount).
        raise DumpError(f"{where}: branch path contains '=': {_show(text)}")
    raw_path, sep, raw_perm = text.partition(b"=")
    if not sep:
        raise DumpError(f"{where}: no '=' in {_show(text)}; expected '<path>=<permission>'")
    perm = raw_perm.decode("ascii", "replace")
    if PERMISSION.fullmatch(perm) is None:
        raise DumpError(f"{where}: unknown branch permission {perm!r}")
    path = unescape(raw_path)
    if not path.startswith(b"/"):
        raise DumpError(f"{where}: branch path {_show(path)} is not absolute")
    return Branch(os.fsdecode(path), perm)


def _show(data: bytes) -> str:
    return repr(data[:120].decode("utf-8", "backslashreplace"))


def read_branches(sys_root: str, si: str, where: str) -> tuple[Branch, ...]:
    """The branches of superblock ``si``, br0 first; ``where`` names the mount in errors.

    Every ``brN`` from 0 up to the highest present must exist and parse.
    """
    base = sysfs_dir(sys_root, si)
    try:
        names = os.listdir(base)
    except OSError as exc:
        why = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise DumpError(
            f"{where}: cannot list AUFS branches in {base}: {why} ({exc.strerror}); "
            f"is sysfs mounted there and the superblock still alive?"
        ) from exc
    indexes: set[int] = set()
    for name in names:
        m = _BR_NAME.fullmatch(name)
        if m is None:
            continue  # brid0, xi_path, ...: not branches
        if m.group(1) != str(int(m.group(1))):
            raise DumpError(f"{where}: {os.path.join(base, name)}: malformed branch file name")
        indexes.add(int(m.group(1)))
    if not indexes:
        raise DumpError(f"{where}: no br0 in {base}: the superblock lists no branches")
    if max(indexes) >= MAX_BRANCHES:
        raise DumpError(
            f"{where}: {base} has br{max(indexes)}: more than {MAX_BRANCHES} branches "
            f"(br0..br{MAX_BRANCHES - 1}) is not something AUFS creates"
        )
    count = max(indexes) + 1
    if len(indexes) != count:
        missing = min(set(range(count)) - indexes)
        raise DumpError(f"{where}: {base}/br{missing} is missing while br{count - 1} exists")
    out = []
    for i in range(count):
        path = os.path.join(base, f"br{i}")
        out.append(_parse_br(_read_br(path, where), f"{where}: {path}"))
    return tuple(out)


def _read_br(path: str, where: str) -> bytes:
    # AUFS answers EBUSY instead of waiting when a remount holds the superblock's lock
    # (sysaufs_si_show only try-locks): worth a few retries before giving up.
    for attempt in range(_BUSY_RETRIES + 1):
        try:
            with open(path, "rb") as f:
                return f.read(1 << 16)
        except OSError as exc:
            if exc.errno == errno.EBUSY and attempt < _BUSY_RETRIES:
                time.sleep(0.01)
                continue
            why = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise DumpError(f"{where}: cannot read {path}: {why} ({exc.strerror})") from exc
    raise AssertionError("unreachable")


def escape_path(path: str) -> str:
    """A branch path for the log line: one token-safe line, reversible byte for byte."""
    out = []
    for b in os.fsencode(path).decode("utf-8", "surrogateescape"):
        code = ord(b)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\{code - 0xDC00:03o}")
        elif code < 0x80 and code in _ESCAPED:
            out.append(f"\\{code:03o}")
        else:
            out.append(b)
    return "".join(out)


def log_lines(si: str, branches: tuple[Branch, ...]) -> list[str]:
    """The documented log lines for one superblock's branch list."""
    lines = [f"aufs si={si} branches={len(branches)}"]
    lines += [f"aufs si={si} br{i} {b.perm} {escape_path(b.path)}" for i, b in enumerate(branches)]
    return lines


def log_branches(si: str, branches: tuple[Branch, ...]) -> None:
    for line in log_lines(si, branches):
        log.info("%s", line)
