"""Binds whose root was unlinked after they were mounted (mountinfo's ``//deleted``): a
directory, a file whose only name is gone, and a file that keeps another name (a hard link).
The restore makes each again in the rebuilt tmpfs, binds it and unlinks it, so the restored
mount table shows the same deleted roots; the file's bytes come back, the hard-linked one is
still the same file as its other name, and nothing made for it is left in the filesystem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from criu_fw.testing import NamespaceScenario

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "criu_fw"]

SCRIPT = r"""
mkdir t; mount -t tmpfs src t
mkdir -p t/src/sub/gone-dir t/b1; chmod 751 t/src/sub/gone-dir; chown 5:6 t/src/sub/gone-dir
printf 'only\000name' > t/src/gone-file; echo linked > t/src/keep; ln t/src/keep t/src/alias
touch t/b2 t/b3
mount --bind t/src/sub/gone-dir t/b1
mount --bind t/src/gone-file t/b2
mount --bind t/src/alias t/b3
rmdir t/src/sub/gone-dir t/src/sub; rm t/src/gone-file t/src/alias
"""

SHOW = r"""
grep " $W/t" /proc/self/mountinfo | cut -d' ' -f4,5 | sort
echo ==; cat $W/t/b2; echo; cat $W/t/b3
echo more >> $W/t/b3; cat $W/t/src/keep
stat -c '%a %u:%g' $W/t/b1; ls -A $W/t/src
"""


def _table(pid: int, workdir: str) -> str:
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return "".join(
        f"{f[3]} {f[4]}\n" for f in (line.split() for line in lines)
        if f[4].startswith(f"{workdir}/t")
    )


def test_binds_of_deleted_files_and_directories_round_trip(tmp_path: Path) -> None:
    with NamespaceScenario(SCRIPT) as scn:
        w = scn.workdir
        before = "".join(sorted(_table(scn.pid, w).splitlines(keepends=True)))
        assert f"/src/gone-file//deleted {w}/t/b2\n" in before
        img = str(tmp_path / "img")
        subprocess.run([*CLI, "dump", "-q", "-t", str(scn.pid), "-D", img, "--root", "/"],
                       check=True, capture_output=True, timeout=60)
    # The file without a name left travels as its bytes; the hard-linked one as its other
    # name, the directory as its mode and owner.
    kept = list(Path(img).glob("fw-deleted-*.img"))
    assert [p.read_bytes() for p in kept] == [b"only\0name"]
    res = subprocess.run(
        ["unshare", "--net", "--ipc", *CLI, "restore", "-q", "-D", img, "--root", "/", "--",
         "/bin/sh", "-c", SHOW],
        capture_output=True, text=True, timeout=60, env={"W": w, "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    table, rest = res.stdout.split("==\n")
    assert table == before
    assert rest == "only\0name\nlinked\nlinked\nmore\n751 5:6\nkeep\n"
