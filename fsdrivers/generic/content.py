"""Content archives of the generic driver: which way each one is made and unpacked, and
doing it. The one place that decides; ``dump_content`` and ``restore_content`` call it.

A GNU tar process costs 3 to 7 ms however little it archives (fork, exec, its own start,
gzip's), which was most of a dump or restore with thousands of small tmpfs. So:

* dump: a filesystem that holds at most :data:`DUMP_BYTES` in at most :data:`DUMP_MEMBERS`
  entries (statfs says so without a walk, the walk checks it again) is archived in-process
  (:mod:`.tarwrite`) and gzip'd with zlib at gzip's default level; any other, or one the
  in-process writer cannot do exactly (a sparse file, a file changing while read, an error
  reading it), by GNU tar, as before.
* restore: an archive of at most :data:`RESTORE_ARCHIVE` bytes is unpacked in memory (to at
  most :data:`RESTORE_UNPACKED` in :data:`RESTORE_MEMBERS` members) and extracted in-process
  (:mod:`.tarextract`); a bigger one, or one that uses what the in-process reader leaves to
  GNU tar, goes to a GNU tar started as a :class:`~criu_fw.plan.ContentJob`, so several run
  at once (one per CPU) while the restore goes on.

Both ways make the same archives and the same trees (tests/test_content_archives.py checks
each against the other). Figures behind the limits: bench/content.py.
"""

from __future__ import annotations

import errno
import logging
import os
import zlib

from criu_fw.driver import DumpContext, DumpError, RestoreError

from . import gnutar
from .tarextract import MemberError, extract, used_up
from .tarformat import BadArchive, NeedsGnuTar
from .tarwrite import write_tree

log = logging.getLogger("criu_fw.generic")

#: In-process limits (bench/content.py --sweep, 2 vCPUs, 2026-12-05): one GNU tar costs 4
#: to 5 ms to start, then pipes to a gzip on the other CPU. Archiving, this process keeps up
#: with it to 4,000 members (176 against 171 ms) and is faster in bytes (50 against 72 ms for
#: 4 MB, 221 against 242 for 16 MB); the archive is built in memory, hence a bytes limit.
#: Extracting, it is as fast at 200 members (8 ms each way) and slower at 1,000 (39 against
#: 27), faster in bytes (16 against 32 ms for 4 MB), and a GNU tar runs beside the restore
#: rather than in its way: fewer members.
DUMP_BYTES = 8 << 20
DUMP_MEMBERS = 1000
#: The biggest compressed archive read in-process, what it may unpack to, its members.
RESTORE_ARCHIVE = 1 << 20
RESTORE_UNPACKED = 8 << 20
RESTORE_MEMBERS = 400
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: gzip's default, which GNU tar's --gzip uses.
GZIP_LEVEL = 6


def dump(path: str, out: str, what: str, ctx: DumpContext | None = None) -> str:
    """Archive the filesystem readable at ``path`` into the new file ``out``; ``what`` names
    the mount in messages. Returns ``"in-process"`` or ``"tar"`` (for tests and figures).

    With ``ctx``, a GNU tar is left running in the background (``ctx.in_background``: one
    per CPU, the core waits for them while the processes are still frozen); without, it is
    waited for here."""
    why = _too_big(path)
    if why is None:
        try:
            raw = write_tree(path, max_bytes=DUMP_BYTES, max_members=DUMP_MEMBERS)
        except (NeedsGnuTar, OSError) as exc:
            why = str(exc)
        else:
            _write(out, _gzip(raw), what)
            return "in-process"
    log.debug("%s: archived by GNU tar: %s", what, why)
    if ctx is None:
        gnutar.archive(path, out, what)
    else:
        ctx.in_background(gnutar.Archiving(path, out, what), what)
    return "tar"


def _too_big(path: str) -> str | None:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"statfs: {exc.strerror}"
    # Whole pages in use, at least one per file; a tmpfs without a size or inode limit
    # reports 0 of each, and the walk's own limits decide.
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    files = st.f_files - st.f_ffree
    if used > DUMP_BYTES + DUMP_MEMBERS * _PAGE or files > DUMP_MEMBERS + 1:
        return f"{used} bytes in {files} inodes"
    return None


