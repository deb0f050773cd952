"""Shared fixtures. Privileged tests mount only inside private namespaces of child processes;
``_host_mounts_unchanged`` fails any test after which the caller's mount table changed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from criu_fw.testing import NamespaceScenario, closed_workdirs, host_mount_table

ROOT = os.geteuid() == 0


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
    yield
    after = host_mount_table()
    assert after == before, "the test changed the caller's mount table"


@pytest.fixture(autouse=True, scope="session")
def _scenario_dirs_removed() -> Iterator[None]:
    """A restore with --root / creates the dumped mountpoints under that root, so a closed
    scenario's working directory can come back on the host filesystem. Remove those at the
    end of the session (earlier, removing a directory would detach the mounts a still-living
    restored namespace has on it), and only this process's, never another suite's."""
    yield
    for path in closed_workdirs():
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
