"""Slaves of peer groups outside the images (see criu_fw.restore.outside).

The dumped process lives in a namespace made with ``unshare --propagation slave`` inside the
scenario's: its mounts are slaves of groups in the scenario's namespace, which is not dumped.
By default such a mount taken from a host path (--external) becomes a slave of that host mount
(it receives what is mounted there afterwards); one rebuilt from the images is an error naming
it, unless --outside-masters private is given, which restore and verify then agree on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from criu_fw.dump import dump
from criu_fw.errors import RestoreError
from criu_fw.restore import restore
from criu_fw.restore.verify import verify
from criu_fw.testing import NamespaceScenario, host_mount_table

pytestmark = pytest.mark.privileged

# ``m``: a tmpfs rebuilt from the images; ``e``: declared external (key "k").
SCRIPT = r"""
mkdir -p m e ext
mount -t tmpfs mt m; mount --make-shared m; echo c > m/c
mount -t tmpfs x ext; mount --make-shared ext; mount --bind ext e; umount ext
unshare -m --propagation slave sh -c 'echo $$ > inner.pid.tmp; mv inner.pid.tmp inner.pid; \
    exec sleep 100000' &
while ! test -s inner.pid; do sleep 0.02; done
"""


def _dump(tmp: str, declare_m: bool) -> tuple[str, str]:
    images = os.path.join(tmp, "images-m" if declare_m else "images")
    with NamespaceScenario(SCRIPT) as scn:
        with open(os.path.join(scn.workdir, "inner.pid")) as f:
            inner = int(f.read())
        ext = {f"{scn.workdir}/e": "k"}
        if declare_m:
            ext[f"{scn.workdir}/m"] = "km"
        dump(inner, images, auto_external=True, externals=ext)
        return images, scn.workdir


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield _dump(str(tmp_path_factory.mktemp("outside")), declare_m=False)


def test_rebuilt_slave_of_an_outside_group_is_an_error(dumped: tuple[str, str]) -> None:
    images, w = dumped
    before = host_mount_table()
    try:
        leftover = restore(images, root="/", externals={"k": "/tmp"}, detach=True)
    except RestoreError as exc:
        err = exc
    else:
        leftover.terminate()
        pytest.fail("the restore did not fail")
    assert str(err) == (
        f"mount {_id(images, f'{w}/m')} at '{w}/m' (tmpfs, source 'mt'): it was a slave of "
        f"peer group {_master(images, f'{w}/m')}, which is outside the images, and it is "
        f"rebuilt from the images, not taken from a host mount; declare it external at dump "
        f"time, or restore it private with --outside-masters private"
    )
    assert host_mount_table() == before


def test_private_on_request_and_verify_agrees(dumped: tuple[str, str], tmp_path: str) -> None:
    images, w = dumped
    host = os.path.join(tmp_path, "host")
    os.mkdir(host)
    result = restore(images, root="/", externals={"k": host}, detach=True,
                     outside_masters="private")
    try:
        with open(f"/proc/{result.pid}/mountinfo") as f:
            lines = [x for x in f if f" {w}/m " in x or f" {w}/e " in x]
        assert len(lines) == 2 and not any("master:" in x for x in lines), lines
        # (e comes from another filesystem here: only propagation is looked at.)
        diffs = verify(result.pid, images, outside_masters="private").differences
        assert [d for d in diffs if "propagation" in d] == []
        diffs = verify(result.pid, images).differences
        assert sorted(d for d in diffs if "propagation" in d) == [
            f"{w}/{x}: propagation: slave of a group outside the images, not a slave live"
            for x in ("e", "m")
        ]
    finally:
        result.terminate()


@pytest.fixture(scope="module")
def dumped_m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The same, with ``m`` declared external too (key "km")."""
    yield _dump(str(tmp_path_factory.mktemp("outside-m")), declare_m=True)


def test_externals_become_slaves_of_the_host_mounts(
    dumped_m: tuple[str, str], tmp_path: str
) -> None:
    """Run in a private namespace of its own, where the "host" mounts can be made shared."""
    images, w = dumped_m
    host, host_m = os.path.join(tmp_path, "host"), os.path.join(tmp_path, "host-m")
    os.mkdir(host)
    os.mkdir(host_m)
    py = sys.executable
    script = f"""
set -e
mount -t tmpfs x {host}; mount --make-shared {host}
mount -t tmpfs mt {host_m}; mount --make-shared {host_m}
pid=$({py} -m criu_fw restore -D {images} --root / --external mnt[k]:{host} \
      --external mnt[km]:{host_m} --detach | head -n 1)
trap 'kill -9 $pid' EXIT
{py} -m criu_fw verify -D {images} -t $pid >&2
grep -e ' {w}/e ' -e ' {w}/m ' /proc/$pid/mountinfo | grep -c master:
# What is mounted on the host mount afterwards reaches its restored slave.
mkdir {host}/new; mount -t tmpfs fromhost {host}/new
nsenter -t $pid -m grep -c ' fromhost ' /proc/self/mountinfo
"""
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, check=False, timeout=60)
    assert (res.returncode, res.stdout) == (0, "2\n1\n"), res.stdout + res.stderr
    assert "verify: OK" in res.stderr


def test_external_from_a_private_host_mount_is_an_error(
    dumped_m: tuple[str, str], tmp_path: str
) -> None:
    images, w = dumped_m
    host = os.path.join(tmp_path, "host")
    os.mkdir(host)
    script = f"""
mount -t tmpfs x {host}
{sys.executable} -m criu_fw restore -D {images} --root / --external mnt[k]:{host} \
    --external mnt[km]:{host} --detach
"""
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("\n") == 1, res.stderr
    assert f"at '{w}/" in res.stderr
    assert f"the host mount at '{host}' it is restored from is private" in res.stderr


def _entry(images: str, mountpoint: str) -> tuple[int, int]:
    from criu_fw.api.loader import load_drivers
    from criu_fw.images.mounts import read_mount_namespace
    from criu_fw.restore import image_namespaces

    ns = read_mount_namespace(images, image_namespaces(images)[0], load_drivers())
    (m,) = [m for m in ns.tree if m.mountpoint == mountpoint]
    assert m.propagation.master is not None
    return m.mnt_id, m.propagation.master


def _id(images: str, mountpoint: str) -> int:
    return _entry(images, mountpoint)[0]


def _master(images: str, mountpoint: str) -> int:
    return _entry(images, mountpoint)[1]
