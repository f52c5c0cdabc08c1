"""The log layer: one stream's bytes, below every protocol rule.

* :mod:`.segmented` -- :class:`SegmentedLog`, a stream's CRC-framed log in
  segment files (roll, read, recover, durability policy and group commit);
* :mod:`.memory` -- :class:`MemoryLog`, the same contract in memory (the
  memory store's log);
* :mod:`.paging` -- what a record costs against a read's byte budget (the
  C read's rule, for every Python read that pages alike);
* :mod:`.layout` -- where a data directory keeps what: stream folders,
  20-digit segment and index names.

It knows records, offsets and durability; it knows nothing of producers,
content types or HTTP. Only :mod:`unbroken_engine._native` below it.
"""
from .memory import MemoryLog
from .segmented import (
    Durability,
    LogConfig,
    ReadResult,
    Record,
    RecordType,
    RecoveryReport,
    SegmentedLog,
)

__all__ = ["Durability", "LogConfig", "MemoryLog", "ReadResult", "Record", "RecordType",
           "RecoveryReport", "SegmentedLog"]
