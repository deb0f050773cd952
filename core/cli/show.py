"""``criu-fw show IMAGE``: an image as JSON like ``crit show`` (``--raw``: ``crit decode``)."""

from __future__ import annotations

import click

from ..images import image_to_json, read_magic
from .base import driver_manager


@click.command("show")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--raw", is_flag=True, help="Plain numbers, as `crit decode` prints them.")
@click.pass_context
def show_cmd(ctx: click.Context, image: str, raw: bool) -> None:
    """Print IMAGE (a CRIU image or criu-fw's own) as JSON."""
    # Only criu-fw's own image holds driver state, whose messages the drivers define.
    mgr = driver_manager(ctx) if read_magic(image) == "FW_MNTS" else None
    click.echo(image_to_json(image, pretty=not raw, mgr=mgr))
