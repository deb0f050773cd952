"""The mount-namespace image codec that the dump and the restore engine share.

One namespace becomes two images in the image directory:

* ``mountpoints-<ns_id>.img`` (MNTS): CRIU's ``mnt_entry`` per mount, in the order CRIU writes
  them (reverse mountinfo order), so ``crit`` and CRIU's tools read it;
* ``fw-mountpoints-<ns_id>.img`` (FW_MNTS, ``fwstate.proto``): a header (format version,
  mount count), then per mount in kernel order what CRIU cannot hold: the full fstype, the
  per-mount and superblock option lists, ``propagate_from``, ``unbindable``, the exact bytes
  of paths that are not UTF-8, the owning driver, the external key, the content image, and the
  driver's typed state packed in ``google.protobuf.Any``.

Reading joins both by mnt_id and rebuilds the :class:`~criu_fw.model.MountTree` exactly:
same order, every :class:`~criu_fw.model.Mount` field equal to what was written.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO, Literal

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from .. import __version__
from ..api.base import DriverState
from ..api.loader import DriverManager, resolve_manager
from ..errors import ImageError
from ..fstypes import CRIU_FSTYPES
from ..kernel import MS_SHARED, MS_SLAVE, MS_UNBINDABLE
from ..model import MS_NOATIME, MS_RELATIME, MS_STRICTATIME, Dev, Mount, MountTree, Propagation
from ..proto import fwstate_pb2, mnt_pb2
from ..records import DeletedRoot, DumpedNamespace, MountRecord
from . import KINDS, criu_text, is_exact_utf8, iter_image, text_of, write_serialized
from . import check as imagecheck

#: The version of criu-fw's own image format this code writes and the newest it reads.
FORMAT_VERSION = 1

MNTS = KINDS["MNTS"]
FW_MNTS = KINDS["FW_MNTS"]

# Superblock options that are flags: CRIU keeps them in sb_flags, not in the options string.
_SB_FLAGS: Mapping[str, int] = {
    "ro": 0x1,  # MS_RDONLY
    "sync": 0x10,  # MS_SYNCHRONOUS
    "mand": 0x40,  # MS_MANDLOCK
    "dirsync": 0x80,  # MS_DIRSYNC
    "lazytime": 0x2000000,  # MS_LAZYTIME
}

_KDEV_MINOR_MASK = (1 << 20) - 1


def mountpoints_image(ns_id: int) -> str:
    return MNTS.filename(ns_id)


def fw_image(ns_id: int) -> str:
    return FW_MNTS.filename(ns_id)


# --------------------------------------------------------------------------------------------
# writing


def criu_fstype(fstype: str, external: bool = False) -> int:
    """CRIU's ``fstype`` for a kernel fstype name: its own code, found by the name without a
    subtype (``fuse.sshfs`` is FUSE), as CRIU's find_fstype_by_name does; else AUTO (with
    ``fsname``), which CRIU 4.x writes for a filesystem it has no code for when it may mount
    it (``--enable-fs``). An external mount of such a filesystem is UNSUPPORTED without a
    name, as CRIU writes it: CRIU binds it from ``--external`` whatever its type, and the type
    is in criu-fw's own image."""
    code = CRIU_FSTYPES.get(fstype.split(".", 1)[0], mnt_pb2.AUTO)
    return mnt_pb2.UNSUPPORTED if external and code == mnt_pb2.AUTO else code


def criu_flags(mount: Mount) -> int:
    """``mnt_entry.flags`` as CRIU fills it from mountinfo: the per-mount flags,
    MS_STRICTATIME where neither relatime nor noatime shows (the kernel's meaning), and the
    propagation bits (MS_SHARED, MS_SLAVE, MS_UNBINDABLE)."""
    flags = mount.flags
    if not flags & (MS_RELATIME | MS_NOATIME):
        flags |= MS_STRICTATIME
    return flags | _propagation_flags(mount)


def _propagation_flags(mount: Mount) -> int:
    prop = mount.propagation
    return ((MS_SHARED if prop.shared is not None else 0)
            | (MS_SLAVE if prop.master is not None else 0)
            | (MS_UNBINDABLE if prop.unbindable else 0))  # fmt: skip


