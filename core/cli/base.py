"""The command group, global options and the error boundary shared by every command."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import CriuFwError
from ..plugins import DriverConfig, DriverManager, load_drivers


class Group(click.Group):
    """Turns every criu-fw error into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CriuFwError as exc:
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo(f"criu-fw: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo(f"criu-fw: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="criu-fw")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("--prefer", "prefer", multiple=True, metavar="FSTYPE=DRIVER",
              help="Which driver handles FSTYPE when several claim it (also CRIU_FW_PREFER).")
@click.option("--block-driver", "blocked", multiple=True, metavar="NAME",
              help="Do not load this driver (also CRIU_FW_BLOCK_DRIVERS).")
@click.option("--strict-drivers", is_flag=True,
              help="A driver that fails to load is fatal (also CRIU_FW_STRICT_DRIVERS=1).")
@click.pass_context
def main(
    ctx: click.Context, debug: bool, prefer: tuple[str, ...], blocked: tuple[str, ...],
    strict_drivers: bool,
) -> None:
    """Checkpoint/restore of mount namespaces, open files and file mappings."""
    ctx.meta["criu_fw.debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="criu-fw: %(levelname)s: %(message)s")
    pairs = {}
    for p in prefer:
        key, sep, value = p.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"expected FSTYPE=DRIVER, got {p!r}", param_hint="--prefer")
        pairs[key] = value
    ctx.obj = DriverConfig.from_env(prefer=pairs, blocked=blocked, strict=strict_drivers)


def driver_manager(ctx: click.Context) -> DriverManager:
    """Load drivers on first use by a command (never for --help), report skipped ones."""
    mgr = ctx.meta.get("criu_fw.manager")
    if mgr is None:
        config = ctx.find_root().obj
        mgr = load_drivers(config if isinstance(config, DriverConfig) else None)
        for problem in mgr.problems:
            click.echo(f"criu-fw: warning: {problem}", err=True)
        ctx.meta["criu_fw.manager"] = mgr
    assert isinstance(mgr, DriverManager)
    return mgr
