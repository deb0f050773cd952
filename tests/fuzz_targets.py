"""Fuzz targets for every reader of untrusted images.

A case is an image directory; :func:`run_readers` runs every reader on it and says how it
ended. Two ways to make cases, both hypothesis strategies:

* :func:`structured_sets`: the messages themselves drawn field by field (``mnt_entry``,
  ``fw_entry`` with its header and ``fw_mount``, ``inventory_entry``, the overlay and AUFS
  states packed in ``Any``), hostile values included (relative and unnormalised paths, NUL
  bytes, loops, unknown drivers, counts at the caps), written with the framing writer;
* :func:`mutated_sets`: a seed set (:func:`write_seed`, shaped like a real dump's: every kind
  of image, an overlay with its state, propagation, a deleted bind root, an external mount,
  text that is not UTF-8) with one file changed byte-wise: bits flipped, cut short, bytes
  inserted, a span duplicated, a size word overwritten.

The readers (:func:`run_readers`): ``read_image`` of every file by its kind, ``image_to_json``
(``criu-fw show``), ``image_namespaces`` + ``read_mount_namespace`` of every namespace,
``criu-fw show DIR`` (:mod:`criu_fw.imageview`: the processes' images too), and
the planner: ``restore(..., ops=RecordingMountOps())``, a dry run that plans and records
mount calls without making any. A case passes when each ends in success or in a
:class:`~criu_fw.errors.CriuFwError` whose text is one line; a reader's must be an
``ImageError`` naming an image of the set. Anything else fails: another exception (its
traceback is kept), a run over :data:`TIME_LIMIT` seconds (interrupted by a timer), the
process growing by more than :data:`MEMORY_LIMIT` bytes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Literal

import attrs
from crafted_images import NS, U32, manager, write_dir
from criu_fw.errors import CriuFwError, ImageError
from criu_fw.fsdrivers.overlay.state import OverlayState
from criu_fw.images import image_to_json, kind_of_filename, read_image, write_image
from criu_fw.images.check import MAX_OPTION_BYTES, MAX_OPTIONS
from criu_fw.images.mounts import CRIU_FSTYPES, FORMAT_VERSION, read_mount_namespace
from criu_fw.imageview import read_image_dir, render, to_dict
from criu_fw.kernel.mountops import RecordingMountOps
from criu_fw.model import Dev, Mount, Propagation
from criu_fw.proto import (
    aufs_pb2,
    core_pb2,
    fdinfo_pb2,
    fs_pb2,
    fwstate_pb2,
    inventory_pb2,
    mm_pb2,
    mnt_pb2,
    overlay_pb2,
    pstree_pb2,
)
from criu_fw.restore import image_namespaces, restore
from google.protobuf import any_pb2
from hypothesis import strategies as st

#: Seconds one case may take, all readers together (a real set of this size takes 0.05).
TIME_LIMIT = 10.0
#: Bytes the process may grow by over a run of cases.
MEMORY_LIMIT = 1 << 30

Kind = Literal["accepted", "refused", "failure"]


@attrs.frozen
class Outcome:
    kind: Kind
    #: refused: the reason's class (numbers and quoted text taken out); failure: what failed.
    reason: str = ""
    #: failure: the traceback, if an exception was raised.
    detail: str = ""
    seconds: float = 0.0


class _Hang(BaseException):
    """Raised by the timer in whatever the case was running (BaseException: no reader's
    ``except Exception`` can swallow it)."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r"\b0x[0-9a-f]+\b|\d+")


def reason_class(exc: CriuFwError) -> str:
    """A refusal's reason with what varies from case to case taken out."""
    text = exc.reason if isinstance(exc, ImageError) else str(exc)
    text = re.sub(r"^mount \d+(?: \(driver '[^']*'\))?: ", "", text)
    text = _QUOTED.sub("'…'", text)
    return f"{type(exc).__name__}: {_NUMBER.sub('N', text)}"


