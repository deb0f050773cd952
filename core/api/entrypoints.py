"""The entry points of one group, read from the installed distributions' metadata directly.

Importing :mod:`importlib.metadata` (with the email parser, zipfile, csv and more behind it)
takes 15 to 30 ms, which every command paid before doing anything: a tenth of a small dump.
Finding one group's entry points is reading ``entry_points.txt`` in each ``*.dist-info``
and ``*.egg-info`` directory on ``sys.path``, the first distribution of a name winning, which
is what :mod:`importlib.metadata` does for plain directories. Where anything else could hold
distributions (a zip or egg file on the path, a meta path finder that finds distributions of
its own), :func:`entry_points` says so (None) and the caller uses the standard library.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from importlib.machinery import PathFinder
from typing import NamedTuple

_INFO = (".dist-info", ".egg-info")
_EXTRAS = re.compile(r"\s*\[.*\]\s*$")


class EntryPoint(NamedTuple):
    """What the loader uses of an entry point (as :class:`importlib.metadata.EntryPoint`)."""

    name: str
    value: str
    group: str
    #: The distribution's metadata directory.
    dist: str

    def load(self) -> object:
        module, _, attr = _EXTRAS.sub("", self.value).partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in attr.strip().split("."):
            if part:
                obj = getattr(obj, part)
        return obj


def entry_points(group: str) -> list[EntryPoint] | None:
    """The entry points of ``group`` of every distribution on ``sys.path``, in path order;
    None where the path holds something this reader does not (see the module's docstring)."""
    finders = [f for f in sys.meta_path if hasattr(f, "find_distributions")]
    if finders != [PathFinder] or any(e.lower().endswith(".egg") for e in sys.path):
        return None
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for entry in sys.path:
        where = entry or "."
        try:
            names = os.listdir(where)
        except NotADirectoryError:
            return None  # a zip or an egg file
        except OSError:
            continue  # missing or unreadable: importlib.metadata skips it too
        # The .dist-info directories first, then the .egg-info ones, each in listing order.
        for ext in _INFO:
            for name in names:
                if not name.lower().endswith(ext):
                    continue
                dist = _normalized(name[: -len(ext)].partition("-")[0])
                if dist in seen:
                    continue
                # A name's first one wins, even an .egg-info file (no entry points).
                seen.add(dist)
                out.extend(_group(os.path.join(where, name), group))
    return out


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _group(path: str, group: str) -> list[EntryPoint]:
    try:
        with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section == group:
            name, sep, value = line.partition("=")
            if sep:
                out.append(EntryPoint(name.strip(), value.strip(), group, path))
    return out


def name_and_version(dist: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the headers of a metadata directory's ``METADATA`` (or
    ``PKG-INFO``); None for one it does not say."""
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(dist, file), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        return name_and_version_of(text)
    return None, None


def name_and_version_of(text: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from a METADATA (or PKG-INFO) text's headers, read directly:
    the email parser behind :mod:`importlib.metadata` took a quarter of loading the drivers."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break  # the end of the headers
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version") and key not in found:
            found[key] = value.strip()
    return found.get("Name"), found.get("Version")
