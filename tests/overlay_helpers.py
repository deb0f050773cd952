"""Helpers for the overlay tests: a DumpContext over live scenarios, file records as the dump
engine takes them (fd link, fdinfo, stat through the link)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator

from criu_fw.api.hooks import routed_to
from criu_fw.context import DumpContext
from criu_fw.files import FileIdentity, FileMapping, OpenFile
from criu_fw.fsdrivers.overlay import driver
from criu_fw.fsdrivers.overlay.state import OverlayState
from criu_fw.kernel.mountinfo import read_mountinfo
from criu_fw.model import Dev, Mount, MountTree
from criu_fw.testing import NamespaceScenario


def ns_id(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def live_context(*scenarios: NamespaceScenario, **kw: object) -> DumpContext:
    trees: dict[int, MountTree] = {}
    pids: dict[int, int] = {}
    for s in scenarios:
        nid = ns_id(s.pid)
        trees[nid] = read_mountinfo(s.pid, ns_id=nid)
        pids[nid] = s.pid
    return DumpContext(
        image_dir=tempfile.gettempdir(),
        trees=trees,
        ns_pids=pids,
        root_pid=scenarios[0].pid,
        **kw,  # type: ignore[arg-type]
    )


def host_devices(*paths: str) -> dict[str, str]:
    """``--external dev[MAJ:MIN]:DEVICE`` grants for the host block devices holding ``paths``
    (none where a path is on a filesystem without a device, as in a container)."""
    by_dev = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            source = fields[fields.index("-") + 2]
            by_dev.setdefault(fields[2], source)
    out = {}
    for path in paths:
        st = os.stat(path)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        source = by_dev.get(dev, "")
        if source.startswith("/dev/") and stat.S_ISBLK(os.stat(source).st_mode):
            out[dev] = source
    return out


def tree_of(ctx: DumpContext, s: NamespaceScenario) -> MountTree:
    return ctx.trees[ns_id(s.pid)]


def at(tree: MountTree, mountpoint: str) -> Mount:
    found = [m for m in tree if m.mountpoint == mountpoint]
    assert found, f"nothing mounted at {mountpoint}"
    return found[-1]


def parse(ctx: DumpContext, tree: MountTree, mount: Mount) -> OverlayState:
    with routed_to("overlay"):
        state = driver.parse_mount(mount=mount, tree=tree, ctx=ctx)
    assert isinstance(state, OverlayState)
    return state


def open_files(pid: int) -> list[OpenFile]:
    out = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines())
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # a transient fd of the live process, closed while we looked
        if not link.startswith("/"):
            continue
        path, deleted = link, False
        if path.endswith(" (deleted)"):
            path, deleted = path[: -len(" (deleted)")], True
        out.append(
            OpenFile(
                pid=pid,
                fd=int(name),
                path=path,
                flags=int(info["flags"].strip(), 8),
                pos=int(info["pos"]),
                mnt_id=int(info["mnt_id"]),
                size=st.st_size,
                mode=st.st_mode,
                identity=FileIdentity(Dev.from_kdev(st.st_dev), st.st_ino),
                deleted=deleted,
            )
        )
    return out


def mappings(pid: int) -> list[FileMapping]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].rstrip("\n")
            deleted = path.endswith(" (deleted)")
            if deleted:
                path = path[: -len(" (deleted)")]
            link = f"/proc/{pid}/map_files/{fields[0]}"
            st = os.stat(link)
            from criu_fw.fsdrivers.overlay.walk import statx

            mnt_id = statx(link).mnt_id
            perms = fields[1]
            prot = (4 if perms[0] == "r" else 0) | (2 if perms[1] == "w" else 0)
            out.append(
                FileMapping(
                    pid=pid,
                    start=start,
                    end=end,
                    pgoff=int(fields[2], 16),
                    prot=prot,
                    shared=perms[3] == "s",
                    path=path,
                    mnt_id=mnt_id,
                    identity=FileIdentity(Dev.from_kdev(st.st_dev), st.st_ino),
                    deleted=deleted,
                )
            )
    return out


# -- end to end: dump() -> restore() -> verify() ------------------------------------------


def checkpoint(pid: int, images: str, **kw: object) -> None:
    """Dump a scenario's tree; mounts it inherited from the host are recorded by host path."""
    from criu_fw.dump import dump

    kw.setdefault("auto_external", True)
    dump(pid, images, **kw)  # type: ignore[arg-type]


