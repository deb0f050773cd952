"""The ``criu-fw`` command line: a thin click layer over the library.

Commands parse their arguments, call one library function and print. Errors become one line on
stderr and a non-zero exit status (:attr:`CriuFwError.exit_code`); ``--debug`` shows the
traceback. Each command lives in its own module and is registered below.
"""

from __future__ import annotations

from .base import main

for _name, _where in (
    ("drivers", ".drivers:drivers_cmd"), ("dump", ".dump:dump_cmd"), ("show", ".show:show_cmd"),
    ("tree", ".tree:tree_cmd"), ("check", ".check:check_cmd"),
    ("restore", ".restore:restore_cmd"), ("verify", ".verify:verify_cmd"),
    ("merge", ".merge:merge_cmd"),
):
    main.add_lazy(_name, _where)

__all__ = ["main"]
