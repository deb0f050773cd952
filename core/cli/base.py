"""The command group, global options and the error boundary shared by every command.

Commands that need drivers call :func:`driver_manager` (drivers are loaded on first use,
never for ``--help``) and hand the manager to the library (``dump(..., manager=mgr)``), so that
``--prefer``, ``--block-driver``, ``--strict-drivers`` and ``--trace`` apply to every command.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from .. import __version__
from ..api.loader import DriverConfig, DriverManager, load_drivers
from ..api.tracing import Tracer
from ..errors import (
    EXIT_CANNOT_RUN,
    EXIT_COMMAND_TOOL,
    EXIT_FAILURE,
    EXIT_INTERNAL,
    EXIT_NOT_FOUND,
    CriuFwError,
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class Group(click.Group):
    """Turns every criu-fw error into one line and the exit status of its kind (docs/cli.md:
    2 a usage mistake, 3 a failure, 70 a bug; the traceback with ``--debug``).

    Commands registered with :meth:`add_lazy` are imported when they run (or for help):
    ``criu-fw restore`` does not import the dump engine, nor ``dump`` the restore's (25 ms of
    a command's start)."""

    lazy: dict[str, str]

    def add_lazy(self, name: str, where: str) -> None:
        """``where``: ``module:attribute`` of the command, the module relative to this
        package."""
        if not hasattr(self, "lazy"):
            self.lazy = {}
        self.lazy[name] = where

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *getattr(self, "lazy", {})})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = self.commands.get(cmd_name)
        where = getattr(self, "lazy", {}).get(cmd_name)
        if found is None and where is not None:
            module, _, attr = where.partition(":")
            found = getattr(importlib.import_module(module, __package__), attr)
            assert isinstance(found, click.Command)
            self.commands[cmd_name] = found
        return found

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `criu-fw tree | head`: the reader left; stop quietly, as a SIGPIPE'd tool would.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        except KeyboardInterrupt:
            # As a shell reports a command that SIGINT ended (click's own answer is status 1,
            # which verify uses for "differences found").
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo("criu-fw: interrupted", err=True)
            sys.exit(128 + signal.SIGINT)
        except CriuFwError as exc:
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo(f"criu-fw: error: {_one_line(exc)}", err=True)
            sys.exit(_status(ctx, exc.exit_code))
        except OSError as exc:
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo(f"criu-fw: error: {_one_line(exc)}", err=True)
            sys.exit(_status(ctx, EXIT_FAILURE))
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            # A bug, not a user error: still one line, the traceback with --debug.
            if ctx.meta.get("criu_fw.debug"):
                raise
            click.echo(
                f"criu-fw: internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(run with --debug for the traceback)",
                err=True,
            )
            sys.exit(_status(ctx, EXIT_INTERNAL))


class _Lines(logging.Formatter):
    """``criu-fw: warning: ...``, spelt as the CLI's own warnings and errors are."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"criu-fw: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: ``ctx.meta`` key: the command runs a user's command (``restore -- CMD``), whose own
#: statuses criu-fw's must not be taken for.
RUNS_COMMAND = "criu_fw.runs_command"


def _status(ctx: click.Context, code: int) -> int:
    """``code``, or 125 for criu-fw's own failure under ``restore -- CMD`` (126 and 127 say
    CMD could not be run or found; 128+N stays a signal's)."""
    if ctx.meta.get(RUNS_COMMAND) and code < 128 and code not in (EXIT_CANNOT_RUN,
                                                                   EXIT_NOT_FOUND):
        return EXIT_COMMAND_TOOL
    return code


_EPILOG = (
    "Exit status: 0 success; 1 differences found (verify); 2 a usage mistake (bad option "
    "or argument, no such process); 3 a failure (dump, restore, a bad image); 70 a bug; "
    "128+N ended by signal N; restore -- CMD: CMD's status, or 125 (criu-fw failed), 126 "
    "(CMD cannot run), 127 (CMD not found). See docs/cli.md."
)


@click.group(cls=Group, epilog=_EPILOG)
@click.version_option(__version__, prog_name="criu-fw")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("--prefer", "prefer", multiple=True, metavar="FSTYPE=DRIVER",
              help="Which driver handles FSTYPE when several claim it (also CRIU_FW_PREFER).")
@click.option("--block-driver", "blocked", multiple=True, metavar="NAME",
              help="Do not load this driver (also CRIU_FW_BLOCK_DRIVERS).")
@click.option("--strict-drivers", is_flag=True,
              help="A driver that fails to load is fatal (also CRIU_FW_STRICT_DRIVERS=1).")
@click.option("--trace", is_flag=True,
              help="Print every driver hook call (driver, mount, result, time) on stderr.")
@click.pass_context
def main(
    ctx: click.Context, debug: bool, prefer: tuple[str, ...], blocked: tuple[str, ...],
    strict_drivers: bool, trace: bool,
) -> None:
    """Checkpoint/restore of mount namespaces, open files and file mappings."""
    ctx.meta["criu_fw.debug"] = debug
    ctx.meta["criu_fw.blocked"] = blocked
    plugins: list[object] = []
    if trace:
        plugins.append(Tracer(emit=lambda line: click.echo(f"criu-fw: {line}", err=True),
                              keep=False))
    ctx.meta["criu_fw.api.loader"] = plugins
    handler = logging.StreamHandler()
    handler.setFormatter(_Lines())
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    pairs = {}
    for p in prefer:
        key, sep, value = p.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"expected FSTYPE=DRIVER, got {p!r}", param_hint="--prefer")
        pairs[key] = value
    ctx.obj = DriverConfig.from_env(prefer=pairs, blocked=blocked, strict=strict_drivers)


def driver_manager(ctx: click.Context, report: bool = True) -> DriverManager:
    """Load drivers on first use by a command (never for --help); skipped ones are reported
    on stderr unless ``report`` is false (``criu-fw drivers`` lists them itself)."""
    mgr = ctx.meta.get("criu_fw.manager")
    if mgr is None:
        config = ctx.find_root().obj
        mgr = load_drivers(
            config if isinstance(config, DriverConfig) else None, cli_plugins(ctx)
        )
        for problem in mgr.problems if report else ():
            click.echo(f"criu-fw: warning: {problem}", err=True)
        for name in mgr.unknown_blocked:
            # A typo blocks nothing: said, not silently ignored.
            given = ctx.find_root().meta.get("criu_fw.blocked", ())
            where = f"--block-driver {name}" if name in given else (
                f"{name} in CRIU_FW_BLOCK_DRIVERS")
            click.echo(
                f"criu-fw: warning: {where}: no driver named {name!r} is installed, so it "
                f"blocks nothing (loaded: {', '.join(sorted(mgr.drivers)) or 'none'})",
                err=True,
            )
        ctx.meta["criu_fw.manager"] = mgr
    assert isinstance(mgr, DriverManager)
    return mgr


def cli_plugins(ctx: click.Context) -> list[object]:
    """The cross-cutting plugins the global options asked for (``--trace``)."""
    plugins = ctx.meta.get("criu_fw.api.loader", [])
    assert isinstance(plugins, list)
    return plugins


def progress_lines(quiet: bool) -> Callable[[str], None] | None:
    """Where a long command's progress goes: stderr, on a terminal, unless ``--quiet``."""
    if quiet or not sys.stderr.isatty():
        return None
    return lambda line: click.echo(f"criu-fw: {line}", err=True)
