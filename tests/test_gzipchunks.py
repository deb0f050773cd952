"""tar's compressor (fsdrivers/generic/gzipchunks.py): gzip's format, bytes that do not
compress stored rather than deflated; gzip reads every archive it makes, and GNU tar the
archives a dump makes with it. Real gzip, real tar, a real dump and restore."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.fsdrivers.generic import gnutar, gzipchunks
from criu_fw.testing import NamespaceScenario

SCRIPT = [sys.executable, "-I", "-S", gzipchunks.__file__]
TEXT = b"a line of a log file that repeats itself, as logs do\n"


def _run(
    data: bytes, *args: str, stdout: int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SCRIPT, *args], input=data, stdout=stdout, stderr=subprocess.PIPE,
                          timeout=60, check=False)


def _members(blob: bytes) -> list[int]:
    """The uncompressed size of each gzip member of ``blob``."""
    sizes = []
    while blob:
        z = zlib.decompressobj(31)
        sizes.append(len(z.decompress(blob)))
        blob = z.unused_data
    return sizes


def test_random_bytes_are_stored_and_text_is_compressed() -> None:
    random = os.urandom(gzipchunks.CHUNK + 1000)
    text = (TEXT * (gzipchunks.CHUNK // len(TEXT) + 1))[: gzipchunks.CHUNK]
    data = random + text
    res = _run(data)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert gzip.decompress(out) == data  # gzip reads the members as one stream
    chunk = gzipchunks.CHUNK
    assert _members(out) == [chunk, chunk, 1000]
    # The random chunk stored (a few bytes a 64 KiB block more), the text deflated.
    first = zlib.decompressobj(31)
    first.decompress(out)
    stored = len(out) - len(first.unused_data)
    assert chunk < stored < chunk * 1.001
    assert len(first.unused_data) < len(text) // 10
    # And GNU gzip agrees.
    check = subprocess.run(["gzip", "-dc"], input=out, capture_output=True, check=True)
    assert check.stdout == data


def test_empty_input_is_an_empty_gzip_stream() -> None:
    res = _run(b"")
    assert res.returncode == 0 and gzip.decompress(res.stdout) == b""


def test_tar_asks_it_to_decompress_with_d() -> None:
    packed = gzip.compress(TEXT * 100)
    res = _run(packed, "-d")
    assert res.returncode == 0 and res.stdout == TEXT * 100


def test_a_write_error_is_one_line_and_status_2() -> None:
    with open("/dev/full", "wb") as full:
        res = _run(TEXT * 1000, stdout=full.fileno())
    assert res.returncode == 2
    assert res.stderr.decode() == "gzip: No space left on device\n"


@pytest.mark.privileged
def test_a_dump_s_big_archive_round_trips_through_gnu_tar(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path,
) -> None:
    """Big enough for GNU tar (more than the in-process limit), half random, half text."""
    scn = scenario("mkdir m && mount -t tmpfs data m\n"
                   "head -c 9M /dev/urandom > m/random\n"
                   "yes 'a line of a log file' | head -c 9M > m/text\nmkdir m/d")
    images = tmp_path / "img"
    dump(scn.pid, str(images), auto_external=True)
    (archive,) = [p for p in images.iterdir() if p.name.startswith("tmpfs-dev-")
                  and p.stat().st_size > 8 << 20]
    blob = archive.read_bytes()
    assert len(_members(blob)) > 2
    assert len(blob) < (9 << 20) * 1.01  # the text compressed, the random bytes stored
    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert sorted(listed) == ["./", "./d/", "./random", "./text"]
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore", "-q",
         "-D", str(images), "--root", "/", "--detach"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout)
    try:
        there = Path(f"/proc/{holder}/root{scn.workdir}/m")
        here = Path(f"/proc/{scn.pid}/root{scn.workdir}/m")
        for name in ("random", "text"):
            assert (there / name).read_bytes() == (here / name).read_bytes(), name
        assert (there / "d").is_dir()
    finally:
        os.kill(holder, signal.SIGTERM)
    assert gnutar.GZIP_PROGRAM in " ".join(gnutar.TAR_OPTIONS)
