"""``criu-fw tree -t PID``: a live process's mount tree, drawn like findmnt."""

from __future__ import annotations

import click

from ..treeview import READERS, read_tree, render
from .base import driver_manager


@click.command("tree")
@click.option("-t", "--tree", "--task", "pid", type=int, default=None, metavar="PID",
              help="The process whose mount namespace is shown (default: criu-fw itself).")
@click.option("--reader", type=click.Choice(READERS), default="mountinfo", show_default=True,
              help="Read /proc/PID/mountinfo, or use listmount/statmount (adds unique ids).")
@click.pass_context
def tree_cmd(ctx: click.Context, pid: int | None, reader: str) -> None:
    """Draw the mount tree of a process with fstype, source, driver and propagation."""
    tree = read_tree("self" if pid is None else pid, reader)
    mgr = driver_manager(ctx)
    for line in render(tree, mgr.owner):
        click.echo(line)
