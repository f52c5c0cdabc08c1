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