def criu_mnt_entry(mount: Mount, external_key: str | None = None) -> mnt_pb2.mnt_entry:
    """The CRIU ``mnt_entry`` for a mount, each field meaning what CRIU 4.2 means by it (text
    that is not UTF-8 comes out escaped here; :func:`criu_entry_bytes` writes it raw)."""
    e = mnt_pb2.mnt_entry(
        fstype=criu_fstype(mount.fstype, external_key is not None),
        mnt_id=mount.mnt_id,
        root_dev=mount.dev.kdev,
        parent_mnt_id=mount.parent_id,
        flags=criu_flags(mount),
        root=criu_text(mount.root),
        mountpoint=criu_text(mount.mountpoint),
        source=criu_text(mount.source),
        options=criu_text(
            ",".join(o for o in mount.super_options if o not in _SB_FLAGS and o != "rw")
        ),
    )
    if e.fstype == mnt_pb2.AUTO:
        e.fsname = criu_text(mount.fstype)
    # CRIU writes both always, 0 for none (peer group ids start at 1).
    prop = mount.propagation
    e.shared_id = prop.shared or 0
    e.master_id = prop.master or 0
    if external_key is not None:
        # ext_key alone marks an external mount (CRIU 4.x: ext_mount with ext_key is a BUG).
        e.ext_key = criu_text(external_key)
    if mount.root_deleted:
        e.deleted = True
    sb_flags = 0
    for opt in mount.super_options:
        sb_flags |= _SB_FLAGS.get(opt, 0)
    e.sb_flags = sb_flags
    return e


def _fw_mount(
    mount: Mount,
    driver: str,
    state: DriverState | None,
    external_key: str | None,
    content: str | None,
    deleted: DeletedRoot | None = None,
) -> fwstate_pb2.fw_mount:
    fw = fwstate_pb2.fw_mount(
        mnt_id=mount.mnt_id,
        fstype=os.fsencode(mount.fstype),
        mount_options=[os.fsencode(o) for o in mount.mount_options],
        super_options=[os.fsencode(o) for o in mount.super_options],
        unbindable=mount.propagation.unbindable,
        root_deleted=mount.root_deleted,
        driver=driver,
    )
    if mount.propagation.propagate_from is not None:
        fw.propagate_from = mount.propagation.propagate_from
    if mount.unique_id is not None:
        fw.unique_id = mount.unique_id
    # Paths that are not UTF-8 travel as raw bytes in CRIU's own fields (as CRIU writes
    # them); fw_mount's root, mountpoint and source are only read, from older images.
    if external_key is not None:
        fw.external_key = external_key
    if content is not None:
        fw.content_image = content
    if state is not None:
        fw.state.Pack(state.to_message())
    if deleted is not None:
        d = fw.deleted_root
        d.mode, d.uid, d.gid = deleted.mode, deleted.uid, deleted.gid
        if deleted.link is not None:
            d.link = os.fsencode(deleted.link)
        if deleted.content is not None:
            d.content_image = deleted.content
    return fw


def write_mount_namespace(
    image_dir: str,
    dumped: DumpedNamespace,
    *,
    files: Mapping[str, BinaryIO] = {},
) -> list[str]:
    """Write the images of one mount namespace; returns the file names written.

    Every mount's record must name its driver. The files are written in place under
    ``image_dir`` (publishing a dump atomically is the dump engine's job); ``files`` may hold
    some of them already created and open (by name, see :func:`mount_image_names`; the
    caller closes them).
    """
    ns_id, tree = dumped.ns_id, dumped.tree
    mounts = tree.mounts
    if len(mounts) > imagecheck.MAX_MOUNTS:  # refused here, not only by the restore
        raise ImageError(
            os.path.join(image_dir, mountpoints_image(ns_id)),
            f"{len(mounts)} mounts, more than the {imagecheck.MAX_MOUNTS} a reader accepts",
        )
    records = list(dumped)
    for rec in records:
        if rec.driver is None:
            raise ValueError(f"no driver given for {rec.mount.describe()}")

    criu: list[bytes] = []
    fw: list[bytes] = [
        fwstate_pb2.fw_entry(
            header=fwstate_pb2.fw_header(
                format_version=FORMAT_VERSION,
                ns_id=ns_id,
                mount_count=len(mounts),
                writer=f"criu-fw {__version__}",
                kernel_ns_id=tree.ns_id,
            )
        ).SerializeToString()
    ]
    _EntryWriter().write_all(records, criu, fw)
    criu.reverse()  # CRIU's order: reverse mountinfo order

    mnts_name = mountpoints_image(ns_id)
    write_serialized(os.path.join(image_dir, mnts_name), MNTS, criu, file=files.get(mnts_name))
    fw_name = fw_image(ns_id)
    write_serialized(os.path.join(image_dir, fw_name), FW_MNTS, fw, file=files.get(fw_name))
    return [mnts_name, fw_name]


