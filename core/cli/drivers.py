"""``criu-fw drivers``: every driver with its fstypes, origin and hooks; skipped drivers and
contested fstypes too, so that one command shows what the plugin system made of this machine."""

from __future__ import annotations

import json

import click

from ..api.loader import DriverManager
from .base import driver_manager


def _as_json(mgr: DriverManager) -> str:
    return json.dumps(
        {
            "drivers": [
                {
                    "name": i.name,
                    "fstypes": list(i.fstypes),
                    "fallback": i.fallback,
                    "origin": i.origin,
                    "distribution": i.distribution,
                    "version": i.version,
                    "hooks": list(i.hooks),
                }
                for i in sorted(mgr.drivers.values(), key=lambda i: i.name)
            ],
            "skipped": [
                {"name": p.name, "distribution": p.distribution, "version": p.version,
                 "reason": p.reason}
                for p in mgr.problems
            ],
            "conflicts": {k: list(v) for k, v in sorted(mgr.conflicts.items())},
            "wrappers": sorted(mgr.wrappers),
        },
        indent=2,
    )


@click.command("drivers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def drivers_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the filesystem drivers, the fstypes they own, their origin and hooks."""
    mgr = driver_manager(ctx, report=False)
    if as_json:
        click.echo(_as_json(mgr))
        return
    rows = [("DRIVER", "FSTYPES", "ORIGIN", "HOOKS")]
    for info in sorted(mgr.drivers.values(), key=lambda i: i.name):
        types = ",".join(info.fstypes) or "-"
        if info.fallback:
            types += " +fallback"
        rows.append((info.name, types, info.origin, ",".join(info.hooks) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[3])
    for name in sorted(mgr.wrappers):
        click.echo(f"wrapper {name}: wraps every hook call")
    for problem in mgr.problems:
        click.echo(f"skipped {problem.name} ({problem.origin}): {problem.reason}")
    for fstype, names in sorted(mgr.conflicts.items()):
        click.echo(
            f"conflict {fstype}: claimed by {', '.join(names)}; "
            f"choose one with --prefer {fstype}={names[0]}"
        )
