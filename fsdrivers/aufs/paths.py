"""From a path inside an AUFS branch to the same file's path in the container.

The kernel shows files mapped from AUFS by their branch path
(``/var/lib/docker/aufs/diff/<layer>/bin/nginx``); inside the container the file is
``/bin/nginx``: the path below the branch directory. Branches are matched on whole path
components (``/a/b`` is not a prefix of ``/a/bc/file``), the longest branch first (a branch
may lie inside another one's directory), through an index built once per superblock: each
lookup costs one dictionary probe per component of the path, whatever the number of branches.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .branches import Branch


def _components(path: str) -> list[str]:
    # Empty components come from "//" and trailing slashes; the kernel never makes "." or "..".
    return [p for p in path.split("/") if p]


def normalize(path: str) -> str:
    """``/a//b/`` -> ``/a/b``; ``/`` stays ``/``."""
    return "/" + "/".join(_components(path))


@attrs.frozen
class Resolved:
    """Where a host path lies: which branch, and the path from the container's root."""

    branch: Branch
    index: int
    path: str


@attrs.frozen
class BranchIndex:
    """Branch directories (normalized) -> their position in the branch list."""

    branches: tuple[Branch, ...]
    _by_path: dict[str, int] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_path: dict[str, int] = {}
        for i, b in enumerate(self.branches):
            # AUFS refuses the same directory twice; if a recording has it, the top one wins.
            by_path.setdefault(normalize(b.path), i)
        object.__setattr__(self, "_by_path", by_path)

    @classmethod
    def build(cls, branches: Iterable[Branch]) -> BranchIndex:
        return cls(tuple(branches))

    def resolve(self, path: str) -> Resolved | None:
        """The branch ``path`` lies in and the container path, or None outside every branch.

        A `` (deleted)`` suffix on the last component is carried along unchanged: it is part of
        the file's name as the kernel shows it, not of the branch directory.
        """
        if not path.startswith("/"):
            return None
        parts = _components(path)
        prefixes = ["/"]
        for part in parts:
            prefixes.append(prefixes[-1].rstrip("/") + "/" + part)
        for depth in range(len(parts), -1, -1):  # longest prefix first
            i = self._by_path.get(prefixes[depth])
            if i is not None:
                return Resolved(self.branches[i], i, "/" + "/".join(parts[depth:]))
        return None
