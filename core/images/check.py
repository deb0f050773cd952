"""What mount images may say: bounds and meaning, checked when they are read.

Images travel between machines and can be crafted; a restore, ``criu-fw show`` and verify read
them. The framing reader (:mod:`criu_fw.images`) caps the size of every entry and image by
kind; this module adds the rest, in two steps:

* bounds, on each decoded entry before anything is built from it (:func:`fw_entry_problem`,
  :func:`state_problem`): how many options a mount has, how long each text is, how many items
  a driver state holds. With the size caps they keep a crafted image's cost that of a real one.
* meaning, on one namespace once both of its images are read (:func:`path_problem`,
  :func:`text_problem`, :func:`tree_problem`, :class:`DriverCheck`): paths absolute and
  normalised, ids unique, exactly one root at ``/``, every parent chain ending there, every
  mount at or below its parent, the driver named the one the registry picks.

Each check returns the reason (the text after ``mount N:``) or None; the caller knows which
image and entry the value came from and raises the :class:`~criu_fw.errors.ImageError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from ..errors import CriuFwError
from ..model import Mount
from ..proto import fwstate_pb2

if TYPE_CHECKING:
    from ..api.loader import DriverManager

#: The kernel's PATH_MAX counts the terminating NUL: no path it takes by name (a mountpoint,
#: a root, mount(2)'s source) is longer than 4095 bytes.
PATH_MAX = 4096
MAX_PATH_BYTES = PATH_MAX - 1

#: Options per list (per-mount, superblock) of one mount. Real mounts show a few dozen; the
#: largest legitimate list is an overlay's: 500 ``lowerdir+``/``datadir+`` layers (the
#: kernel's OVL_MAX_STACK) plus upperdir, workdir and a dozen feature switches.
MAX_OPTIONS = 1024

#: Bytes per option. mount(2) copies one page of option data (64 KiB on kernels with 64 KiB
#: pages), so no single option shown for a mount made that way is longer; fsconfig's keys and
#: strings are shorter still, and a layer given by descriptor shows as one path.
MAX_OPTION_BYTES = 64 << 10

#: A filesystem type name. The kernel's are short; a FUSE type is ``fuse.`` plus a subtype,
#: which fsconfig copies with a 256-byte limit.
MAX_FSTYPE_BYTES = 512

#: A content image is a file of the image directory: one name (NAME_MAX), no directories.
MAX_NAME_BYTES = 255

#: Mounts per namespace. fs.mount-max, the kernel's per-namespace limit, is 100,000 unless
#: raised; a tenth more leaves room for a host that raised it a little, and keeps a crafted
#: image at the cost of a real table of that size.
MAX_MOUNTS = 110_000

#: Mount namespaces one restore rebuilds. Each is held by a process of its own while the
#: restore runs and after it (``--detach``), some 10 MB each; containers have a handful of
#: mount namespaces, so more than 64 in one image directory means a crafted or mixed-up one.
MAX_NAMESPACES = 64

#: Items (elements of repeated fields, nested ones included) in one driver state. The largest
#: built-in states are AUFS's (up to 1,000 branches) and overlay's (502 layers); a state is
#: turned into Python objects item by item, so this bounds that work, not only the bytes.
MAX_STATE_ITEMS = 4096

_FW_TEXT = ("root", "mountpoint", "source")


def shown(value: str | bytes, limit: int = 80) -> str:
    """``value`` quoted for a one-line message, cut after ``limit`` characters."""
    text = os.fsdecode(value) if isinstance(value, bytes) else value
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(os.fsencode(text))} bytes)"
    return repr(text)


def _too_long(value: str | bytes, limit: int) -> int | None:
    """The byte length of ``value`` if it is over ``limit``, else None (cheap when short)."""
    if len(value) * 4 <= limit:  # UTF-8 needs at most 4 bytes a character
        return None
    size = len(value) if isinstance(value, bytes) else len(os.fsencode(value))
    return size if size > limit else None


# --------------------------------------------------------------------------------------------
# bounds, per decoded entry


def fw_entry_problem(message: Message, size: int) -> str | None:
    """Why one FW_MNTS entry (``size`` bytes on disk) is out of bounds, or None.

    Only what grows when decoded is checked here, before the mount is built: the number of
    options and the length of each option and path. Called on every entry: an entry too
    small to break any of these bounds (each option costs two bytes or more) is not looked
    into, so a real table's entries cost nothing here.
    """
    if size <= 2 * MAX_OPTIONS or not isinstance(message, fwstate_pb2.fw_entry):
        return None
    if message.WhichOneof("kind") != "mount":
        return None
    fw = message.mount
    where = f"mount {fw.mnt_id}"
    for name, options in (("per-mount", fw.mount_options), ("superblock", fw.super_options)):
        if len(options) > MAX_OPTIONS:
            return f"{where}: {len(options)} {name} options, more than {MAX_OPTIONS}"
        if options and max(map(len, options)) > MAX_OPTION_BYTES:
            opt = next(o for o in options if len(o) > MAX_OPTION_BYTES)
            return f"{where}: {name} option {shown(opt)} is longer than {MAX_OPTION_BYTES} bytes"
    for field in _FW_TEXT:
        value: bytes = getattr(fw, field)
        if len(value) > MAX_PATH_BYTES:
            return f"{where}: {field} is {len(value)} bytes long, more than {MAX_PATH_BYTES}"
    return None


def state_problem(message: Message) -> str | None:
    """Why an unpacked driver state is out of bounds, or None (before it is converted)."""
    items = 0
    todo = [message]
    while todo:
        msg = todo.pop()
        for field, value in msg.ListFields():
            if field.is_repeated:
                items += len(value)
                if items > MAX_STATE_ITEMS:
                    return f"driver state holds more than {MAX_STATE_ITEMS} items"
                if field.type == field.TYPE_MESSAGE:
                    todo.extend(value)
            elif field.type == field.TYPE_MESSAGE:
                todo.append(value)
    return None


# --------------------------------------------------------------------------------------------
# meaning, per mount and per namespace


def path_problem(what: str, path: str) -> str | None:
    """Why a mountpoint or root is not an absolute, normalised path of sane length, or None.

    Normalised as the kernel shows paths: no ``.``/``..`` or empty components and no trailing
    slash but for ``/`` itself. A deleted bind root is no exception: the model keeps it
    without dentry_path's ``//deleted`` suffix (``root_deleted``), and so do the images.
    """
    if "\0" in path:
        return f"{what} {shown(path)} contains a NUL byte"
    if (size := _too_long(path, MAX_PATH_BYTES)) is not None:
        return f"{what} is {size} bytes long, more than {MAX_PATH_BYTES}"
    if not path.startswith("/"):
        return f"{what} {shown(path)} is not absolute"
    if path == "/":
        return None
    if path.endswith("/"):
        return f"{what} {shown(path)} ends with a slash"
    probe = path + "/"
    if "//" in probe:
        return f"{what} {shown(path)} has an empty component"
    if "/./" in probe or "/../" in probe:
        return f"{what} {shown(path)} has a '.' or '..' component"
    return None


def text_problem(mount: Mount, external: str | None, content: str | None) -> str | None:
    """Why a mount's other texts are unusable (NUL bytes, empty fstype, a content image that
    is not a plain file name), or None. Paths are :func:`path_problem`'s."""
    fstype = mount.fstype
    if not fstype:
        return "empty fstype"
    if (size := _too_long(fstype, MAX_FSTYPE_BYTES)) is not None:
        return f"fstype is {size} bytes long, more than {MAX_FSTYPE_BYTES}"
    if not fstype.isprintable():
        return f"fstype {shown(fstype)} is not printable text"
    if "\0" in mount.source:
        return f"source {shown(mount.source)} contains a NUL byte"
    if (size := _too_long(mount.source, MAX_PATH_BYTES)) is not None:
        return f"source is {size} bytes long, more than {MAX_PATH_BYTES}"
    for opt in (*mount.mount_options, *mount.super_options):
        if "\0" in opt:
            return f"option {shown(opt)} contains a NUL byte"
    if external is not None:
        if not external or "\0" in external:
            return f"external key {shown(external)} is empty or contains a NUL byte"
        if (size := _too_long(external, MAX_PATH_BYTES)) is not None:
            return f"external key is {size} bytes long, more than {MAX_PATH_BYTES}"
    if content is not None:
        if content in ("", ".", "..") or "/" in content or "\0" in content:
            return f"content image {shown(content)} is not a plain file name in the image " \
                   "directory"  # fmt: skip
        if (size := _too_long(content, MAX_NAME_BYTES)) is not None:
            return f"content image name is {size} bytes long, more than {MAX_NAME_BYTES}"
    return None


