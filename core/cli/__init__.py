"""The ``criu-fw`` command line: a thin click layer over the library.

Commands parse their arguments, call one library function and print. Errors become one line on
stderr and a non-zero exit status (:attr:`CriuFwError.exit_code`); ``--debug`` shows the
traceback. Each command lives in its own module and is registered below.
"""

from __future__ import annotations

from .base import main
from .check import check_cmd
from .drivers import drivers_cmd
from .dump import dump_cmd
from .merge import merge_cmd
from .restore import restore_cmd
from .show import show_cmd
from .tree import tree_cmd
from .verify import verify_cmd

main.add_command(drivers_cmd)
main.add_command(dump_cmd)
main.add_command(show_cmd)
main.add_command(tree_cmd)
main.add_command(check_cmd)
main.add_command(restore_cmd)
main.add_command(verify_cmd)
main.add_command(merge_cmd)

__all__ = ["main"]
