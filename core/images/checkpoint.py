"""Container checkpoint archives (``podman container checkpoint --export``, CRI-O's, what
``checkpointctl`` reads): a tar, plain, gzip'd or zstd'd, holding CRIU's image directory as
``checkpoint/`` beside the engine's metadata (``config.dump``, ``spec.dump``, the root
filesystem's changes in ``rootfs-diff.tar``...).

:func:`checkpoint_images` unpacks ``checkpoint/`` into a temporary directory for ``show``
and ``verify`` to read like any image directory CRIU wrote. The archive is untrusted: only
regular files directly in ``checkpoint/`` are taken, by their base name (no path, link or
device is made), the process memory (``pages-*.img``, most of the bytes) is left out, and
what is written is bounded (:data:`MAX_BYTES`). zstd (podman's default) is read through the
``zstd`` program; Python's tarfile reads the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO

import attrs

from ..errors import ImageError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
#: Bytes unpacked at most (the images but the memory; a container's are a few MiB).
MAX_BYTES = 1 << 30
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_SKIPPED = re.compile(r"pages-\d+\.img")
_METADATA = ("config.dump", "spec.dump")


@attrs.frozen
class Checkpoint:
    """What the archive says of the container (``config.dump``), if anything."""

    name: str = ""
    id: str = ""
    image: str = ""
    runtime: str = ""
    created: str = ""

    def line(self, path: str) -> str:
        who = " ".join(x for x in (self.name, f"({self.id[:12]})" if self.id else "") if x)
        rest = ", ".join(f"{k} {v}" for k, v in (("image", self.image),
                                                 ("runtime", self.runtime),
                                                 ("checkpointed", self.created)) if v)
        return (f"{path}: container checkpoint of {who or 'an unnamed container'}"
                + (f", {rest}" if rest else ""))


def is_checkpoint_archive(path: str) -> bool:
    """Whether ``path`` is a tar (plain, gzip'd or zstd'd) whose first members include
    ``checkpoint/`` or the engine's metadata (cheap: the start of the stream only)."""
    try:
        with _members(path) as tar:
            for n, info in enumerate(tar):
                if _in_checkpoint(info.name) is not None or info.name in _METADATA:
                    return True
                if n > 64:
                    return False
    except (ImageError, tarfile.TarError, OSError, EOFError):
        return False
    return False


@contextlib.contextmanager
def checkpoint_images(path: str) -> Iterator[tuple[str, Checkpoint]]:
    """The archive's ``checkpoint/`` directory unpacked into a temporary directory (removed
    afterwards), and the container's metadata. ImageError naming the archive when it is not
    one or holds no image directory."""
    tmp = tempfile.mkdtemp(prefix="criu-fw-checkpoint-")
    try:
        meta: dict[str, bytes] = {}
        images = 0
        written = 0
        try:
            with _members(path) as tar:
                for info in tar:
                    if info.name in _METADATA and info.isfile() and info.size < (1 << 24):
                        f = tar.extractfile(info)
                        if f is not None:
                            meta[info.name] = f.read()
                        continue
                    name = _in_checkpoint(info.name)
                    if name is None or not info.isfile() or _SKIPPED.fullmatch(name):
                        continue
                    written += info.size
                    if written > MAX_BYTES:
                        raise ImageError(path, f"more than {MAX_BYTES} bytes of images")
                    src = tar.extractfile(info)
                    if src is None:
                        continue
                    with open(os.path.join(tmp, name), "xb") as out:
                        shutil.copyfileobj(src, out)
                    images += 1
        except tarfile.TarError as exc:
            raise ImageError(path, f"not a readable checkpoint archive: {exc}") from None
        except FileExistsError:
            raise ImageError(path, "an image appears twice in checkpoint/") from None
        if not images:
            raise ImageError(path, "no checkpoint/ image directory in the archive")
        yield tmp, _checkpoint(meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_checkpoint(member: str) -> str | None:
    """The image's name for a member ``checkpoint/NAME`` (``./`` allowed), else None."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if len(parts) != 2 or parts[0] != "checkpoint" or not _IMAGE_NAME.fullmatch(parts[1]):
        return None
    return parts[1]


def _checkpoint(meta: dict[str, bytes]) -> Checkpoint:
    try:
        config = json.loads(meta.get("config.dump", b"{}"))
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}

    def text(*keys: str) -> str:
        for k in keys:
            v = config.get(k)
            if isinstance(v, str):
                return v
        return ""

    return Checkpoint(name=text("name"), id=text("id"), image=text("rootfsImageName"),
                      runtime=text("ociRuntime", "runtime"),
                      created=text("checkpointedTime", "createdTime"))


@contextlib.contextmanager
def _members(path: str) -> Iterator[tarfile.TarFile]:
    """The archive's members, streamed (``r|``), through ``zstd -dc`` when zstd'd."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ImageError(path, f"cannot open: {exc.strerror}") from None
    if head[:2] == GZIP_MAGIC:
        with tarfile.open(path, "r|gz") as tar:
            yield tar
        return
    if head != ZSTD_MAGIC:
        with tarfile.open(path, "r|") as tar:
            yield tar
        return
    try:
        proc = subprocess.Popen(["zstd", "-dc", "--", path], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ImageError(path, "zstd-compressed, and no zstd program is installed") from None
    stream: IO[bytes] | None = proc.stdout
    assert stream is not None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
    finally:
        stream.close()
        proc.kill()
        proc.wait()
