"""The checked-in _pb2 files are exactly what scripts/gen_proto.py makes from proto/*.proto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def _gen_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    gen = _gen_module()
    try:
        gen.check_pins()
    except SystemExit as exc:  # a wrong generator would make every byte differ
        pytest.fail(str(exc))
    written = gen.generate(tmp_path)
    protos = sorted(p.stem for p in PROTO.glob("*.proto"))
    assert sorted(p.name for p in written) == sorted(
        f"{stem}_pb2{ext}" for stem in protos for ext in (".py", ".pyi")
    )
    stale = [p.name for p in written if p.read_bytes() != (PROTO / p.name).read_bytes()]
    assert not stale, f"regenerate with `python scripts/gen_proto.py`: {stale} differ"
    checked_in = sorted(p.name for p in PROTO.glob("*_pb2.py*"))
    assert checked_in == sorted(p.name for p in written), "a _pb2 file has no .proto"


def test_modules_and_messages_have_the_agreed_names() -> None:
    from criu_fw.proto import (
        core_pb2,
        fdinfo_pb2,
        fown_pb2,
        fs_pb2,
        fwstate_pb2,
        inventory_pb2,
        mm_pb2,
        mnt_pb2,
        pstree_pb2,
        regfile_pb2,
        vma_pb2,
    )

    names = {
        mnt_pb2.mnt_entry,
        fdinfo_pb2.fdinfo_entry,
        fdinfo_pb2.file_entry,
        regfile_pb2.reg_file_entry,
        fown_pb2.fown_entry,
        pstree_pb2.pstree_entry,
        core_pb2.task_kobj_ids_entry,
        fs_pb2.fs_entry,
        mm_pb2.mm_entry,
        mm_pb2.aio_ring_entry,
        vma_pb2.vma_entry,
        inventory_pb2.inventory_entry,
    }
    assert {m.DESCRIPTOR.full_name for m in names} == {
        f"criu_fw.criu.{n}"
        for n in (
            "mnt_entry",
            "fdinfo_entry",
            "file_entry",
            "reg_file_entry",
            "fown_entry",
            "pstree_entry",
            "task_kobj_ids_entry",
            "fs_entry",
            "mm_entry",
            "aio_ring_entry",
            "vma_entry",
            "inventory_entry",
        )
    }
    assert mnt_pb2.fstype.Value("CGROUP2") == 23
    assert fdinfo_pb2.fd_types.Value("AUTOFS_PIPE") == 65535
    assert inventory_pb2.lsmtype.Value("APPARMOR") == 2
    assert fwstate_pb2.fw_mount.DESCRIPTOR.full_name == "criu_fw.fw_mount"
    assert sys.modules["criu_fw.proto.regfile_pb2"].reg_file_entry().mnt_id == -1


def test_unknown_fields_round_trip() -> None:
    """A file_entry carrying a sub-message criu-fw does not model (a pipe, field 18) survives."""
    from criu_fw.proto import fdinfo_pb2

    pipe = bytes([0x92, 0x01, 0x04, 0x08, 0x07, 0x10, 0x02])  # field 18, len 4: {1: 7, 2: 2}
    wire = bytes([0x08, 0x02, 0x10, 0x05]) + pipe  # type=PIPE, id=5
    msg = fdinfo_pb2.file_entry.FromString(wire)
    assert (msg.type, msg.id) == (fdinfo_pb2.PIPE, 5)
    assert msg.SerializeToString() == wire
