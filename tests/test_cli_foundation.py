"""The CLI commands of the foundation: drivers, tree, check; the error boundary; --trace."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from criu_fw.cli import main
from criu_fw.cli.base import driver_manager
from criu_fw.errors import DriverError
from criu_fw.kernel.mountinfo import parse
from criu_fw.testing import NamespaceScenario

CONSOLE = Path(sys.executable).parent / "criu-fw"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_help_loads_no_driver() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for cmd in ("drivers", "tree", "check"):
        assert cmd in out
    assert "--trace" in out and "--prefer" in out


def test_drivers_table_and_json() -> None:
    code, out, _ = run("drivers")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["DRIVER", "FSTYPES", "ORIGIN", "HOOKS"]
    names = {line.split()[0] for line in lines if line and line[0].islower()}
    assert {"generic", "overlay", "aufs"} <= names
    assert any("+fallback" in line and line.startswith("generic ") for line in lines)
    code, out, _ = run("--block-driver", "aufs", "drivers", "--json")
    assert code == 0 and '"name": "aufs"' not in out and '"name": "overlay"' in out


def test_usage_errors_are_one_line_with_status_2() -> None:
    code, _, err = run("--prefer", "overlay=nosuch", "drivers")
    assert code == 2
    assert err == "criu-fw: error: --prefer overlay=nosuch: no driver named 'nosuch' is loaded\n"
    code, _, err = run("drivers", env={"CRIU_FW_PREFER": "garbage"})
    assert code == 2 and err.count("\n") == 1 and "CRIU_FW_PREFER" in err


@pytest.mark.privileged
def test_tree_draws_a_live_namespace_with_both_readers(
    scenario: Callable[..., NamespaceScenario],
) -> None:
    s = scenario(
        "mkdir -p a b r o/l o/u o/w o/m \"$(printf 'n\\nl')\" && mount -t tmpfs srcA a"
        " && mount --make-shared a && mount --bind a b && mount -t ramfs ram r"
        " && mount -t overlay ovl -o lowerdir=o/l,upperdir=o/u,workdir=o/w o/m"
        " && mount -t tmpfs weird \"$(printf 'n\\nl')\""
    )
    base = os.path.realpath(s.workdir)
    outs = {}
    for reader in ("mountinfo", "statmount"):
        code, out, err = run("tree", "-t", str(s.pid), "--reader", reader)
        assert code == 0, err
        outs[reader] = out
        rows = {line.split()[0].lstrip("├└─│ "): line.split() for line in out.splitlines()[1:]}
        assert rows[f"{base}/o/m"][1:4] == ["ovl", "overlay", "overlay"]
        assert rows[f"{base}/r"][1:5] == ["ram", "ramfs", "generic", "private"]
        assert rows[f"{base}/a"][1:4] == ["srcA", "tmpfs", "generic"]
        assert rows[f"{base}/b"][4].startswith("shared:")
        # The newline in a name is shown escaped: one mount, one line.
        assert f"{base}/n\\x0al" in rows
    # Same tree, same drawing; statmount adds the unique ids.
    strip = [line.rsplit(None, 1)[0] for line in outs["mountinfo"].splitlines()]
    assert strip == [line.rsplit(None, 1)[0] for line in outs["statmount"].splitlines()]
    assert "/0x8" in outs["statmount"] and "/0x8" not in outs["mountinfo"]


def test_tree_of_a_missing_process_is_one_line_and_traceback_only_with_debug() -> None:
    code, _, err = run("tree", "-t", "999999999")
    assert code == 2 and err == "criu-fw: error: no process 999999999 (no /proc/999999999/ns/mnt)\n"
    with pytest.raises(Exception, match="no process 999999999"):
        CliRunner().invoke(main, ["--debug", "tree", "-t", "999999999"], catch_exceptions=False)


@click.command("call-hook")
@click.pass_context
def call_hook(ctx: click.Context) -> None:
    """A stand-in for a command that calls hooks (dump, restore)."""
    mgr = driver_manager(ctx)
    mount = next(iter(parse(b"7 1 0:9 / /x rw - myfs src rw")))
    with contextlib.suppress(DriverError):
        mgr.hooks.rebuild_mount(mgr.owner("myfs"), mount=mount, state=None, ctx=None)


def test_trace_prints_each_hook_call() -> None:
    main.add_command(call_hook)
    try:
        code, out, err = run("--trace", "call-hook")
        assert code == 0, err
        (line,) = [x for x in err.splitlines() if "trace:" in x]
        assert line.startswith("criu-fw: trace: rebuild_mount -> generic: mount 7 at '/x'")
        code, out, err = run("call-hook")
        assert "trace:" not in err
    finally:
        main.commands.pop("call-hook")
    code, out, _ = run("--trace", "drivers", "--json")
    assert code == 0 and '"wrappers": [\n    "tracing"' in out


def test_check_lists_every_feature_and_exits_0() -> None:
    code, out, _ = run("check")
    assert code == 0
    lines = out.splitlines()
    names = [line.split(":")[0][5:].replace(" (optional)", "") for line in lines]
    assert names == [
        "mnt_id in fdinfo", "statx mount ids", "listmount/statmount", "NS_GET_MNTNS_ID",
        "pidfd_open", "new mount API", "mount_setattr", "MOVE_MOUNT_SET_GROUP",
        "MOVE_MOUNT_BENEATH", "overlay lowerdir+", "overlay layers by fd", "open_tree_attr",
        "idmapped mounts",
    ]
    assert all(line[:4] in ("yes ", "no  ") for line in lines)
    # This project's machines (Linux 6.18) have all of the mandatory ones.
    if os.uname().release >= "6.8":
        assert all(line.startswith("yes") for line in lines if "(optional)" not in line), out


def test_real_console_script() -> None:
    res = subprocess.run([str(CONSOLE), "tree", "-t", str(os.getpid()), "--reader", "mountinfo"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == [
        "TARGET", "SOURCE", "FSTYPE", "DRIVER", "PROPAGATION", "ID"
    ]
    res = subprocess.run([str(CONSOLE), "tree", "--reader", "nope"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "Invalid value for '--reader'" in res.stderr
    res = subprocess.run([str(CONSOLE), "check", "--json"], capture_output=True, text=True)
    assert res.returncode == 0 and '"name": "new mount API"' in res.stdout


@pytest.mark.privileged
def test_trace_follows_every_command_that_calls_drivers(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path
) -> None:
    """The CLI loads the drivers once, with the tracer, and hands that manager to the library:
    dump, restore (a dry run) and verify each show the calls their drivers got."""
    s = scenario(
        "mkdir t l u w o && mount -t tmpfs tt t && echo x > t/f && "
        "mount -t overlay ov -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w o"
    )
    images = str(tmp_path / "img")

    def traced(*args: str) -> list[str]:
        code, _, err = run("--trace", *args)
        assert code == 0, err
        return [x.removeprefix("criu-fw: trace: ") for x in err.splitlines() if "trace:" in x]

    lines = traced("dump", "-t", str(s.pid), "-D", images, "--external-auto")
    assert any(x.startswith("parse_mount -> overlay: mount ") for x in lines)
    assert any(
        x.startswith("dump_content -> generic: ") and "(tmpfs, source 'tt')" in x for x in lines
    )
    lines = traced("restore", "-D", images, "--dry-run", "--root", "/", "--allow-host", s.workdir,
                   "--allow-host", "/")
    assert any(x.startswith("rebuild_mount -> overlay: mount ") for x in lines)
    assert any(x.startswith("rebuild_mount -> generic: mount ") for x in lines)
    lines = traced("verify", "-t", str(s.pid), "-D", images)
    assert any(x.startswith("parse_mount -> overlay: mount ") for x in lines)


@pytest.mark.privileged
def test_progress_lines_on_a_terminal_only_and_not_with_quiet(
    scenario: Callable[..., NamespaceScenario], tmp_path: Path
) -> None:
    s = scenario("mkdir t && mount -t tmpfs tt t && echo x > t/f")

    def dump_on(tty: bool, *extra: str) -> str:
        images = tmp_path / f"img{len(list(tmp_path.iterdir()))}"
        args = [str(CONSOLE), "dump", "-t", str(s.pid), "-D", str(images), "--external-auto",
                *extra]
        if not tty:
            return subprocess.run(args, capture_output=True, text=True, check=True).stderr
        main_fd, sub_fd = os.openpty()
        try:
            subprocess.run(args, stdout=subprocess.DEVNULL, stderr=sub_fd, check=True)
            os.close(sub_fd)
            out = b""
            with contextlib.suppress(OSError):  # EIO once the terminal's other end is gone
                while chunk := os.read(main_fd, 65536):
                    out += chunk
            return out.decode()
        finally:
            os.close(main_fd)

    def phases_of(err: str) -> list[str]:
        found = (re.match(r"criu-fw: +[0-9.]+ s  (.*)$", x) for x in err.splitlines())
        return [m.group(1) for m in found if m]

    phases = phases_of(dump_on(True))
    assert phases[0] == "froze 1 process"
    assert any(p.startswith("read ") and " mounts of 1 namespace" in p for p in phases)
    assert any(p.startswith("saved the content of ") for p in phases)
    assert phases[-1].startswith("wrote the process images into ")
    assert phases_of(dump_on(True, "--quiet")) == []
    assert phases_of(dump_on(False)) == []


def test_ctrl_c_while_python_imports_criu_fw_ends_quietly_with_130() -> None:
    # The interrupt lands in the import of the command's modules (made to, deterministically:
    # a real Ctrl-C in that tenth of a second is a race).
    code = (
        "import builtins, criu_fw.entry as e\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **kw):\n"
        "    if name == 'cli' or name.endswith('.cli'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **kw)\n"
        "builtins.__import__ = imp\n"
        "e.main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "criu-fw: interrupted\n")


def test_the_installed_command_runs_through_its_entry_point() -> None:
    cli = os.path.join(os.path.dirname(sys.executable), "criu-fw")
    res = subprocess.run([cli, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("criu-fw, version ")


def test_a_command_imports_only_what_it_runs() -> None:
    # `criu-fw restore` does not import the dump engine, nor `dump` the restore's; --help
    # still lists every command.
    code = ("import sys\nfrom criu_fw.cli import main\n"
            "try:\n    main(['restore', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('criu_fw.dump.engine' in sys.modules, 'criu_fw.cli.restore' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.splitlines()[-1] == "False True", res.stdout + res.stderr
    listed = subprocess.run([sys.executable, "-m", "criu_fw", "--help"], capture_output=True,
                            text=True).stdout
    for name in ("check", "drivers", "dump", "merge", "restore", "show", "tree", "verify"):
        assert f"\n  {name} " in listed, name
