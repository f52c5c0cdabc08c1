"""Unbroken's storage engine: a C-accelerated, segmented, CRC-framed log.

The public names::

    from unbroken_engine import SegmentedLog, LogConfig, Durability

    log = SegmentedLog.open("data/orders", LogConfig(durability=Durability.ALWAYS))
    end = log.append(b"hello")                 # offset after the record, on disk
    result = log.read(log.start_offset)        # bytes(result.data) == b"hello"

Everything the engine raises is in :mod:`unbroken_engine.errors`.
"""
from . import errors
from .errors import (
    CorruptSegment,
    InvalidJSON,
    InvalidOffset,
    LogClosedError,
    OffsetGone,
    RecordTooLarge,
    StorageFull,
    StorageIOError,
    UnbrokenError,
)
from .log import (
    Durability,
    LogConfig,
    ReadResult,
    Record,
    RecordType,
    RecoveryReport,
    SegmentedLog,
)
from ._native import MAX_PAYLOAD, json_flatten, json_validate

__version__ = "0.1.0"

__all__ = [
    "errors", "CorruptSegment", "InvalidJSON", "InvalidOffset", "LogClosedError",
    "OffsetGone", "RecordTooLarge", "StorageFull", "StorageIOError", "UnbrokenError",
    "Durability", "LogConfig", "ReadResult", "Record", "RecordType", "RecoveryReport",
    "SegmentedLog", "MAX_PAYLOAD", "json_flatten", "json_validate", "__version__",
]
