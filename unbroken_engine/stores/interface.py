"""The StreamStore interface: the Unbroken protocol's semantics, without HTTP.

A store holds streams by *path* (the ``{path}`` of ``/v1/stream/{path}``).
Every rule of the protocol lives behind this interface, so a program that
embeds the engine gets exactly what an HTTP client gets; the server only
translates requests and exceptions (each exception carries ``status_hint``).

Offsets here are ``int`` log positions; :mod:`unbroken_engine.protocol.offsets` renders
them for the wire. Reads take an ``int``, :data:`~unbroken_engine.protocol.offsets.START`
or :data:`~unbroken_engine.protocol.offsets.NOW`.

Implementations: :class:`~unbroken_engine.stores.memory.MemoryStreamStore`,
:class:`~unbroken_engine.stores.file.FileBackedStreamStore` (the default),
:class:`~unbroken_engine.stores.shared.redis.RedisStreamStore` and
:class:`~unbroken_engine.stores.shared.postgres.PostgresStreamStore` (shared by
several processes; asyncio only). All
methods are coroutines and must be called from the event loop that owns the
store; :class:`~unbroken_engine.stores.sync.SyncStreamStore` wraps one for programs
without an event loop.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from .. import _native as nat
from .. import errors
from ..protocol import framing
from ..protocol.media import DEFAULT_CONTENT_TYPE, is_json
from ..protocol.producers import ProducerOutcome

#: Default cap on the bytes one read returns (a whole append is never split).
DEFAULT_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Producer:
    """An idempotent producer's headers: id, epoch and per-request seq."""

    id: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class CreateOptions:
    """How to create a stream (``PUT``).

    :ivar content_type: None means "not given": ``application/octet-stream``
        for a new stream, the source's type for a fork
    :ivar ttl: sliding time-to-live in seconds (renewed by reads and writes)
    :ivar expires_at: absolute expiry (timezone-aware); not with ``ttl``
    :ivar closed: create the stream already closed
    :ivar data: initial data (JSON streams: one JSON text; ``[]`` is allowed)
    :ivar fork_from: path of the stream to fork
    :ivar fork_offset: where to fork (default: the source's tail)
    :ivar fork_sub_offset: bytes (or JSON values) of the next message to keep
    """

    content_type: str | None = None
    ttl: int | None = None
    expires_at: datetime | None = None
    closed: bool = False
    data: bytes = b""
    fork_from: str | None = None
    fork_offset: int | None = None
    fork_sub_offset: int = 0


@dataclass(frozen=True)
class AppendOptions:
    """How to append (``POST``).

    :ivar content_type: must match the stream's (ignored for a close-only append)
    :ivar seq: ``Stream-Seq``: must be byte-wise greater than the last one
    :ivar producer: idempotent producer headers
    :ivar close: close the stream after this append (or, with no data, only close)
    """

    content_type: str | None = None
    seq: str | None = None
    producer: Producer | None = None
    close: bool = False


@dataclass(frozen=True)
class StreamMeta:
    """What ``HEAD`` tells about a stream.

    :ivar next_offset: the tail offset
    :ivar ttl: the configured window in seconds (not the time left)
    """

    path: str
    content_type: str
    next_offset: int
    closed: bool
    created_at: float
    ttl: int | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class CreateResult:
    """``created`` is False when an identical stream already existed (200)."""

    created: bool
    meta: StreamMeta


@dataclass(frozen=True)
class AppendResult:
    """The outcome of an append.

    :ivar next_offset: the tail after it (for a duplicate: the current tail)
    :ivar outcome: None without producer headers; else accepted or duplicate
    :ivar producer_epoch: the producer's epoch (echoed)
    :ivar producer_seq: the highest seq accepted for that producer and epoch
    :ivar closed: the stream is closed now
    """

    next_offset: int
    outcome: ProducerOutcome | None = None
    producer_epoch: int | None = None
    producer_seq: int | None = None
    closed: bool = False


