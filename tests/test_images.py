"""CRIU framing: write/read round trips, both inventory forms, and every validation error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from criu_fw import images
from criu_fw.errors import ImageError
from criu_fw.images import MAGIC, MAX_ENTRY_SIZE, MAX_MNT_ENTRY, iter_image, read_image, write_image
from criu_fw.proto import inventory_pb2, mm_pb2, mnt_pb2, pstree_pb2, regfile_pb2

U32 = struct.Struct("<I")
COMMON = U32.pack(images.IMG_COMMON)


def pstree(pid: int) -> pstree_pb2.pstree_entry:
    return pstree_pb2.pstree_entry(pid=pid, ppid=0, pgid=pid, sid=pid, threads=[pid])


def test_round_trip_layout(tmp_path: Path) -> None:
    path = str(tmp_path / "pstree.img")
    assert write_image(path, "PSTREE", [pstree(1), pstree(2)]) == 2
    raw = Path(path).read_bytes()
    first = pstree(1).SerializeToString()
    assert raw[:12] == COMMON + U32.pack(MAGIC["PSTREE"]) + U32.pack(len(first))
    assert raw[12 : 12 + len(first)] == first
    got = read_image(path, pstree_pb2.pstree_entry)
    assert [e.pid for e in got] == [1, 2]
    assert read_image(path, pstree_pb2.pstree_entry, kind="PSTREE") == [pstree(1), pstree(2)]


def test_empty_image_has_no_entries(tmp_path: Path) -> None:
    path = str(tmp_path / "pstree.img")
    assert write_image(path, "PSTREE", []) == 0
    assert read_image(path) == []


def test_inventory_both_forms(tmp_path: Path) -> None:
    inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True, ns_per_id=True)
    inv.root_ids.vm_id, inv.root_ids.files_id = 1, 2
    inv.root_ids.fs_id, inv.root_ids.sighand_id, inv.root_ids.mnt_ns_id = 3, 4, 5
    path = tmp_path / "inventory.img"
    write_image(str(path), "INVENTORY", [inv])
    raw = path.read_bytes()
    assert raw[:4] == U32.pack(MAGIC["INVENTORY"]), "CRIU writes inventory without IMG_COMMON"
    assert read_image(str(path)) == [inv]
    path.write_bytes(COMMON + raw)
    assert read_image(str(path), kind="INVENTORY") == [inv]


def test_streaming_reads_lazily(tmp_path: Path) -> None:
    path = str(tmp_path / "pstree.img")
    write_image(path, "PSTREE", (pstree(i) for i in range(1, 1001)))
    it = iter_image(path, pstree_pb2.pstree_entry)
    assert next(it).pid == 1
    assert sum(1 for _ in it) == 999


def test_filename_registry() -> None:
    cases = {
        "pstree.img": "PSTREE", "ids-42.img": "IDS", "fs-42.img": "FS", "fdinfo-3.img": "FDINFO",
        "files.img": "FILES", "mm-42.img": "MM", "mountpoints-12.img": "MNTS",
        "inventory.img": "INVENTORY", "/x/y/fw-mountpoints-4026531840.img": "FW_MNTS",
    }  # fmt: skip
    for name, kind in cases.items():
        found = images.kind_of_filename(name)
        assert found is not None and found.name == kind, name
    assert images.kind_of_filename("mountpoints-x.img") is None
    assert images.kind_of_filename("core-1.img") is None
    assert images.KINDS["MNTS"].filename(7) == "mountpoints-7.img"


def test_writer_rejects_wrong_type_and_missing_required(tmp_path: Path) -> None:
    path = str(tmp_path / "pstree.img")
    with pytest.raises(ImageError) as e:
        write_image(path, "PSTREE", [pstree(1), mm_pb2.mm_entry()])
    assert str(e.value) == (
        f"{path}: entry 1: criu_fw.criu.mm_entry given, PSTREE images hold "
        "criu_fw.criu.pstree_entry"
    )
    with pytest.raises(ImageError) as e:
        write_image(path, "PSTREE", [pstree_pb2.pstree_entry(pid=1)])
    assert str(e.value) == f"{path}: entry 0: required field(s) not set: ppid, pgid, sid"


# --- validation: every error names file, entry and what is wrong ---------------------------


def mnts(tmp_path: Path, body: bytes, head: bytes | None = None) -> str:
    path = tmp_path / "mountpoints-1.img"
    path.write_bytes((COMMON + U32.pack(MAGIC["MNTS"]) if head is None else head) + body)
    return str(path)


def entry(msg: bytes) -> bytes:
    return U32.pack(len(msg)) + msg


GOOD = mnt_pb2.mnt_entry(
    fstype=5, mnt_id=10, root_dev=(0 << 20) | 40, parent_mnt_id=1, flags=0x2,
    root="/", mountpoint="/tmp", source="tmpfs", options="size=1024k",
).SerializeToString()  # fmt: skip


def message(path: str, **kw: object) -> str:
    with pytest.raises(ImageError) as e:
        read_image(path, **kw)  # type: ignore[call-overload]
    text = str(e.value)
    assert "\n" not in text and text.startswith(path)
    return text


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.img")
    assert message(path) == f"{path}: no such image file"
    assert message(str(tmp_path)) == f"{tmp_path}: is a directory, not an image file"


def test_wrong_and_unknown_magic(tmp_path: Path) -> None:
    path = mnts(tmp_path, b"", head=COMMON + U32.pack(0x12345678))
    assert message(path) == f"{path}: unknown image magic 0x12345678"
    path = mnts(tmp_path, b"", head=b"\x7fELF")
    assert message(path) == f"{path}: unknown magic 0x464c457f: not a CRIU image"
    path = mnts(tmp_path, b"", head=U32.pack(MAGIC["MNTS"]))
    assert message(path) == f"{path}: magic MNTS without the IMG_COMMON word before it"
    path = mnts(tmp_path, b"", head=b"\x19C")
    assert message(path) == f"{path}: too short for a magic word (2 bytes)"
    path = mnts(tmp_path, b"", head=COMMON + b"\x28")
    assert message(path) == f"{path}: truncated after IMG_COMMON: no image magic"
    path = mnts(tmp_path, entry(GOOD))
    assert message(path, kind="PSTREE") == f"{path}: magic MNTS where a PSTREE image was expected"
    assert message(path, message_type=pstree_pb2.pstree_entry) == (
        f"{path}: MNTS images hold criu_fw.criu.mnt_entry, not criu_fw.criu.pstree_entry"
    )
    path = mnts(tmp_path, b"", head=COMMON + U32.pack(MAGIC["CORE"]))
    assert message(path) == f"{path}: criu-fw has no message type for CORE images"


def test_truncated_size_word(tmp_path: Path) -> None:
    path = mnts(tmp_path, entry(GOOD) + b"\x05\x00")
    assert message(path) == f"{path}: entry 1: truncated size word (2 of 4 bytes)"


def test_truncated_payload(tmp_path: Path) -> None:
    path = mnts(tmp_path, entry(GOOD) + entry(GOOD)[:-3])
    n = len(GOOD)
    assert message(path) == f"{path}: entry 1: truncated payload ({n - 3} of {n} bytes)"


def test_oversized_entry_is_refused_before_reading(tmp_path: Path) -> None:
    path = mnts(tmp_path, U32.pack(0xFFFFFFF0) + b"x" * 16)
    assert message(path) == (
        f"{path}: entry 0: entry size 4294967280 exceeds the limit of {MAX_MNT_ENTRY} bytes"
    )
    # At the limit, the size is allowed; the missing payload is then reported as truncated.
    path = mnts(tmp_path, U32.pack(MAX_MNT_ENTRY))
    assert message(path) == f"{path}: entry 0: truncated payload (0 of {MAX_MNT_ENTRY} bytes)"
    # Kinds without a lower cap of their own take the general one.
    path = str(tmp_path / "pstree.img")
    with open(path, "wb") as f:
        f.write(COMMON + U32.pack(MAGIC["PSTREE"]) + U32.pack(MAX_ENTRY_SIZE + 1))
    assert message(path) == (
        f"{path}: entry 0: entry size {MAX_ENTRY_SIZE + 1} exceeds the limit of {MAX_ENTRY_SIZE} "
        "bytes"
    )


def test_garbled_payload(tmp_path: Path) -> None:
    path = mnts(tmp_path, entry(GOOD) + entry(b"\x0f\xff\xff\xff"))
    assert message(path) == f"{path}: entry 1: garbled criu_fw.criu.mnt_entry (4 bytes)"


def test_missing_required_fields(tmp_path: Path) -> None:
    partial = mnt_pb2.mnt_entry(fstype=1, mnt_id=2).SerializePartialToString()
    path = mnts(tmp_path, entry(GOOD) + entry(GOOD) + entry(partial))
    assert message(path) == (
        f"{path}: entry 2: criu_fw.criu.mnt_entry lacks required field(s) root_dev, "
        "parent_mnt_id, flags, root, mountpoint, source, options"
    )


def test_errors_come_after_good_entries_when_streaming(tmp_path: Path) -> None:
    path = mnts(tmp_path, entry(GOOD) + b"\x01")
    it = iter_image(path, mnt_pb2.mnt_entry)
    assert next(it).mnt_id == 10
    with pytest.raises(ImageError, match="entry 1: truncated size word"):
        next(it)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """No writer at all: the open must not wait for one, and the FIFO is no image."""
    import os

    fifo = str(tmp_path / "mountpoints-9.img")
    os.mkfifo(fifo)
    assert message(fifo) == f"{fifo}: is a FIFO, not an image file"


# --- text that is not UTF-8 ---------------------------------------------------------------


def test_non_utf8_text_helpers() -> None:
    weird = os_fsdecode(b"/mnt/a\xffb \\c")
    assert not images.is_exact_utf8(weird)
    escaped = images.criu_text(weird)
    assert escaped == "/mnt/a\\xffb \\c"
    assert images.criu_text("/plain/ü") == "/plain/ü"
    # What Python's protobuf hands over for raw bytes in a string field of CRIU's images.
    entry_ = mnt_pb2.mnt_entry.FromString(
        mnt_pb2.mnt_entry(mountpoint="XX").SerializePartialToString().replace(b"XX", b"\xff\xfe")
    )
    assert images.text_of(entry_.mountpoint) == os_fsdecode(b"\xff\xfe")


def os_fsdecode(raw: bytes) -> str:
    import os

    return os.fsdecode(raw)


# --- JSON like crit show --------------------------------------------------------------------


def test_json_like_crit_show(tmp_path: Path) -> None:
    path = mnts(tmp_path, entry(GOOD))
    shown = json.loads(images.image_to_json(path))
    assert shown == {
        "magic": "MNTS",
        "entries": [
            {
                "fstype": 5, "mnt_id": 10, "root_dev": "0:40", "parent_mnt_id": 1,
                "flags": "0x2", "root": "/", "mountpoint": "/tmp", "source": "tmpfs",
                "options": "size=1024k",
            }
        ],
    }  # fmt: skip
    raw = images.image_to_dict(path, pretty=False)
    assert raw["entries"][0]["root_dev"] == 40 and raw["entries"][0]["flags"] == 2


def test_json_flags_names() -> None:
    reg = regfile_pb2.reg_file_entry(id=1, flags=0o2 | 0o2000000 | 0o10000000, pos=0, name="/x")
    reg.fown.uid = 0
    d = images.message_to_dict(reg)
    assert d["flags"] == "O_RDWR | O_CLOEXEC | 0x200000"
    assert "mnt_id" not in d
