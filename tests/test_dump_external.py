"""External mounts: binds from filesystems outside the dumped namespaces."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.errors import DriverError
from criu_fw.images import read_image
from criu_fw.proto import fdinfo_pb2, mnt_pb2
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scenario = Callable[..., NamespaceScenario]

#: A container-like namespace: its root is a tmpfs; /usr and /data are binds of host
#: directories (the host's ext4 is not mounted in it at its own root any more).
PIVOT = """
mkdir -p newroot hostdir && echo host > hostdir/file
mount -t tmpfs nr newroot
mkdir newroot/usr newroot/data newroot/old newroot/tmp newroot/proc
ln -s usr/bin newroot/bin && ln -s usr/lib newroot/lib && ln -s usr/lib64 newroot/lib64
mount --rbind /usr newroot/usr
mount --bind hostdir newroot/data
cd newroot && pivot_root . old && cd / && mount -t proc proc /proc && umount -l /old
"""


@pytest.fixture
def container(scenario: Scenario) -> NamespaceScenario:
    return scenario(PIVOT)


def _by_mp(image_dir: Path) -> dict[str, mnt_pb2.mnt_entry]:
    return {m.mountpoint: m for m in read_image(str(image_dir / "mountpoints-1.img"),
                                                mnt_pb2.mnt_entry)}


def test_bind_from_outside_fails_naming_the_option(container: NamespaceScenario,
                                                   tmp_path: Path) -> None:
    with pytest.raises(DriverError) as err:
        dump(container.pid, str(tmp_path / "img"))
    msg = str(err.value)
    assert "at /usr (ext4 /dev/" in msg or "at /data (ext4 /dev/" in msg, msg
    assert "--external mnt[" in msg and "--external-auto" in msg
    assert not (tmp_path / "img").exists()


def test_declared_external(container: NamespaceScenario, tmp_path: Path) -> None:
    res = dump(container.pid, str(tmp_path / "img"),
               externals={"/usr": "usr-key", "/data": "data-key"})
    mounts = _by_mp(tmp_path / "img")
    # ext_key alone marks an external mount, as CRIU 4.x writes it (never with ext_mount).
    assert mounts["/usr"].ext_key == "usr-key" and not mounts["/usr"].HasField("ext_mount")
    assert mounts["/data"].ext_key == "data-key"
    assert not mounts["/"].HasField("ext_key")  # the tmpfs root: its content is archived
    assert f"tmpfs-dev-{mounts['/'].root_dev}.tar.gz.img" in res.content_images


def test_auto_external_records_the_host_path(container: NamespaceScenario,
                                             tmp_path: Path) -> None:
    dump(container.pid, str(tmp_path / "img"), auto_external=True)
    mounts = _by_mp(tmp_path / "img")
    assert mounts["/usr"].ext_key == "/usr"
    assert mounts["/data"].ext_key == os.path.join(container.workdir, "hostdir")


def test_tmpfs_seen_only_through_a_subdirectory(scenario: Scenario, tmp_path: Path) -> None:
    # The tmpfs's own root is mounted nowhere in the dump, and the dumper cannot see it.
    scn = scenario("mkdir -p o data && mount -t tmpfs outer o && mkdir o/sub && "
                   "mount --bind o/sub data && umount -l o")
    with pytest.raises(DriverError, match=r"bind of /sub from a filesystem outside"):
        dump(scn.pid, str(tmp_path / "img"), auto_external=True)


@pytest.mark.privileged
def test_a_file_open_from_outside_and_unreachable_inside_is_not_put_on_a_mount(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file opened before the namespace was made (a runtime's log file as a descriptor)
    whose path inside leads elsewhere on the same filesystem is not recorded on the mount
    its path lands on: it gets no mount (CRIU's -1), with a warning naming it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "log").write_text("host's\n")
    (tmp_path / "b" / "log").write_text("another file at the same path\n")
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(
        ["sh", "-c", f"exec 7< {a}/log; exec unshare -m sh -c 'mount --make-rprivate / && "
         f"mount --bind {b} {a} && echo ready && exec sleep 60'"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        with caplog.at_level(logging.WARNING, logger="criu_fw.dump"):
            dump(proc.pid, str(tmp_path / "img"), auto_external=True)
        files = read_image(str(tmp_path / "img" / "files.img"), fdinfo_pb2.file_entry)
        (log_file,) = [e.reg for e in files if e.reg.name == f"{a}/log"]
        assert log_file.mnt_id == -1
        assert any(f"fd 7 '{a}/log': on mount" in r.getMessage()
                   and "not reachable at that path there" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
    finally:
        proc.kill()
        proc.wait()
