"""Dumps refused or failed with a message that says what and where: targets that cannot be
frozen from here, declared externals that match nothing, a driver's exception."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from criu_fw import hookimpl
from criu_fw.api.loader import DriverConfig
from criu_fw.dump import dump
from criu_fw.errors import DriverError, DumpError
from criu_fw.files import OpenFile
from criu_fw.model import Mount
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

Scenario = Callable[..., NamespaceScenario]

#: The scenario's process (then `sleep`) holds t/f, on a tmpfs, open as fd 3.
HOLDS_FILE = "mkdir t && mount -t tmpfs tt t && echo x > t/f && exec 3< t/f"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


def test_kernel_thread_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match=r"process 2 \(kthreadd\) is a kernel thread"):
        dump(2, str(tmp_path / "img"))
    assert list(tmp_path.iterdir()) == []


def test_dumping_an_ancestor_of_the_dumper_is_refused(tmp_path: Path) -> None:
    # `criu-fw dump -t $$` from a shell: the shell is the dumper's parent.
    script = (f'{sys.executable} -m criu_fw.cli dump -t $$ -D {tmp_path}/img; '
              'echo "rc=$?"; cat /proc/$$/status | grep ^State')
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert "rc=2" in res.stdout  # a usage mistake (docs/cli.md)
    assert "inside the tree of process" in res.stderr and "one of its ancestors" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "img").exists()


def test_declared_external_that_matches_no_mount(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(HOLDS_FILE)
    with pytest.raises(DumpError, match=r"--external mnt\[/no/such\]:k: no mount at '/no/such'"):
        dump(scn.pid, str(tmp_path / "img"), externals={"/no/such": "k"})
    assert _state(scn.pid) in "SR"
    assert list(tmp_path.iterdir()) == []


class _Boom:
    """A driver for tmpfs whose hooks fail the way a buggy driver does."""

    name = "x"
    fstypes: ClassVar[tuple[str, ...]] = ("tmpfs",)

    def __init__(self, hook: str) -> None:
        self.hook = hook

    @hookimpl
    def parse_mount(self, mount: Mount) -> None:
        if self.hook == "parse_mount" and mount.source == "tt":
            raise RuntimeError("boom")

    @hookimpl
    def fixup_fd_path(self, file: OpenFile) -> None:
        if self.hook == "fixup_fd_path" and file.path.endswith("/t/f"):
            raise ValueError("bad")


def test_driver_exception_names_the_mount(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(HOLDS_FILE)
    with pytest.raises(DriverError) as err:
        dump(scn.pid, str(tmp_path / "img"), plugins=[_Boom("parse_mount")],
             config=DriverConfig(prefer={"tmpfs": "x"}))
    assert str(err.value).startswith("driver 'x': parse_mount on mount ")
    assert str(err.value).endswith(
        f" at '{scn.workdir}/t' (tmpfs, source 'tt'): RuntimeError: boom"
    )
    assert isinstance(err.value.__cause__, RuntimeError)
    assert _state(scn.pid) in "SR"


def test_driver_exception_names_the_file(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(HOLDS_FILE)
    with pytest.raises(DriverError) as err:
        dump(scn.pid, str(tmp_path / "img"), plugins=[_Boom("fixup_fd_path")],
             config=DriverConfig(prefer={"tmpfs": "x"}))
    assert str(err.value) == (
        f"driver 'x': fixup_fd_path on process {scn.pid} fd 3 '{scn.workdir}/t/f': "
        "ValueError: bad"
    )