@dataclass(frozen=True)
class ReadResult:
    """A catch-up read.

    :ivar data: the bytes (JSON streams: one JSON array of the messages)
    :ivar next_offset: where the next read starts
    :ivar up_to_date: the read reached the tail
    :ivar closed: the stream is closed *and* the read reached its end
    """

    data: bytes | memoryview
    next_offset: int
    up_to_date: bool
    closed: bool
    content_type: str = DEFAULT_CONTENT_TYPE

    @property
    def has_messages(self) -> bool:
        """Whether the read holds at least one message (a JSON read of none is
        ``[]``; a binary message whose bytes are ``[]`` is a message)."""
        return framing.holds_messages(self.data, is_json(self.content_type))


@dataclass(frozen=True)
class LastMessage:
    """A stream's last message, and where the stream stands (``read_last``).

    :ivar data: the last message: for JSON streams the text of its one JSON
        value (no brackets), else the bytes of the last append; ``b""`` when
        the stream holds no message
    :ivar offset: where the record holding it starts (None: no message); a
        read from there returns that record first (for a JSON append of
        several values: all of them)
    :ivar next_offset: the tail
    :ivar closed: the stream is closed
    :ivar found: the stream holds a message
    """

    data: bytes
    offset: int | None
    next_offset: int
    closed: bool
    content_type: str = DEFAULT_CONTENT_TYPE
    found: bool = False


def last_json_value(payload, count: int | None) -> bytes:
    """The text of the last JSON value in ``payload``.

    :param payload: a stored JSON record: ``count`` values joined by ``,``
        (what :func:`~unbroken_engine._native.json_flatten` writes); with
        ``count`` None, any JSON text (an array gives its last element)
    """
    if count is None:
        payload, count = nat.json_flatten(payload)
    if count <= 1:
        return bytes(payload).strip(b" \t\r\n")
    cut = len(nat.json_prefix(payload, count - 1))
    return bytes(payload[cut + 1:]).strip(b" \t\r\n")  # past the ','


