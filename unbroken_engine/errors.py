"""Every exception the engine raises, in one module.

Each class carries a ``status_hint`` (as h11 does with ``error_status_hint``):
the HTTP status the server should answer with. The engine never imports HTTP;
the server maps exceptions to responses in one table using this hint and the
fields each exception carries.

Classes that correspond to a C return code carry ``UB_NAME``;
:mod:`unbroken_engine._native` builds its code -> exception map by scanning
for that attribute (the py-lmdb trick), so adding a code is adding a class.
"""
from __future__ import annotations


class UnbrokenError(Exception):
    """Base class of every error the engine raises on purpose."""

    status_hint = 500


class InvalidArgument(UnbrokenError, ValueError):
    """An argument no caller should pass (a bug in the caller, not bad input)."""

    status_hint = 400
    UB_NAME = "UB_EINVAL"


class InvalidOffset(UnbrokenError, ValueError):
    """The offset is malformed, beyond the tail, or not a record boundary.

    Unbroken refuses such an offset instead of returning misframed bytes.
    """

    status_hint = 400
    UB_NAME = "UB_ERANGE"

    def __init__(self, offset, reason: str = "not a record boundary of this log"):
        super().__init__(f"invalid offset {offset!r}: {reason}")
        self.offset = offset
        self.reason = reason


class OffsetGone(UnbrokenError):
    """The offset lies before the earliest retained data (retention dropped it)."""

    status_hint = 410

    def __init__(self, offset: int, earliest: int):
        super().__init__(f"offset {offset} is before the earliest retained offset {earliest}")
        self.offset = offset
        self.earliest = earliest


class RecordTooLarge(UnbrokenError):
    """A payload or its attributes exceed the format's limits (UB_MAX_PAYLOAD)."""

    status_hint = 413
    UB_NAME = "UB_ETOOBIG"


class StorageFull(UnbrokenError, OSError):
    """The disk refused to grow a segment (ENOSPC/EDQUOT). Nothing was written."""

    status_hint = 507
    UB_NAME = "UB_EFULL"


class StorageIOError(UnbrokenError, OSError):
    """A system call on a segment or index file failed. Nothing was acknowledged."""

    status_hint = 503
    UB_NAME = "UB_EIO"


class OutOfMemory(UnbrokenError, MemoryError):
    """The C core could not allocate memory."""

    status_hint = 503
    UB_NAME = "UB_ENOMEM"


class CorruptSegment(UnbrokenError):
    """A record that fails its checks sits where acknowledged data must be.

    Raised for a bad record in a sealed segment or before valid data in the
    active one, and when a read meets a record whose CRC does not match. The
    engine never drops such data silently and never serves its bytes.

    :ivar path: the segment file
    :ivar position: byte position of the bad record in that file
    :ivar reason: a named reason ("checksum mismatch", "bad record length", ...)
    """

    status_hint = 500
    UB_NAME = "UB_ECORRUPT"

    def __init__(self, path, position: int, reason: str):
        super().__init__(f"corrupt segment {path} at byte {position}: {reason}")
        self.path = str(path)
        self.position = position
        self.reason = reason


class InvalidJSON(UnbrokenError, ValueError):
    """A JSON-mode body is not exactly one valid RFC 8259 JSON text."""

    status_hint = 400
    UB_NAME = "UB_EJSON"

    def __init__(self, position: int = 0, message: str = "invalid JSON"):
        super().__init__(f"{message} at byte {position}")
        self.position = position


class EmptyJSONArray(UnbrokenError, ValueError):
    """An append whose JSON body is ``[]``: it would add no message."""

    status_hint = 400


class LogClosedError(UnbrokenError):
    """The log (or segment) was closed; it can no longer be used."""

    status_hint = 503


ClosedSegmentError = LogClosedError


class BackendUnavailable(UnbrokenError):
    """The shared store's backend (Redis, PostgreSQL) cannot be reached or
    failed mid-request. Nothing was acknowledged: a retried append is safe
    (with producer headers it is deduplicated if the first one did land)."""

    status_hint = 503