def _gzip(raw: bytes | bytearray) -> bytes:
    # 16 + window bits: a gzip header and trailer. A window no bigger than the data gives
    # as good a stream (nothing lies further back) and saves most of zlib's set-up, which is
    # most of the time a small archive takes (170 us with 32 KiB against 40 us).
    # The hash table likewise (2 ** (memLevel + 7) entries): 18 us against 8 us for a 1.5 KB
    # archive (5,000 small tmpfs at 10,000 mounts), as small a result; 8, zlib's default,
    # from a 32 KiB window up.
    bits = min(15, max(9, (len(raw) - 1).bit_length()))
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + bits, min(8, max(1, bits - 7)))
    return z.compress(raw) + z.flush()


def _write(out: str, data: bytes, what: str) -> None:
    """Write the archive; on failure (a full image directory) remove what was written and
    fail naming the mount and the archive."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise DumpError(f"archiving {what} into {out} failed: {exc.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        os.close(fd)
        os.unlink(out)
        raise DumpError(f"archiving {what} into {out} failed: {exc.strerror}") from None
    os.close(fd)


def restore(fd: int, archive: str, path: str) -> gnutar.Extraction | bool:
    """Unpack the archive open at ``fd`` into the empty filesystem at ``path``: done when
    this returns ``True``, or a running GNU tar to wait for. Raises RestoreError naming the
    archive (and the member) when the archive is corrupt or unsafe or cannot be unpacked,
    saying so when the filesystem is full (either way: :func:`.tarextract.used_up`)."""
    name = os.path.basename(archive)
    size = os.fstat(fd).st_size
    if size <= RESTORE_ARCHIVE:
        try:
            raw = _gunzip(_read(fd, size))
            root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                extract(raw, root, max_members=RESTORE_MEMBERS)
            except MemberError as exc:
                raise RestoreError(
                    f"{name}: could not restore the content: {exc}{_full(root, exc.errno)}"
                ) from None
            finally:
                os.close(root)
            return True
        except NeedsGnuTar as why:
            # Raised before anything was written: GNU tar starts from the empty filesystem.
            log.debug("%s: extracted by GNU tar: %s", name, why)
        except BadArchive as exc:
            raise RestoreError(f"{name}: could not restore the content: {exc}") from None
        except OSError as exc:
            raise RestoreError(
                f"{name}: could not restore the content: {exc.strerror} "
                f"({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            ) from None
    return gnutar.Extraction(archive, fd, path)


def _full(root: int, code: int | None) -> str:
    """``: the filesystem is full (...)`` after an ENOSPC that left the filesystem at
    ``root`` without a free block or inode (the member's error alone does not say which
    limit, nor that it is the restored filesystem's); else nothing."""
    if code != errno.ENOSPC:
        return ""
    try:
        why = used_up(os.fstatvfs(root))
    except OSError:
        return ""
    return f": {why}" if why else ""


def _read(fd: int, size: int) -> bytes:
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, size - pos, pos)  # pread: tar may get the descriptor after
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _gunzip(data: bytes) -> bytes:
    """The tar inside; NeedsGnuTar if it is bigger than :data:`RESTORE_UNPACKED` or is more
    than one gzip stream, BadArchive if it is not gzip or is cut short."""
    z = zlib.decompressobj(31)
    try:
        raw = z.decompress(data, RESTORE_UNPACKED + 1)
    except zlib.error as exc:
        raise BadArchive(f"not a gzip'd tar archive ({exc})") from None
    if len(raw) > RESTORE_UNPACKED:
        raise NeedsGnuTar(f"unpacks to more than {RESTORE_UNPACKED} bytes")
    if not z.eof:
        raise BadArchive("the gzip stream is cut short")
    if z.unused_data:
        raise NeedsGnuTar("more than one gzip stream")
    return raw
