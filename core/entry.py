"""The ``criu-fw`` command's entry point (``[project.scripts]``).

A Ctrl-C while Python imports criu-fw (a tenth of a second) ended the command with a
traceback; here it ends it as one later does: ``criu-fw: interrupted``, status 130.
``import criu_fw`` imports nothing else (see its ``__init__``), so the window before this
``try`` is the interpreter's own start.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        from .cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("criu-fw: interrupted\n")
        sys.exit(128 + signal.SIGINT)
    cli(prog_name="criu-fw")
