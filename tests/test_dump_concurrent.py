"""Dumps at the same time: eight dumps of eight different process trees on this 2-core
machine all succeed and write what each writes alone (ids aside), and eight restores of
them at once each rebuild their own tree; a second dump of a tree
that is being dumped waits for the first, saying so, instead of stopping and resuming the
same processes under it; so does a dump of a tree that only overlaps it (a parent's and its
child's), and one that meets a process another dump holds while it freezes starts again."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from criu_fw import hookimpl
from criu_fw.dump import dump
from criu_fw.dump.lock import dump_lock
from criu_fw.images import read_image
from criu_fw.proto import pstree_pb2
from criu_fw.testing import NamespaceScenario
from criu_fw.testing.compare import image_differences

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "criu_fw"]

SCRIPT = r"""
for i in $(seq 20); do mkdir -p t$i b$i; mount -t tmpfs -o size=1m t t$i
    echo "tree $i" > t$i/f; mount --bind t$i b$i; done
mount --make-shared t1; mkdir s; mount --bind t1 s
"""


def _dump(pid: int, where: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "dump", "-q", "-t", str(pid), "-D", str(where), "--root", "/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_eight_concurrent_dumps_write_what_each_writes_alone(tmp_path: Path) -> None:
    scns = [NamespaceScenario(SCRIPT + f"echo only{n} > t2/f\n") for n in range(8)]
    try:
        for n, scn in enumerate(scns):
            alone = _dump(scn.pid, tmp_path / f"alone{n}")
            assert alone.wait(60) == 0, alone.communicate()[1]
        together = [_dump(scn.pid, tmp_path / f"together{n}") for n, scn in enumerate(scns)]
        for proc in together:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        for n in range(8):
            assert image_differences(str(tmp_path / f"alone{n}"),
                                     str(tmp_path / f"together{n}")) == []
        # Each wrote its own tree, not a neighbour's.
        assert image_differences(str(tmp_path / "alone0"), str(tmp_path / "alone1")) != []
        # Eight restores of them at once, each in new network and IPC namespaces: each
        # rebuilds its own tree and content.
        show = "cat $W/t2/f; grep \" $W/\" /proc/self/mountinfo | cut -d' ' -f5 | sort"
        restores = [subprocess.Popen(
            ["unshare", "--net", "--ipc", "--", *CLI, "restore", "-q", "-D",
             str(tmp_path / f"together{n}"), "--root", "/", "--", "/bin/sh", "-c", show],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={"W": scn.workdir, "PATH": "/usr/bin:/bin"},
        ) for n, scn in enumerate(scns)]  # fmt: skip
        for n, (proc, scn) in enumerate(zip(restores, scns, strict=True)):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            live = sorted(line.split()[4] for line in
                          Path(f"/proc/{scn.pid}/mountinfo").read_text().splitlines()
                          if f" {scn.workdir}/" in line)
            assert out.splitlines() == [f"only{n}", *live]
    finally:
        for scn in scns:
            scn.close()


def test_a_second_dump_of_one_tree_waits_for_the_first(tmp_path: Path) -> None:
    with NamespaceScenario(SCRIPT) as scn:
        # The test holds the lock a dump of this tree holds while it runs.
        with dump_lock(scn.pid, "/proc", lambda _: None):
            second = _dump(scn.pid, tmp_path / "second")
            time.sleep(1.5)
            assert second.poll() is None  # still waiting, nothing frozen meanwhile
            assert not (tmp_path / "second").exists()
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert err.splitlines()[0] == (
            f"criu-fw: warning: another criu-fw dump of process {scn.pid} is running; "
            "waiting for it"
        )
        assert (tmp_path / "second" / "inventory.img").exists()


Scenario = Callable[..., NamespaceScenario]

#: A child of the scenario's process in a mount namespace of its own (so that a dump of it
#: differs from its parent's), with a child of its own; prints ``child=PID``.
CHILD = r"""
unshare -m --propagation private sh -c 'mount -t tmpfs c t3; echo child > t3/f
    sleep 100000 & touch child.ready; exec sleep 100000' </dev/null >/dev/null 2>&1 &
