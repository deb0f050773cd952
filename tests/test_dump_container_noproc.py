"""A container namespace that never mounted /proc still dumps and restores: the namespace
helper must not need /proc inside the namespace it enters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from criu_fw.dump import dump
from criu_fw.testing import NamespaceScenario

NO_PROC = r"""
bb=$(command -v busybox || echo /bin/busybox)
mkdir root; mount -t tmpfs -o mode=755 rootfs root
mkdir -p root/bin root/data root/old
cp "$bb" root/bin/busybox
for a in sh cat sleep; do ln -s busybox root/bin/$a; done
mount -t tmpfs data root/data; echo payload > root/data/p
cd root; pivot_root . old; /bin/busybox umount -l /old; cd /
"""


@pytest.mark.privileged
def test_container_without_proc_dumps_and_restores(tmp_path: Path) -> None:
    if not (shutil.which("busybox") or os.path.exists("/bin/busybox")):
        pytest.skip("busybox-static is not installed (scripts/bootstrap.sh installs it)")
    images = str(tmp_path / "images")
    with NamespaceScenario(NO_PROC) as scn:
        with open(f"/proc/{scn.pid}/mountinfo") as f:
            assert [line.split()[4] for line in f] == ["/", "/data"]
        dump(scn.pid, images)
    res = subprocess.run(
        [sys.executable, "-m", "criu_fw", "restore", "-D", images, "--", "/bin/cat", "/data/p"],
        capture_output=True,
        check=False,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, b"payload\n", b"")
