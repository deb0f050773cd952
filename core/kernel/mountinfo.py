"""An exact reader of /proc/PID/mountinfo (see proc(5)).

The kernel escapes space, tab, newline and backslash in paths as octal (``\\040`` ``\\011``
``\\012`` ``\\134``); everything is decoded back to the original bytes and then to ``str`` with
surrogateescape, so names that are not UTF-8 stay byte-exact. One pass over the lines: linear.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator

from ..errors import MountinfoError
from ..model import Dev, Mount, MountTree, Propagation

_OCTAL = re.compile(rb"\\([0-7]{3})")
_DELETED = b"//deleted"


def unescape(field: bytes) -> bytes:
    """Undo the kernel's octal escaping of one mountinfo field."""
    if b"\\" not in field:
        return field
    return _OCTAL.sub(lambda m: bytes((int(m.group(1), 8) & 0xFF,)), field)


def _text(field: bytes) -> str:
    return os.fsdecode(unescape(field))


def _options(field: bytes) -> tuple[str, ...]:
    # Split before unescaping: a comma inside a value is escaped (\054) by the kernel.
    if not field:
        return ()
    return tuple(_text(f) for f in field.split(b","))


def _propagation(fields: list[bytes], source: str, lineno: int, line: bytes) -> Propagation:
    shared = master = pfrom = None
    unbindable = False
    for f in fields:
        tag, _, value = f.partition(b":")
        try:
            if tag == b"shared":
                shared = int(value)
            elif tag == b"master":
                master = int(value)
            elif tag == b"propagate_from":
                pfrom = int(value)
            elif tag == b"unbindable":
                unbindable = True
            # Unknown optional fields are allowed by proc(5): newer kernels may add some.
        except ValueError:
            raise MountinfoError(
                source, lineno, f"bad optional field {f.decode(errors='replace')!r}", line
            ) from None
    return Propagation(shared, master, pfrom, unbindable)


def parse_line(line: bytes, source: str = "mountinfo", lineno: int = 1) -> Mount:
    """One mountinfo line (without its newline) into a :class:`Mount`."""
    fields = line.split(b" ")
    try:
        sep = fields.index(b"-", 6)
    except ValueError:
        raise MountinfoError(source, lineno, "no ' - ' separator after field 6", line) from None
    if len(fields) - sep != 4:
        raise MountinfoError(
            source, lineno, f"expected 3 fields after ' - ', got {len(fields) - sep - 1}", line
        )
    try:
        mnt_id = int(fields[0])
        parent_id = int(fields[1])
        dev = Dev.parse(fields[2].decode("ascii"))
    except ValueError:
        raise MountinfoError(
            source, lineno, "bad mount id, parent id or major:minor", line
        ) from None
    root = unescape(fields[3])
    deleted = False
    if root.endswith(_DELETED) and root != _DELETED:
        # dentry_path() appends "//deleted" when the mounted file or directory was unlinked;
        # a real name cannot contain "//", so this is unambiguous.
        root, deleted = root[: -len(_DELETED)], True
    mountpoint = fields[4]
    if not root.startswith(b"/") or not mountpoint.startswith(b"/"):
        raise MountinfoError(source, lineno, "root and mountpoint must be absolute paths", line)
    prop = _propagation(fields[6:sep], source, lineno, line)
    # Escaped like paths (show_type): a FUSE subtype may hold any byte but these.
    fstype = _text(fields[sep + 1])
    if not fstype:
        raise MountinfoError(source, lineno, "empty filesystem type", line)
    return Mount(
        mnt_id=mnt_id,
        parent_id=parent_id,
        dev=dev,
        root=os.fsdecode(root),
        mountpoint=_text(mountpoint),
        fstype=fstype,
        source=_text(fields[sep + 2]),
        mount_options=_options(fields[5]),
        super_options=_options(fields[sep + 3]),
        propagation=prop,
        root_deleted=deleted,
    )


def parse(data: bytes, source: str = "mountinfo") -> Iterator[Mount]:
    """Every mount in a mountinfo text, in order."""
    return _Parser(source).mounts(data)