echo "child=$!"
while [ ! -e child.ready ]; do sleep 0.02; done
"""


def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            out[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return out


def _tree(root: int) -> list[int]:
    ppids = _ppids()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(p for p, pp in ppids.items() if pp == pid)
    return tree


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def _stopped(pids: list[int]) -> list[int]:
    return [p for p in pids if _state(p) in "Tt"]


def _child(scn: NamespaceScenario) -> int:
    (line,) = [x for x in scn.output.splitlines() if x.startswith("child=")]
    return int(line.partition("=")[2])


def _alone(pid: int, where: Path) -> None:
    proc = _dump(pid, where)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_dumps_of_a_parent_and_its_child_at_once(scenario: Scenario, tmp_path: Path) -> None:
    scn = scenario(SCRIPT + CHILD)
    dumps = {"parent": scn.pid, "child": _child(scn)}
    everyone = _tree(scn.pid)
    assert len(everyone) == 3 and _tree(dumps["child"]) == everyone[1:]
    for name, pid in dumps.items():
        _alone(pid, tmp_path / f"alone-{name}")
    assert image_differences(str(tmp_path / "alone-parent"), str(tmp_path / "alone-child"))
    # Started at once, either may get the shared processes first: both orders, a few times.
    waited = []
    for n in range(4):
        order = list(dumps.items())[:: 1 if n % 2 else -1]
        running = {name: _dump(pid, tmp_path / f"{name}{n}") for name, pid in order}
        for name, proc in running.items():
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {err}"
            waited += [x for x in err.splitlines() if x.endswith("; waiting for it")]
        assert _stopped(everyone) == []
        for name in dumps:
            assert image_differences(str(tmp_path / f"alone-{name}"),
                                     str(tmp_path / f"{name}{n}")) == [], (name, n)
    # They did overlap (a dump takes ~0.3 s, starting one ~0.15 s): one waited at least once.
    assert waited


class _DumpTheChildMeanwhile:
    """While the first dump holds the tree stopped (its first parse_mount), starts a dump of
    the child's subtree and notes what it sees for a while."""

    def __init__(self, child: int, where: Path) -> None:
        self.child, self.where = child, where
        self.second: subprocess.Popen[str] | None = None
        self.seen: dict[str, object] = {}

    @hookimpl(wrapper=True)
    def parse_mount(self) -> Iterator[None]:
        if self.second is None:
            self.second = _dump(self.child, self.where)
            time.sleep(2.0)
            self.seen = {"running": self.second.poll() is None,
                         "wrote": self.where.exists(),
                         "child": _state(self.child)}
        return (yield)


def test_a_dump_of_a_subtree_waits_for_a_dump_of_its_parent(scenario: Scenario,
                                                            tmp_path: Path) -> None:
    scn = scenario(SCRIPT + CHILD)
    child = _child(scn)
    everyone = _tree(scn.pid)
    _alone(child, tmp_path / "alone-child")
    _alone(scn.pid, tmp_path / "alone-parent")
    meanwhile = _DumpTheChildMeanwhile(child, tmp_path / "child")
    dump(scn.pid, str(tmp_path / "parent"), plugins=[meanwhile])
    # The child was stopped by the first dump and the second did not touch it meanwhile.
    assert meanwhile.seen == {"running": True, "wrote": False, "child": "T"}
    assert meanwhile.second is not None
    _, err = meanwhile.second.communicate(timeout=60)
    assert meanwhile.second.returncode == 0, err
    (said,) = err.splitlines()
    assert said.startswith("criu-fw: warning: another criu-fw dump ")
    assert said.endswith("; waiting for it")
    assert _stopped(everyone) == []
    for name in ("parent", "child"):
        assert image_differences(str(tmp_path / f"alone-{name}"), str(tmp_path / name)) == []