@dataclass(frozen=True)
class StoreRecovery:
    """What opening a store found (logged as one line at start-up)."""

    streams: int = 0
    bytes_cut: int = 0
    indexes_rebuilt: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One human line: ``3 streams recovered in 0.01 s, 0 bytes cut ...``."""
        noun = "stream" if self.streams == 1 else "streams"
        line = (f"{self.streams} {noun} recovered in {self.seconds:.3f} s, "
                f"{self.bytes_cut} bytes of torn tails cut, "
                f"{self.indexes_rebuilt} indexes rebuilt")
        if self.corrupt:
            line += f", {len(self.corrupt)} DAMAGED: " + "; ".join(
                f"{path}: {why}" for path, why in sorted(self.corrupt.items()))
        return line


class StreamStore(abc.ABC):
    """The protocol's operations on streams. See the module docstring."""

    kind = "abstract"

    @abc.abstractmethod
    async def create(self, path: str, options: CreateOptions = CreateOptions()) -> CreateResult:
        """Create a stream, or confirm an identical one exists.

        :raises ConfigMismatch: it exists with another configuration, or the
            path (or a fork source) is soft-deleted, or a fork's content type
            differs from its source's
        :raises StreamNotFound: the fork source does not exist
        :raises InvalidOffset: the fork offset is not a boundary of the source
        :raises InvalidRequest: ``ttl`` with ``expires_at``; a bad sub-offset
        :raises InvalidJSON: initial data of a JSON stream is not JSON
        :raises InvalidStreamPath: the path is empty, too long or contains NUL
        """

    @abc.abstractmethod
    async def get(self, path: str) -> StreamMeta:
        """Metadata (``HEAD``); does not renew a sliding TTL.

        :raises StreamNotFound: missing or expired
        :raises StreamSoftDeleted: deleted while forks remain
        """

    async def has(self, path: str) -> bool:
        """Whether ``path`` names a live stream."""
        try:
            await self.get(path)
        except Exception:  # noqa: BLE001 - any reason not to serve it means "no"
            return False
        return True

    @abc.abstractmethod
    async def append(self, path: str, data: bytes,
                     options: AppendOptions = AppendOptions()) -> AppendResult:
        """Append ``data`` (and/or close), after every check of the protocol.

        Returns once the store's durability policy lets it acknowledge the
        data (the file store: once on disk under ``always``; at once, before
        any flush, under ``interval`` and ``never``).

        :raises StreamNotFound, StreamSoftDeleted: as for :meth:`get`
        :raises StreamClosed: the stream is closed (unless this duplicates the
            producer request that is already stored)
        :raises ContentTypeMismatch: the content type differs from the stream's
        :raises EmptyBody: no data and no close
        :raises StaleEpoch, InvalidEpochSeq, ProducerSeqGap: producer checks
        :raises SequenceConflict: ``Stream-Seq`` not greater than the last
        :raises InvalidJSON, EmptyJSONArray: JSON streams
        :raises RecordTooLarge: over the format's payload limit
        """

    async def close_stream(self, path: str, producer: Producer | None = None) -> AppendResult:
        """Close the stream without appending (idempotent)."""
        return await self.append(path, b"", AppendOptions(producer=producer, close=True))

    @abc.abstractmethod
    async def read(self, path: str, offset=None, max_bytes: int = DEFAULT_READ_CHUNK) -> ReadResult:
        """Read from ``offset`` (``int``, START/None, or NOW); renews a sliding TTL.

        :raises StreamNotFound, StreamSoftDeleted: as for :meth:`get`
        :raises InvalidOffset: beyond the tail or not an offset of this stream
        :raises OffsetGone: before the earliest retained data
        """

    async def read_last(self, path: str) -> LastMessage:
        """The stream's last message and its tail, without reading its history
        (a store keeps where its last record that carries messages starts);
        renews a sliding TTL, like :meth:`read`. A JSON append of several
        values is one record: only its last value is returned. Close records
        carry no message. A fork with no message of its own answers from what
        it inherits (its source's below the fork offset, or the prefix its
        sub-offset kept).

        This default is correct for any store but reads the whole stream: it
        pages through it, then reads the last page that held data again one
        record at a time (a read never splits an append, so a read of at most
        one byte returns exactly one) to learn where the last message starts.

        :raises StreamNotFound, StreamSoftDeleted: as for :meth:`get`
        """
        start = 0  # offsets are log positions: every stream's view starts at 0
        try:
            r = await self.read(path, start)
        except errors.OffsetGone as gone:  # retention dropped the beginning
            start = gone.earliest
            r = await self.read(path, start)
        page_start = page_end = None
        while True:
            if r.has_messages:
                page_start, page_end = start, r.next_offset
            if r.up_to_date:
                break
            start = r.next_offset
            r = await self.read(path, start)
        if page_start is None:
            return LastMessage(b"", None, r.next_offset, r.closed, r.content_type)
        at, last, piece = page_start, None, None
        while at < page_end:
            one = await self.read(path, at, max_bytes=1)
            if one.has_messages:
                last, piece = at, one
            if one.next_offset <= at:
                break  # cannot happen: a read below the tail returns a record
            at = one.next_offset
        data = bytes(piece.data)
        if is_json(piece.content_type):
            data = last_json_value(data, None)
        return LastMessage(data, last, r.next_offset, r.closed, r.content_type, True)

    @abc.abstractmethod
    async def wait_for_messages(self, path: str, offset: int, timeout: float) -> bool:
        """Wait until there is data after ``offset`` or the stream is closed.

        Woken by appends and closes of this path only (not of a fork's source),
        never by polling. :return: False on timeout, and when :meth:`notify_all`
        ends every wait (shutdown).

        :raises StreamNotFound, StreamSoftDeleted: the stream went away
        """

    @abc.abstractmethod
    def waiting(self, path: str | None = None) -> int:
        """How many :meth:`wait_for_messages` calls of this process are parked
        right now -- found nothing to return and wait for a notification --
        on ``path``, or (``None``) on any path. For ``/health`` and for tests
        that must act only once a live reader is parked."""

    async def current_offset(self, path: str) -> int:
        """The tail offset."""
        return (await self.get(path)).next_offset

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Delete the stream; with live forks it is soft-deleted instead.

        :raises StreamNotFound: missing or expired
        :raises StreamSoftDeleted: already soft-deleted
        """

    @abc.abstractmethod
    async def list_streams(self, prefix: str = "") -> list[StreamMeta]:
        """Live streams whose path starts with ``prefix``, sorted by path."""

    @abc.abstractmethod
    async def sweep(self) -> list[str]:
        """Remove expired streams now (an expired stream with live forks is
        soft-deleted, and goes with its last fork).

        :return: the paths that went out of sight or were removed, sorted
        """

    def notify_all(self) -> None:
        """Wake every live reader now (the server is shutting down)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Flush and release everything; wakes every waiter."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