def tree_problem(mounts: Sequence[Mount]) -> tuple[int | None, str] | None:
    """Why the mounts of one namespace do not form one tree, as (mount id, reason), or None.

    Exactly one mount has no parent in the images (its parent id is its own or unknown): the
    root, at ``/``. Mounts stacked on ``/`` over it have it (or each other) as parent. Every
    parent chain ends at the root (no loops), and every mount lies at or below its parent's
    mountpoint. Ids are unique (the reader checks that while reading).
    """
    if not mounts:
        return None, "no mounts: a namespace has at least its root mount"
    by_id = {m.mnt_id: m for m in mounts}
    root: Mount | None = None
    for m in mounts:
        if m.parent_id != m.mnt_id and m.parent_id in by_id:
            continue
        if m.mountpoint != "/":
            return m.mnt_id, (
                f"parent mount {m.parent_id} is not in the images, and only the root mount "
                f"(at '/') may lack one; mountpoint {shown(m.mountpoint)}"
            )
        if root is not None:
            return m.mnt_id, (
                f"a second mount at '/' without a parent in the images (the root is mount "
                f"{root.mnt_id})"
            )
        root = m
    if root is None:
        loop = _a_loop(mounts, by_id)
        return loop[0], f"no root mount: parent chain {_chain(loop)} loops"
    for m in mounts:
        if m is root:
            continue
        top = by_id[m.parent_id].mountpoint
        mp = m.mountpoint
        if not (mp == top or top == "/" or mp.startswith(top + "/")):
            return m.mnt_id, (
                f"mountpoint {shown(mp)} is not at or below {shown(top)}, the mountpoint of "
                f"its parent mount {m.parent_id}"
            )
    # Parents lie at or above their children: a loop can only be among mounts stacked at
    # one place, but those still never reach the root.
    reaches = {root.mnt_id}
    for m in mounts:
        path: list[int] = []
        seen: set[int] = set()
        cur = m
        while cur.mnt_id not in reaches:
            if cur.mnt_id in seen:
                loop = path[path.index(cur.mnt_id) :]
                return loop[0], f"parent chain {_chain([*loop, loop[0]])} loops"
            seen.add(cur.mnt_id)
            path.append(cur.mnt_id)
            cur = by_id[cur.parent_id]
        reaches.update(path)
    return None