def run_readers(image_dir: str, *, root: str | None = None,
                externals: dict[str, str] | None = None) -> Outcome:  # fmt: skip
    """Every reader on ``image_dir``; see the module docstring for what passes."""
    start = time.perf_counter()
    refusals: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        for stage, call, reader in _stages(image_dir, root, externals or {}):
            try:
                call()
            except CriuFwError as exc:
                text = str(exc)
                bad = _badly_said(exc, text, image_dir, reader)
                if bad is not None:
                    return Outcome("failure", f"{stage}: {bad}", text,
                                   time.perf_counter() - start)  # fmt: skip
                refusals.append(reason_class(exc))
            except _Hang:
                return Outcome("failure", f"{stage}: still running after {TIME_LIMIT} s",
                               traceback.format_exc(), time.perf_counter() - start)  # fmt: skip
            except Exception as exc:
                return Outcome("failure", f"{stage}: {type(exc).__name__}: {exc}",
                               traceback.format_exc(), time.perf_counter() - start)  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    took = time.perf_counter() - start
    if refusals:
        return Outcome("refused", refusals[0], seconds=took)
    return Outcome("accepted", seconds=took)


def _badly_said(exc: CriuFwError, text: str, image_dir: str, reader: bool) -> str | None:
    if "\n" in text:
        return f"a message of several lines: {text!r}"
    if not reader:
        return None
    if not isinstance(exc, ImageError):
        return f"a reader raised {type(exc).__name__}, not ImageError: {text}"
    if not (exc.path == image_dir or exc.path.startswith(image_dir + "/")):
        return f"the error names no image of the set: {text}"
    return None


def _stages(
    image_dir: str, root: str | None, externals: dict[str, str]
) -> Iterator[tuple[str, Callable[[], object], bool]]:
    """(name, call, whether it is a reader) for every reader, in the order a user meets them."""
    mgr = manager()
    for name in sorted(os.listdir(image_dir)):
        path = os.path.join(image_dir, name)
        kind = kind_of_filename(name)
        if kind is None:
            continue
        yield f"read_image {name}", functools.partial(read_image, path, kind.message,
                                                      kind=kind.name), True  # fmt: skip
        yield f"show {name}", functools.partial(image_to_json, path, mgr=mgr), True

    def namespaces() -> None:
        for ns_id in image_namespaces(image_dir)[1]:
            read_mount_namespace(image_dir, ns_id, mgr)

    yield "read_mount_namespace", namespaces, True

    def show_dir() -> None:
        view = read_image_dir(image_dir, mgr)
        render(view, files=True)
        json.dumps(to_dict(view))

    yield "show DIR", show_dir, True
    yield "plan (restore --dry-run)", lambda: restore(
        image_dir, root=root, externals=externals, ops=RecordingMountOps()
    ), False


def describe(case: object) -> str:
    """A case in a few words: a structured set's entry counts and sizes, or the mutations."""
    if isinstance(case, dict):
        return ", ".join(
            f"{name}: {len(entries)} entries, {sum(e.ByteSize() for e in entries)} bytes"
            for name, (_, entries) in case.items()
        )
    return repr(case)[:300]


