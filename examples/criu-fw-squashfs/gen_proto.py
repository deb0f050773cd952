#!/usr/bin/env python3
"""Regenerate src/criu_fw_squashfs/loop_pb2.py and loop_pb2.pyi from loop.proto.

The generator is the one criu-fw pins (grpcio-tools 1.85.1, mypy-protobuf 5.1.0: its
``test`` extra), so the checked-in output is reproducible byte for byte and needs the
protobuf runtime criu-fw needs. The .proto is compiled with ``src/`` as the include root:
the message's file is then ``criu_fw_squashfs/loop.proto``, a name no other package uses.

Usage: python gen_proto.py [--out DIR]   (default: src/ next to this script)
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
SRC = Path(__file__).resolve().parent / "src"
PROTOS = ("criu_fw_squashfs/loop.proto",)


def generate(out: Path) -> list[Path]:
    """Write the generated modules below ``out`` (``out/criu_fw_squashfs/...``)."""
    for dist, want in PINNED.items():
        have = metadata.version(dist)
        if have != want:
            raise SystemExit(f"gen_proto: {dist} {have} is installed, the output is pinned "
                             f"to {want}")
    from grpc_tools import protoc

    # mypy-protobuf's plugin is installed next to the interpreter (a venv's bin/).
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    (out / "criu_fw_squashfs").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"--plugin=protoc-gen-mypy={plugin}", f"-I{SRC}",
            f"--python_out={out}", f"--mypy_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("gen_proto: protoc failed")
    return [out / p.replace(".proto", f"_pb2{ext}") for p in PROTOS for ext in (".py", ".pyi")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SRC)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
