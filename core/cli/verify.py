"""``criu-fw verify``: compare a live mount namespace with the images."""

from __future__ import annotations

import sys

import click

from ..restore.verify import verify
from .base import driver_manager


@click.command("verify")
@click.option("-D", "--images-dir", "image_dir", required=True, metavar="DIR")
@click.option("-t", "--tree", "pid", required=True, type=int, metavar="PID",
              help="A process in the namespace to check.")
@click.option("--ns", "ns_id", type=int, default=None, metavar="ID",
              help="The dumped mount namespace to compare with (default: the root one).")
@click.pass_context
def verify_cmd(ctx: click.Context, image_dir: str, pid: int, ns_id: int | None) -> None:
    """Print every difference between PID's mount namespace and the images; exit 0 only
    when they match (mount ids, peer-group ids and device numbers do not count)."""
    result = verify(pid, image_dir, ns_id, mgr=driver_manager(ctx))
    for line in result.differences:
        click.echo(line)
    if result.differences:
        click.echo(f"verify: {len(result.differences)} difference(s)", err=True)
        sys.exit(1)
    click.echo(f"verify: OK, {result.matched} mounts match")
