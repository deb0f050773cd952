"""Two image directories compared up to ids: the round-trip check (dump -> restore -> dump).

The images are decoded entry by entry (``image_to_dict``, driver states unpacked through their
drivers) and every id is replaced by something that does not depend on the run that made it:

* a mount is named by the chain of mountpoints from its namespace's root down to it (stacked
  mounts are parent and child, so the chain is unique), never by its mount id; entries are
  compared by that name, because the kernel lists a restored namespace in the order the restore
  attached its mounts, which is an id-like accident too;
* device numbers become ``dev#N`` and peer groups ``group#N``, numbered in the order of the
  mounts' names, so "these two mounts share a superblock / a peer group" survives while the
  numbers do not; namespace ids become their position (root first);
* a content archive is compared by what it holds (names, types, modes, owners, sizes,
  mtimes, link targets, hard-link groups, xattrs, the bytes), not by its file name (which
  carries the device number) nor its gzip bytes.

What legitimately differs and is normalised on purpose (each has a comment where it is done):
the spelling of an overlay's layer options, the identity numbers (device, inode) recorded per
layer, the ``uuid=on`` that overlay shows only on the first mount of a fresh upper directory,
and the process's inherited stdio (fds 0-2 belong to whoever started the process, not to the
dumped state). Process images are compared where they mean something to the filesystem half:
each open file from fd 3 on, cwd, root, exe and every file mapping, by path, mount, flags,
position, size and mode.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..api.loader import DriverManager, resolve_manager
from ..fstypes import fstype as fstype_row
from ..images import image_to_dict
from ..restore.engine import image_namespaces

_CONTENT = re.compile(r"^tmpfs-dev-(\d+)\.tar\.gz\.img$")
_LAYER_OPTIONS = frozenset({"lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir"})
#: Per-layer fields that are identities or spellings: the dump resolved ``lowerdir=c/l``
#: (relative to a cwd, or behind a pivot_root's stale prefix: ``found``), the restore passes
#: the same directory by descriptor (shown as ``lowerdir+=/abs``), on a new tmpfs (new
#: device and inode numbers). Where the layer is (its mount and path) is kept.
_LAYER_IDENTITY = frozenset({"shown", "option", "found", "dev_major", "dev_minor", "ino"})


class _Labels:
    """Stable names for run-dependent numbers, in the order they are first asked for."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen: dict[object, str] = {}

    def __call__(self, value: object) -> str:
        if value not in self.seen:
            self.seen[value] = f"{self.prefix}#{len(self.seen) + 1}"
        return self.seen[value]


def _entries(path: str, mgr: DriverManager) -> list[dict[str, Any]]:
    entries = image_to_dict(path, pretty=False, mgr=mgr)["entries"]
    assert isinstance(entries, list)
    return entries


def _mount_names(crit: Iterable[dict[str, Any]]) -> dict[int, str]:
    """mnt_id -> the chain of mountpoints from the root (``' > '``-joined)."""
    by_id = {e["mnt_id"]: e for e in crit}
    names: dict[int, str] = {}

    def name(i: int) -> str:
        if i in names:
            return names[i]
        e = by_id[i]
        parent = int(e.get("parent_mnt_id", 0))
        own = str(e["mountpoint"])
        n = own if parent not in by_id or parent == i else f"{name(parent)} > {own}"
        names[i] = n
        return n

    for i in by_id:
        name(i)
    return names


def _options(text: str | Iterable[str], fstype: str, layered: bool) -> list[str]:
    opts = text.split(",") if isinstance(text, str) else list(text)
    skip = set(fstype_row(fstype).volatile_options)
    if layered:
        skip |= _LAYER_OPTIONS
    return sorted(o for o in opts if o and o.partition("=")[0] not in skip)


