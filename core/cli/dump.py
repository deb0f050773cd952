"""``criu-fw dump -t PID -D DIR``: checkpoint a process tree's mounts, files and mappings."""

from __future__ import annotations

import re

import click

from ..dump import dump
from ..errors import UsageError
from .base import driver_manager, progress_lines

_EXTERNAL = re.compile(r"^mnt\[(?P<mp>/[^\]]*)\]:(?P<key>.+)$")


def parse_external(values: tuple[str, ...]) -> dict[str, str]:
    """``mnt[MOUNTPOINT]:KEY`` (CRIU's spelling) -> {mountpoint: key}; one mountpoint given
    two keys is refused (which one the restore should look for is not for us to pick)."""
    out: dict[str, str] = {}
    for v in values:
        m = _EXTERNAL.match(v)
        if m is None:
            raise click.BadParameter(
                f"expected mnt[MOUNTPOINT]:KEY, got {v!r}", param_hint="--external"
            )
        mp, key = m.group("mp"), m.group("key")
        if out.get(mp, key) != key:
            raise UsageError(
                f"--external {v}: mountpoint {mp} is already given key {out[mp]!r}; "
                "give each mount one key"
            )
        out[mp] = key
    return out


@click.command("dump")
@click.option("-t", "--tree", "pid", type=int, required=True, metavar="PID",
              help="The process whose tree is dumped.")
@click.option("-D", "--images-dir", "image_dir", required=True, metavar="DIR",
              type=click.Path(file_okay=False),
              help="Where the images go (must be missing or empty; written atomically).")
@click.option("--external", "externals", multiple=True, metavar="mnt[MOUNTPOINT]:KEY",
              help="Record the mount at MOUNTPOINT as external under KEY (repeatable).")
@click.option("--external-auto", is_flag=True,
              help="Record mounts from outside the dump under the host path where this "
                   "process sees the same directory.")
@click.option("--leave-stopped", is_flag=True, help="Keep the processes stopped afterwards.")
@click.option("--root", default=None, metavar="DIR",
              help="The container's root directory, for drivers that read files' identities.")
@click.option("--proc-root", default="/proc", show_default=True, metavar="DIR",
              help="Read /proc from here (a recorded tree: nothing is frozen or entered).")
@click.option("--sys-root", default="/sys", show_default=True, metavar="DIR",
              help="Read /sys from here.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress lines (shown on a terminal only, on stderr).")
@click.pass_context
def dump_cmd(
    ctx: click.Context, pid: int, image_dir: str, externals: tuple[str, ...],
    external_auto: bool, leave_stopped: bool, root: str | None, proc_root: str, sys_root: str,
    quiet: bool,
) -> None:
    """Checkpoint the mount namespaces, open files and file mappings of a process tree."""
    ext = parse_external(externals)
    res = dump(
        pid, image_dir, manager=driver_manager(ctx), externals=ext,
        auto_external=external_auto, leave_stopped=leave_stopped, root=root,
        proc_root=proc_root, sys_root=sys_root, progress=progress_lines(quiet),
    )
    mounts = sum(res.namespaces.values())
    click.echo(
        f"dumped {len(res.pids)} process(es), {len(res.namespaces)} mount namespace(s), "
        f"{mounts} mounts, {res.files} fds, {res.mappings} file mappings into {res.image_dir}"
    )
    for (ns_id, mnt_id), key in sorted(res.external.items()):
        click.echo(f"external: namespace {ns_id} mount {mnt_id} -> {key}")
    skipped = sum(res.skipped_fds.values())
    if skipped:
        kinds = ", ".join(f"{n} {kind}" for kind, n in res.skipped_fds.items())
        click.echo(
            f"skipped {skipped} fd(s) that are no file of a mount ({kinds}): the process "
            "checkpointer's to restore, not in the images"
        )
