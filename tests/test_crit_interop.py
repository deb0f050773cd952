"""Interop with the real thing: Debian's ``crit`` (pycriu, on the system python) reads what
criu-fw writes, and criu-fw reads what ``crit encode`` produced."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from criu_fw import images
from criu_fw.api.loader import load_drivers
from criu_fw.errors import ImageError
from criu_fw.images.mounts import read_mount_namespace, write_mount_namespace
from criu_fw.model import Dev, Mount, MountTree, Propagation
from criu_fw.proto import (
    core_pb2,
    fdinfo_pb2,
    fs_pb2,
    inventory_pb2,
    mm_pb2,
    mnt_pb2,
    pstree_pb2,
    stats_pb2,
    vma_pb2,
)
from criu_fw.records import DumpedNamespace
from google.protobuf.message import Message
from helpers import CRIT, crit_env

pytestmark = pytest.mark.crit

SYSTEM_PYTHON = "/usr/bin/python3"
_clean_env = crit_env


def crit(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        [CRIT, *args], capture_output=True, text=True, input=stdin, env=_clean_env(), timeout=60
    )
    assert res.returncode == 0, f"crit {' '.join(args)} failed: {res.stderr}"
    return res.stdout


def crit_decode(path: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(crit("decode", "-i", path))
    return out


def reg(fid: int, name: str, mnt_id: int = 20) -> fdinfo_pb2.file_entry:
    f = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=fid)
    r = f.reg
    r.id, r.flags, r.pos, r.name, r.mnt_id, r.size, r.mode = fid, 0o2 | 0o2000000, 7, name, \
        mnt_id, 4096, 0o100644  # fmt: skip
    r.fown.uid = r.fown.euid = r.fown.signum = r.fown.pid_type = r.fown.pid = 0
    return f


def sample_images() -> dict[str, tuple[str, list[Message]]]:
    """One image of every kind criu-fw writes, file name -> (kind, entries)."""
    ids = core_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1, sighand_id=1, mnt_ns_id=2)
    inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True, ns_per_id=True,
                                        lsmtype=inventory_pb2.APPARMOR)  # fmt: skip
    inv.root_ids.CopyFrom(ids)
    mm = mm_pb2.mm_entry(
        mm_start_code=0x400000, mm_end_code=0x401000, mm_start_data=0x600000,
        mm_end_data=0x601000, mm_start_stack=0x7FFF0000, mm_start_brk=0x602000,
        mm_brk=0x603000, mm_arg_start=0x7FFF1000, mm_arg_end=0x7FFF1010,
        mm_env_start=0x7FFF1010, mm_env_end=0x7FFF1100, exe_file_id=3,
        mm_saved_auxv=[33, 140737], dumpable=1,
    )  # fmt: skip
    mm.vmas.append(vma_pb2.vma_entry(start=0x400000, end=0x401000, pgoff=0, shmid=3, prot=5,
                                     flags=0x2, status=(1 << 0) | (1 << 6), fd=-1,
                                     madv=0, fdflags=0o2))  # fmt: skip
    mm.aios.add(id=1, nr_req=2, ring_len=4096)
    mnt = mnt_pb2.mnt_entry(
        fstype=mnt_pb2.UNSUPPORTED, mnt_id=20, root_dev=(254 << 20) | 1, parent_mnt_id=1,
        flags=0x200000, root="/", mountpoint="/", source="/dev/vda1", options="discard",
        shared_id=1, fsname="ext4", sb_flags=0,
    )  # fmt: skip
    return {
        "inventory.img": ("INVENTORY", [inv]),
        "pstree.img": (
            "PSTREE",
            [pstree_pb2.pstree_entry(pid=1, ppid=0, pgid=1, sid=1, threads=[1, 2])],
        ),
        "ids-1.img": ("IDS", [ids]),
        "fs-1.img": ("FS", [fs_pb2.fs_entry(cwd_id=1, root_id=2, umask=0o22)]),
        "fdinfo-1.img": (
            "FDINFO",
            [fdinfo_pb2.fdinfo_entry(id=4, flags=0, type=fdinfo_pb2.REG, fd=3)],
        ),
        "files.img": (
            "FILES",
            [reg(1, "/work dir"), reg(2, "/"), reg(3, "/bin/prog"), reg(4, "/data/ü.txt")],
        ),
        "mm-1.img": ("MM", [mm]),
        "mountpoints-2.img": ("MNTS", [mnt]),
    }


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    for name, (kind, entries) in sample_images().items():
        images.write_image(str(tmp_path / name), kind, entries)
    return tmp_path


def test_crit_decode_reads_what_we_write(image_dir: Path) -> None:
    for name, (kind, _) in sample_images().items():
        path = str(image_dir / name)
        assert crit_decode(path) == images.image_to_dict(path, pretty=False), name
        assert crit_decode(path)["magic"] == kind


def test_crit_show_output_is_ours_byte_for_byte(image_dir: Path) -> None:
    for name in sample_images():
        path = str(image_dir / name)
        assert crit("show", path).rstrip("\n") == images.image_to_json(path), name


def test_crit_explore_reads_an_image_directory(image_dir: Path) -> None:
    fds = crit("x", str(image_dir), "fds")
    assert fds.split() == ["1", "3:", "/data/ü.txt", "cwd:", "/work", "dir", "root:", "/"]
    mems = crit("x", str(image_dir), "mems")
    assert "/bin/prog" in mems and "00400000-00401000" in mems


def test_we_read_what_crit_encode_writes(tmp_path: Path) -> None:
    for name, (kind, entries) in sample_images().items():
        ours = str(tmp_path / f"ours-{name}")
        images.write_image(ours, kind, entries)
        theirs = str(tmp_path / name)
        crit("encode", "-o", theirs, stdin=json.dumps(crit_decode(ours)))
        assert images.read_image(theirs, kind=kind) == entries, name
        assert Path(theirs).read_bytes() == Path(ours).read_bytes(), name


def test_both_inventory_forms(tmp_path: Path) -> None:
    inv = {"magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": True}]}
    path = tmp_path / "inventory.img"
    crit("encode", "-o", str(path), stdin=json.dumps(inv))
    raw = path.read_bytes()
    assert raw[:4] == images.MAGIC["INVENTORY"].to_bytes(4, "little")
    expected = [inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True)]
    assert images.read_image(str(path)) == expected
    path.write_bytes(images.IMG_COMMON.to_bytes(4, "little") + raw)
    assert images.read_image(str(path)) == expected
    assert crit_decode(str(path)) == inv  # pycriu accepts this form too


def test_fields_we_do_not_model_survive(tmp_path: Path) -> None:
    """A pipe in files.img (a file_entry sub-message criu-fw omits) goes through us unchanged."""
    pipe = {"type": "PIPE", "id": 9, "pipe": {"id": 9, "pipe_id": 1234, "flags": 0,
            "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}}}  # fmt: skip
    src = {"magic": "FILES", "entries": [pipe]}
    theirs = str(tmp_path / "files.img")
    crit("encode", "-o", theirs, stdin=json.dumps(src))
    entries = images.read_image(theirs, fdinfo_pb2.file_entry)
    assert (entries[0].type, entries[0].id) == (fdinfo_pb2.PIPE, 9)
    ours = str(tmp_path / "again-files.img")
    images.write_image(ours, "FILES", entries)
    assert crit_decode(ours) == src


def test_mount_namespace_images_and_text_that_is_not_utf8(tmp_path: Path) -> None:
    weird = os.fsdecode(b"/mnt/caf\xe9 \\ x")
    tree = MountTree(
        (
            Mount(20, 1, Dev(254, 1), "/", "/", "ext4", "/dev/vda1", ("rw", "relatime"),
                  ("rw", "discard"), Propagation(shared=1)),
            Mount(30, 20, Dev(0, 50), "/", weird, "tmpfs", "tmp\tfs", ("ro", "nosuid"),
                  ("ro", "size=1024k"), Propagation(master=1, propagate_from=1)),
            Mount(31, 20, Dev(0, 51), "/", "/mnt/ovl", "overlay", "overlay", ("rw",),
                  ("rw", os.fsdecode(b"lowerdir=/l\xff"))),
        )
    )  # fmt: skip
    drivers = {20: "generic", 30: "generic", 31: "overlay"}
    names = write_mount_namespace(str(tmp_path), DumpedNamespace.of(2, tree, drivers=drivers))
    shown = crit_decode(str(tmp_path / names[0]))
    assert shown["magic"] == "MNTS"
    assert [e["mnt_id"] for e in shown["entries"]] == [31, 30, 20]
    e30 = shown["entries"][1]
    # A path that is not UTF-8 is its raw bytes, as CRIU writes it; crit (Python, like
    # ours) hands such a field over as bytes and prints their repr, for CRIU's images too.
    # Flags as CRIU fills them: ro,nosuid, strictatime (no relatime shown), a slave.
    assert e30 == {
        "fstype": 5, "mnt_id": 30, "root_dev": 50, "parent_mnt_id": 20,
        "flags": 0x3 | 0x1000000 | 0x80000, "root": "/",
        "mountpoint": repr(os.fsencode(weird)), "source": "tmp\tfs",
        "options": "size=1024k", "shared_id": 0, "master_id": 1, "sb_flags": 1,
    }  # fmt: skip
    assert shown["entries"][0]["options"] == repr(b"lowerdir=/l\xff")
    assert shown["entries"][2]["fsname"] == "ext4" and shown["entries"][2]["fstype"] == 16
    assert crit("show", str(tmp_path / names[0])).rstrip("\n") == images.image_to_json(
        str(tmp_path / names[0])
    )
    # crit's JSON cannot carry raw bytes back (it printed their repr): an image crit encodes
    # from it names a path that is no path, and the reader says so instead of using it.
    os.unlink(tmp_path / names[0])
    crit("encode", "-o", str(tmp_path / names[0]), stdin=json.dumps(shown))
    with pytest.raises(ImageError, match=r"entry 1: mount 30: mountpoint .* is not absolute"):
        read_mount_namespace(str(tmp_path), 2, load_drivers())


def _descriptor_facts_of_pycriu() -> dict[str, Any]:
    script = """
