"""Unbroken's storage engine: a C-accelerated, segmented, CRC-framed log.

Two levels of API. Streams with the protocol's semantics (what the server
serves): :class:`FileBackedStreamStore`, :class:`MemoryStreamStore`, or
:class:`SyncStreamStore` around either; :class:`RedisStreamStore` and
:class:`PostgresStreamStore` keep them in a backend several processes share
(optional extras ``unbroken[redis]``, ``unbroken[postgres]``; imported on
first use, so the engine never needs their drivers). One log, the storage primitive::

    from unbroken_engine import SegmentedLog, LogConfig, Durability

    log = SegmentedLog.open("data/orders", LogConfig(durability=Durability.ALWAYS))
    end = log.append(b"hello")                 # offset after the record, on disk
    result = log.read(log.start_offset)        # bytes(result.data) == b"hello"

Everything the engine raises is in :mod:`unbroken_engine.errors`.
"""
from . import errors
from ._native import MAX_PAYLOAD, json_flatten, json_validate
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
from .log.segmented import (
    Durability,
    LogConfig,
    ReadResult,
    Record,
    RecordType,
    RecoveryReport,
    SegmentedLog,
)
from .protocol.offsets import NOW, START, format_offset, parse_offset
from .protocol.producers import ProducerOutcome
from .stores.file import DEFAULT_DATA_DIR, FileBackedStreamStore
from .stores.interface import (
    AppendOptions,
    AppendResult,
    CreateOptions,
    CreateResult,
    LastMessage,
    Producer,
    StreamMeta,
    StreamStore,
)
from .stores.memory import MemoryStreamStore
from .stores.sync import SyncStreamStore

__version__ = "0.1.0"

__all__ = [
    "errors", "CorruptSegment", "InvalidJSON", "InvalidOffset", "LogClosedError",
    "OffsetGone", "RecordTooLarge", "StorageFull", "StorageIOError", "UnbrokenError",
    "Durability", "LogConfig", "ReadResult", "Record", "RecordType", "RecoveryReport",
    "SegmentedLog", "MAX_PAYLOAD", "json_flatten", "json_validate", "__version__",
    "DEFAULT_DATA_DIR", "FileBackedStreamStore", "MemoryStreamStore", "NOW", "START",
    "format_offset", "parse_offset", "ProducerOutcome", "AppendOptions", "AppendResult",
    "CreateOptions", "CreateResult", "LastMessage", "Producer", "StreamMeta", "StreamStore", "SyncStreamStore",
    "RedisStreamStore", "PostgresStreamStore", "open_store",
]

_LAZY = {"RedisStreamStore": ".stores.shared.redis",
         "PostgresStreamStore": ".stores.shared.postgres", "open_store": ".stores.opening"}


def __getattr__(name: str):
    """The shared stores, imported on first use (their drivers are optional)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
