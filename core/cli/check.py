"""``criu-fw check``: which kernel features criu-fw can use here, one per line."""

from __future__ import annotations

import json

import click

from ..kernel.features import probe


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_cmd(as_json: bool) -> None:
    """Probe the kernel features criu-fw uses (mounting probes run in a private namespace)."""
    features = probe()
    if as_json:
        click.echo(json.dumps([
            {"name": f.name, "available": f.available, "optional": f.optional,
             "detail": f.detail}
            for f in features
        ], indent=2))
        return
    for f in features:
        click.echo(f.describe())