def auto_externals(images: str) -> dict[str, str]:
    """``--external mnt[KEY]:KEY`` for every external the dump recorded by its host path
    (``--external-auto``): the grant an operator who checked those paths gives."""
    from criu_fw.images.mounts import read_mount_namespace
    from criu_fw.restore import image_namespaces

    _, ids = image_namespaces(images)
    keys = (r.external for i in ids for r in read_mount_namespace(images, i) if r.external)
    return {k: k for k in keys if k.startswith("/")}


@contextlib.contextmanager
def restored(images: str, **kw: object) -> Iterator[int]:
    """Restore ``images`` detached; yield the holder's PID; end it (by PID) afterwards."""
    from criu_fw.restore import restore

    kw.setdefault("externals", auto_externals(images))
    res = restore(images, detach=True, **kw)  # type: ignore[arg-type]
    try:
        yield res.pid
    finally:
        res.terminate()


def inside(pid: int, script: str) -> str:
    """Run ``script`` in ``pid``'s mount namespace (and root); its stdout."""
    res = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-r", "--", "sh", "-c", script], capture_output=True
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def live_tree(pid: int) -> MountTree:
    return read_mountinfo(pid, ns_id=ns_id(pid))


def layer_options(m: Mount) -> tuple[str, ...]:
    """The layer options of an overlay mount as mountinfo shows them."""
    names = ("lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir")
    return tuple(o for o in m.super_options if o.partition("=")[0] in names)


# -- recorded /proc trees: what kernels this one cannot be made to show ---------------------


def record_process(
    pid: int,
    into: str,
    release: str,
    *,
    exe: str,
    fds: dict[int, tuple[str, int]],
    maps: list[tuple[int, int, str, Dev, int, str]],
) -> None:
    """A recorded /proc of process ``pid`` (alone in its tree) under ``into``: the live
    mountinfo and namespace, ``sys/kernel/osrelease`` = ``release``, and the given reports:
    ``exe``, ``fds`` (fd -> (link target, fdinfo mnt_id)) and ``maps`` ((start, end, perms,
    device, inode, path) lines, with their map_files links)."""
    p = f"{into}/{pid}"
    for sub in ("fd", "fdinfo", "map_files", "ns", f"task/{pid}"):
        os.makedirs(f"{p}/{sub}", exist_ok=True)
    os.makedirs(f"{into}/sys/kernel", exist_ok=True)
    with open(f"{into}/sys/kernel/osrelease", "w") as f:
        f.write(release + "\n")
    with open(f"/proc/{pid}/mountinfo", "rb") as src, open(f"{p}/mountinfo", "wb") as dst:
        dst.write(src.read())
    os.symlink(os.readlink(f"/proc/{pid}/ns/mnt"), f"{p}/ns/mnt")
    with open(f"{p}/status", "w") as f:
        f.write(
            f"Name:\tprog\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t1\n"
            f"NSpid:\t{pid}\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"
        )
    with open(f"{p}/stat", "w") as f:
        f.write(
            f"{pid} (prog) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
            "100 10000000 300 18446744073709551615 4194304 4755456 0 0 0 0 0 0 0 0 0 0 "
            "17 0 0 0\n"
        )
    with open(f"{p}/task/{pid}/children", "w") as f:
        f.write("")
    os.symlink("/", f"{p}/cwd")
    os.symlink("/", f"{p}/root")
    os.symlink(exe, f"{p}/exe")
    for fd, (target, mnt_id) in fds.items():
        os.symlink(target, f"{p}/fd/{fd}")
        with open(f"{p}/fdinfo/{fd}", "w") as f:
            f.write(f"pos:\t0\nflags:\t0100000\nmnt_id:\t{mnt_id}\nino:\t{1000 + fd}\n")
    lines = []
    for start, end, perms, dev, ino, path in maps:
        lines.append(
            f"{start:08x}-{end:08x} {perms} 00000000 {dev.major:02x}:{dev.minor:02x} "
            f"{ino}    {path}\n"
        )
        os.symlink(path, f"{p}/map_files/{start:x}-{end:x}")
    with open(f"{p}/maps", "w") as f:
        f.write("".join(lines))