def mount_image_names(ns_id: int) -> tuple[str, str]:
    """The names of the two images :func:`write_mount_namespace` writes for ``ns_id``."""
    return mountpoints_image(ns_id), fw_image(ns_id)


#: A mount's two entries, and the fw_mount inside the second.
_Templates = tuple[mnt_pb2.mnt_entry, fwstate_pb2.fw_entry, fwstate_pb2.fw_mount]


class _EntryWriter:
    """Both entries of each mount, serialized from reused message templates.

    The mounts of a big table differ mostly in their ids and mountpoints: one pair of
    messages (CRIU's ``mnt_entry``, criu-fw's ``fw_entry``) is built, with
    :func:`criu_mnt_entry` and :func:`_fw_mount`, per distinct value of everything else, and
    only the per-mount fields are set on it before serializing. Each field left out of a
    template's key is set on every use (required, or ``mnt_id`` whose zero is its absence),
    so the bytes are exactly those of a message built from scratch. A mount with a driver
    state, a unique id or a mountpoint that is not UTF-8 is built from scratch.
    """

    def __init__(self) -> None:
        self.templates: dict[tuple[object, ...], _Templates] = {}
        self.bases: dict[tuple[object, ...], _Templates] = {}
        self.shapes: dict[tuple[object, ...], _Templates] = {}

    def write_all(
        self, records: Iterable[MountRecord], criu_out: list[bytes], fw_out: list[bytes]
    ) -> None:
        """Append both entries of every mount, in order, to ``criu_out`` and ``fw_out``.

        One loop with the template path inline: at 1,000 mounts a call per mount was a
        fifth of the serializing."""
        templates, make = self.templates, self._template
        scratch = self._scratch
        add_criu, add_fw = criu_out.append, fw_out.append
        fast = _FAST_TEXT
        texts: dict[tuple[object, ...], bool] = {}
        for rec in records:
            m, driver, state = rec.mount, rec.driver, rec.state
            ext, cont = rec.external, rec.content
            mnt_id = m.mnt_id
            assert driver is not None  # checked by write_mount_namespace
            if state is not None or m.unique_id is not None or not fast or rec.deleted:
                c, f = scratch(m, driver, state, ext, cont, rec.deleted)
                add_criu(c)
                add_fw(f)
                continue
            dev, prop = m.dev, m.propagation
            key = (m.fstype, dev.major, dev.minor, m.root, m.source, m.mount_options,
                   m.super_options, prop.shared, prop.master, prop.propagate_from,
                   prop.unbindable, m.root_deleted, driver, ext, cont)  # fmt: skip
            tpl = templates.get(key)
            if tpl is None:
                text = (m.root, m.source, m.fstype, m.super_options, ext)
                utf8 = texts.get(text)
                if utf8 is None:
                    # Once per distinct text (templates differ in devices and groups too).
                    utf8 = texts[text] = _all_utf8(m, ext)
                if not utf8:
                    tpl = templates[key] = _RAW  # CRIU's fields get raw bytes: see scratch
                else:
                    tpl = templates[key] = make(m, driver, ext, cont)
            if tpl is _RAW:
                c, f = scratch(m, driver, state, ext, cont)
                add_criu(c)
                add_fw(f)
                continue
            criu, fw, fw_mount = tpl
            try:
                # Refused (UnicodeEncodeError) for a mountpoint that is not UTF-8, which
                # needs its exact bytes in the fw entry too: built from scratch.
                criu.mountpoint = m.mountpoint
            except UnicodeEncodeError:
                c, f = scratch(m, driver, state, ext, cont)
                add_criu(c)
                add_fw(f)
                continue
            criu.mnt_id = fw_mount.mnt_id = mnt_id
            criu.parent_mnt_id = m.parent_id
            add_criu(criu.SerializeToString())
            add_fw(fw.SerializeToString())

    def _template(self, m: Mount, driver: str, ext: str | None, content: str | None) -> _Templates:
        # Templates that differ only in the device and the peer groups (a table's many
        # superblocks and peer groups) share the fw_entry and copy CRIU's entry, which then
        # gets only these three fields: a fifth of the cost of building both.
        prop = m.propagation
        base_key = (m.fstype, m.root, m.source, m.mount_options, m.super_options,
                    prop.propagate_from, prop.unbindable, m.root_deleted, driver, ext,
                    content)  # fmt: skip
        base = self.bases.get(base_key)
        if base is None:
            base = self.bases[base_key] = self._base(m, driver, ext, content)
            return base
        criu = _copied(base[0], m)
        if criu is None:
            return (criu_mnt_entry(m, ext), base[1], base[2])  # gives protobuf's error
        return (criu, base[1], base[2])

    def _base(self, m: Mount, driver: str, ext: str | None, content: str | None) -> _Templates:
        # Bases that differ only in root, source and content image (a table's superblocks of
        # one kind) copy the pair built for the first of them and set those: a third of the
        # cost. Text that is not exact UTF-8 changes more fields: built from scratch.
        prop = m.propagation
        shape_key = (m.fstype, m.mount_options, m.super_options, prop.propagate_from,
                     prop.unbindable, m.root_deleted, driver, ext)  # fmt: skip
        shape = self.shapes.get(shape_key)
        exact = is_exact_utf8(m.root) and is_exact_utf8(m.source)
        if shape is None or not exact:
            fw = fwstate_pb2.fw_entry(mount=_fw_mount(m, driver, None, ext, content))
            built = (criu_mnt_entry(m, ext), fw, fw.mount)
            if exact:
                self.shapes[shape_key] = built
            return built
        criu = _copied(shape[0], m)
        if criu is None:
            return (criu_mnt_entry(m, ext), shape[1], shape[2])  # gives protobuf's error
        criu.root, criu.source = m.root, m.source  # exact: criu_text() gives them back
        fw = fwstate_pb2.fw_entry()
        fw.CopyFrom(shape[1])
        if content is None:
            fw.mount.ClearField("content_image")
        else:
            fw.mount.content_image = content
        return (criu, fw, fw.mount)

    @staticmethod
    def _scratch(
        m: Mount, driver: str, state: DriverState | None, ext: str | None, content: str | None,
        deleted: DeletedRoot | None = None,
    ) -> tuple[bytes, bytes]:
        fw = fwstate_pb2.fw_entry(mount=_fw_mount(m, driver, state, ext, content, deleted))
        return criu_entry_bytes(m, ext), fw.SerializeToString()


