"""``criu-fw show PATH``: an image directory as a findmnt-like tree of its mount namespaces
with the dumped processes' files (``--json`` for programs); one image file as JSON like
``crit show`` (``--raw``: ``crit decode``); a content archive listed like ``tar -tv``; a
deleted root's bytes described."""

from __future__ import annotations

import json
import os

import attrs
import click

from ..errors import UsageError
from ..images import read_magic
from ..images.checkpoint import checkpoint_images, is_checkpoint_archive
from ..images.describe import (
    archive_header,
    archive_members,
    archive_to_dict,
    deleted_line,
    deleted_to_dict,
    file_kind,
    image_dict,
)
from .base import driver_manager


@click.command("show")
@click.argument("path", metavar="PATH")
@click.option("--raw", is_flag=True, help="An image file: plain numbers, as `crit decode`.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON for programs (docs/cli.md); an image file is always shown as JSON.")
@click.option("--files", is_flag=True,
              help="An image directory: list each open file and mapping under its mount "
                   "(else a count per mount).")
@click.pass_context
def show_cmd(ctx: click.Context, path: str, raw: bool, as_json: bool, files: bool) -> None:
    """Show PATH: an image directory (its mount trees, processes and files), a container
    checkpoint archive (podman's --export: its image directory, the same way), an image file
    (a CRIU image or criu-fw's own, as JSON), a content archive or a deleted file's bytes."""
    if os.path.isdir(path):
        if raw:
            raise UsageError("--raw: for an image file; an image directory is shown as a tree")
        _show_dir(ctx, path, as_json, files)
        return
    if os.path.isfile(path) and is_checkpoint_archive(path):
        if raw:
            raise UsageError("--raw: for an image file; a checkpoint archive is shown as a tree")
        with checkpoint_images(path) as (images, meta):
            if not as_json:
                click.echo(meta.line(path))
            _show_dir(ctx, images, as_json, files, {"checkpoint": attrs.asdict(meta)})
        return
    if files:
        raise UsageError(f"--files: for an image directory; {path} is not a directory")
    kind = file_kind(path)
    if kind == "archive":
        if as_json:
            click.echo(json.dumps(archive_to_dict(path), indent=2))
            return
        click.echo(archive_header(path))
        for member in archive_members(path):  # streamed: an archive may hold millions
            click.echo(member.line())
        return
    if kind == "deleted":
        click.echo(json.dumps(deleted_to_dict(path), indent=2) if as_json else deleted_line(path))
        return
    # Only criu-fw's own image holds driver state, whose messages the drivers define.
    mgr = driver_manager(ctx) if read_magic(path) == "FW_MNTS" else None
    click.echo(json.dumps(image_dict(path, pretty=not raw, mgr=mgr), indent=4))


def _show_dir(ctx: click.Context, path: str, as_json: bool, files: bool,
              extra: dict[str, object] | None = None) -> None:
    from ..imageview import read_image_dir, render, to_dict

    view = read_image_dir(path, driver_manager(ctx))
    if as_json:
        click.echo(json.dumps({**(extra or {}), **to_dict(view)}, indent=2))
        return
    for line in render(view, files=files):
        click.echo(line)
