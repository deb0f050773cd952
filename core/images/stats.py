"""``stats-dump``: how long a dump took to stop the processes and how long they stayed
stopped, in CRIU's format (``crit show stats-dump`` reads it; CRIU writes the same file).

criu-fw saves no memory: CRIU's page counters and memory times are written as 0.
"""

from __future__ import annotations

import os

from ..proto import stats_pb2
from . import KINDS, read_image, write_image

STATS_DUMP = KINDS["STATS"].filename()
#: The field is a uint32 of microseconds (71 minutes); a longer time is written as that.
_MAX_US = (1 << 32) - 1


def _us(seconds: float) -> int:
    return min(_MAX_US, max(0, round(seconds * 1e6)))


def write_dump_stats(image_dir: str, *, freezing: float, frozen: float) -> None:
    """Write ``stats-dump`` into ``image_dir``: ``freezing`` (seconds to stop the processes)
    and ``frozen`` (seconds from the first stop to the resume)."""
    entry = stats_pb2.stats_entry(dump=stats_pb2.dump_stats_entry(
        freezing_time=_us(freezing), frozen_time=_us(frozen), memdump_time=0,
        memwrite_time=0, pages_scanned=0, pages_skipped_parent=0, pages_written=0,
        pages_lazy=0,
    ))
    write_image(os.path.join(image_dir, STATS_DUMP), "STATS", [entry])


def read_frozen_time(image_dir: str) -> float | None:
    """Seconds the dumped processes stayed stopped, as ``stats-dump`` says (None: no file,
    or no dump entry in it)."""
    path = os.path.join(image_dir, STATS_DUMP)
    if not os.path.lexists(path):
        return None
    entries = read_image(path, stats_pb2.stats_entry, kind="STATS")
    if not entries or not entries[0].HasField("dump"):
        return None
    return entries[0].dump.frozen_time / 1e6
