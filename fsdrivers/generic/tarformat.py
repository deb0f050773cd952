"""The tar format as GNU tar 1.34 writes it with the options of a tmpfs archive, byte for byte
where a reader could notice: the facts both the in-process writer and reader rely on.

What ``tar --create --xattrs --acls --numeric-owner`` writes (POSIX/PAX, checked with
``tar --version`` 1.34):

* every member is preceded by a PAX header (type ``x``, named ``./PaxHeaders/<base name>``,
  mode 0644, owner 0:0, the member's mtime) holding ``mtime``, ``atime`` and ``ctime`` with
  nanoseconds, ``path``/``linkpath`` when the name is not short ASCII (raw bytes: GNU tar
  stores a name it cannot convert to UTF-8 as it is, with no ``hdrcharset``), every extended
  attribute as ``SCHILY.xattr.NAME=VALUE`` (raw value; ``%`` and ``=`` in NAME as ``%25`` and
  ``%3D``), and for a file with an ACL ``SCHILY.acl.access`` / ``SCHILY.acl.default`` as
  acl_to_text(3) long text;
* the ustar header: magic ``ustar\\0`` version ``00``, octal fields ending in NUL, checksum as
  six octal digits, NUL, space; empty user and group names; directories end in ``/``;
* a hard link is a type ``1`` member with no data naming the first member of its inode;
* the archive ends with two zero blocks, padded to a 10,240-byte record.
"""

from __future__ import annotations

import struct


class NeedsGnuTar(Exception):
    """What the in-process writer or reader cannot do exactly as GNU tar would: GNU tar does
    the whole filesystem or archive instead. The message says why (logged at debug level)."""


class BadArchive(Exception):
    """A content archive that is corrupt or unsafe; the message names the member."""


def show(name: bytes) -> str:
    """A member name for a one-line message: bytes that are not UTF-8 as ``\\xNN``, control
    characters (a newline) escaped."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
PAX_LOCAL, PAX_GLOBAL = b"x", b"g"
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"L", b"K", b"S"

POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"

XATTR_PREFIX = "SCHILY.xattr."
ACL_ACCESS = "SCHILY.acl.access"
ACL_DEFAULT = "SCHILY.acl.default"
#: The extended attributes that hold POSIX ACLs (what GNU tar --xattrs-include=* also
#: stores, next to the text form of --acls).
XATTR_ACL_ACCESS = b"system.posix_acl_access"
XATTR_ACL_DEFAULT = b"system.posix_acl_default"


def octal(value: int, width: int) -> bytes | None:
    """``value`` as GNU tar writes a numeric field: zero-padded octal and a NUL; None when
    it does not fit (the value then goes into the PAX header)."""
    if value < 0 or value >= _LIMIT[width]:
        return None
    return b"%0*o\0" % (width - 1, value)


_LIMIT = {8: 8 ** 7, 12: 8 ** 11}


#: The ustar header: name, mode, uid, gid, size, mtime, checksum, type, link name, magic
#: and version, user and group names, device major and minor, prefix, padding.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_ZERO8 = b"0000000\0"
_ZERO12 = b"00000000000\0"


def header(
    name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
    linkname: bytes = b"", devmajor: int | None = None, devminor: int | None = None,
) -> bytes:
    """One ustar header block. Fields that do not fit are written as 0: the caller puts the
    real value into the member's PAX header (which every reader prefers)."""
    major = b"" if devmajor is None else octal(devmajor, 8) or _ZERO8
    minor = b"" if devminor is None else octal(devminor, 8) or _ZERO8
    blk = bytearray(_USTAR.pack(
        name[:100], octal(mode & 0o7777, 8) or _ZERO8, octal(uid, 8) or _ZERO8,
        octal(gid, 8) or _ZERO8, octal(size, 12) or _ZERO12, octal(mtime, 12) or _ZERO12,
        b"        ", kind, linkname[:100], POSIX_MAGIC, b"", b"",
        major, minor, b"",
    ))
    # NUL bytes add nothing to the sum: without them, a third of the time.
    blk[148:156] = b"%06o\0 " % sum(blk.translate(None, b"\0"))
    return bytes(blk)


def pax_record(key: bytes, value: bytes) -> bytes:
    """``LEN KEY=VALUE\\n``, LEN counting the whole record, its own digits included."""
    size = len(key) + len(value) + 3  # the space, '=' and the newline
    digits = len(str(size))
    if len(str(size + digits)) > digits:
        digits += 1
    return b"%d %s=%s\n" % (size + digits, key, value)


def pax_time(ns: int) -> bytes:
    """A timestamp as GNU tar writes it in a PAX header: seconds, nine decimals."""
    sign = b"-" if ns < 0 else b""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return b"%s%d.%09d" % (sign, sec, frac)


def parse_pax_time(value: bytes) -> int:
    """Nanoseconds from a PAX time (``-12.5`` is 12.5 s before the epoch); ValueError."""
    neg = value.startswith(b"-")
    digits = value[1:] if neg else value
    whole, _, frac = digits.partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"bad time {value[:40]!r}")
    ns = int(whole) * 1_000_000_000 + int((frac[:9]).ljust(9, b"0") or b"0")
    return -ns if neg else ns


def encode_xattr_name(name: bytes) -> bytes:
    # GNU tar's escaping, so that a name holding '=' survives the KEY=VALUE record.
    return name.replace(b"%", b"%25").replace(b"=", b"%3D")


def decode_xattr_name(key: bytes) -> bytes:
    return key.replace(b"%3D", b"=").replace(b"%25", b"%")


# -- POSIX ACLs: the kernel's xattr form and acl_to_text(3)'s long text ---------------------

_ACL_VERSION = 2
_TAGS = {1: b"user", 2: b"user", 4: b"group", 8: b"group", 0x10: b"mask", 0x20: b"other"}
_QUALIFIED = (2, 8)  # ACL_USER, ACL_GROUP: entries naming an id
_UNDEFINED_ID = 0xFFFFFFFF


def acl_entries(blob: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of a ``system.posix_acl_*`` value; ValueError if malformed."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != _ACL_VERSION:
        raise ValueError("not a POSIX ACL")
    return [struct.unpack_from("<HHI", blob, off) for off in range(4, len(blob), 8)]


def acl_text(blob: bytes) -> bytes:
    """The ACL in acl_to_text's long form, one entry a line. Ids stay numbers (GNU tar writes
    the names this machine has for them; a number means the same on the restoring machine,
    which is what --numeric-owner asks for, and acl_from_text reads either)."""
    lines = []
    for tag, perm, ident in acl_entries(blob):
        word = _TAGS.get(tag)
        if word is None:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        qual = b"%d" % ident if tag in _QUALIFIED else b""
        lines.append(word + b":" + qual + b":" + _rwx(perm) + b"\n")
    return b"".join(lines)


def minimal_acl_text(mode: int) -> bytes:
    """The access ACL a file without one has (what acl_get_file returns: its mode bits)."""
    return b"user::%s\ngroup::%s\nother::%s\n" % (
        _rwx(mode >> 6), _rwx(mode >> 3), _rwx(mode)
    )


def _rwx(bits: int) -> bytes:
    return bytes((
        ord("r") if bits & 4 else ord("-"),
        ord("w") if bits & 2 else ord("-"),
        ord("x") if bits & 1 else ord("-"),
    ))
