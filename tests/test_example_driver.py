"""The third-party driver under examples/criu-fw-squashfs, as its users get it.

It is pip-installed into a fresh virtual environment next to criu-fw (offline), must show in
``criu-fw drivers`` there, type-check with ``mypy --strict`` as installed, and import nothing
of criu-fw but the public API. Then real round trips through that environment's CLI: a
squashfs and an erofs image on loop devices, with a process holding a file of it open and
running a program from it, dumped, restored in ``unshare --net --ipc``, verified, read back;
and the one-line refusals (no grant, a changed file, a gone file, a deleted one at dump).

Its unit checks (sysfs reading, state checks) import the package from its source tree.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from criu_fw.context import DumpContext
from criu_fw.driver import DumpError, LoopFile, routed_to
from criu_fw.kernel.mountinfo import parse_line
from criu_fw.testing import NamespaceScenario

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "criu-fw-squashfs"
PACKAGE = EXAMPLE / "src" / "criu_fw_squashfs"


def _from_source() -> None:
    """Make the unit checks below import the package from its source tree: by location,
    not through sys.path, where a build's egg-info would make every DriverManager of this
    process load it as an installed driver."""
    spec = importlib.util.spec_from_file_location(
        "criu_fw_squashfs", PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["criu_fw_squashfs"] = module
    spec.loader.exec_module(module)


_from_source()
from criu_fw_squashfs import driver as squashfs  # noqa: E402
from criu_fw_squashfs import loop_pb2  # noqa: E402
from criu_fw_squashfs.state import FileIdentity, LoopState  # noqa: E402

OUR_SITE = sysconfig.get_paths()["purelib"]


# -- the package ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment where criu-fw is importable (this
    environment's site-packages, as --system-site-packages would give the system's) and
    criu-fw-squashfs is pip-installed, offline, from a copy of its source (a build writes
    into the tree it builds)."""
    top = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(top / "v")], check=True)
    py = top / "v" / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # A site directory (its .pth files processed): criu-fw's editable install works there.
    Path(site, "criu-fw.pth").write_text(f"import site; site.addsitedir({OUR_SITE!r})\n")
    src = top / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", ".*_cache"))  # fmt: skip
    res = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         str(src)], capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return py


