"""SIGKILL of ``criu-fw restore --root DIR --detach``: nothing is left, neither a process nor
a mount in the caller's namespace, nor a mountpoint directory it made in DIR, nor its work
directory in TMPDIR.

One kill lands for sure while the building child has made mountpoints in DIR (a driver hook
that hangs there); then ``scripts/kill_restore.py`` kills restores of a few hundred mounts at
eight seeded random points of their run and checks the same (many more points: its docstring,
docs/cli.md). Every restore runs in ``unshare --net --ipc`` with a TMPDIR of its own.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crafted_images import write_dir
from criu_fw.model import Dev, Mount
from helpers import reaping, wait_until

pytestmark = pytest.mark.privileged

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kill_restore.py"
RW = ("rw", "relatime")

#: The command line with a restore_content hook that says it was reached and hangs (it runs
#: in the building child).
SLEEPY_CLI = r"""
import sys, time
from criu_fw import hookimpl
import criu_fw.cli.restore as cli

class Sleepy:
    @hookimpl(wrapper=True)
    def restore_content(self):
        open(sys.argv[1], "w").close()
        time.sleep(60)
        return (yield)

real = cli.restore
cli.restore = lambda *a, **kw: real(*a, **{**kw, "plugins": [Sleepy()], "manager": None})
from criu_fw.cli import main
main(sys.argv[2:], prog_name="criu-fw")
"""


def _images(where: Path, units: int) -> str:
    """A root from --root, ``units`` tmpfs at /k/uN (mountpoints made in DIR), the last one
    with a content archive: its hook runs once most mountpoints are made."""
    mounts = [Mount(1, 0, Dev(254, 0), "/", "/", "ext4", "/dev/vda", RW, ("rw",))]
    mounts += [Mount(2 + i, 1, Dev(0, 100 + i), "/", f"/k/u{i}", "tmpfs", "t", RW, ("rw",))
               for i in range(units)]  # fmt: skip
    last = mounts[-1]
    name = f"tmpfs-dev-{last.dev.kdev}.tar.gz.img"
    where.mkdir()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        f = tarfile.TarInfo("f")
        f.size = 2
        tar.addfile(f, io.BytesIO(b"x\n"))
    (where / name).write_bytes(out.getvalue())
    return write_dir(str(where), mounts, content={last.mnt_id: name}, ns_id=1)


@pytest.fixture
def reaper() -> Iterator[Callable[[], list[int]]]:
    """This test process as the child subreaper (see :func:`helpers.reaping`)."""
    with reaping() as children:
        yield children


def test_killed_while_building_leaves_nothing(
    tmp_path: Path, reaper: Callable[[], list[int]]
) -> None:
    images = _images(tmp_path / "img", 200)
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    (root / "kept").write_text("there before\n")
    marker = tmp_path / "reached"
    assert reaper() == []
    proc = subprocess.Popen(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-c", SLEEPY_CLI, str(marker),
         "restore", "-q", "-D", images, "--root", str(root), "--detach"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        assert wait_until(lambda: marker.exists() or proc.poll() is not None, 30), "never built"
        assert proc.poll() is None, proc.communicate()
        made = list((root / "k").iterdir())
        assert len(made) > 100 and os.listdir(tmp), "mid-build: mountpoints and a work dir"
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert out == b""
        # The building child undoes (it dies with its caller), the watchdog ends the
        # holders and removes the work directory.
        wait_until(lambda: not reaper() and not os.listdir(tmp) and len(os.listdir(root)) == 1, 10)
        assert reaper() == []
        assert os.listdir(tmp) == []
        assert sorted(os.listdir(root)) == ["kept"]
        # (The caller's mount table: the autouse fixture of conftest checks it.)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_its_whole_process_group_killed_while_building_leaves_nothing(
    tmp_path: Path, reaper: Callable[[], list[int]]
) -> None:
    """``kill -9 -PGID`` (a shell's job killed): the building child is in a group of its
    own, so it outlives the caller and undoes the mountpoints it made in DIR."""
    images = _images(tmp_path / "img", 200)
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    marker = tmp_path / "reached"
    proc = subprocess.Popen(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-c", SLEEPY_CLI, str(marker),
         "restore", "-q", "-D", images, "--root", str(root), "--detach"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: marker.exists() or proc.poll() is not None, 30), "never built"
        assert proc.poll() is None, proc.communicate()
        assert len(list((root / "k").iterdir())) > 100
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        wait_until(lambda: not reaper() and not os.listdir(tmp) and not os.listdir(root), 10)
        assert reaper() == []
        assert os.listdir(tmp) == []
        assert os.listdir(root) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_at_random_points_leaves_nothing() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--kills", "8", "--seed", "3",
                          "--mounts", "300", "--archives", "2"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert ": 8 left nothing behind (" in res.stdout.splitlines()[-1], res.stdout


#: The command line, killed (SIGKILL, by itself) right after ``restore`` returned: the
#: pidfile is written, the PID not printed yet, the restore not handed over.
KILLED_AFTER_PIDFILE_CLI = r"""
import os, signal, sys
import criu_fw.cli.restore as cli

real = cli.restore
def restore(*a, **kw):
    real(*a, **kw)
    os.kill(os.getpid(), signal.SIGKILL)
cli.restore = restore
from criu_fw.cli import main
main(sys.argv[1:], prog_name="criu-fw")
"""


def test_killed_after_writing_the_pidfile_leaves_no_pidfile(
    tmp_path: Path, reaper: Callable[[], list[int]]
) -> None:
    images = _images(tmp_path / "img", 3)
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    pidfile = tmp_path / "holder.pid"
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-c", KILLED_AFTER_PIDFILE_CLI,
         "restore", "-q", "-D", images, "--root", str(root), "--detach", "--pidfile",
         str(pidfile)],
        capture_output=True, env={**os.environ, "TMPDIR": str(tmp)}, timeout=60,
    )
    assert res.returncode == -signal.SIGKILL and res.stdout == b""
    # The watchdog ends the holder it was told of and removes the pidfile naming it.
    wait_until(lambda: not reaper() and not pidfile.exists() and not os.listdir(tmp), 10)
    assert reaper() == []
    assert not pidfile.exists()
    assert os.listdir(tmp) == []
    assert os.listdir(root) == []


def test_terminate_removes_the_pidfile_it_wrote_and_only_that(tmp_path: Path) -> None:
    from criu_fw.restore import restore

    images = _images(tmp_path / "img", 3)
    root = tmp_path / "root"
    root.mkdir()
    pidfile = tmp_path / "holder.pid"
    for rewritten in (False, True):
        res = restore(images, root=str(root), detach=True, pidfile=str(pidfile),
                      netns="new", ipcns="new")
        assert pidfile.read_text() == f"{res.pid}\n"
        if rewritten:
            pidfile.write_text("12345\n")  # another restore's, say
        res.terminate()
        assert pidfile.exists() == rewritten
        pidfile.unlink(missing_ok=True)
