"""``python -m criu_fw``: the ``criu-fw`` command (through the same entry point, which
ends a Ctrl-C during the imports quietly)."""

from __future__ import annotations

from .entry import main

main()
