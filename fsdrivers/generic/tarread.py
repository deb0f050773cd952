"""Reading a content archive in-process: the members of an uncompressed tar held in memory.

Archives are untrusted (docs/security.md). This parser is linear in the archive's size, keeps
names and values as the bytes they are, and reads what GNU tar writes for a tmpfs: PAX
(``x``/``g`` headers, ``SCHILY.xattr.*``, PAX 1.0 sparse files) and the GNU format of CRIU's
own archives (``L``/``K`` long names, old GNU sparse ``S``). A header it cannot read is
:class:`BadArchive` (GNU tar would fail too); a feature it does not implement, or a member GNU
tar would treat in its own way, is :class:`NeedsGnuTar`, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from .tarformat import (
    ACL_ACCESS,
    ACL_DEFAULT,
    AREGTYPE,
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    CONTTYPE,
    DIRTYPE,
    FIFOTYPE,
    GNU_LONGLINK,
    GNU_LONGNAME,
    GNU_MAGIC,
    GNU_SPARSE,
    LNKTYPE,
    PAX_GLOBAL,
    PAX_LOCAL,
    REGTYPE,
    SYMTYPE,
    XATTR_ACL_ACCESS,
    XATTR_ACL_DEFAULT,
    XATTR_PREFIX,
    BadArchive,
    NeedsGnuTar,
    decode_xattr_name,
    parse_pax_time,
    show,
)

#: Member kinds the in-process extractor creates (sparse files arrive as REGTYPE).
KINDS = frozenset({REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE})
_DEVICES = frozenset({CHRTYPE, BLKTYPE})
#: PAX keywords that GNU tar, extracting with our options, reads and then does nothing with.
_IGNORED = frozenset({
    b"atime", b"ctime", b"uname", b"gname", b"comment", b"charset", b"hdrcharset",
    b"SCHILY.dev", b"SCHILY.ino", b"SCHILY.nlink", b"SCHILY.filetype",
    b"RHT.security.selinux",  # only with --selinux
})
_XATTR = XATTR_PREFIX.encode()
_ACLS = (_ACL_ACCESS, _ACL_DEFAULT) = (ACL_ACCESS.encode(), ACL_DEFAULT.encode())
_ZERO = bytes(BLOCK)
#: The longest name or link target a member may have (the kernel's PATH_MAX).
MAX_NAME = 4096


@attrs.define
class Member:
    """One member; ``data`` is its stored bytes (for a sparse file, the data segments one
    after the other, placed by ``sparse``: (offset, length) in a file of ``size`` bytes)."""

    name: bytes
    kind: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    size: int
    data: memoryview
    xattrs: dict[bytes, bytes]
    sparse: list[tuple[int, int]] | None = None


def _number(field: bytes, what: str) -> int:
    """A numeric field: octal (space or NUL ended), or GNU's base-256 for big values."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:  # negative: the whole field in two's complement
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BadArchive(f"a header with a bad {what} field {field!r}") from None