#: A template slot for mounts whose text is not all UTF-8 (always built from scratch).
_RAW: Any = object()


def _all_utf8(m: Mount, ext: str | None) -> bool:
    # The mountpoint too where called alone; the writer's loop finds a mountpoint that is
    # not UTF-8 by protobuf's refusal of it.
    return all(is_exact_utf8(t) for t in (m.root, m.mountpoint, m.source, m.fstype)) and all(
        is_exact_utf8(o) for o in m.super_options
    ) and (ext is None or is_exact_utf8(ext))


def criu_entry_bytes(mount: Mount, external_key: str | None = None) -> bytes:
    """The serialized ``mnt_entry`` of a mount, text as its raw bytes where it is not UTF-8
    (paths are bytes to the kernel and to CRIU, whose C reader takes them as they are)."""
    entry = criu_mnt_entry(mount, external_key)
    if _all_utf8(mount, external_key):
        return entry.SerializeToString()
    raw: Any = _raw_mnt_entry()()  # a message class made at run time: untyped
    raw.ParseFromString(entry.SerializeToString())
    raw.root, raw.mountpoint = os.fsencode(mount.root), os.fsencode(mount.mountpoint)
    raw.source = os.fsencode(mount.source)
    raw.options = b",".join(
        os.fsencode(o) for o in mount.super_options if o not in _SB_FLAGS and o != "rw"
    )
    if entry.HasField("fsname"):
        raw.fsname = os.fsencode(mount.fstype)
    if external_key is not None:
        raw.ext_key = os.fsencode(external_key)
    return bytes(raw.SerializeToString())


