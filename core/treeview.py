"""A findmnt-like drawing of a mount tree, with the driver that owns each mount.

Library side of ``criu-fw tree``: :func:`read_tree` reads a live process's namespace with
either reader, :func:`render` draws it. Names are shown with anything unprintable or not UTF-8
escaped (``\\x0a``, ``\\xff``), so one mount is always one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from .errors import CriuFwError, UsageError
from .model import Mount, MountTree

READERS = ("mountinfo", "statmount")
COLUMNS = ("TARGET", "SOURCE", "FSTYPE", "DRIVER", "PROPAGATION", "ID")


def read_tree(
    pid: int | str = "self", reader: str = "mountinfo", proc_root: str = "/proc"
) -> MountTree:
    """The mount tree of ``pid``'s namespace, read with ``reader`` (``mountinfo`` or
    ``statmount``); ``ns_id`` is the inode of its /proc/PID/ns/mnt."""
    try:
        ns_id = os.stat(os.path.join(proc_root, str(pid), "ns", "mnt")).st_ino
    except FileNotFoundError:
        from .kernel.mountinfo import process_gone

        why = process_gone(pid, proc_root)
        if why is None or why.startswith("no process"):
            why = f"no process {pid} (no {proc_root}/{pid}/ns/mnt)"
        raise UsageError(why) from None
    except PermissionError:
        ns_id = 0  # mountinfo may still be readable (a sandbox's pid 1); statmount is not
    if reader == "mountinfo":
        from .kernel.mountinfo import process_gone, read_mountinfo

        try:
            return read_mountinfo(pid, proc_root, ns_id)
        except OSError:
            # Exited since (a zombie's mountinfo is EINVAL): the process, not an errno.
            why = process_gone(pid, proc_root)
            if why is None:
                raise
            raise UsageError(why) from None
    if reader == "statmount":
        from .kernel import statmount

        if not statmount.available():
            raise UsageError("--reader statmount: listmount/statmount are not available here")
        return statmount.read_statmount(pid, proc_root, ns_id)
    raise UsageError(f"unknown reader {reader!r}; choose one of {', '.join(READERS)}")


def shown(text: str) -> str:
    """``text`` made printable on one line: control bytes and non-UTF-8 bytes as ``\\xNN``."""
    raw = os.fsencode(text)
    out = []
    for ch in raw.decode("utf-8", "backslashreplace"):
        out.append(ch if ch.isprintable() or ch == " " else f"\\x{ord(ch):02x}")
    return "".join(out)


def walk(tree: MountTree) -> Iterator[tuple[str, str, Mount]]:
    """(tree-drawing prefix, drawing for lines hung below the mount, mount), parents first,
    like findmnt. The second lets a caller list things under a mount (``criu-fw show
    --files``) with the tree's lines going on past them to its children."""
    stack: list[tuple[Mount, str, bool, bool]] = [
        (m, "", i == len(tree.roots) - 1, True) for i, m in enumerate(tree.roots)
    ][::-1]
    while stack:
        m, indent, last, top = stack.pop()
        kids = tree.children(m)
        child_indent = "" if top else indent + ("  " if last else "│ ")
        below = child_indent + ("│ " if kids else "  ")
        yield ("" if top else indent + ("└─" if last else "├─")), below, m
        for i in range(len(kids) - 1, -1, -1):
            stack.append((kids[i], child_indent, i == len(kids) - 1, False))


def rows(tree: MountTree, owner: Callable[[str], str]) -> list[tuple[str, ...]]:
    """One row per mount: the COLUMNS, TARGET already carrying the tree drawing."""
    out: list[tuple[str, ...]] = []
    for prefix, _, m in walk(tree):
        try:
            driver = owner(m.fstype)
        except CriuFwError as exc:  # a contested fstype is shown, not fatal here
            driver = f"? ({type(exc).__name__})"
        ident = str(m.mnt_id) if m.unique_id is None else f"{m.mnt_id}/{m.unique_id:#x}"
        out.append((prefix + shown(m.mountpoint), shown(m.source), shown(m.fstype), driver,
                    m.propagation.describe(), ident))
    return out


def align(table: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell (the last one not
    padded: no trailing blanks)."""
    if not table:
        return []
    ncols = len(table[0])
    widths = [max(len(r[c]) for r in table) for c in range(ncols - 1)]
    return [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
        for r in table
    ]


def render(tree: MountTree, owner: Callable[[str], str]) -> list[str]:
    """The tree as aligned text lines, a header first."""
    return align([COLUMNS, *rows(tree, owner)])
