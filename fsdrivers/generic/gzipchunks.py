"""gzip for GNU tar's ``--use-compress-program``: what compresses is compressed, the rest
is stored.

Run as a script (``python -I -S gzipchunks.py``, the standard library only). gzip spends the
same time on bytes that do not compress (random data, files already compressed) as on text:
36 MB/s a CPU here at any level, so half a GiB of such bytes was 14 s of a dump. This reads
the tar stream in chunks of :data:`CHUNK` bytes and writes each as a gzip member of its own:
deflated at gzip's default level when a sample of it compresses, else stored (deflate's
level 0: a copy and a CRC; 20 MB of random bytes and 20 MB of text archived by GNU tar in
0.16 s through this, 0.62 s through gzip). A file of several gzip members is one stream to
gzip, GNU tar and CRIU's restore (RFC 1952, 2.2); criu-fw's own reader leaves such an
archive to GNU tar.

``-d`` (tar asks it to decompress) runs gzip itself. An error is one line on stderr and
exit status 2, which tar reports.
"""

from __future__ import annotations

import os
import sys
import zlib

#: Bytes per gzip member (18 bytes of header and trailer each).
CHUNK = 1 << 20
#: Two samples of each chunk (a quarter and three quarters in) are tried at level 1: a
#: chunk is stored only when both shrink by less than :data:`STORE_ABOVE` (a chunk where a
#: file of random bytes ends and a log begins is deflated).
SAMPLE = 16 << 10
STORE_ABOVE = 0.95
#: gzip's default level, which ``tar --gzip`` uses.
LEVEL = 6


def _incompressible(data: bytes) -> bool:
    for at in (len(data) // 4, len(data) * 3 // 4):
        sample = data[at : at + SAMPLE]
        if len(sample) < SAMPLE or len(zlib.compress(sample, 1)) <= STORE_ABOVE * SAMPLE:
            return False
    return True


def _member(data: bytes) -> bytes:
    level = 0 if _incompressible(data) else LEVEL
    z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: with gzip's header and trailer
    return z.compress(data) + z.flush()


def _read(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        got = os.read(fd, left)
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return b"".join(parts)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    if "-d" in argv:
        os.execvp("gzip", ["gzip", "-d", "-c"])
    wrote = False
    try:
        while True:
            data = _read(0, CHUNK)
            if not data and wrote:
                break
            _write(1, _member(data))  # an empty input still gets one (empty) member
            wrote = True
            if len(data) < CHUNK:
                break
    except OSError as exc:
        sys.stderr.write(f"gzip: {exc.strerror}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
