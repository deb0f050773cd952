"""A program that embeds criu-fw: checkpoint a process's mount namespace, rebuild it, check it.

Run as root: ``python examples/embed.py``. It starts a process in a private mount namespace
with a tmpfs holding a file, dumps its mounts, restores them in fresh network and IPC
namespaces, checks the restored tree against the images and reads the file back.
docs/embedding.md walks through it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from criu_fw import CriuFwError, load_drivers
from criu_fw.dump import dump
from criu_fw.restore import restore
from criu_fw.restore.verify import verify


def start_workload(where: str) -> subprocess.Popen[bytes]:
    """A process in its own mount namespace with a tmpfs at ``where`` holding a file."""
    script = (
        f"mount --make-rprivate / && mount -t tmpfs -o size=1m work {where} && "
        f"echo 'kept across the restore' > {where}/note && echo ready && exec sleep 600"
    )
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        raise SystemExit("the workload did not start")
    return proc


def main() -> int:
    with tempfile.TemporaryDirectory() as top:
        where, images = f"{top}/data", f"{top}/images"
        subprocess.run(["mkdir", where], check=True)
        workload = start_workload(where)
        # Load the drivers once and hand them to every call (tracers, third-party drivers
        # and --prefer choices go in here too).
        drivers = load_drivers()
        try:
            # The host's mounts the process inherited are recorded by host path.
            result = dump(workload.pid, images, manager=drivers, auto_external=True)
            print(f"dumped {sum(result.namespaces.values())} mounts, "
                  f"content in {', '.join(result.content_images)}")
            # Rebuild in fresh network and IPC namespaces: the restored sysfs and mqueue are
            # new instances, never this machine's. The host's root is granted as the root.
            started = time.monotonic()
            restored = restore(images, root="/", manager=drivers, detach=True,
                               netns="new", ipcns="new",
                               externals={k: k for k in result.external.values()})
            print(f"restored in {time.monotonic() - started:.2f} s, held by {restored.pid}")
            try:
                check = verify(restored.pid, images, manager=drivers)
                print("verify:", "OK" if check.ok else "; ".join(check.differences))
                note = subprocess.run(
                    ["nsenter", "-t", str(restored.pid), "-m", "cat", f"{where}/note"],
                    capture_output=True, text=True, check=True,
                ).stdout
                print("the file reads:", note.strip())
                return 0 if check.ok else 1
            finally:
                restored.terminate()
        except CriuFwError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            workload.kill()
            workload.wait()


if __name__ == "__main__":
    sys.exit(main())