def normalised_namespace(
    image_dir: str,
    ns_id: int,
    mgr: DriverManager,
    mounts: dict[int, str] | None = None,
    archives: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """One namespace's mounts by name, every id replaced (see the module docstring).

    ``mounts`` (optional) is filled with mnt_id -> name, for the process images, and
    ``archives`` with name -> the file name of its content archive."""
    crit = _entries(os.path.join(image_dir, f"mountpoints-{ns_id}.img"), mgr)
    fw = _entries(os.path.join(image_dir, f"fw-mountpoints-{ns_id}.img"), mgr)
    names = _mount_names(crit)
    if mounts is not None:
        mounts.update(names)
    fw_by_id = {e["mount"]["mnt_id"]: e["mount"] for e in fw[1:]}
    devs, groups = _Labels("dev"), _Labels("group")
    out: dict[str, dict[str, Any]] = {}
    for e in sorted(crit, key=lambda x: names[x["mnt_id"]]):
        i = e["mnt_id"]
        f = dict(fw_by_id.get(i, {}))
        fstype = os.fsdecode(f.get("fstype", b"")) if isinstance(f.get("fstype"), bytes) else str(
            f.get("fstype", "")
        )
        state = f.pop("state", None)
        layered = isinstance(state, dict) and "layers" in state
        rec: dict[str, Any] = {
            k: v for k, v in e.items()
            if k not in ("mnt_id", "parent_mnt_id", "root_dev", "shared_id", "master_id",
                         "options")
        }
        rec["dev"] = devs(e["root_dev"])
        for k in ("shared_id", "master_id"):
            if k in e:
                rec[k] = groups(e[k])
        rec["options"] = _options(e.get("options", ""), fstype, layered)
        for k, v in f.items():
            if k in ("mnt_id", "unique_id"):
                continue
            if k == "propagate_from":
                rec[k] = groups(v)
            elif k == "super_options":
                rec[k] = _options(v, fstype, layered)
            elif k == "content_image":
                if archives is not None:
                    archives[names[i]] = str(v)
                m = _CONTENT.match(str(v))
                rec[k] = f"tmpfs-{devs(int(m.group(1)))}" if m else v
            else:
                rec["fw_" + k] = v
        if isinstance(state, dict):
            rec["state"] = _state(state, names)
        out[names[i]] = rec
    return out


def _state(state: dict[str, Any], names: Mapping[int, str]) -> dict[str, Any]:
    out = dict(state)
    if "layers" in out:
        layers = []
        for layer in out["layers"]:
            kept = {k: v for k, v in layer.items() if k not in _LAYER_IDENTITY}
            if "mnt_id" in kept:
                kept["mnt_id"] = names.get(kept["mnt_id"], "<outside>")
            layers.append(kept)
        out["layers"] = layers
        # Whether the layers were given as lowerdir+ (new mount API) is the spelling again:
        # the restore always uses the new API.
        out.pop("new_api", None)
    return out


def archive_listing(
    archive: str, scratch: Iterable[str] = ()
) -> list[tuple[object, ...]]:
    """What a content archive holds, independent of its entry order and of which name of a
    hard-linked file came first.

    ``scratch``: directories (relative to the filesystem's root) whose times are not compared:
    an overlay's workdir, whose ``work/`` the kernel empties and recreates at every mount."""
    tops = [d.strip("/") for d in scratch]
    rows: dict[str, tuple[object, ...]] = {}
    links: dict[str, set[str]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            name = os.path.normpath(m.name)
            if m.islnk():
                target = os.path.normpath(m.linkname)
                links.setdefault(target, {target}).add(name)
                continue
            digest = ""
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
            xattrs = tuple(sorted(
                (k, v) for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.") or k.startswith("SCHILY.acl")
            ))
            link = m.linkname if m.issym() else ""
            mtime = int(m.mtime)
            if any(name == t or name.startswith(t + "/") for t in tops):
                mtime = 0
            rows[name] = (m.type, m.mode, m.uid, m.gid, m.size, mtime, link, digest,
                          xattrs, m.pax_headers.get("GNU.sparse.realsize", ""))
    # Every name of a hard-linked file is listed with the file's data and its group, whichever
    # name tar happened to store first.
    out: list[tuple[object, ...]] = []
    grouped: set[str] = set()
    for target, group in links.items():
        for n in group:
            out.append((n, *rows[target], tuple(sorted(group))))
            grouped.add(n)
    out.extend((n, *row, ()) for n, row in rows.items() if n not in grouped)
    return sorted(out, key=repr)


def _files(image_dir: str, mgr: DriverManager, mounts: Mapping[int, str]) -> dict[str, Any]:
    names = os.listdir(image_dir)
    files = {
        e["id"]: e.get("reg", {}) for e in _entries(os.path.join(image_dir, "files.img"), mgr)
    } if "files.img" in names else {}

    def reg(file_id: int) -> dict[str, Any]:
        r = dict(files.get(file_id, {}))
        r.pop("id", None)
        r.pop("fown", None)
        if "mnt_id" in r:
            r["mnt_id"] = mounts.get(r["mnt_id"], "<none>")
        return r

    out: dict[str, Any] = {}
    pstree = _entries(os.path.join(image_dir, "pstree.img"), mgr)
    out["processes"] = len(pstree)
    for k, p in enumerate(pstree):
        pid = p["pid"]
        who = f"process#{k + 1}"
        ids = _entries(os.path.join(image_dir, f"ids-{pid}.img"), mgr)[0]
        fdinfo = os.path.join(image_dir, f"fdinfo-{ids['files_id']}.img")
        fds = _entries(fdinfo, mgr) if os.path.exists(fdinfo) else []
        # fds 0-2 are the stdio its starter gave it (a pipe of the test, a terminal): not
        # state of the dumped tree's filesystem.
        out[f"{who} fds"] = {e["fd"]: reg(e["id"]) for e in fds if e["fd"] > 2}
        fs_img = os.path.join(image_dir, f"fs-{pid}.img")
        if os.path.exists(fs_img):
            fs = _entries(fs_img, mgr)[0]
            out[f"{who} cwd"] = reg(fs["cwd_id"])
            out[f"{who} root"] = reg(fs["root_id"])
        mm = _entries(os.path.join(image_dir, f"mm-{pid}.img"), mgr)[0]
        out[f"{who} exe"] = reg(mm.get("exe_file_id", 0))
        mapped = {
            (str(r.get("name")), str(r.get("mnt_id")), r.get("flags"))
            for v in mm.get("vmas", ()) if v.get("shmid") in files
            for r in [reg(v["shmid"])]
        }
        out[f"{who} mappings"] = sorted(mapped)
    return out


def _workdirs(norm: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    """Mount name -> overlay workdirs on it (paths relative to where the mount is)."""
    out: dict[str, set[str]] = {}
    for rec in norm.values():
        state = rec.get("state")
        for layer in state.get("layers", ()) if isinstance(state, dict) else ():
            if str(layer.get("role", "")).endswith("WORK") and "mnt_id" in layer:
                out.setdefault(str(layer["mnt_id"]), set()).add(str(layer.get("path", "")))
    return out


def _diff(where: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                out.append(f"{where}/{k}: only in the first images: {a[k]!r}")
            elif k not in a:
                out.append(f"{where}/{k}: only in the second images: {b[k]!r}")
            else:
                _diff(f"{where}/{k}", a[k], b[k], out)
    elif a != b:
        out.append(f"{where}: {a!r} first, {b!r} second")


def image_differences(
    first: str,
    second: str,
    *,
    namespaces: Sequence[tuple[int, int]] | None = None,
    processes: bool = True,
    content: bool = True,
    manager: DriverManager | None = None,
) -> list[str]:
    """Every difference between two image directories except ids, one line each.

    ``namespaces`` pairs a namespace of ``first`` with one of ``second`` (default: the root
    namespaces, then the others in order). ``processes``: compare the process images too.
    """
    mgr = resolve_manager(manager)
    if namespaces is None:
        _, ids1 = image_namespaces(first)
        _, ids2 = image_namespaces(second)
        if len(ids1) != len(ids2):
            return [f"{len(ids1)} mount namespace(s) first, {len(ids2)} second"]
        namespaces = list(zip(ids1, ids2, strict=True))
    out: list[str] = []
    mounts1: dict[int, str] = {}
    mounts2: dict[int, str] = {}
    for k, (n1, n2) in enumerate(namespaces):
        arch1: dict[str, str] = {}
        arch2: dict[str, str] = {}
        a = normalised_namespace(first, n1, mgr, mounts1, arch1)
        b = normalised_namespace(second, n2, mgr, mounts2, arch2)
        _diff(f"namespace#{k + 1}", a, b, out)
        if content:
            scratch = _workdirs(a)
            for name in sorted(arch1.keys() & arch2.keys()):
                root = str(a[name].get("root", "/"))
                dirs = [os.path.join(root, p.lstrip("/")) for p in scratch.get(name, ())]
                la = archive_listing(os.path.join(first, arch1[name]), dirs)
                lb = archive_listing(os.path.join(second, arch2[name]), dirs)
                if la != lb:
                    only_a = sorted(set(la) - set(lb))
                    only_b = sorted(set(lb) - set(la))
                    out.append(f"namespace#{k + 1}/{name}: content differs: first has "
                               f"{only_a[:3]!r}, second has {only_b[:3]!r}")
    if processes:
        _diff("processes", _files(first, mgr, mounts1), _files(second, mgr, mounts2), out)
    return out

