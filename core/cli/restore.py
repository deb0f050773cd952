"""``criu-fw restore``: rebuild the dumped mount namespaces (a thin layer over restore())."""

from __future__ import annotations

import contextlib
import os
import re
import sys

import click

from ..errors import UsageError
from ..images.checkpoint import checkpoint_images, is_checkpoint_archive
from ..kernel.mountops import RecordingMountOps
from ..kernel.superblocks import predicted_shared
from ..restore import restore
from ..restore.signals import RestoreInterrupted, held, interruptible
from .base import RUNS_COMMAND, driver_manager, progress_lines

_EXTERNAL = re.compile(r"^mnt\[(?P<key>.+?)\]:(?P<path>.+)$")
_DEVICE = re.compile(r"^dev\[(?P<major>\d+)[:/](?P<minor>\d+)\]:(?P<path>.+)$")


def parse_externals(values: tuple[str, ...]) -> dict[str, str]:
    """The ``mnt[KEY]:PATH`` values of ``--external``."""
    return split_externals(values)[0]


def split_externals(values: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """``--external`` values: ``mnt[KEY]:PATH`` as {KEY: PATH} and ``dev[MAJ:MIN]:DEVICE``
    as {"MAJ:MIN": DEVICE}. A key or device given two different paths is refused: which one
    the restore should use is not for us to pick (the last one won, unsaid)."""
    mounts: dict[str, str] = {}
    devices: dict[str, str] = {}
    for v in values:
        m = _EXTERNAL.match(v)
        if m is not None:
            _add(mounts, m.group("key"), m.group("path"), v, "key")
            continue
        d = _DEVICE.match(v)
        if d is None:
            raise UsageError(f"--external {v!r}: expected mnt[KEY]:PATH or dev[MAJ:MIN]:DEVICE")
        dev = f"{int(d.group('major'))}:{int(d.group('minor'))}"
        _add(devices, dev, d.group("path"), v, "device")
    return mounts, devices


def _add(out: dict[str, str], key: str, path: str, given: str, what: str) -> None:
    if out.get(key, path) != path:
        raise UsageError(
            f"--external {given}: {what} {key} is already mapped to {out[key]!r}; give each "
            f"{what} one path"
        )
    out[key] = path


def _cgroup_roots(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        controller, sep, path = value.partition(":")
        if value.startswith("/") or not sep:
            controller, path = "", value
        if controller in out:
            raise click.UsageError(f"--cgroup-root {value!r}: {controller or 'PATH'} given twice")
        out[controller] = path
    return out


@click.command("restore")
@click.option("-D", "--images-dir", "image_dir", required=True, metavar="DIR",
              help="The image directory written by criu-fw dump (or CRIU), or a container "
                   "checkpoint archive (podman container checkpoint --export): its images "
                   "are unpacked into a temporary directory for the restore's length.")
@click.option("--root", metavar="DIR",
              help="Directory to use as the root where the root mount cannot be rebuilt. "
                   "Mountpoints missing in its tree are created there (on that filesystem); "
                   "they stay after a restore that succeeds and are removed after one that "
                   "fails.")
@click.option("--external", "externals", multiple=True, metavar="mnt[KEY]:PATH",
              help="Where the external mount dumped under KEY comes from here; "
                   "dev[MAJ:MIN]:DEVICE: the block device here that a filesystem dumped on "
                   "device MAJ:MIN is mounted from (the only way one is).")
@click.option("--allow-host", "allow_host", multiple=True, metavar="DIR",
              help="Host directories under which paths named by the images may be used: "
                   "overlay layers on the host (an overlay writes into its upper and work "
                   "directories there), mounts recorded by --external-auto, image files "
                   "attached to loop devices (squashfs, erofs). Nothing else "
                   "outside the restored namespaces is used without --external or --root.")
@click.option("--detach", is_flag=True,
              help="Leave a holder process in the restored namespace, print its PID, return.")
@click.option("--pidfile", metavar="FILE", help="With --detach: write the holder's PID here.")
@click.option("--outside-masters", type=click.Choice(["host", "private"]), default="host",
              show_default=True,
              help="A mount that was a slave of a group outside the images: make it a slave "
                   "of the host mount it is restored from (host; an error where there is "
                   "none), or private.")
@click.option("--netns", metavar="new|PATH",
              help="Build in a new network namespace (new) or in the one of a namespace file "
                   "(/run/netns/NAME, /proc/PID/ns/net), not this machine's: a sysfs is then "
                   "rebuilt as it was (read-only included) instead of being this machine's, "
                   "left as it is. The holders and the command stay in it.")
@click.option("--ipcns", metavar="new|PATH",
              help="The same for the IPC namespace (an mqueue).")
@click.option("--cgroup-root", "cgroup_roots", multiple=True, metavar="[CONTROLLER:]PATH",
              help="Restore cgroup mounts rooted at PATH of this machine's hierarchy instead "
                   "of the dumped container's cgroup (a runtime removes it with the "
                   "container); CONTROLLER (memory, name=systemd, cgroup2...) limits it to "
                   "the hierarchies with that controller. PATH must exist.")
@click.option("--dry-run", is_flag=True, help="Print the mount requests, mount nothing.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress lines (shown on a terminal only, on stderr).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def restore_cmd(
    ctx: click.Context, image_dir: str, root: str | None, externals: tuple[str, ...],
    allow_host: tuple[str, ...],
    detach: bool, pidfile: str | None, outside_masters: str, netns: str | None,
    ipcns: str | None, cgroup_roots: tuple[str, ...], dry_run: bool, quiet: bool,
    command: tuple[str, ...],
) -> None:
    """Rebuild the dumped mount namespaces in new private namespaces.

    With `-- CMD [ARG...]`, run CMD in the restored namespace (root = the restored root, cwd
    /) and exit with its status. With --detach, print the PID of a process inside the restored
    namespace (for nsenter -t PID -m; -m -n -i with --netns/--ipcns) and return. Otherwise
    print the PID and hold the namespace until SIGTERM, SIGHUP, SIGINT or SIGQUIT, which
    end the holders (status 128+N). While CMD runs, those signals are passed on to it; before
    the restore is complete, they undo it.
    """
    ctx.meta[RUNS_COMMAND] = bool(command)
    with contextlib.ExitStack() as unpacked:
        if os.path.isfile(image_dir) and is_checkpoint_archive(image_dir):
            # The built namespaces need no image afterwards: removed on the way out (after
            # the hold or the command, or at once with --detach).
            image_dir = unpacked.enter_context(checkpoint_images(image_dir))[0]
        mgr = driver_manager(ctx)
        asked = {k: v for k, v in (("net", netns), ("ipc", ipcns)) if v is not None}
        ops = RecordingMountOps(shared=predicted_shared(asked)) if dry_run else None
        mounts, devices = split_externals(externals)
        # One block from the restore to the end of the hold: a signal before the PIDs are out
        # undoes the restore (an error), one after them ends the holders (the way a hold ends);
        # with a command, the command gets it.
        shown = False
        try:
            with interruptible():
                result = restore(
                    image_dir, root=root, externals=mounts, devices=devices,
                    allow_host=allow_host, command=list(command) or None, detach=detach,
                    pidfile=pidfile, manager=mgr, ops=ops, outside_masters=outside_masters,
                    netns=netns, ipcns=ipcns, progress=progress_lines(quiet or dry_run),
                    cgroup_roots=_cgroup_roots(cgroup_roots),
                )
                if ops is not None:
                    for call in ops.calls:
                        click.echo(call.describe())
                    return
                if command:
                    sys.exit(result.exit_code or 0)
                shown = True  # whoever reads the PID may signal at once (echo flushes)
                click.echo(str(result.pid))
                for ns_id, pid in result.holders.items():
                    if ns_id != result.root_ns:
                        click.echo(f"{pid} mnt_ns={ns_id}")
                # The PIDs are out (echo flushes): the restore is the user's. Killed before
                # this, criu-fw leaves nothing (the builder undoes, the watchdog ends holders).
                result.settle()
                if detach:
                    return
                sys.stdout.flush()
                ended = result.hold()
        except RestoreInterrupted as exc:
            if not shown:
                raise
            if not detach:
                # It came after the PIDs were out but before the hold began (while the restore
                # was handed over): the hold ends as hold() ends it, the holders killed and
                # reaped (they held the caller's output open, and the namespaces, otherwise).
                with held():
                    result.settle()
                    result.terminate()
            ended = exc.signum
        if ended is not None:
            # Held until a signal, as asked: no error line, the status of a command it ended.
            sys.exit(128 + ended)