def memory_grown(baseline_kib: int) -> int:
    """Bytes the process's peak resident size grew by since ``baseline_kib`` (ru_maxrss)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) * 1024


# --------------------------------------------------------------------------------------------
# the seed set, shaped like a real dump's


def _overlay_state(layers: int = 3) -> overlay_pb2.overlay_state:
    msg = overlay_pb2.overlay_state(new_api=True)
    roles = [(overlay_pb2.OVERLAY_ROLE_UPPER, "upperdir", "/u"),
             (overlay_pb2.OVERLAY_ROLE_WORK, "workdir", "/w")]  # fmt: skip
    roles += [(overlay_pb2.OVERLAY_ROLE_LOWER, "lowerdir+", f"/l{i}") for i in range(layers)]
    for i, (role, option, path) in enumerate(roles):
        msg.layers.add(role=role, shown=f"/a{path}".encode(), option=option, mnt_id=2,
                       path=path.encode(), dev_major=0, dev_minor=21, ino=100 + i,
                       found="as shown", verdict=2)  # fmt: skip
    msg.features.add(name="redirect_dir", value="on")
    msg.features.add(name="userxattr")
    return msg


SEED_EXTERNAL = "data"


def write_seed(image_dir: str) -> str:
    """A set like a small real dump's: the mount namespace images (root tmpfs with content,
    proc, a shared tmpfs and a slave bind of it, an overlay on it with its state, a deleted
    bind root, an external bind, a name that is not UTF-8, a stacked mount) plus one image of
    every other kind criu-fw reads. Restores as a dry run with ``externals={"data": DIR}``."""
    odd = os.fsdecode(b"/a/x\xffy")
    mounts = (
        Mount(1, 0, Dev(0, 20), "/", "/", "tmpfs", "root", ("rw", "relatime"), ("rw", "mode=755")),
        Mount(2, 1, Dev(0, 21), "/", "/a", "tmpfs", "ta", ("rw", "nosuid"),
              ("rw", "size=1024k"), Propagation(shared=1)),
        Mount(3, 1, Dev(0, 21), "/sub", "/b", "tmpfs", "ta", ("ro",), ("rw", "size=1024k"),
              Propagation(master=1)),
        Mount(4, 1, Dev(0, 22), "/", "/proc", "proc", "proc", ("rw", "nosuid", "nodev"), ("rw",)),
        Mount(5, 2, Dev(0, 40), "/", "/a/ovl", "overlay", "overlay", ("rw",),
              ("rw", "lowerdir+=/a/l0", "lowerdir+=/a/l1", "lowerdir+=/a/l2", "upperdir=/a/u",
               "workdir=/a/w", "redirect_dir=on", "userxattr")),
        Mount(6, 1, Dev(0, 21), "/gone", "/f", "tmpfs", "ta", ("rw",), ("rw", "size=1024k"),
              root_deleted=True),
        Mount(7, 1, Dev(8, 1), "/srv", "/ext", "ext4", "/dev/sda1", ("rw",), ("rw",)),
        Mount(8, 2, Dev(0, 23), "/", odd, "tmpfs", "t\xe9", ("rw",), ("rw",)),
        Mount(9, 8, Dev(0, 24), "/", odd, "tmpfs", "over", ("rw",), ("rw", "size=4k")),
    )  # fmt: skip
    write_dir(
        image_dir, mounts, states={5: OverlayState.from_message(_overlay_state())},
        external={7: SEED_EXTERNAL}, content={1: "tmpfs-dev-20.tar.gz.img"},
    )
    for name, kind, entries in _other_kinds():
        write_image(os.path.join(image_dir, name), kind, entries)
    return image_dir


def _other_kinds() -> list[tuple[str, str, list[Any]]]:
    reg = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=1)
    r = reg.reg
    r.id, r.flags, r.pos, r.name, r.mnt_id, r.size, r.mode = 1, 0o2, 0, "/a/f", 2, 10, 0o100644
    r.fown.uid = r.fown.euid = r.fown.signum = r.fown.pid_type = r.fown.pid = 0
    mm = mm_pb2.mm_entry(mm_start_code=0x400000, mm_end_code=0x401000, mm_start_data=0,
                         mm_end_data=0, mm_start_stack=0, mm_start_brk=0, mm_brk=0,
                         mm_arg_start=0, mm_arg_end=0, mm_env_start=0, mm_env_end=0,
                         exe_file_id=1)  # fmt: skip
    mm.vmas.add(start=0x400000, end=0x401000, pgoff=0, shmid=1, prot=5, flags=2, status=65,
                fd=-1)  # fmt: skip
    ids = core_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1, sighand_id=1, mnt_ns_id=NS)
    return [
        ("pstree.img", "PSTREE", [pstree_pb2.pstree_entry(pid=1, ppid=0, pgid=1, sid=1)]),
        ("ids-1.img", "IDS", [ids]),
        ("fs-1.img", "FS", [fs_pb2.fs_entry(cwd_id=1, root_id=1, umask=0o22)]),
        ("fdinfo-1.img", "FDINFO", [fdinfo_pb2.fdinfo_entry(id=1, flags=0,
                                                            type=fdinfo_pb2.REG, fd=3)]),
        ("files.img", "FILES", [reg]),
        ("mm-1.img", "MM", [mm]),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# byte mutation of a seed set


Mutation = tuple[str, str, int, int, bytes]  # file, operation, position, length/value, bytes

_MUTATIONS = ("flip", "truncate", "insert", "duplicate", "size word")


@st.composite
def mutations(draw: st.DrawFn, seed_dir: str) -> list[Mutation]:
    """One to three byte-wise changes to files of the seed set."""
    names = sorted(os.listdir(seed_dir))
    # The mount images are what the restore reads: pick them more often.
    weighted = names + [n for n in names if "mountpoints" in n] * 3
    out = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(weighted))
        size = os.path.getsize(os.path.join(seed_dir, name))
        op = draw(st.sampled_from(_MUTATIONS))
        pos = draw(st.integers(0, max(size - 1, 0)))
        if op == "size word":
            arg = draw(st.sampled_from([0, 1, 0x7F, 0xFFFF, 1 << 20, (4 << 20) + 1, 0xFFFFFFFF]))
        else:
            arg = draw(st.integers(1, 64))
        data = draw(st.binary(min_size=1, max_size=16))
        out.append((name, op, pos, arg, data))
    return out


def apply_mutations(seed_dir: str, case_dir: str, changes: list[Mutation]) -> None:
    """``case_dir`` := the seed set with ``changes`` applied."""
    shutil.rmtree(case_dir, ignore_errors=True)
    shutil.copytree(seed_dir, case_dir)
    for name, op, pos, arg, data in changes:
        path = os.path.join(case_dir, name)
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        pos = min(pos, len(raw))
        if op == "flip":
            for i, b in enumerate(data[:4]):
                if pos + i < len(raw):
                    raw[pos + i] ^= b or 1
        elif op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = data
        elif op == "duplicate":
            raw[pos:pos] = raw[pos : pos + arg]
        else:
            raw[pos : pos + 4] = U32.pack(arg)
        with open(path, "wb") as f:
            f.write(raw)


# --------------------------------------------------------------------------------------------
# structured image sets


# A structured set is clean (every value one a dump could write, so the planner is reached)
# or hostile (any value below); values of each kind are drawn from one of these two lists.
_GOOD_COMPONENTS = ["a", "b", "x y", "é", "a\\b", "l0", "proc"]
_BAD_COMPONENTS = [".", "..", "", "\0"]
_GOOD_PATHS = ["/", "/a", "/a/b", "/a/ovl", "/b"]
_BAD_PATHS = ["a/b", "", "//", "/a/", "/a/./b", "/a/../b", "/\0"]
_GOOD_FSTYPES = ["tmpfs", "tmpfs", "proc", "overlay", "ext4", "fuse.sshfs", "cgroup2"]
_BAD_FSTYPES = ["", "tmp\nfs", "bind", "no such fs", "aufs"]
_GOOD_OPTIONS = ["rw", "ro", "size=1024k", "mode=755", "lowerdir=/a/l0", "upperdir=/a/u",
                 "workdir=/a/w", "lowerdir+=/a/l1", "br:/a=rw", "si=1f", "nosuid"]  # fmt: skip
_BAD_OPTIONS = ["x\0y", "", "lowerdir="]


def _pick(clean: bool, good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(good) if clean else st.sampled_from(good + bad)


def paths(clean: bool = False) -> st.SearchStrategy[str]:
    parts = _pick(clean, _GOOD_COMPONENTS, _BAD_COMPONENTS)
    built = st.builds(
        lambda lead, names: ("/" if lead else "") + "/".join(names),
        st.just(True) if clean else st.sampled_from([True, True, True, False]),
        st.lists(parts, min_size=1 if clean else 0, max_size=4),
    )
    return st.one_of(_pick(clean, _GOOD_PATHS, _BAD_PATHS), built)


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # protobuf strings: no surrogates


def options(clean: bool = False) -> st.SearchStrategy[list[str]]:
    listed = st.lists(_pick(clean, _GOOD_OPTIONS, _BAD_OPTIONS), max_size=6)
    if clean:
        return listed
    at_cap = st.sampled_from([["x"] * MAX_OPTIONS, ["x"] * (MAX_OPTIONS + 1),
                              ["a" * (MAX_OPTION_BYTES + 1)]])  # fmt: skip
    return st.one_of(listed, listed, listed, listed, listed, listed, at_cap)


@st.composite
def overlay_states(draw: st.DrawFn, clean: bool = False) -> overlay_pb2.overlay_state:
    msg = overlay_pb2.overlay_state(readonly=draw(st.booleans()), new_api=draw(st.booleans()))
    if clean:  # what a dump finds at least: one lower layer, on the root mount
        msg.layers.add(role=overlay_pb2.OVERLAY_ROLE_LOWER, shown=b"/l0", option="lowerdir+",
                       mnt_id=1, path=b"/l0", found="as shown", verdict=2)  # fmt: skip
    for _ in range(draw(st.integers(0, 5))):
        layer = msg.layers.add(
            role=draw(st.integers(0, 3 if clean else 5)), shown=os.fsencode(draw(paths(clean))),
            option=draw(_pick(clean, ["lowerdir", "lowerdir+", "datadir+", "upperdir",
                                      "workdir"], ["bogus", ""])),
            path=os.fsencode(draw(paths(clean))), dev_major=draw(st.integers(0, 300)),
            dev_minor=draw(st.integers(0, 300)), ino=draw(st.integers(0, (1 << 64) - 1)),
            found=draw(st.sampled_from(["as shown", "host", "relative", "?"])),
            verdict=draw(st.integers(0, 2 if clean else 4)),
        )  # fmt: skip
        mnt = 1 if clean else draw(st.one_of(st.none(), st.integers(0, 9)))
        if mnt is not None:
            layer.mnt_id = mnt
    for _ in range(draw(st.integers(0, 3))):
        feature = msg.features.add(name=draw(_pick(
            clean, ["redirect_dir", "index", "xino", "metacopy", "userxattr"],
            ["lowerdir", "", "x,y"])))  # fmt: skip
        value = draw(st.one_of(st.none(), _TEXT))
        if value is not None:
            feature.value = value
    if not clean and draw(_sometimes(4)):
        msg.external_key = draw(_TEXT)
    return msg


@st.composite
def aufs_states(draw: st.DrawFn, clean: bool = False) -> aufs_pb2.aufs_state:
    msg = aufs_pb2.aufs_state(si=draw(_pick(clean, ["1f", "abc"], ["", "zz", "f" * 20])))
    for _ in range(draw(st.integers(0, 4))):
        msg.branches.add(path=os.fsencode(draw(paths(clean))),
                         perm=draw(_pick(clean, ["rw", "ro", "ro+wh", "rr+wh"], ["", "x"])))
    return msg


@st.composite
def packed_states(draw: st.DrawFn, fstype: str, clean: bool = False) -> any_pb2.Any | None:
    """A driver state for a mount of ``fstype`` (clean: only the one its driver writes)."""
    packed = any_pb2.Any()
    natural = {"overlay": "overlay", "aufs": "aufs"}.get(fstype)
    if clean:
        if natural is None:
            return None
        which = natural
    else:
        which = draw(st.sampled_from(["overlay", "aufs", "garbage", "unknown"]))
    if which == "overlay":
        packed.Pack(draw(overlay_states(clean)))
    elif which == "aufs":
        packed.Pack(draw(aufs_states(clean)))
    else:
        name = "criu_fw.overlay.overlay_state" if which == "garbage" else "no.such.state"
        packed.type_url = f"type.googleapis.com/{name}"
        packed.value = draw(st.binary(max_size=32))
    return packed


def _sometimes(n: int) -> st.SearchStrategy[bool]:
    """True one time in ``n``."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def mount_pairs(
    draw: st.DrawFn, mnt_id: int, clean: bool = False, places: dict[int, str] | None = None
) -> tuple[mnt_pb2.mnt_entry, fwstate_pb2.fw_mount]:
    """CRIU's entry and criu-fw's for one mount (hostile: they may disagree). ``places``:
    the mountpoints of the mounts drawn before (clean: one of them is the parent)."""
    places = {} if places is None else places
    fstype = draw(_pick(clean, _GOOD_FSTYPES, _BAD_FSTYPES))
    if mnt_id == 1 and (clean or not draw(_sometimes(4))):
        parent, mountpoint = 0, "/"
        if clean:
            fstype = "tmpfs"  # a root that is rebuilt from the images, without --root
    elif clean:  # below an earlier mount, or stacked on it
        parent = draw(st.sampled_from(sorted(places)))
        mountpoint = places[parent]
        if not draw(_sometimes(6)):
            mountpoint = mountpoint.rstrip("/") + f"/m{mnt_id}"
    else:
        parent, mountpoint = draw(st.integers(0, 9)), draw(paths())
    super_options = draw(options(clean))
    criu = mnt_pb2.mnt_entry(
        fstype=CRIU_FSTYPES.get(fstype, mnt_pb2.UNSUPPORTED), mnt_id=mnt_id,
        root_dev=draw(st.sampled_from([20, 21, 22, (8 << 20) | 1, 0xFFFFFFFF])),
        parent_mnt_id=parent, flags=draw(st.sampled_from([0, 1, 0x200000, 0xFFFFFFFF])),
        root=draw(paths(clean)), mountpoint=mountpoint, source=draw(_TEXT),
        options=",".join(super_options[:8]),
    )  # fmt: skip
    for field in ("shared_id",) if clean else ("shared_id", "master_id"):
        value = draw(st.one_of(st.none(), st.integers(1 if clean else 0, 3)))
        if value is not None:
            setattr(criu, field, value)
    places[mnt_id] = mountpoint
    if draw(_sometimes(4)):
        criu.deleted = True
    fw_id = mnt_id if clean or not draw(_sometimes(10)) else draw(st.integers(0, 9))
    owner = manager().owner(fstype)
    fw = fwstate_pb2.fw_mount(
        mnt_id=fw_id, fstype=os.fsencode(fstype),
        mount_options=[os.fsencode(o) for o in draw(options(clean))],
        super_options=[os.fsencode(o) for o in super_options],
        unbindable=draw(st.booleans()), root_deleted=draw(_sometimes(4)),
        driver=owner if clean else draw(st.sampled_from(
            [owner] * 6 + ["generic", "overlay", "aufs", "zfs", ""])),
    )  # fmt: skip
    if not clean and draw(st.booleans()):
        fw.propagate_from = draw(st.integers(0, 3))
    if draw(_sometimes(6)):  # exact bytes: text that is not UTF-8
        fw.root = os.fsencode(draw(paths(clean))).rstrip(b"/") + b"/\xff"
    if draw(_sometimes(8)):
        fw.source = os.fsencode(draw(_TEXT)) + b"\xfe"
    if draw(_sometimes(5)):
        fw.external_key = draw(_pick(clean, [SEED_EXTERNAL], ["/srv", "", "k\0", "other"]))
    if draw(_sometimes(5)):
        fw.content_image = draw(_pick(clean, ["tmpfs-dev-20.tar.gz.img"], ["../x", "", "a/b"]))
    state = draw(packed_states(fstype, clean)) if clean or draw(_sometimes(3)) else None
    if state is not None:
        fw.state.CopyFrom(state)
    return criu, fw