def _a_loop(mounts: Sequence[Mount], by_id: dict[int, Mount]) -> list[int]:
    """Some parent loop, as ids ending where they start (every chain loops: no root)."""
    cur = mounts[0]
    seen: list[int] = []
    while cur.mnt_id not in seen:
        seen.append(cur.mnt_id)
        cur = by_id[cur.parent_id]
    loop = seen[seen.index(cur.mnt_id) :]
    return [*loop, loop[0]]


def _chain(ids: Sequence[int]) -> str:
    if len(ids) > 8:  # one line, however long the loop
        return " -> ".join(map(str, [*ids[:4], "...", *ids[-2:]]))
    return " -> ".join(map(str, ids))


class DriverCheck:
    """Whether the driver an image names for a mount is to be trusted: the reason it is not,
    or None. One registry lookup per (fstype, driver named), however many mounts.

    The images say which driver dumped a mount, but the restoring host's registry decides
    who rebuilds it: a crafted image must not route an overlay to ``generic`` (and its
    options to a plain mount call). A registry that cannot decide (two drivers claim the
    fstype, no fallback loaded) is the reason too.
    """

    def __init__(self, mgr: DriverManager) -> None:
        self.mgr = mgr
        self.seen: dict[tuple[str, str], str | None] = {}

    def __call__(self, fstype: str, named: str) -> str | None:
        key = (fstype, named)
        if key not in self.seen:
            self.seen[key] = self._problem(fstype, named)
        return self.seen[key]

    def _problem(self, fstype: str, named: str) -> str | None:
        try:
            owner = self.mgr.owner(fstype)
        except CriuFwError as exc:
            return str(exc)
        if named != owner:
            return (
                f"the image names driver {shown(named)} for fstype {shown(fstype)}, but the "
                f"loaded drivers give that fstype to {owner!r}"
            )
        return None