def fw(py: Path, *args: str, unshare: bool = False) -> subprocess.CompletedProcess[str]:
    """criu-fw of the environment ``py`` belongs to (restores in new net and IPC
    namespaces: the dumped trees hold this machine's sysfs and mqueue)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRIU_FW_")}
    pre = ["unshare", "--net", "--ipc", "--"] if unshare else []
    return subprocess.run([*pre, str(py), "-m", "criu_fw", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)  # fmt: skip


def test_the_installed_driver_is_listed_with_its_package(venv: Path) -> None:
    res = fw(venv, "drivers", "--json")
    assert res.returncode == 0, res.stderr
    listed = {d["name"]: d for d in json.loads(res.stdout)["drivers"]}
    got = listed["squashfs"]
    assert (got["distribution"], got["fstypes"]) == ("criu-fw-squashfs", ["squashfs", "erofs"])
    assert got["hooks"] == ["parse_mount", "rebuild_mount"]
    table = fw(venv, "drivers").stdout
    assert any(line.split()[:3] == ["squashfs", "squashfs,erofs", "criu-fw-squashfs"]
               for line in table.splitlines()), table  # fmt: skip


def test_the_installed_package_type_checks_strictly(venv: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), "--python-executable", str(venv), "-p", "criu_fw_squashfs"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no issues found in 6 source files" in res.stdout


def test_it_imports_only_the_public_api() -> None:
    own = {p.stem for p in PACKAGE.glob("*.py")}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue  # relative imports are its own modules
            for name in names:
                top = name.split(".")[0]
                assert (
                    name in ("criu_fw", "criu_fw.driver")
                    or top in ("attrs", "google")
                    or top in sys.stdlib_module_names
                    or top in own
                ), f"{path.name}:{node.lineno}: {name}"


def test_its_generated_messages_are_up_to_date(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(EXAMPLE / "gen_proto.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    for name in ("loop_pb2.py", "loop_pb2.pyi"):
        fresh = (tmp_path / "criu_fw_squashfs" / name).read_bytes()
        assert fresh == (PACKAGE / name).read_bytes(), f"regenerate {name}: gen_proto.py"


# -- unit checks: sysfs, options, states ---------------------------------------------------


def fake_loop(sys_root: Path, dev: str, backing: str, *, size: int, offset: int = 0,
              ro: bool = True) -> None:  # fmt: skip
    """A recorded /sys with loop device ``dev`` (``7:N``) showing ``backing``."""
    name = f"loop{dev.split(':')[1]}"
    block = sys_root / "devices" / "virtual" / "block" / name
    (block / "loop").mkdir(parents=True)
    (block / "loop" / "backing_file").write_bytes(os.fsencode(backing) + b"\n")
    (block / "loop" / "offset").write_text(f"{offset}\n")
    (block / "loop" / "sizelimit").write_text("0\n")
    (block / "ro").write_text("1\n" if ro else "0\n")
    (block / "size").write_text(f"{size // 512}\n")
    (sys_root / "dev" / "block").mkdir(parents=True, exist_ok=True)
    (sys_root / "dev" / "block" / dev).symlink_to(f"../../devices/virtual/block/{name}")


def parse(mountinfo: bytes, sys_root: Path, recorded: bool = False) -> LoopState:
    mount = parse_line(mountinfo)
    ctx = DumpContext(image_dir="/nonexistent", sys_root=str(sys_root), recorded=recorded)
    with routed_to("squashfs"):
        return squashfs.parse_mount(mount, ctx)


SQ = b"36 25 7:5 / /snap/app/1 ro,nodev,relatime - squashfs /dev/loop5 ro,errors=continue"


def test_dump_reads_the_loop_device_and_the_file(tmp_path: Path) -> None:
    img = tmp_path / "app_1.snap"
    img.write_bytes(b"s" * 10000)
    fake_loop(tmp_path / "sys", "7:5", str(img), size=9728)  # whole sectors of 10000 bytes
    state = parse(SQ, tmp_path / "sys")
    st = img.stat()
    assert state == LoopState(str(img), 0, 0, True,
                              FileIdentity(st.st_dev, st.st_ino, 10000, st.st_mtime_ns),
                              ("ro", "errors=continue"), "loop5")  # fmt: skip
    assert LoopState.from_message(state.to_message()) == state
    # A recorded /sys: nothing to look at on this machine, the restore does not check.
    assert parse(SQ, tmp_path / "sys", recorded=True).identity is None
    plan = squashfs.rebuild_mount(parse_line(SQ), state)
    assert isinstance(plan.source, LoopFile)
    assert plan.source == LoopFile(plan.source.path, read_only=True, size=10000,
                                   mtime_ns=st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino)
    assert plan.source.path.path == str(img) and plan.source.path.key is None
    assert plan.params == (("ro", None), ("errors", "continue"))


@pytest.mark.parametrize(("line", "backing", "size", "message"), [
    (SQ, None, 0, "device 7:5 is not a loop device with a file attached; only images on "
     "loop devices can be restored"),
    (SQ, "/gone/app.snap (deleted)", 0, "the backing file '/gone/app.snap' of loop5 was "
     "deleted; a restore could not attach it again"),
    (SQ, "IMG", 512, "the backing file 'IMG' of loop5 would give a device of 9728 bytes, "
     "the device has 512: not the file attached, or it changed since"),
    (SQ.replace(b"errors=continue", b"errors=panic,debug"), "IMG", 9728,
     "squashfs option 'debug' is not one this driver passes again"),
    (b"37 25 7:5 / /c ro,relatime - erofs /dev/loop5 ro,device=/dev/sdb", "IMG", 9728,
     "erofs option 'device=/dev/sdb' is not one this driver passes again"),
], ids=["not a loop device", "deleted", "another file", "squashfs option",
        "erofs device"])  # fmt: skip
def test_what_the_dump_cannot_describe_fails_in_one_line(
    tmp_path: Path, line: bytes, backing: str | None, size: int, message: str
) -> None:
    img = tmp_path / "app.snap"
    img.write_bytes(b"s" * 10000)
    if backing is not None:
        fake_loop(tmp_path / "sys", "7:5", backing.replace("IMG", str(img)), size=size)
    with pytest.raises(DumpError) as err:
        parse(line, tmp_path / "sys")
    mount = parse_line(line)
    assert str(err.value) == f"{mount.describe()}: {message.replace('IMG', str(img))}"


def test_a_recorded_sys_still_shows_a_deleted_file(tmp_path: Path) -> None:
    fake_loop(tmp_path / "sys", "7:5", "/snaps/app.snap (deleted)", size=9728)
    with pytest.raises(DumpError, match=r"the backing file '/snaps/app\.snap' of loop5 was del"):
        parse(SQ, tmp_path / "sys", recorded=True)


@pytest.mark.parametrize(("change", "why"), [
    ({"backing_file": b"etc/x"}, "not an absolute, normalised path"),
    ({"backing_file": b"/a/../etc/x"}, "not an absolute, normalised path"),
    ({"offset": 1 << 63}, "offset 9223372036854775808 is beyond any file"),
    ({"options": ["device=/dev/sda"]}, "option 'device=/dev/sda' is not one"),
    ({"device": "../x"}, "not a loop device's name"),
    ({"ino": 5}, "identity is incomplete"),
], ids=["relative", "dotdot", "offset", "option", "device", "identity"])  # fmt: skip
def test_a_crafted_state_is_refused(change: dict[str, Any], why: str) -> None:
    fields = {"backing_file": b"/s/a.snap", "options": ["ro"], "device": "loop1", **change}
    crafted = loop_pb2.loop_state(**fields)
    assert LoopState.from_message(loop_pb2.loop_state(backing_file=b"/s/a.snap"))
    with pytest.raises(ValueError, match=why):
        LoopState.from_message(crafted)


# -- for real ------------------------------------------------------------------------------


MAKE = {
    "squashfs": ("mksquashfs src img -quiet -noappend", "-r"),  # a read-only device
    "erofs": ("mkfs.erofs --quiet img src", ""),  # a writable one
}
SCRIPT = """
mkdir -p src/sub mnt
printf 'from the image\\n' > src/hello
head -c 262144 /dev/urandom > src/blob
cp {busybox} src/busybox
{make}
dev=$(losetup {ro} --find --show img)
echo "$dev" > loopdev
mount -t {fstype} "$dev" mnt || {{ losetup -d "$dev"; exit 1; }}
"""
#: A file of the image open (fd 3) and a program of it running (its text mapped).
KEEP = "exec 3<mnt/hello mnt/busybox sleep 100000"


def busybox() -> str:
    found = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(found):
        pytest.skip("busybox is not installed (Debian's busybox-static)")
    return found


@pytest.fixture
def mounted(request: pytest.FixtureRequest) -> Iterator[tuple[NamespaceScenario, str]]:
    """A scenario with an image of ``request.param`` (fstype) attached with losetup and
    mounted at ``mnt``; yields it and the loop device, detached at the end by that name."""
    fstype: str = request.param
    make, ro = MAKE[fstype]
    if shutil.which(make.split()[0]) is None:
        pytest.skip(f"{make.split()[0]} is not installed (scripts/bootstrap.sh installs it)")
    scn = NamespaceScenario(SCRIPT.format(busybox=busybox(), make=make, ro=ro, fstype=fstype),
                            keep_running=KEEP)  # fmt: skip
    dev = Path(scn.workdir, "loopdev").read_text().strip()
    try:
        yield scn, dev
    finally:
        scn.close()  # its namespace, and with it the mount, goes first
        subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def attached_to(path: str) -> list[str]:
    out = subprocess.run(["losetup", "-j", path], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return sorted(line.split(":", 1)[0] for line in out.splitlines())


def wait_for(what: object, want: object, timeout: float = 5.0) -> object:
    """Poll ``what()`` until it gives ``want`` (a device on a dead namespace's mount goes
    away a moment after the namespace)."""
    assert callable(what)
    deadline = time.monotonic() + timeout
    got = what()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = what()
    return got


def dump(py: Path, scn: NamespaceScenario, images: str) -> None:
    res = fw(py, "dump", "-t", str(scn.pid), "-D", images, "--external-auto", "-q")
    assert res.returncode == 0, res.stderr


def grants(py: Path, images: str) -> list[str]:
    """What an operator who checked the images gives: --root /, the dumped host mounts by
    the paths they were recorded under (the other namespaces' share of the host)."""
    keys = subprocess.run([str(py), "-c", (
        "import sys\n"
        "from criu_fw.images.mounts import read_mount_namespace\n"
        "from criu_fw.restore import image_namespaces\n"
        "d = sys.argv[1]\n"
        "for i in image_namespaces(d)[1]:\n"
        "    for r in read_mount_namespace(d, i):\n"
        "        if r.external: print(r.external)\n"
    ), images], capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return ["--root", "/", *(f"--external=mnt[{k}]:{k}" for k in sorted(set(keys)))]


def only_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.privileged
@pytest.mark.parametrize("mounted", ["squashfs", "erofs"], indirect=True)
def test_an_image_on_a_loop_device_round_trips(
    venv: Path, mounted: tuple[NamespaceScenario, str], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    scn, dev = mounted
    fstype = request.node.callspec.params["mounted"]
    w = scn.workdir
    images = str(tmp_path / "images")
    dump(venv, scn, images)
    # The open file and the running program were dumped as files of the mount.
    files = fw(venv, "show", f"{images}/files.img").stdout
    assert f'"{w}/mnt/hello"' in files and f'"{w}/mnt/busybox"' in files
    res = fw(venv, "restore", "-D", images, *grants(venv, images), "--allow-host", w,
             "--detach", unshare=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    holder = int(res.stdout.split()[0])
    try:
        # A second loop device on the same file, the first one untouched.
        restored = [d for d in attached_to(f"{w}/img") if d != dev]
        assert len(restored) == 1 and dev in attached_to(f"{w}/img")
        # Read-only as the dumped one was (losetup -r for squashfs), cleared when unused.
        sysfs = Path("/sys/block", restored[0][len("/dev/"):])
        ro = Path("/sys/block", dev[len("/dev/"):], "ro").read_text()
        assert (sysfs / "ro").read_text() == ro == ("1\n" if fstype == "squashfs" else "0\n")
        assert (sysfs / "loop" / "autoclear").read_text() == "1\n"
        ver = fw(venv, "verify", "-D", images, "-t", str(holder))
        assert ver.returncode == 0, ver.stdout + ver.stderr
        assert ver.stdout.startswith("verify: OK"), ver.stdout
        seen = subprocess.run(
            ["nsenter", "-t", str(holder), "-m", "--", "sh", "-c",
             f"cat {w}/mnt/hello && sha256sum {w}/mnt/blob && grep ' {w}/mnt ' "
             f"/proc/self/mountinfo"], capture_output=True, text=True,
        )  # fmt: skip
        assert seen.returncode == 0, seen.stderr
        hello, blob, line = seen.stdout.splitlines()
        assert hello == "from the image"
        assert blob.split()[0] == hashlib.sha256(Path(w, "src/blob").read_bytes()).hexdigest()
        # Mounted from the device the restore attached (verify compared what it stands for).
        assert line.split(" - ")[1].split()[1] == restored[0], line
    finally:
        os.kill(holder, 9)  # the holder the CLI left (init reaps it)
    # The restore's device went with the last mount of it.
    assert wait_for(lambda: attached_to(f"{w}/img"), [dev]) == [dev]


@pytest.mark.privileged
@pytest.mark.parametrize("mounted", ["squashfs"], indirect=True)
def test_a_restore_refuses_in_one_line(
    venv: Path, mounted: tuple[NamespaceScenario, str], tmp_path: Path
) -> None:
    scn, dev = mounted
    w = scn.workdir
    img = f"{w}/img"
    images = str(tmp_path / "images")
    dump(venv, scn, images)
    mount = f"at '{w}/mnt' (squashfs, source '{dev}')"
    base = ["restore", "-D", images, *grants(venv, images), "--detach"]

    line = only_line(fw(venv, *base, unshare=True))
    assert line.startswith("criu-fw: error: mount ") and mount in line
    assert line.endswith(f": the loop device's backing file {img!r} is a host path named by "
                         f"the images, used only when granted; give --allow-host {w} (or a "
                         f"directory above it)"), line  # fmt: skip

    granted = [*base, "--allow-host", w]
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    line = only_line(fw(venv, *granted, unshare=True))
    assert mount in line
    assert f": the loop device's backing file {img!r}: changed since the dump (modified " in line
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))

    os.rename(img, f"{img}.moved")
    try:
        line = only_line(fw(venv, *granted, unshare=True))
    finally:
        os.rename(f"{img}.moved", img)
    assert mount in line and line.endswith(f": the loop device's backing file {img!r} is gone")
    # Nothing was attached by any of them.
    assert attached_to(img) == [dev]


@pytest.mark.privileged
@pytest.mark.parametrize("mounted", ["squashfs"], indirect=True)
def test_a_deleted_backing_file_fails_the_dump(
    venv: Path, mounted: tuple[NamespaceScenario, str], tmp_path: Path
) -> None:
    scn, dev = mounted
    os.unlink(f"{scn.workdir}/img")
    res = fw(venv, "dump", "-t", str(scn.pid), "-D", str(tmp_path / "images"),
             "--external-auto", "-q")  # fmt: skip
    line = only_line(res)
    assert line.startswith("criu-fw: error: driver 'squashfs': mount "), line
    assert f"at '{scn.workdir}/mnt' (squashfs, source '{dev}'): the backing file " \
           f"'{scn.workdir}/img' of {dev[5:]} was deleted; a restore could not attach it " \
           f"again" in line, line