def _string(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _checksum_ok(blk: bytes) -> bool:
    field = blk[148:156]
    try:
        want = _number(field, "checksum")
    except BadArchive:
        return False
    # The stored field counts as eight spaces: one sum of the block, less the field's bytes.
    # A header is mostly NUL bytes, which add nothing: summed without them, 0.8 against
    # 1.9 us a block (four to eight blocks per small archive).
    unsigned = sum(blk.translate(None, b"\0")) - sum(field) + 8 * 32
    if want == unsigned:
        return True
    # Some old writers summed signed chars; GNU tar accepts those too.
    signed = sum(b - 256 if b > 127 else b for b in blk[:148] + blk[156:]) + 8 * 32
    return want == signed


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """``LEN KEY=VALUE\\n`` records; values are raw bytes (binary xattrs, any name)."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            break  # padding
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0 or not data[pos:sp].isdigit():
            raise BadArchive("a malformed PAX header")
        n = int(data[pos:sp])
        rec_end = pos + n
        if n <= sp - pos + 1 or rec_end > end or data[rec_end - 1] != 0x0A:
            raise BadArchive("a malformed PAX header")
        key, eq, value = data[sp + 1:rec_end - 1].partition(b"=")
        if not eq:
            raise BadArchive("a malformed PAX header")
        out[key] = value
        pos = rec_end
    return out


def _sparse_map_10(data: memoryview) -> tuple[list[tuple[int, int]], int]:
    """PAX 1.0 sparse: the map as decimal lines at the start of the data, padded to a block.
    Returns the map and the number of bytes it takes."""
    nums: list[int] = []
    pos = 0
    count = None
    raw = bytes(data[: min(len(data), 1 << 20)])
    while count is None or len(nums) < 2 * count:
        nl = raw.find(b"\n", pos, pos + 21)
        if nl < 0 or not raw[pos:nl].isdigit():
            raise BadArchive("a malformed sparse map")
        value = int(raw[pos:nl])
        pos = nl + 1
        if count is None:
            count = value
            if count > len(raw) // 4:
                raise BadArchive("a malformed sparse map")
        else:
            nums.append(value)
    used = pos + (-pos % BLOCK)
    return list(zip(nums[0::2], nums[1::2], strict=True)), used


def _sparse_map_gnu(blk: bytes, buf: memoryview, off: int) -> tuple[list[tuple[int, int]], int]:
    """Old GNU sparse (``S``): four entries in the header, more in extension blocks.
    Returns the map and the offset after the extension blocks."""
    entries: list[tuple[int, int]] = []

    def take(area: bytes, count: int) -> None:
        for i in range(count):
            o = _number(area[i * 24:i * 24 + 12], "sparse offset")
            n = _number(area[i * 24 + 12:i * 24 + 24], "sparse length")
            if o or n:
                entries.append((o, n))

    take(blk[386:482], 4)
    extended = blk[482]
    while extended:
        if off + BLOCK > len(buf):
            raise BadArchive("a truncated sparse map")
        ext = bytes(buf[off:off + BLOCK])
        off += BLOCK
        take(ext[:504], 21)
        extended = ext[504]
    return entries, off


def _check_sparse(name: bytes, segments: list[tuple[int, int]], stored: int, size: int) -> None:
    at = 0
    for o, n in segments:
        if o < at or o + n > size:
            raise BadArchive(f"{show(name)}: a sparse map out of order or past the file's end")
        at = o + n
    if sum(n for _, n in segments) != stored:
        raise BadArchive(f"{show(name)}: a sparse map that does not match its data")


def _check_acls(pax: dict[bytes, bytes], xattrs: dict[bytes, bytes], name: bytes) -> None:
    """GNU tar, extracting with our options (--xattrs, not --acls), restores ACLs from their
    xattr form and ignores the text form; an archive that has only the text form of an ACL
    the mode bits do not already say (made with --acls alone) goes to GNU tar, so both ways
    of extracting give the same tree."""
    access = pax.get(_ACL_ACCESS)
    if access is not None and XATTR_ACL_ACCESS not in xattrs and _extended(access):
        raise NeedsGnuTar(f"{_member(name)}: an ACL in text form only")
    if pax.get(_ACL_DEFAULT) and XATTR_ACL_DEFAULT not in xattrs:
        raise NeedsGnuTar(f"{_member(name)}: a default ACL in text form only")


def _extended(text: bytes) -> bool:
    """Whether an ACL's text has entries beyond the owner, group and other classes."""
    for entry in text.replace(b",", b"\n").split(b"\n"):
        tag, _, rest = entry.strip().partition(b":")
        if tag.startswith(b"#") or not tag:
            continue
        qualifier = rest.partition(b":")[0]
        if tag in (b"m", b"mask") or qualifier:
            return True
    return False


def _member(name: bytes) -> str:
    return f"member {show(name)}"


def _after(prev: bytes | None) -> str:
    return "the start" if prev is None else _member(prev)


def members(buf: bytes) -> Iterator[Member]:
    """The archive's members in order. Ends at the first zero block (as GNU tar does without
    --ignore-zeros) or at the end of the data on a block boundary."""
    view = memoryview(buf)
    off = 0
    glob: dict[bytes, bytes] = {}
    local: dict[bytes, bytes] = {}
    longname = longlink = None
    prev: bytes | None = None  # the last member's name, for messages (formatted on error)
    while off + BLOCK <= len(buf):
        blk = bytes(view[off:off + BLOCK])
        if blk == _ZERO:
            return
        if not _checksum_ok(blk):
            raise BadArchive(f"a damaged header after {_after(prev)}")
        kind = blk[156:157]
        size = _number(blk[124:136], "size")
        off += BLOCK
        gnu = blk[257:265] == GNU_MAGIC
        sparse: list[tuple[int, int]] | None = None
        realsize = None
        if kind == GNU_SPARSE:
            sparse, off = _sparse_map_gnu(blk, view, off)
            realsize = _number(blk[483:495], "sparse size")
            kind = REGTYPE
        if kind in (PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK):
            if size > (1 << 24) or off + size > len(buf):
                raise BadArchive(f"an extended header after {_after(prev)} that is too long")
            ext = bytes(view[off:off + size])
            off += size + (-size % BLOCK)
            if kind == PAX_LOCAL:
                local.update(parse_pax(ext))
            elif kind == PAX_GLOBAL:
                glob.update(parse_pax(ext))
            elif kind == GNU_LONGNAME:
                longname = _string(ext)
            else:
                longlink = _string(ext)
            continue
        pax = {**glob, **local} if glob else local
        name = _string(blk[0:100])
        if not gnu and blk[257:263] == b"ustar\0" and blk[345] != 0:
            name = _string(blk[345:500]) + b"/" + name
        name = pax.get(b"path", longname if longname is not None else name)
        linkname = pax.get(b"linkpath", longlink if longlink is not None else _string(blk[157:257]))
        prev = name
        if len(name) > MAX_NAME or len(linkname) > MAX_NAME:
            raise BadArchive(f"{_member(name)}: a name longer than {MAX_NAME} bytes")
        try:
            if b"size" in pax:
                size = int(pax[b"size"])
            uid = int(pax[b"uid"]) if b"uid" in pax else _number(blk[108:116], "uid")
            gid = int(pax[b"gid"]) if b"gid" in pax else _number(blk[116:124], "gid")
            mtime_ns = (parse_pax_time(pax[b"mtime"]) if b"mtime" in pax
                        else _number(blk[136:148], "mtime") * 1_000_000_000)
            major = minor = 0
            if kind in _DEVICES:  # nothing else has device numbers (read only for them)
                major = int(pax.get(b"SCHILY.devmajor", b"%d" % _number(blk[329:337],
                                                                        "devmajor")))
                minor = int(pax.get(b"SCHILY.devminor", b"%d" % _number(blk[337:345],
                                                                        "devminor")))
        except ValueError as exc:
            raise BadArchive(f"{_member(name)}: a bad PAX value: {exc}") from None
        if off + size > len(buf) or size < 0:
            raise BadArchive(f"{_member(name)}: the archive ends inside its data")
        data = view[off:off + size]
        off += size + (-size % BLOCK)
        xattrs: dict[bytes, bytes] = {}
        for key, value in pax.items():
            if key.startswith(_XATTR):
                xattrs[decode_xattr_name(key[len(_XATTR):])] = value
            elif key not in _IGNORED and key not in _HANDLED and key not in _ACLS \
                    and not key.startswith(b"GNU.sparse."):
                raise NeedsGnuTar(f"{_member(name)}: PAX keyword {key[:40]!r}")
        _check_acls(pax, xattrs, name)
        if b"GNU.sparse.major" in pax or b"GNU.sparse.size" in pax:
            if (pax.get(b"GNU.sparse.major"), pax.get(b"GNU.sparse.minor")) != (b"1", b"0"):
                raise NeedsGnuTar(f"{_member(name)}: a sparse format other than PAX 1.0")
            sparse, used = _sparse_map_10(data)
            data = data[used:]
            name = pax.get(b"GNU.sparse.name", name)
            try:
                realsize = int(pax[b"GNU.sparse.realsize"])
            except (KeyError, ValueError):
                raise BadArchive(f"{_member(name)}: a sparse file without its size") from None
        if kind in (AREGTYPE, CONTTYPE):
            kind = REGTYPE
        if kind not in KINDS:
            raise NeedsGnuTar(f"{_member(name)}: member type {kind!r}")
        if kind != REGTYPE and size:
            raise NeedsGnuTar(f"{_member(name)}: data in a member of type {kind!r}")
        if sparse is not None:
            assert realsize is not None
            _check_sparse(name, sparse, len(data), realsize)
        mode = _number(blk[100:108], "mode")
        yield Member(
            name, kind, mode & 0o7777, uid, gid, mtime_ns, linkname, major, minor,
            realsize if sparse is not None and realsize is not None else len(data), data,
            xattrs, sparse,
        )
        local = {}
        longname = longlink = None


_HANDLED = frozenset({
    b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"SCHILY.devmajor",
    b"SCHILY.devminor",
})
