"""The protocol's rules for creating and appending, as pure functions.

Every store applies these -- the in-process ones (:mod:`..stores.base`) and
the shared ones (:mod:`..stores.shared.store`) -- so a rule is written once:
stream paths, producer headers, create options, the idempotent-``PUT``
comparison (spec 5.1, closure included), Stream-Seq ordering, when a
stream expires, and what records a create, a fork's sub-offset or an append
writes. They take values and return values or raise; none touches a log, a
backend or a clock (the time is passed in).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Awaitable, Callable

import msgpack

from .. import _native as nat
from .. import errors
from ..log.segmented import RecordType
from .media import DEFAULT_CONTENT_TYPE, is_json, media_type
from .producers import MAX_PRODUCER_NUMBER

if TYPE_CHECKING:  # the value types a store passes in (annotations only)
    from ..stores.interface import AppendOptions, CreateOptions

#: Longest stream path a store accepts, in UTF-8 bytes.
MAX_PATH_BYTES = 1024


@dataclass(frozen=True)
class Requested:
    """What a create asked for, kept to judge a later identical create."""

    media: str | None
    ttl: int | None
    expires_at: datetime | None
    fork_from: str | None
    fork_offset: int | None
    fork_sub_offset: int


def check_path(path: str) -> str:
    """Validate a stream path: 1..MAX_PATH_BYTES of UTF-8, no NUL or other C0
    control characters, no empty, ``.`` or ``..`` segments.

    :raises InvalidStreamPath: with the reason
    """
    if not isinstance(path, str) or not path:
        raise errors.InvalidStreamPath("empty stream path")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.InvalidStreamPath("stream path is not valid UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise errors.InvalidStreamPath(f"stream path longer than {MAX_PATH_BYTES} bytes")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise errors.InvalidStreamPath("control character in stream path")
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        raise errors.InvalidStreamPath("empty, '.' or '..' segment in stream path")
    return path


def check_producer(p) -> None:
    """Raise InvalidRequest unless the producer headers are well-formed."""
    if not isinstance(p.id, str) or not p.id:
        raise errors.InvalidRequest("a producer id must be a non-empty string")
    for name, value in (("epoch", p.epoch), ("seq", p.seq)):
        if not isinstance(value, int) or not 0 <= value <= MAX_PRODUCER_NUMBER:
            raise errors.InvalidRequest(f"producer {name} must be an integer from 0 to 2^53-1")


def check_create_options(o: CreateOptions) -> None:
    """The checks of a create's options that need no stream.

    :raises InvalidRequest: TTL with an expiry, a negative TTL or sub-offset,
        a fork offset without a fork source
    """
    if o.ttl is not None and o.expires_at is not None:
        raise errors.InvalidRequest("Stream-TTL and Stream-Expires-At are exclusive")
    if o.ttl is not None and o.ttl < 0:
        raise errors.InvalidRequest("Stream-TTL must not be negative")
    if o.fork_sub_offset < 0:
        raise errors.InvalidRequest("fork sub-offset must not be negative")
    if o.fork_from is None and (o.fork_offset is not None or o.fork_sub_offset):
        raise errors.InvalidRequest("a fork offset needs a fork source")


def check_same_config(s, o: CreateOptions) -> None:
    """Raise ConfigMismatch unless a create asking for ``o`` matches the
    existing stream ``s`` (anything with ``requested``, ``media``, ``path``,
    ``fork_offset`` and ``closed_at``): the rule for an idempotent ``PUT``.

    Closure is compared as well (PROTOCOL.md §5.1, a MUST): ``Stream-Closed:
    true`` matches only a closed stream, its absence only an open one.
    """
    req = s.requested
    if o.content_type is not None:
        wanted = media_type(o.content_type)
    elif o.fork_from is not None and req.fork_from is not None:
        wanted = s.media  # a fork without a type inherits its source's
    else:
        wanted = media_type(DEFAULT_CONTENT_TYPE)
    differs = [name for name, same in (
        ("content type", wanted == s.media),
        ("Stream-TTL", o.ttl == req.ttl),
        ("Stream-Expires-At", o.expires_at == req.expires_at),
        ("fork source", o.fork_from == req.fork_from),
        ("fork offset", o.fork_offset is None or o.fork_offset == s.fork_offset),
        ("fork sub-offset", o.fork_sub_offset == req.fork_sub_offset),
        ("closure status (Stream-Closed)", o.closed == (s.closed_at is not None)),
    ) if not same]
    if differs:
        raise errors.ConfigMismatch(
            f"stream {s.path!r} exists with a different " + ", ".join(differs))


def record_attrs(producer, seq: str | None) -> bytes:
    """The msgpack attrs a record carries: producer (id, epoch, seq) and Stream-Seq."""
    fields = {}
    if producer is not None:
        fields["p"] = [producer.id, producer.epoch, producer.seq]
    if seq is not None:
        fields["s"] = seq
    return msgpack.packb(fields) if fields else b""


def created_content_type(o: CreateOptions, source) -> str:
    """The content type a create gives its stream: the one asked for, else
    the fork source's, else ``application/octet-stream``.

    :param source: the fork source (a stream or a row: ``content_type`` and
        ``media``), or None
    :raises ConfigMismatch: a fork whose type differs from its source's
    """
    if o.content_type is not None:
        content_type = o.content_type
    else:
        content_type = source.content_type if source is not None else DEFAULT_CONTENT_TYPE
    if source is not None and media_type(content_type) != source.media:
        raise errors.ConfigMismatch(
            f"content type {content_type!r} differs from the fork source's "
            f"{source.content_type!r}")
    return content_type


def created_expiry(o: CreateOptions, inherited: tuple | None) -> tuple:
    """The ``(ttl, expires_at)`` a create gives its stream: the ones asked
    for; a fork that asks for neither keeps its source's.

    :param inherited: the fork source's ``(ttl, expires_at)``, or None (not a fork)
    """
    if inherited is not None and o.ttl is None and o.expires_at is None:
        return inherited
    return o.ttl, o.expires_at


def initial_records(content_type: str, data: bytes, closed: bool) -> list[tuple]:
    """The records a create writes: its initial data (JSON flattened) and/or
    its close, as ``(payload, attrs, type, msg_count)``.

    :raises InvalidJSON: initial data of a JSON stream is not JSON
    :raises RecordTooLarge: over the format's payload limit
    """
    if data and is_json(content_type):
        payload, count = nat.json_flatten(data)
    else:
        payload, count = bytes(data), (1 if data else 0)
    if len(payload) > nat.MAX_PAYLOAD:
        raise errors.RecordTooLarge("initial data over the format's limits")
    if count:
        kind = RecordType.DATA_CLOSE if closed else RecordType.DATA
        return [(bytes(payload), b"", kind, count)]
    return [(b"", b"", RecordType.CLOSE, 0)] if closed else []


def prefix_record(rec, n: int, json: bool) -> tuple:
    """The record a fork with sub-offset ``n`` starts with: the first ``n``
    bytes (JSON: values) of the message ``rec`` (None: there is none).

    :raises InvalidRequest: no message, or ``n`` past its end
    """
    if rec is None:
        raise errors.InvalidRequest("fork sub-offset: no message after the fork offset")
    if json:
        if n > rec.msg_count:
            raise errors.InvalidRequest(
                f"fork sub-offset {n} past the message's {rec.msg_count} values")
        return (nat.json_prefix(rec.payload, n), b"", RecordType.DATA, n)
    if n > len(rec.payload):
        raise errors.InvalidRequest(
            f"fork sub-offset {n} past the message's {len(rec.payload)} bytes")
    return (rec.payload[:n], b"", RecordType.DATA, 1)


async def fork_prefix(record_at: Callable[[int], Awaitable], offset: int, n: int,
                      json: bool) -> tuple:
    """The record a fork at ``offset`` with sub-offset ``n`` starts with
    (:func:`prefix_record`): the sub-offset counts into the first message at
    or after the fork offset, so records that carry none (a checkpoint, a
    close) are passed over.

    :param record_at: ``await record_at(at)``: the source's first record at
        or after ``at`` in its view (``offset``, ``payload``, ``msg_count``,
        ``next_offset``), or None at its end -- the store's one way to look
        a record up; this function touches no storage itself
    :raises InvalidRequest: no message, or ``n`` past its end
    """
    rec = await record_at(offset)
    while rec is not None and rec.msg_count == 0:
        rec = await record_at(rec.next_offset)
    return prefix_record(rec, n, json)


def is_expired(expires_at: datetime | None, ttl: int | None, last_access: float,
               now: float) -> bool:
    """Whether a stream has expired at ``now`` (Unix seconds): an absolute
    ``Stream-Expires-At`` decides alone; else a ``Stream-TTL`` slides from
    the last read or write (``last_access``); with neither it never does.
    """
    if expires_at is not None:
        return now >= expires_at.timestamp()
    return ttl is not None and now >= last_access + ttl


def check_stream_seq(last_seq: str | None, seq: str | None) -> None:
    """``Stream-Seq`` must be byte-wise greater than the last one.

    :raises SequenceConflict: it is not
    """
    if seq is not None and last_seq is not None and seq.encode(
            "utf-8", "surrogatepass") <= last_seq.encode("utf-8", "surrogatepass"):
        raise errors.SequenceConflict(last_seq, seq)


def append_record(data: bytes, o: AppendOptions, json: bool) -> tuple:
    """What an append writes: ``(payload, attrs, type, msg_count)``.

    :raises InvalidJSON, EmptyJSONArray: JSON streams
    :raises RecordTooLarge: over the format's limits
    """
    close_only = not data
    payload, count = data, (0 if close_only else 1)
    if data and json:
        payload, count = nat.json_flatten(data)
        if count == 0:
            raise errors.EmptyJSONArray("an empty JSON array appends nothing")
    attrs = record_attrs(o.producer, o.seq)
    if len(payload) > nat.MAX_PAYLOAD or len(attrs) > nat.MAX_ATTRS:
        raise errors.RecordTooLarge("record over the format's limits")
    kind = RecordType.DATA if not o.close else (
        RecordType.CLOSE if close_only else RecordType.DATA_CLOSE)
    return payload, attrs, kind, count
