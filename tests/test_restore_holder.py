"""The --detach holder: a small named process that keeps nothing of its caller.

A holder that kept the caller's descriptors would keep a pipe open forever: ``( criu-fw
restore --detach 3>&1 >/dev/null ) | cat`` would never end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from criu_fw.testing import NamespaceScenario
from helpers import dump_scenario

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("holder") / "images")
    with NamespaceScenario("mkdir t; mount -t tmpfs held t; echo x > t/x") as scn:
        dump_scenario(scn, path)
    yield path


def test_detached_holder_keeps_no_caller_descriptor(images: str, tmp_path: str) -> None:
    pidfile = os.path.join(tmp_path, "pid")
    cli = f"{sys.executable} -m criu_fw"
    script = (
        f"( {cli} restore -D {images} --root / --detach --pidfile {pidfile} "
        f"3>&1 >/dev/null ) | cat"
    )
    # No pipes to the test: a holder that kept them would make the test hang, not fail.
    try:
        res = subprocess.run(["bash", "-c", script], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, timeout=20, check=False)
        returned = res.returncode
    except subprocess.TimeoutExpired:
        returned = None
    with open(pidfile) as f:
        pid = int(f.read())
    try:
        assert returned == 0, "the pipeline did not end: the holder kept the pipe"
        assert os.listdir(f"/proc/{pid}/fd") == []
        with open(f"/proc/{pid}/comm") as f:
            assert f.read().strip() == "criu-fw-holder"
        # It is in the restored namespace, whose root is the restored root.
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        with open(f"/proc/{pid}/mountinfo") as f:
            assert " held " in f.read()
        # Detached: its own session, so the caller's terminal does not end it.
        assert os.getsid(pid) == pid
    finally:
        os.kill(pid, signal.SIGKILL)


def test_library_holders_are_children_that_terminate_reaps(images: str) -> None:
    from criu_fw.restore import restore

    result = restore(images, root="/")
    pid = result.pid
    try:
        with open(f"/proc/{pid}/status") as f:
            assert f"PPid:\t{os.getpid()}\n" in f.read()
        assert os.listdir(f"/proc/{pid}/fd") == []
    finally:
        result.terminate()
    assert not os.path.exists(f"/proc/{pid}")
