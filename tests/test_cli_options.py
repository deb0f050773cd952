"""Options mean the same in every command and say what they take (``--help``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "criu_fw", *args], capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip


def _options(command: str) -> dict[str, str]:
    """``--help``'s option lines: the spelling (``-t, --tree PID``) -> its help text."""
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    out: dict[str, str] = {}
    last = ""
    for line in res.stdout.split("Options:", 1)[1].splitlines():
        m = re.match(r"^  (-\S.*?)(?:  +(.*))?$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2) or ""
        elif line.strip() and last:
            out[last] += " " + line.strip()
    return out


def test_t_is_the_tree_in_dump_verify_and_tree() -> None:
    assert "-t, --tree PID" in _options("dump")
    assert "-t, --tree [NS_ID=]PID" in _options("verify")
    assert "-t, --tree, --task PID" in _options("tree")
    me = str(os.getpid())
    by_short, by_long, by_old = (cli("tree", flag, me) for flag in ("-t", "--tree", "--task"))
    # The header and the root mount (the rest of a busy machine's table may change between).
    heads = [res.stdout.splitlines()[:2] for res in (by_short, by_long, by_old)]
    assert by_short.returncode == by_long.returncode == by_old.returncode == 0
    assert heads[0] == heads[1] == heads[2] and heads[0][0].startswith("TARGET")


def test_every_option_says_what_it_takes_and_does() -> None:
    for command in ("dump", "verify", "tree", "show", "restore"):
        for spelling, text in _options(command).items():
            assert "TEXT" not in spelling and "INTEGER" not in spelling, (command, spelling)
            assert text.strip(), f"{command} {spelling}: no help text"
    dump = _options("dump")
    assert "--proc-root DIR" in dump and "--sys-root DIR" in dump
    # A directory is DIR in every command (restore's --root said PATH).
    assert "--root DIR" in dump and "--root DIR" in _options("restore")
    assert _options("verify")["-D, --images-dir DIR"].startswith(
        "The image directory written by criu-fw dump (or CRIU), or a container checkpoint")
