"""Generated protobuf modules for criu-fw's images (CRIU's messages and criu-fw's own).

Regenerate with ``python scripts/gen_proto.py``; never edit the ``_pb2`` files by hand.
"""