@functools.cache
def _raw_mnt_entry() -> type[Message]:
    """``mnt_entry`` with its string fields as bytes: the same wire format (both are
    length-delimited), which protobuf's Python API lets hold bytes that are not UTF-8."""
    proto = descriptor_pb2.FileDescriptorProto()
    mnt_pb2.DESCRIPTOR.CopyToProto(proto)
    (entry,) = [m for m in proto.message_type if m.name == "mnt_entry"]
    twin = descriptor_pb2.FileDescriptorProto(name="criu_fw_raw_mnt.proto", package="criu_fw.raw")
    twin.message_type.add().CopyFrom(entry)
    for field in twin.message_type[0].field:
        if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    pool = descriptor_pool.DescriptorPool()
    pool.Add(twin)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("criu_fw.raw.mnt_entry"))


def _copied(entry: mnt_pb2.mnt_entry, m: Mount) -> mnt_pb2.mnt_entry | None:
    """A copy of ``entry`` with ``m``'s device and peer groups, set as :func:`criu_mnt_entry`
    sets them; None where protobuf refuses the device (building from scratch raises)."""
    criu = mnt_pb2.mnt_entry()
    criu.CopyFrom(entry)
    try:
        criu.root_dev = m.dev.kdev
    except ValueError:
        return None
    prop = m.propagation
    criu.shared_id = prop.shared or 0
    criu.master_id = prop.master or 0
    criu.flags = criu.flags & ~(MS_SHARED | MS_SLAVE | MS_UNBINDABLE) | _propagation_flags(m)
    return criu


#: Text that encodes as UTF-8 is its own CRIU form (``criu_text``) only when the filesystem
#: encoding is UTF-8; otherwise every mount takes the path through criu_text.
_FAST_TEXT = sys.getfilesystemencoding() == "utf-8" and sys.getfilesystemencodeerrors() == (
    "surrogateescape"
)


# --------------------------------------------------------------------------------------------
# reading