def test_a_dump_waits_for_a_process_of_its_tree_another_holds(scenario: Scenario,
                                                             tmp_path: Path) -> None:
    scn = scenario(SCRIPT + CHILD)
    grandchild = _tree(_child(scn))[1]
    # The test holds the lock a dump of another tree holding the grandchild holds.
    with dump_lock(grandchild, "/proc", lambda _: None):
        second = _dump(scn.pid, tmp_path / "img")
        time.sleep(1.5)
        assert second.poll() is None
        assert _stopped(_tree(scn.pid)) == []  # it waits before stopping anything
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert [x for x in err.splitlines() if "waiting" in x] == [
        f"criu-fw: warning: another criu-fw dump holds process {grandchild} of the tree of "
        f"process {scn.pid}; waiting for it"
    ]


#: The scenario's process stays a shell with one child, and forks another on SIGUSR1
#: (its pid into new.pid): the tree grows when the test says so.
GROWS = r"""
trap 'sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > new.pid' USR1
sleep 100000 </dev/null >/dev/null 2>&1 & first=$!
while :; do wait $first && break; done
"""


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read through the descriptor, not the text buffer (communicate() reads the former)."""
    assert proc.stderr is not None
    fd, line, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(fd, 1) if ready else b""
        assert chunk, f"no whole line from the dump in {timeout} s: {line!r}"
        line += chunk
    return line.decode()


def test_a_process_another_dump_holds_met_while_freezing_starts_it_again(
    scenario: Scenario, tmp_path: Path
) -> None:
    scn = scenario("mkdir t; mount -t tmpfs t t", keep_running=GROWS)
    new_pid = Path(scn.workdir) / "new.pid"
    with contextlib.ExitStack() as shell_lock:
        shell_lock.enter_context(dump_lock(scn.pid, "/proc", lambda _: None))
        second = _dump(scn.pid, tmp_path / "img")
        # It listed the tree (the shell and its sleep) and waits for the shell's lock.
        said = _first_line(second, 30)
        os.kill(scn.pid, signal.SIGUSR1)
        while not new_pid.exists() or not new_pid.read_text().endswith("\n"):
            time.sleep(0.02)
        late = int(new_pid.read_text())
        # Another dump holds the process the tree grew by, which the waiting dump meets only
        # once it has the rest and freezes: it resumes them, lets go and waits for that one.
        with dump_lock(late, "/proc", lambda _: None):
            shell_lock.close()
            time.sleep(2.0)
            assert second.poll() is None
            assert _stopped(_tree(scn.pid)) == []
            assert not (tmp_path / "img").exists()
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    # Said once, though it waited twice.
    assert said == (f"criu-fw: warning: another criu-fw dump of process {scn.pid} is running; "
                    "waiting for it\n")
    assert "waiting" not in err
    pstree = read_image(str(tmp_path / "img" / "pstree.img"), pstree_pb2.pstree_entry)
    assert sorted(e.pid for e in pstree) == sorted(_tree(scn.pid))
    assert late in {e.pid for e in pstree}
    assert _stopped(_tree(scn.pid)) == []


def test_lock_files_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    from criu_fw.dump.lock import prune

    me = Path("/proc/self/stat").read_text()
    started = me[me.rindex(")") + 2:].split()[19]
    live = tmp_path / f"criu-fw-dump-{os.getpid()}-{started}.lock"
    reused = tmp_path / f"criu-fw-dump-{os.getpid()}-1.lock"  # the pid, another process's
    gone = tmp_path / "criu-fw-dump-999999999-5.lock"
    held = tmp_path / "criu-fw-dump-999999998-5.lock"
    other = tmp_path / "unrelated.lock"
    for p in (live, reused, gone, held, other):
        p.touch()
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a dump holds it (or waits on it: then one holds it)
        assert prune(str(tmp_path)) == 2
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, held, other))
