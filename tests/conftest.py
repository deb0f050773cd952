"""Shared fixtures. Privileged tests mount only inside private namespaces of child processes;
``_host_mounts_unchanged`` fails any test after which the caller's mount table changed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
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


def _mountpoint(line: str) -> str:
    return line.split(" ")[2]


def leaked(before: list[str], after: list[str], watched: tuple[str, ...]) -> list[str]:
    """What a test may have done to the caller's mount table, ignoring what other processes
    of a busy machine do meanwhile (containers starting and stopping mount and unmount at
    their own new paths): a mount added or removed under a directory the tests use, or a
    mount that appeared on a mountpoint that already had one (a reconfigured /sys, a mount
    stacked on the host's /dev)."""
    old, new = Counter(before), Counter(after)
    points = {_mountpoint(line) for line in before}

    def ours(line: str) -> bool:
        return _mountpoint(line).startswith(watched)

    added = [f"+ {x}" for x in new - old if ours(x) or _mountpoint(x) in points]
    removed = [f"- {x}" for x in old - new if ours(x)]
    return sorted(added + removed)


@pytest.fixture(scope="session")
def _watched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    tmp = tempfile.gettempdir()
    return (
        f"{tmp_path_factory.getbasetemp()}/",  # tmp_path of every test of this run
        f"{tmp}/criu-fw-",  # scenario directories, restore work directories
        f"{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}/",  # the checkout
    )


@pytest.fixture(autouse=True)
def _host_mounts_unchanged(_watched: tuple[str, ...]) -> Iterator[None]:
    before = host_mount_table()
    yield
    changed = leaked(before, host_mount_table(), _watched)
    assert not changed, "the test changed the caller's mount table:\n" + "\n".join(changed)


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
