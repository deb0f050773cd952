"""``criu-fw verify``: compare live mount namespaces with the images."""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_DIFFERENCES, UsageError
from ..images.checkpoint import checkpoint_images, is_checkpoint_archive
from ..kernel.mountinfo import process_gone
from ..restore.verify import verify, verify_namespaces
from .base import driver_manager


def parse_trees(values: tuple[str, ...], ns_id: int | None) -> dict[int | None, int]:
    """``-t PID`` (the root namespace, or --ns) and ``-t NS=PID`` -> {ns or None: pid}."""
    out: dict[int | None, int] = {}
    for v in values:
        ns_text, sep, pid_text = v.rpartition("=")
        try:
            key = int(ns_text) if sep else ns_id
            pid = int(pid_text)
        except ValueError:
            raise UsageError(f"-t {v!r}: expected PID or NS_ID=PID") from None
        if key in out:
            raise UsageError(f"-t {v!r}: namespace given twice")
        out[key] = pid
    if ns_id is not None and len(out) > 1:
        raise UsageError("--ns goes with a single -t PID; give -t NS_ID=PID for each namespace")
    return out


@click.command("verify")
@click.option("-D", "--images-dir", "image_dir", required=True, metavar="DIR",
              help="The image directory written by criu-fw dump (or CRIU), or a container "
                   "checkpoint archive (podman container checkpoint --export).")
@click.option("-t", "--tree", "trees", required=True, multiple=True, metavar="[NS_ID=]PID",
              help="A process in the namespace to check; repeat as NS_ID=PID to check several "
                   "namespaces together (shared superblocks and peer groups across them).")
@click.option("--ns", "ns_id", type=int, default=None, metavar="ID",
              help="The dumped mount namespace to compare with (default: the root one).")
@click.option("--outside-masters", type=click.Choice(["host", "private"]), default="host",
              show_default=True,
              help="What the restore made of slaves of groups outside the images (as given "
                   "to restore).")
@click.option("--root", metavar="DIR", default=None,
              help="The restore took the root mount from DIR (as given to restore, where "
                   "the images cannot rebuild it): the live root must be DIR, and is not "
                   "compared with the images.")
@click.pass_context
def verify_cmd(
    ctx: click.Context, image_dir: str, trees: tuple[str, ...], ns_id: int | None,
    outside_masters: str, root: str | None,
) -> None:
    """Print every difference between live mount namespaces and the images; exit 0 only
    when they match (mount ids, peer-group ids and device numbers do not count)."""
    pids = parse_trees(trees, ns_id)
    for pid in pids.values():
        why = process_gone(pid)
        if why is not None:
            raise UsageError(why)
    if os.path.isfile(image_dir) and is_checkpoint_archive(image_dir):
        with checkpoint_images(image_dir) as (images, _):
            _verify(ctx, images, pids, outside_masters, root)
        return
    _verify(ctx, image_dir, pids, outside_masters, root)


def _verify(
    ctx: click.Context, image_dir: str, pids: dict[int | None, int], outside_masters: str,
    root: str | None,
) -> None:
    mgr = driver_manager(ctx)
    if len(pids) == 1:
        ((key, pid),) = pids.items()
        result = verify(pid, image_dir, key, manager=mgr, outside_masters=outside_masters,
                        root=root)
    else:
        from ..restore.engine import image_namespaces

        root_ns = image_namespaces(image_dir)[0]
        by_ns = {root_ns if k is None else k: p for k, p in pids.items()}
        if len(by_ns) != len(pids):
            raise UsageError(f"-t: the root namespace {root_ns} is given twice")
        result = verify_namespaces(by_ns, image_dir, mgr, outside_masters=outside_masters,
                                   root=root)
    for line in result.differences:
        click.echo(line)
    if result.differences:
        click.echo(f"verify: {len(result.differences)} difference(s)", err=True)
        sys.exit(EXIT_DIFFERENCES)
    click.echo(f"verify: OK, {result.matched} mounts match")