@st.composite
def structured_sets(draw: st.DrawFn) -> dict[str, tuple[str, list[Any]]]:
    """A whole mount-namespace image set: file name -> (kind, entries); one in three clean."""
    clean = draw(_sometimes(3))
    count = draw(st.integers(1, 6))
    places: dict[int, str] = {}
    pairs = [draw(mount_pairs(i, clean, places)) for i in range(1, count + 1)]
    criu = [c for c, _ in pairs][::-1]
    if not clean:
        criu = draw(st.one_of(st.just(criu), st.permutations(criu)))

    def fine(n: int) -> st.SearchStrategy[bool]:
        return st.just(True) if clean else st.sampled_from([True] * (n - 1) + [False])

    header = fwstate_pb2.fw_header(
        format_version=FORMAT_VERSION if draw(fine(6)) else draw(st.sampled_from(
            [0, FORMAT_VERSION + 1])),
        ns_id=NS if draw(fine(6)) else NS + 1, writer="fuzz",
        mount_count=count if draw(fine(6)) else count + 1,
    )  # fmt: skip
    fw = [fwstate_pb2.fw_entry(header=header)]
    fw += [fwstate_pb2.fw_entry(mount=m) for _, m in pairs]
    if not draw(fine(6)):
        fw.append(draw(st.sampled_from([fw[0], fw[-1], fwstate_pb2.fw_entry()])))
    inv = inventory_pb2.inventory_entry(img_version=2 if draw(fine(6)) else 3)
    if draw(fine(8)):
        inv.root_ids.CopyFrom(core_pb2.task_kobj_ids_entry(
            vm_id=1, files_id=1, fs_id=1, sighand_id=1, mnt_ns_id=NS if draw(fine(8)) else 9))
    return {
        "inventory.img": ("INVENTORY", [inv]),
        f"mountpoints-{NS}.img": ("MNTS", criu),
        f"fw-mountpoints-{NS}.img": ("FW_MNTS", fw),
    }  # fmt: skip


def write_set(case_dir: str, files: dict[str, tuple[str, list[Any]]]) -> None:
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    for name, (kind, entries) in files.items():
        write_image(os.path.join(case_dir, name), kind, entries)