def read_mount_namespace(
    image_dir: str, ns_id: int, manager: DriverManager | None = None
) -> DumpedNamespace:
    """Read back what :func:`write_mount_namespace` wrote for ``ns_id``.

    Driver state is unpacked through the driver that declares its message type in
    ``manager`` (without one, the installed drivers: :func:`~criu_fw.api.loader.resolve_manager`).
    A state type no loaded driver knows, a newer format version, or images that disagree
    raise ImageError.

    Images are untrusted, so what they say is checked here too (:mod:`criu_fw.images.check`):
    paths absolute and normalised, texts without NUL bytes, one tree with its root at ``/``,
    and each mount's driver the one ``mgr``'s registry picks for its fstype.
    """
    mnts_path = os.path.join(image_dir, mountpoints_image(ns_id))
    fw_path = os.path.join(image_dir, fw_image(ns_id))
    if not os.path.lexists(fw_path) and os.path.lexists(mnts_path) and _criu_alone(image_dir):
        # A directory CRIU wrote alone: what its own images say (criu_fw.images.criu).
        from .criu import read_criu_namespace, root_task_namespace

        root = root_task_namespace(image_dir)
        return read_criu_namespace(
            image_dir, ns_id, resolve_manager(manager), root_ns=root in (None, ns_id)
        )

    criu: dict[int, mnt_pb2.mnt_entry] = {}
    criu_entry: dict[int, int] = {}  # mnt_id -> entry number in the MNTS image
    for n, e in enumerate(iter_image(mnts_path, mnt_pb2.mnt_entry, kind="MNTS")):
        if e.mnt_id in criu:
            raise ImageError(mnts_path, f"mount id {e.mnt_id} appears twice", n)
        criu[e.mnt_id] = e
        criu_entry[e.mnt_id] = n
    mgr = resolve_manager(manager)
    driver_problem = imagecheck.DriverCheck(mgr)

    mounts: list[Mount] = []
    drivers: dict[int, str] = {}
    states: dict[int, DriverState | None] = {}
    external: dict[int, str] = {}
    content: dict[int, str] = {}
    deleted: dict[int, DeletedRoot] = {}
    header: fwstate_pb2.fw_header | None = None
    for n, entry in enumerate(iter_image(fw_path, fwstate_pb2.fw_entry, kind="FW_MNTS")):
        which = entry.WhichOneof("kind")
        if n == 0:
            header = _check_header(fw_path, entry, ns_id)
            continue
        if which != "mount":
            raise ImageError(fw_path, f"expected a mount entry, found {which or 'nothing'}", n)
        fw = entry.mount
        base = criu.pop(fw.mnt_id, None)
        if base is None:
            what = "appears twice" if fw.mnt_id in drivers else (
                f"has no entry in {os.path.basename(mnts_path)}"
            )
            raise ImageError(fw_path, f"mount id {fw.mnt_id} {what}", n)
        mount = _mount(base, fw)
        ext = fw.external_key if fw.HasField("external_key") else None
        cont = fw.content_image if fw.HasField("content_image") else None
        for field in ("mountpoint", "root"):
            why = imagecheck.path_problem(field, getattr(mount, field))
            if why is not None:
                # Named where the exact text is: criu-fw's image for text that is not UTF-8.
                where = (fw_path, n) if fw.HasField(field) else (mnts_path, criu_entry[fw.mnt_id])
                raise ImageError(where[0], f"mount {fw.mnt_id}: {why}", where[1])
        why = imagecheck.text_problem(mount, ext, cont) or driver_problem(mount.fstype, fw.driver)
        if why is not None:
            raise ImageError(fw_path, f"mount {fw.mnt_id}: {why}", n)
        mounts.append(mount)
        drivers[fw.mnt_id] = fw.driver
        if ext is not None:
            external[fw.mnt_id] = ext
        if cont is not None:
            content[fw.mnt_id] = cont
        if fw.HasField("deleted_root"):
            gone = _deleted_root(fw.deleted_root, mount)
            if isinstance(gone, str):
                raise ImageError(fw_path, f"mount {fw.mnt_id}: {gone}", n)
            deleted[fw.mnt_id] = gone
        if fw.HasField("state"):
            states[fw.mnt_id] = _unpack_state(fw_path, n, fw, mgr)
        else:
            states[fw.mnt_id] = None
    if header is None:
        raise ImageError(fw_path, "empty image: no header")
    if len(mounts) != header.mount_count:
        raise ImageError(
            fw_path,
            f"truncated: the header announces {header.mount_count} mounts, "
            f"the image holds {len(mounts)}",
        )
    if criu:
        raise ImageError(
            mnts_path,
            f"mount id(s) {sorted(criu)} have no entry in {os.path.basename(fw_path)}",
        )
    bad = imagecheck.tree_problem(mounts)
    if bad is not None:
        # The tree is CRIU's parent_mnt_id and mountpoint: named in its image.
        mnt_id, why = bad
        if mnt_id is None:
            raise ImageError(mnts_path, why)
        raise ImageError(mnts_path, f"mount {mnt_id}: {why}", criu_entry[mnt_id])
    return DumpedNamespace.of(
        ns_id, MountTree(tuple(mounts), header.kernel_ns_id), drivers=drivers, states=states,
        external=external, content=content, deleted=deleted,
    )


def _deleted_root(d: fwstate_pb2.fw_deleted_root, mount: Mount) -> DeletedRoot | str:
    """The recorded deleted root, or why it cannot be one (images are untrusted)."""
    if not mount.root_deleted:
        return "a deleted root recorded for a mount whose root was not deleted"
    kind = stat.S_IFMT(d.mode)
    if kind not in (stat.S_IFDIR, stat.S_IFREG) or d.mode & ~(kind | 0o7777):
        return f"deleted root mode {d.mode:#o} is not a directory's or a regular file's"
    link = content = None
    if d.HasField("link"):
        link = text_of(d.link)
        why = imagecheck.path_problem("deleted root link", link)
        if why is not None or kind != stat.S_IFREG or link == "/":
            return why or "a deleted root link is for a regular file, to another of its names"
    if d.HasField("content_image"):
        content = d.content_image
        if kind != stat.S_IFREG or not _DELETED_NAME.fullmatch(content) or link is not None:
            return f"deleted root content image {content!r} is not fw-deleted-<ns>-<mount>.img"
    return DeletedRoot(d.mode, d.uid, d.gid, link, content)


#: The name the dump gives a deleted root's bytes (see :func:`deleted_root_image`).
_DELETED_NAME = re.compile(r"fw-deleted-\d{1,20}-\d{1,10}\.img")


