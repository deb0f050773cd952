"""``criu-fw show`` and ``verify`` of a container checkpoint archive (``podman container
checkpoint --export``): CRIU's image directory as ``checkpoint/`` beside the engine's
metadata, plain, gzip'd or zstd'd.

Podman needs a CRIU that can checkpoint on this kernel to make one (Debian's 3.17 cannot):
the archive is laid out as podman lays it out, around the images criu-fw dumped of a real
namespace with criu-fw's own images taken out (what CRIU alone writes)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "criu_fw"]
SCRIPT = "mkdir d b; mount -t tmpfs -o size=1m web-data d; echo hi > d/f; mount --bind d b"
CONFIG = {"id": "3f1c0ffee0ddba11" * 4, "name": "web", "rootfsImageName": "busybox:latest",
          "ociRuntime": "runc", "checkpointedTime": "2026-12-05T18:00:00Z"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NamespaceScenario, Path]]:
    images = tmp_path_factory.mktemp("ckpt") / "images"
    with NamespaceScenario(SCRIPT) as scn:
        dump(scn.pid, str(images), auto_external=True)
        for p in images.glob("fw-*"):
            p.unlink()  # CRIU's images alone, as in a podman checkpoint
        yield scn, images


def _archive(images: Path, out: Path, compress: str, extra: list[tarfile.TarInfo] = ()) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("config.dump", json.dumps(CONFIG).encode())
        add("spec.dump", b"{}")
        add("rootfs-diff.tar", b"\0" * 1024)
        d = tarfile.TarInfo("checkpoint")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for p in sorted(images.iterdir()):
            add(f"checkpoint/{p.name}", p.read_bytes())
        add("checkpoint/pages-1.img", b"\0" * 4096)  # process memory: not unpacked
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    raw = buf.getvalue()
    if compress == "gzip":
        import gzip

        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                             check=True).stdout
    out.write_bytes(raw)
    return out


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_show_and_verify_a_checkpoint_archive(
    live: tuple[NamespaceScenario, Path], tmp_path: Path, compress: str
) -> None:
    scn, images = live
    archive = _archive(images, tmp_path / "export.tar", compress)
    show = subprocess.run([*CLI, "show", str(archive)], capture_output=True, text=True,
                          timeout=60)
    assert show.returncode == 0, show.stderr
    first, *tree = show.stdout.splitlines()
    assert first == (f"{archive}: container checkpoint of web (3f1c0ffee0dd), image "
                     "busybox:latest, runtime runc, checkpointed 2026-12-05T18:00:00Z")
    assert any(f"{scn.workdir}/d" in line and "web-data" in line for line in tree), tree
    as_json = json.loads(subprocess.run([*CLI, "show", "--json", str(archive)],
                                        capture_output=True, text=True, check=True).stdout)
    assert as_json["checkpoint"]["name"] == "web"
    verify = subprocess.run([*CLI, "verify", "-D", str(archive), "-t", str(scn.pid)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("verify: OK, ")
    # Nothing of it stays behind.
    assert not [n for n in os.listdir(tempfile.gettempdir())
                if n.startswith("criu-fw-checkpoint-")]


def test_restore_from_a_checkpoint_archive(
    live: tuple[NamespaceScenario, Path], tmp_path: Path
) -> None:
    """``criu-fw restore -D ARCHIVE``: the images are unpacked for the restore's length and
    the namespace comes back as from the directory (the tmpfs from CRIU's archive of it, the
    bind of it); nothing of the unpacking stays once it returns."""
    scn, images = live
    archive = _archive(images, tmp_path / "export.tar.zst", "zstd")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", *CLI, "restore", "-q", "-D", str(archive),
         "--root", "/", "--detach"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout)
    try:
        restored = Path(f"/proc/{holder}/root{scn.workdir}")
        assert (restored / "d" / "f").read_text() == "hi\n"
        assert (restored / "b" / "f").read_text() == "hi\n"
        with open(f"/proc/{holder}/mountinfo") as f:
            table = f.read()
        assert f" {scn.workdir}/d " in table and " tmpfs web-data " in table, table
        assert not list(tmpdir.iterdir())  # the unpacked images are gone
    finally:
        os.kill(holder, signal.SIGTERM)


def test_members_outside_the_image_directory_are_never_written(
    live: tuple[NamespaceScenario, Path], tmp_path: Path
) -> None:
    _, images = live
    escape = tarfile.TarInfo("checkpoint/../../escaped")
    escape.size = 3
    link = tarfile.TarInfo("checkpoint/evil.img")
    link.type = tarfile.SYMTYPE
    link.linkname = str(tmp_path / "target")
    archive = _archive(images, tmp_path / "export.tar", "gzip", [escape, link])
    # The unpacking happens two levels below tmp_path: "../../escaped" would land in it.
    tmpdir = tmp_path / "t" / "x"
    tmpdir.mkdir(parents=True)
    show = subprocess.run([*CLI, "show", str(archive)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env={**os.environ, "TMPDIR": str(tmpdir)})
    assert show.returncode == 0, show.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "export.tar", "t", "t/x"]


def test_an_archive_without_images_is_refused_by_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("config.dump")
        data = json.dumps(CONFIG).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "empty.tar"
    archive.write_bytes(buf.getvalue())
    res = subprocess.run([*CLI, "show", str(archive)], capture_output=True, text=True)
    assert res.returncode == 3
    assert res.stderr == (f"criu-fw: error: {archive}: no checkpoint/ image directory in "
                          "the archive\n")
