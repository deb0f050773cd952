"""Shared fixtures. Privileged tests mount only inside private namespaces of child processes;
``_host_mounts_unchanged`` fails any test after which the caller's mount table changed."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from criu_fw.testing import NamespaceScenario, host_mount_table

ROOT = os.geteuid() == 0
SCENARIO_DIRS = os.path.join(tempfile.gettempdir(), "criu-fw-scn-*")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(reason="needs root to create mount namespaces")
    skip_crit = pytest.mark.skip(reason="Debian's crit is not installed")
    for item in items:
        if "privileged" in item.keywords and not ROOT:
            item.add_marker(skip_root)
        if "crit" in item.keywords and shutil.which("crit") is None:
            item.add_marker(skip_crit)


@pytest.fixture(autouse=True)
def _host_mounts_unchanged() -> Iterator[None]:
    before = host_mount_table()
    scratch = set(glob.glob(SCENARIO_DIRS))
    yield
    after = host_mount_table()
    assert after == before, "the test changed the caller's mount table"
    # A restore with --root / creates the dumped mountpoints under that root, so a scenario's
    # (already removed) working directory comes back on the host filesystem: remove it. These
    # are plain directories here; the mount-table check above proves nothing is mounted there.
    for path in set(glob.glob(SCENARIO_DIRS)) - scratch:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scenario() -> Iterator[Callable[..., NamespaceScenario]]:
    """Factory: ``scenario(script)`` runs ``script`` in a private mount namespace and keeps it
    alive for the test; every scenario is killed by PID at teardown."""
    made: list[NamespaceScenario] = []

    def make(script: str, **kw: object) -> NamespaceScenario:
        s = NamespaceScenario(script, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
