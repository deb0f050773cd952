"""``criu-fw merge``: criu-fw's mount images into CRIU's image directory of the same dump."""

from __future__ import annotations

import click

from ..images.merge import merge


@click.command("merge")
@click.option("-D", "--images-dir", "image_dir", required=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="The image directory criu-fw dump wrote.")
@click.option("--into", "criu_dir", required=True, metavar="CRIU_DIR",
              type=click.Path(exists=True, file_okay=False),
              help="The image directory CRIU dumped the same processes into.")
def merge_cmd(image_dir: str, criu_dir: str) -> None:
    """Put criu-fw's mount images and content archives into CRIU_DIR, numbered as CRIU
    numbers the mount namespaces there (matched through the processes both dumps hold), so
    that `criu restore -D CRIU_DIR` rebuilds the mounts from them. Replaces CRIU's own
    mount images and archives of the same names; all or nothing."""
    done = merge(image_dir, criu_dir)
    pairs = ", ".join(f"{a} -> {b}" for a, b in sorted(done.namespaces.items()))
    click.echo(f"merged {len(done.written)} images into {criu_dir} (mount namespaces "
               f"criu-fw -> CRIU: {pairs}; {len(done.replaced)} of CRIU's replaced)")