def deleted_root_image(ns_id: int, mnt_id: int) -> str:
    """The image holding the bytes of a bind's deleted root file."""
    return f"fw-deleted-{ns_id}-{mnt_id}.img"


def _criu_alone(image_dir: str) -> bool:
    """Whether no criu-fw image is in the directory (one missing among others is lost)."""
    with os.scandir(image_dir) as listing:
        return not any(e.name.startswith("fw-mountpoints-") for e in listing)


def _check_header(path: str, entry: fwstate_pb2.fw_entry, ns_id: int) -> fwstate_pb2.fw_header:
    if entry.WhichOneof("kind") != "header":
        raise ImageError(path, "the first entry is not a header", 0)
    header = entry.header
    if header.format_version > FORMAT_VERSION:
        raise ImageError(
            path,
            f"written by a newer criu-fw ({header.writer or 'unknown'}, format version "
            f"{header.format_version}); this criu-fw {__version__} reads up to version "
            f"{FORMAT_VERSION}",
            0,
        )
    if header.format_version < 1:
        raise ImageError(path, f"bad format version {header.format_version}", 0)
    if header.ns_id != ns_id:
        raise ImageError(path, f"header is for mount namespace {header.ns_id}, not {ns_id}", 0)
    return header


def _text(
    fw: fwstate_pb2.fw_mount,
    field: Literal["root", "mountpoint", "source"],
    criu_value: str | bytes,
) -> str:
    if fw.HasField(field):
        return os.fsdecode(getattr(fw, field))
    return text_of(criu_value)


#: Option lists as read, decoded once each: a big table repeats a few (``rw,relatime``).
_OPTIONS: dict[tuple[bytes, ...], tuple[str, ...]] = {}


def _options(raw: Iterable[bytes]) -> tuple[str, ...]:
    key = tuple(raw)
    got = _OPTIONS.get(key)
    if got is None:
        got = tuple(map(os.fsdecode, key))
        if len(_OPTIONS) < 4096:  # a table of unique options does not grow it without end
            _OPTIONS[key] = got
    return got


def _mount(e: mnt_pb2.mnt_entry, fw: fwstate_pb2.fw_mount) -> Mount:
    return Mount(
        mnt_id=e.mnt_id,
        parent_id=e.parent_mnt_id,
        dev=Dev(e.root_dev >> 20, e.root_dev & _KDEV_MINOR_MASK),
        root=_text(fw, "root", e.root),
        mountpoint=_text(fw, "mountpoint", e.mountpoint),
        fstype=os.fsdecode(fw.fstype),
        source=_text(fw, "source", e.source),
        mount_options=_options(fw.mount_options),
        super_options=_options(fw.super_options),
        propagation=Propagation(
            # 0 is none: CRIU writes both fields always, peer group ids start at 1.
            shared=e.shared_id or None,
            master=e.master_id or None,
            propagate_from=fw.propagate_from if fw.HasField("propagate_from") else None,
            unbindable=fw.unbindable,
        ),
        root_deleted=fw.root_deleted,
        unique_id=fw.unique_id if fw.HasField("unique_id") else None,
    )


def _unpack_state(path: str, n: int, fw: fwstate_pb2.fw_mount, mgr: DriverManager) -> DriverState:
    packed: any_pb2.Any = fw.state
    full_name = packed.TypeName()
    where = f"mount {fw.mnt_id} (driver {fw.driver!r})"
    state_type = mgr.state_type(full_name)
    if state_type is None:
        raise ImageError(
            path, f"{where}: driver state of type {full_name!r} is unknown to the loaded drivers", n
        )
    message = state_type.MESSAGE()
    try:
        if not packed.Unpack(message):
            raise ImageError(path, f"{where}: state is not a {full_name}", n)
    except DecodeError:
        raise ImageError(path, f"{where}: garbled driver state of type {full_name!r}", n) from None
    why = imagecheck.state_problem(message)
    if why is not None:
        raise ImageError(path, f"{where}: {why}", n)
    try:
        return state_type.from_message(message)
    except Exception as exc:
        raise ImageError(
            path,
            f"{where}: {state_type.__name__}.from_message failed: {type(exc).__name__}: {exc}",
            n,
        ) from exc
