"""What a person (or a program) sees of an image directory: ``criu-fw show DIR``.

:func:`read_image_dir` reads the directory through the library's readers (the mount images
as restore and verify read them, the process images with
:func:`~criu_fw.images.process.read_processes`), so it refuses exactly what they refuse, one
line naming the file. :func:`render` draws each mount namespace like ``criu-fw tree`` (the same
drawing, :mod:`criu_fw.treeview`), one line per mount with what the dump recorded of it and
a count of the files the dumped processes have on it, then the processes; ``files=True``
lists each file under its mount. :func:`to_dict` is the structure of ``--json``
(``format`` 1, docs/cli.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .api.loader import DriverManager
from .images.process import DumpedFile, DumpedProcess, read_processes
from .records import DumpedNamespace, MountRecord
from .treeview import align, shown, walk

#: The version of :func:`to_dict`'s structure; a change that removes or renames a key
#: increases it (new keys may be added without).
JSON_FORMAT = 1

COLUMNS = ("TARGET", "SOURCE", "FSTYPE", "DRIVER", "PROPAGATION", "EXTERNAL", "CONTENT",
           "BYTES", "FILES", "MAPS", "ID")  # fmt: skip

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2


@attrs.frozen
class ImageDirView:
    """An image directory as read back: its namespaces (root first), processes, and the
    size of each file they name."""

    image_dir: str
    root_ns: int
    namespaces: tuple[DumpedNamespace, ...]
    processes: tuple[DumpedProcess, ...]
    #: Image file name -> bytes; None: missing or not a regular file.
    sizes: Mapping[str, int | None]
    #: (namespace, mount id) -> the files on that mount (fds, cwd, root, exe, mappings).
    on_mount: Mapping[tuple[int, int], tuple[DumpedFile, ...]]
    #: Files on no mount of their process's namespace (no mount id, or one not dumped).
    elsewhere: tuple[DumpedFile, ...]


def _size(image_dir: str, name: str) -> int | None:
    try:
        st = os.lstat(os.path.join(image_dir, name))
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def read_image_dir(image_dir: str, manager: DriverManager | None = None) -> ImageDirView:
    """Read an image directory written by ``criu-fw dump`` (or by CRIU alone) for showing;
    ``manager``: the drivers whose states the mount images hold (default: the installed
    ones). Raises :class:`~criu_fw.errors.ImageError` naming the file for anything wrong."""
    from .api.loader import resolve_manager
    from .restore.engine import read_namespaces

    root_ns, spaces = read_namespaces(image_dir, resolve_manager(manager))
    processes = read_processes(image_dir)
    names: set[str] = set()
    for ns in spaces:
        for rec in ns:
            if rec.content is not None:
                names.add(rec.content)
            if rec.deleted is not None and rec.deleted.content is not None:
                names.add(rec.deleted.content)
    on_mount: dict[tuple[int, int], list[DumpedFile]] = {}
    elsewhere: list[DumpedFile] = []
    trees = {ns.ns_id: ns.tree for ns in spaces}
    for p in processes:
        ns_id = p.mnt_ns if p.mnt_ns in trees else root_ns
        for f in p.files:
            if f.mnt_id is not None and trees[ns_id].find(f.mnt_id) is not None:
                on_mount.setdefault((ns_id, f.mnt_id), []).append(f)
            else:
                elsewhere.append(f)
    return ImageDirView(
        image_dir=image_dir, root_ns=root_ns, namespaces=tuple(spaces),
        processes=tuple(processes), sizes={n: _size(image_dir, n) for n in sorted(names)},
        on_mount={k: tuple(v) for k, v in on_mount.items()}, elsewhere=tuple(elsewhere),
    )


# --------------------------------------------------------------------------------------------
# text


def _plural(n: int, what: str) -> str:
    if n == 1:
        return f"1 {what}"
    return f"{n:,} {what}{'es' if what.endswith('s') else 's'}"


def _access(flags: int) -> str:
    mode = flags & O_ACCMODE
    return "rw" if mode == O_RDWR else "w" if mode == O_WRONLY else "r"


def describe_file(f: DumpedFile) -> str:
    """One file as ``--files`` lists it: ``PID fd 7 rw /path``, ``PID cwd /path``, ``PID map
    r /lib/libc.so.6 (5 areas)``; CRIU's other file types by their type."""
    what = f"fd {f.fd}" if f.use == "fd" else f.use
    access = f" {_access(f.flags)}" if f.use in ("fd", "map") else ""
    path = shown(f.path) if f.type == "REG" else f"({f.type})"
    areas = f" ({_plural(f.areas, 'area')})" if f.use == "map" and f.areas > 1 else ""
    gone = " (deleted)" if f.deleted else ""
    return f"{f.pid} {what}{access} {path}{gone}{areas}"


