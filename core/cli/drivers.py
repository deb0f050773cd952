"""``criu-fw drivers``: every loaded driver with its fstypes, origin and hooks."""

from __future__ import annotations

import click

from .base import driver_manager


@click.command("drivers")
@click.pass_context
def drivers_cmd(ctx: click.Context) -> None:
    """List the filesystem drivers, the fstypes they own, their origin and hooks."""
    mgr = driver_manager(ctx)
    for info in sorted(mgr.drivers.values(), key=lambda i: i.name):
        types = ",".join(info.fstypes) or "-"
        if info.fallback:
            types += " (fallback for every other fstype)"
        click.echo(f"{info.name}\tfstypes={types}\torigin={info.origin}\thooks={','.join(info.hooks) or '-'}")
    for problem in mgr.problems:
        click.echo(f"{problem.name}\tSKIPPED\torigin={problem.distribution}\t{problem.reason}")