class _Parser:
    """The fast path of :func:`parse_line` for whole tables.

    A big table repeats itself: a few devices and roots, and a few hundred distinct tails
    (per-mount options through superblock options) for thousands of lines. Each
    distinct field is decoded once per table and shared between the (immutable) records.
    A line with a backslash (an escaped byte) or anything unexpected goes through
    :func:`parse_line`, which gives the same result or the exact error.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.devs: dict[bytes, Dev | None] = {}
        self.roots: dict[bytes, tuple[str, bool] | None] = {}
        self.tails: dict[bytes, _Tail | None] = {}
        # The pieces of tails: distinct tails differ mostly in their peer groups, and the
        # option lists and names they share are decoded once.
        self.options: dict[bytes, tuple[str, ...]] = {}
        self.texts: dict[bytes, str] = {}
        self.props: dict[tuple[bytes, ...], Propagation | None] = {}

    def _tail(self, rest: bytes) -> _Tail | None:
        # Everything after the mountpoint; None: let parse_line say what is wrong.
        fields = rest.split(b" ")
        try:
            sep = fields.index(b"-", 1)
        except ValueError:
            return None
        if len(fields) - sep != 4:
            return None
        optional = tuple(fields[1:sep])
        try:
            prop = self.props[optional]
        except KeyError:
            try:
                prop = _propagation(list(optional), "", 0, b"")
            except MountinfoError:
                prop = None
            self.props[optional] = prop
        if prop is None:
            return None
        fstype = self._text(fields[sep + 1])
        if not fstype:
            return None
        options = self._options
        return (options(fields[0]), prop, fstype, self._text(fields[sep + 2]),
                options(fields[sep + 3]))  # fmt: skip

    def _options(self, field: bytes) -> tuple[str, ...]:
        try:
            return self.options[field]
        except KeyError:
            value = self.options[field] = _options(field)
            return value

    def _text(self, field: bytes) -> str:
        try:
            return self.texts[field]
        except KeyError:
            value = self.texts[field] = _text(field)
            return value

    def mounts(self, data: bytes, first_lineno: int = 1) -> Iterator[Mount]:
        source = self.source
        devs, roots, tails = self.devs, self.roots, self.tails
        new, mount = tuple.__new__, Mount
        for lineno, line in enumerate(data.split(b"\n"), first_lineno):
            if not line:
                continue
            parts = line.split(b" ", 5)
            if len(parts) != 6 or b"\\" in line:
                yield parse_line(line, source, lineno)
                continue
            mnt_id, parent_id, dev_f, root_f, mp, rest = parts
            try:
                tail = tails[rest]
            except KeyError:
                tail = tails[rest] = self._tail(rest)
            try:
                dev = devs[dev_f]
            except KeyError:
                dev = devs[dev_f] = _dev(dev_f)
            try:
                root = roots[root_f]
            except KeyError:
                root = roots[root_f] = _root(root_f)
            if tail is None or dev is None or root is None or not mp.startswith(b"/"):
                yield parse_line(line, source, lineno)
                continue
            try:
                ident, parent = int(mnt_id), int(parent_id)
            except ValueError:
                yield parse_line(line, source, lineno)
                continue
            mopts, prop, fstype, src, sopts = tail
            # Mount's fields in order (unique_id: None), without its Python-level __new__.
            yield new(mount, (ident, parent, dev, root[0], mp.decode(_FS_ENCODING, _FS_ERRORS),
                              fstype, src, mopts, sopts, prop, root[1], None))


#: What follows the mountpoint, decoded: per-mount options, propagation, fstype, source and
#: superblock options.
_Tail = tuple[tuple[str, ...], Propagation, str, str, tuple[str, ...]]
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _dev(field: bytes) -> Dev | None:
    try:
        return Dev.parse(field.decode("ascii"))
    except ValueError:
        return None


def _root(field: bytes) -> tuple[str, bool] | None:
    # As in parse_line, for a field without escapes; None: let parse_line say what is wrong.
    root, deleted = field, False
    if root.endswith(_DELETED) and root != _DELETED:
        root, deleted = root[: -len(_DELETED)], True
    if not root.startswith(b"/"):
        return None
    return os.fsdecode(root), deleted


def process_gone(pid: int | str, proc_root: str = "/proc") -> str | None:
    """Why process ``pid`` has no mount table to read, in a line naming it (no such process,
    or one that has exited and not been reaped: a zombie keeps its /proc directory but no
    namespace); None when it is there."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as f:
            state = f.read().rpartition(b")")[2][1:2]
    except FileNotFoundError:
        return f"no process {pid}"
    except OSError:
        return None  # there, but not ours to read: the caller's own read says why
    if state in (b"Z", b"X"):
        return f"process {pid} has exited (its parent has not reaped it): it has no mounts"
    return None