def _counts(files: Sequence[DumpedFile]) -> tuple[int, int]:
    maps = sum(f.areas for f in files if f.use == "map")
    return sum(1 for f in files if f.use != "map"), maps


def _deleted_note(view: ImageDirView, rec: MountRecord) -> str:
    """`` (deleted root: ...)`` after a bind whose root was unlinked: what the restore makes
    it from (its bytes' image, another name of the file) or nothing more (a directory)."""
    if not rec.mount.root_deleted:
        return ""
    gone = rec.deleted
    if gone is None or (gone.content is None and gone.link is None):
        return " (deleted root)"
    if gone.content is not None:
        n = view.sizes.get(gone.content)
        return f" (deleted root: {gone.content}, {'missing' if n is None else f'{n} bytes'})"
    return f" (deleted root: another name {shown(gone.link or '')})"


def _row(view: ImageDirView, ns_id: int, prefix: str, rec: MountRecord) -> tuple[str, ...]:
    m = rec.mount
    target = prefix + shown(m.mountpoint) + _deleted_note(view, rec)
    content = rec.content
    size = "-" if content is None else (
        "missing" if (n := view.sizes.get(content)) is None else str(n))
    files, maps = _counts(view.on_mount.get((ns_id, m.mnt_id), ()))
    return (target, shown(m.source), shown(m.fstype), rec.driver or "-",
            m.propagation.describe(), shown(rec.external) if rec.external else "-",
            content or "-", size, str(files or "-"), str(maps or "-"), str(m.mnt_id))


def _header(view: ImageDirView) -> str:
    mounts = sum(len(ns.tree) for ns in view.namespaces)
    files = [f for p in view.processes for f in p.files]
    opened, maps = _counts(files)
    archived = [n for n in view.sizes.values() if n is not None]
    return (f"{view.image_dir}: {_plural(len(view.processes), 'process')}, "
            f"{_plural(len(view.namespaces), 'mount namespace')}, {_plural(mounts, 'mount')}, "
            f"{_plural(opened, 'open file')}, {_plural(maps, 'file mapping')}, "
            f"{_plural(len(view.sizes), 'content image')} ({sum(archived):,} bytes)")


def render(view: ImageDirView, files: bool = False) -> list[str]:
    """The text of ``criu-fw show DIR``: a summary line; per namespace a line naming it and
    its tree, one aligned row per mount (``--files``: each file listed under its mount,
    ``· PID fd N rw PATH``); files on no dumped mount; the processes."""
    out = [_header(view)]
    by_ns: dict[int, list[int]] = {}
    for p in view.processes:
        by_ns.setdefault(p.mnt_ns if p.mnt_ns is not None else view.root_ns, []).append(p.pid)
    for ns in view.namespaces:
        pids = by_ns.get(ns.ns_id, [])
        role = "root" if ns.ns_id == view.root_ns else "other"
        procs = f"; processes {', '.join(map(str, pids))}" if pids else "; no process"
        out.append("")
        out.append(f"mount namespace {ns.ns_id} ({role}{procs}): {_plural(len(ns.tree), 'mount')}")
        drawn = list(walk(ns.tree))
        lines = align([COLUMNS, *(_row(view, ns.ns_id, prefix, ns.record(m.mnt_id))
                                  for prefix, _, m in drawn)])
        out.append(lines[0])
        for line, (_, below, m) in zip(lines[1:], drawn, strict=True):
            out.append(line)
            if files:
                out.extend(f"{below}· {describe_file(f)}"
                           for f in view.on_mount.get((ns.ns_id, m.mnt_id), ()))
    if view.elsewhere:
        out.append("")
        out.append(f"{_plural(len(view.elsewhere), 'file')} on no dumped mount"
                   + (":" if files else " (--files lists them)"))
        if files:
            out.extend(f"· {describe_file(f)}" for f in view.elsewhere)
    out.append("")
    if not view.processes:
        out.append("processes: none in the images (no pstree.img)")
        return out
    table = [("PID", "PPID", "MNT_NS", "FILES", "MAPS", "EXE")]
    for p in view.processes:
        opened, maps = _counts(p.files)
        exe = next((shown(f.path) for f in p.files if f.use == "exe"), "-")
        fds = f"{opened} (fds of {p.fd_table_of})" if p.fd_table_of is not None else str(opened)
        table.append((str(p.pid), str(p.ppid), str(p.mnt_ns if p.mnt_ns is not None else "-"),
                      fds, str(maps), exe))
    out.extend(align(table))
    return out


