"""Path arithmetic for layer resolution (no I/O): where a layer string may lead now."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from .options import LayerSpec


def under(path: str, mountpoint: str) -> str | None:
    """``path`` relative to ``mountpoint`` (``/`` for the mountpoint itself), or None."""
    if path == mountpoint:
        return "/"
    if mountpoint == "/":
        return path if path.startswith("/") else None
    if path.startswith(mountpoint + "/"):
        return path[len(mountpoint) :]
    return None


def _ancestors(path: str) -> Iterator[str]:
    while path not in ("/", ""):
        path = posixpath.dirname(path)
        yield path


def candidates(spec: LayerSpec, mountpoint: str, cwd: str | None) -> list[tuple[str, str]]:
    """``(absolute namespace path, how)`` pairs to try for one layer, most likely first."""
    out: dict[str, str] = {}

    def add(path: str, how: str) -> None:
        norm = posixpath.normpath(path)
        out.setdefault("/" + norm.lstrip("/") if norm.startswith("//") else norm, how)

    bases = [a for a in _ancestors(mountpoint)]
    for text in spec.spellings():
        if text.startswith("/"):
            add(text, "as shown")
            # Mounted inside a chroot that sits below the overlay: same string, deeper place.
            for base in bases:
                if base != "/":
                    add(base + text, "chroot")
            # Mounted before a pivot_root/chroot into a subdirectory: drop the old prefix.
            parts = [p for p in text.split("/") if p]
            for k in range(1, len(parts)):
                add("/" + "/".join(parts[k:]), "stale prefix")
        else:
            for base in bases:
                add(posixpath.join(base, text), "relative")
            if cwd:
                add(posixpath.join(cwd, text), "relative")
    return list(out.items())


def tails(path: str) -> Iterator[str]:
    """``/b/c`` and ``/c`` for ``/a/b/c``: the path without leading components, longest first."""
    parts = [p for p in path.split("/") if p]
    for k in range(1, len(parts)):
        yield "/" + "/".join(parts[k:])


def ancestors_or_self(path: str) -> Iterator[str]:
    cur = path
    while True:
        yield cur
        if cur == "/":
            return
        cur = posixpath.dirname(cur)
