"""``criu-fw show IMAGE``: an image as JSON like ``crit show`` (``--raw``: ``crit decode``)."""

from __future__ import annotations

import click

from ..images import image_to_json


@click.command("show")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--raw", is_flag=True, help="Plain numbers, as `crit decode` prints them.")
def show_cmd(image: str, raw: bool) -> None:
    """Print IMAGE (a CRIU image or criu-fw's own) as JSON."""
    click.echo(image_to_json(image, pretty=not raw))