import json
from pycriu.images import (mnt_pb2, fdinfo_pb2, regfile_pb2, fown_pb2, pstree_pb2, core_pb2,
                           fs_pb2, mm_pb2, vma_pb2, inventory_pb2, stats_pb2)
out = {}
for mod in (mnt_pb2, fdinfo_pb2, regfile_pb2, fown_pb2, pstree_pb2, core_pb2, fs_pb2, mm_pb2,
            vma_pb2, inventory_pb2, stats_pb2):
    for name, d in mod.DESCRIPTOR.message_types_by_name.items():
        out[name] = {f.name: [f.number, f.type, f.label,
                              f.default_value if f.has_default_value else None]
                     for f in d.fields}
    for name, e in mod.DESCRIPTOR.enum_types_by_name.items():
        out["enum " + name] = {v.name: v.number for v in e.values}
print(json.dumps(out))
"""
    res = subprocess.run([SYSTEM_PYTHON, "-c", script], capture_output=True, text=True,
                         env=_clean_env(), timeout=60, check=True)  # fmt: skip
    facts: dict[str, Any] = json.loads(res.stdout)
    return facts


def _label(f: Any) -> int:
    # protobuf 7 dropped FieldDescriptor.label; the numbers are descriptor.proto's LABEL_*.
    return 3 if f.is_repeated else 2 if f.is_required else 1


def test_our_messages_match_pycriu_field_for_field() -> None:
    """Numbers, types, labels and defaults of every field we model equal CRIU's descriptors."""
    theirs = _descriptor_facts_of_pycriu()
    checked = 0
    for mod in (mnt_pb2, fdinfo_pb2, pstree_pb2, core_pb2, fs_pb2, mm_pb2, vma_pb2,
                inventory_pb2, stats_pb2):  # fmt: skip
        for name, d in mod.DESCRIPTOR.message_types_by_name.items():
            for f in d.fields:
                default = f.default_value if f.has_default_value else None
                want = [f.number, f.type, _label(f), default]
                assert theirs[name][f.name] == want, f"{name}.{f.name}"
                checked += 1
            if name != "file_entry":  # whose socket/pipe/... sub-messages we leave unknown
                assert set(theirs[name]) == {f.name for f in d.fields}, name
        for name, e in mod.DESCRIPTOR.enum_types_by_name.items():
            assert theirs["enum " + name] == {v.name: v.number for v in e.values}, name
    from criu_fw.proto import fown_pb2, regfile_pb2

    for mod in (regfile_pb2, fown_pb2):
        for name, d in mod.DESCRIPTOR.message_types_by_name.items():
            assert theirs[name] == {
                f.name: [f.number, f.type, _label(f),
                         f.default_value if f.has_default_value else None]
                for f in d.fields
            }, name  # fmt: skip
            checked += len(d.fields)
    assert checked > 100