class BackendSchemaError(UnbrokenError):
    """The backend holds data of a newer schema version than this Unbroken
    knows, or data it cannot read; it is left untouched."""

    status_hint = 500


class DataDirInUse(UnbrokenError, OSError):
    """Another process (or another store in this one) has this data directory
    open: two stores recovering and appending in one directory would cut
    each other's unflushed tails."""

    status_hint = 503

    def __init__(self, data_dir: str, holder: str = ""):
        who = f" (pid {holder})" if holder.isdigit() else ""
        super().__init__(f"data directory {data_dir} is in use by another store{who}: stop "
                         f"it, or use another directory")
        self.data_dir = data_dir

    def __str__(self):  # OSError would format its args
        return self.args[0]


class MissingExtra(UnbrokenError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    status_hint = 500


# ---- stream-level errors (the stores) ----------------------------------------

class StreamNotFound(UnbrokenError, KeyError):
    """No stream at this path (never created, deleted, or expired)."""

    status_hint = 404

    def __init__(self, path: str):
        super().__init__(f"stream not found: {path!r}")
        self.path = path

    def __str__(self):  # KeyError would repr() the message
        return self.args[0]


class StreamSoftDeleted(UnbrokenError):
    """The stream was deleted while forks still read its data: it is gone for
    every direct operation, and its path cannot be re-created until the last
    fork goes."""

    status_hint = 410

    def __init__(self, path: str):
        super().__init__(f"stream was deleted (its data is kept for forks): {path!r}")
        self.path = path


class ConfigMismatch(UnbrokenError):
    """A create found the stream already there with a different configuration."""

    status_hint = 409


class InvalidStreamPath(UnbrokenError, ValueError):
    """A stream path the store refuses (empty, too long, NUL, not UTF-8, ...)."""

    status_hint = 400


class InvalidRequest(UnbrokenError, ValueError):
    """A request whose parameters contradict each other or the protocol."""

    status_hint = 400


class ContentTypeMismatch(UnbrokenError):
    """An append whose content type is not the stream's."""

    status_hint = 409

    def __init__(self, expected: str, received: str):
        super().__init__(f"content type {received!r} does not match the stream's {expected!r}")
        self.expected = expected
        self.received = received


class EmptyBody(UnbrokenError, ValueError):
    """An append with no bytes (and no close)."""

    status_hint = 400


class StreamClosed(UnbrokenError):
    """The stream is closed: nothing more can be appended.

    :ivar next_offset: the stream's final tail offset (an int position)
    """

    status_hint = 409

    def __init__(self, path: str, next_offset: int):
        super().__init__(f"stream is closed: {path!r}")
        self.path = path
        self.next_offset = next_offset


class SequenceConflict(UnbrokenError):
    """A ``Stream-Seq`` that is not greater than the last one appended."""

    status_hint = 409

    def __init__(self, last: str, received: str):
        super().__init__(f"Stream-Seq {received!r} is not greater than the last, {last!r}")
        self.last = last
        self.received = received


class StaleEpoch(UnbrokenError):
    """A producer epoch older than the stream's (a fenced zombie producer)."""

    status_hint = 403

    def __init__(self, current_epoch: int):
        super().__init__(f"stale producer epoch; current epoch is {current_epoch}")
        self.current_epoch = current_epoch


class InvalidEpochSeq(UnbrokenError, ValueError):
    """A new producer epoch whose first seq is not 0."""

    status_hint = 400

    def __init__(self, epoch: int, seq: int):
        super().__init__(f"producer epoch {epoch} must start at seq 0, not {seq}")
        self.epoch = epoch
        self.seq = seq


class ProducerSeqGap(UnbrokenError):
    """A producer seq that skips ahead of the next expected one."""

    status_hint = 409

    def __init__(self, expected: int, received: int):
        super().__init__(f"producer seq gap: expected {expected}, received {received}")
        self.expected = expected
        self.received = received
