"""``python -m criu_fw.cli``: the ``criu-fw`` command."""

from __future__ import annotations

from . import main

main(prog_name="criu-fw")
