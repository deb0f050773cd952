"""A whole round trip for a driver's tests: dump a live process, restore its images where
they cannot touch this machine, verify the restored tree, and clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

import attrs

from ..dump import dump
from ..images.mounts import read_mount_namespace
from ..restore import image_namespaces


@attrs.frozen
class Restored:
    """A restore left running: ``pid`` is a process inside the restored root namespace (for
    ``/proc/PID/root`` and ``nsenter -t PID -m``); ``verify`` is the CLI's verdict."""

    pid: int
    images: str
    verify_ok: bool
    verify_output: str


@contextlib.contextmanager
def round_trip(
    pid: int, images: str, restore_args: Sequence[str] = ("--root", "/"),
    *, auto_external: bool = True,
) -> Iterator[Restored]:
    """Dump process ``pid`` into ``images`` (the host mounts a scenario inherited recorded by
    host path), restore them with the CLI in fresh network and IPC namespaces (so keyed
    filesystems such as sysfs and mqueue are new instances, never this machine's), with
    ``restore_args`` as grants and ``--external mnt[K]:K`` for each host path recorded,
    verify the result, and end the restored holder when the block ends."""
    dump(pid, images, auto_external=auto_external)
    _, ids = image_namespaces(images)
    keys = sorted({r.external for i in ids for r in read_mount_namespace(images, i)
                   if r.external and r.external.startswith("/")})  # fmt: skip
    externals = [f"--external=mnt[{k}]:{k}" for k in keys]
    res = subprocess.run(
        ["unshare", "--net", "--ipc", "--", sys.executable, "-m", "criu_fw", "restore",
         "-D", images, "--detach", *restore_args, *externals],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if res.returncode != 0:
        raise AssertionError(f"restore failed: {res.stderr.strip()}")
    holders = [int(line.split()[0]) for line in res.stdout.splitlines() if line.strip()]
    try:
        ver = subprocess.run(
            [sys.executable, "-m", "criu_fw", "verify", "-t", str(holders[0]), "-D", images],
            capture_output=True, text=True, timeout=120, check=False,
        )
        yield Restored(holders[0], images, ver.returncode == 0, ver.stdout + ver.stderr)
    finally:
        for holder in holders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)