def read_mountinfo(pid: int | str = "self", proc_root: str = "/proc", ns_id: int = 0) -> MountTree:
    """The mount tree of a process's mount namespace, as its mountinfo shows it."""
    path = os.path.join(proc_root, str(pid), "mountinfo")
    with open(path, "rb") as f:
        data = f.read()
    return MountTree(tuple(parse(data, path)), ns_id)


def read_while_written(path: str) -> tuple[bytes, tuple[Mount, ...]] | None:
    """The text of a live mountinfo file and its mounts, parsed while the kernel writes it.

    The kernel formats a big table about as fast as this parser reads it, but read(2) of a
    seq_file gives one page per call. Here a thread makes a single sendfile(2) call into a
    memfd (no GIL needed until it returns) and this thread parses the lines as the memfd
    grows, so formatting and parsing overlap. Returns None where that cannot be done (no
    memfd or sendfile for the file, a failed read): the caller reads and parses the usual
    way, which also gives the usual errors. A line that does not parse raises as in
    :func:`parse`.
    """
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # A small table is read here: a thread would cost more than it saves.
        head: list[bytes] = []
        got = 0
        while got < _SMALL:
            chunk = os.read(src, _SMALL)
            if not chunk:
                data = b"".join(head)
                return data, tuple(_Parser(path).mounts(data))
            head.append(chunk)
            got += len(chunk)
        mem = os.memfd_create("criu-fw-mountinfo", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        os.close(src)
        return None
    copy = _Copy(src, mem)  # the rest, from where the reads above stopped
    try:
        return _parse_growing(path, b"".join(head), mem, copy)
    finally:
        copy.thread.join()
        os.close(src)
        os.close(mem)


#: Read directly up to this much (about 300 mounts), then the rest in a thread while the head
#: is parsed. Measured (medians of 60, this machine; reading alone in brackets): reading and
#: parsing in turn take 0.41 ms at 100 mounts (0.23), where starting the thread after one
#: page took 1.16; at 1,000 mounts 3.0 ms against 2.4 with the thread (1.8); at 10,000
#: 33 ms against 23 (19).
_SMALL = 32 << 10


#: More than any mount table (100,000 mounts make about 10 MB): one call copies it all.
_ONE_CALL = 1 << 30


class _Copy:
    """sendfile(2) of a whole file into a memfd, in a thread; ``size`` once ``done``."""

    def __init__(self, src: int, mem: int) -> None:
        self.size: int | None = None
        self.done = threading.Event()
        going = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(src, mem, going),
                                       name="criu-fw-mountinfo-copy", daemon=True)  # fmt: skip
        self.thread.start()
        # Until the thread is in sendfile(2): it needs the GIL to get there, and a caller
        # that goes on parsing would keep it waiting (up to a switch interval, 5 ms, when
        # the parser makes no system call meanwhile: the copy measured 7.6 ms against 2).
        going.wait()

    def _run(self, src: int, mem: int, going: threading.Event) -> None:
        try:
            going.set()  # the GIL goes back at the system call right after this
            self.size = os.sendfile(mem, src, None, _ONE_CALL)
        except OSError:
            pass  # size stays None: the caller reads the usual way
        finally:
            self.done.set()


def _parse_growing(
    path: str, head: bytes, mem: int, copy: _Copy
) -> tuple[bytes, tuple[Mount, ...]] | None:
    parser = _Parser(path)
    chunks: list[bytes] = [head]
    mounts: list[Mount] = []
    cut = head.rfind(b"\n") + 1
    mounts.extend(parser.mounts(head[:cut]))
    lineno = 1 + head.count(b"\n", 0, cut)
    pending = head[cut:]  # the start of a line whose end has not been copied yet
    consumed = 0
    while True:
        finished = copy.done.is_set()  # before the size: then that size is the final one
        size = os.fstat(mem).st_size
        if size > consumed:
            chunk = os.pread(mem, size - consumed, consumed)
            consumed += len(chunk)
            chunks.append(chunk)
            cut = chunk.rfind(b"\n") + 1
            if cut:
                text, pending = pending + chunk[:cut], chunk[cut:]
                mounts.extend(parser.mounts(text, lineno))
                lineno += text.count(b"\n")
            else:
                pending += chunk
        elif finished:
            break
        else:
            copy.done.wait(0.0002)
    if copy.size is None or copy.size >= _ONE_CALL or copy.size != consumed:
        return None
    if pending:
        mounts.extend(parser.mounts(pending, lineno))
    return b"".join(chunks), tuple(mounts)
