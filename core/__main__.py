"""``python -m criu_fw``: the ``criu-fw`` command."""

from __future__ import annotations

from .cli import main

main(prog_name="criu-fw")