# --------------------------------------------------------------------------------------------
# JSON


def _text(value: str) -> str:
    """Text for JSON: bytes that are not UTF-8 backslash-escaped (``\\xff``), as the image
    JSON of ``criu-fw show FILE`` shows them."""
    return os.fsencode(value).decode("utf-8", "backslashreplace")


def _file_dict(f: DumpedFile) -> dict[str, Any]:
    return {"pid": f.pid, "use": f.use, "fd": f.fd, "type": f.type, "path": _text(f.path),
            "mnt_id": f.mnt_id, "flags": f.flags, "access": _access(f.flags), "pos": f.pos,
            "size": f.size, "areas": f.areas, "deleted": f.deleted}  # fmt: skip


def _image(view: ImageDirView, name: str | None) -> dict[str, Any] | None:
    return None if name is None else {"image": name, "bytes": view.sizes.get(name)}


def _mount_dict(view: ImageDirView, ns_id: int, depth: int, rec: MountRecord) -> dict[str, Any]:
    m = rec.mount
    p = m.propagation
    gone = rec.deleted
    files, maps = _counts(view.on_mount.get((ns_id, m.mnt_id), ()))
    return {
        "mnt_id": m.mnt_id, "parent_id": m.parent_id, "depth": depth,
        "mountpoint": _text(m.mountpoint), "root": _text(m.root), "fstype": _text(m.fstype),
        "source": _text(m.source), "dev": str(m.dev), "driver": rec.driver,
        "propagation": {"shared": p.shared, "master": p.master,
                        "propagate_from": p.propagate_from, "unbindable": p.unbindable,
                        "text": p.describe()},
        "mount_options": [_text(o) for o in m.mount_options],
        "super_options": [_text(o) for o in m.super_options],
        "external": None if rec.external is None else _text(rec.external),
        "content": _image(view, rec.content),
        "root_deleted": m.root_deleted,
        "deleted_root": None if gone is None else {
            "mode": f"{gone.mode:o}", "uid": gone.uid, "gid": gone.gid,
            "link": None if gone.link is None else _text(gone.link),
            "content": _image(view, gone.content),
        },
        "open_files": files, "mapped_areas": maps,
    }  # fmt: skip


def _depths(ns: DumpedNamespace) -> Iterable[tuple[int, MountRecord]]:
    depth: dict[int, int] = {}
    for _, _, m in walk(ns.tree):
        d = depth[m.mnt_id] = depth.get(m.parent_id, -1) + 1
        yield d, ns.record(m.mnt_id)


def to_dict(view: ImageDirView) -> dict[str, Any]:
    """``criu-fw show DIR --json`` (docs/cli.md): namespaces (root first) with their mounts
    in tree order (parents first, ``depth`` 0 for the root), the processes with every file
    they have open or mapped (``mnt_id``: the mount it is on), files on no dumped mount."""
    return {
        "format": JSON_FORMAT,
        "image_dir": _text(view.image_dir),
        "root_namespace": view.root_ns,
        "namespaces": [
            {"id": ns.ns_id, "root": ns.ns_id == view.root_ns,
             "mounts": [_mount_dict(view, ns.ns_id, d, rec) for d, rec in _depths(ns)]}
            for ns in view.namespaces
        ],
        "processes": [
            {"pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid,
             "threads": list(p.threads), "mnt_ns": p.mnt_ns, "fd_table_of": p.fd_table_of,
             "files": [_file_dict(f) for f in p.files]}
            for p in view.processes
        ],
        "elsewhere": [_file_dict(f) for f in view.elsewhere],
    }  # fmt: skip
