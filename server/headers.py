"""Protocol header names and strict parsers for every value a client sends.

Parsers take the raw header value (or None when absent) and either return a
Python value or raise :class:`HeaderError` (400) naming the header. They use
``re.fullmatch``: ``$`` would accept a trailing newline.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import unquote

from unbroken_engine import errors as e
from unbroken_engine.protocol.producers import MAX_PRODUCER_NUMBER
from unbroken_engine.protocol.rules import check_path
from unbroken_engine.stores.interface import Producer

#: where streams live: ``/v1/stream/{path}``
STREAM_PREFIX = "/v1/stream/"

STREAM_NEXT_OFFSET = "Stream-Next-Offset"
STREAM_UP_TO_DATE = "Stream-Up-To-Date"
STREAM_CLOSED = "Stream-Closed"
STREAM_CURSOR = "Stream-Cursor"
STREAM_TTL = "Stream-TTL"
STREAM_EXPIRES_AT = "Stream-Expires-At"
STREAM_SEQ = "Stream-Seq"
STREAM_FORKED_FROM = "Stream-Forked-From"
STREAM_FORK_OFFSET = "Stream-Fork-Offset"
STREAM_FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"
STREAM_SSE_DATA_ENCODING = "Stream-SSE-Data-Encoding"
#: extension (docs/protocol-choices.md): ``GET ...?last=true`` answers with
#: ``Stream-Read: last`` and, when there is a message, ``Stream-Last-Offset``
STREAM_READ = "Stream-Read"
STREAM_LAST_OFFSET = "Stream-Last-Offset"
PRODUCER_ID = "Producer-Id"
PRODUCER_EPOCH = "Producer-Epoch"
PRODUCER_SEQ = "Producer-Seq"
PRODUCER_EXPECTED_SEQ = "Producer-Expected-Seq"
PRODUCER_RECEIVED_SEQ = "Producer-Received-Seq"

MAX_HEADER_VALUE = 8192
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


class HeaderError(ValueError):
    """A header (or query parameter) value the protocol does not allow: 400."""

    status_hint = 400


def parse_ttl(value: str | None) -> int | None:
    """``Stream-TTL``: decimal seconds, no sign, no leading zeros, no fraction."""
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value) or len(value) > 15:
        raise HeaderError(f"{STREAM_TTL} must be a whole number of seconds")
    return int(value)


def parse_expires_at(value: str | None) -> datetime | None:
    """``Stream-Expires-At``: an RFC 3339 timestamp with a zone (Z or +hh:mm)."""
    if value is None:
        return None
    if not _RFC3339.fullmatch(value):
        raise HeaderError(f"{STREAM_EXPIRES_AT} must be an RFC 3339 timestamp")
    text = value.replace("z", "Z").replace("t", "T").replace(" ", "T")
    frac = re.search(r"\.([0-9]+)", text)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds
        text = text.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HeaderError(f"{STREAM_EXPIRES_AT} is not a valid date") from None
    return when.astimezone(timezone.utc)


def parse_bool(name: str, value: str | None) -> bool:
    """A ``true``/``false`` flag such as ``Stream-Closed`` (absent: False)."""
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise HeaderError(f"{name} must be true or false")
    return lowered == "true"


def parse_sub_offset(value: str | None) -> int:
    """``Stream-Fork-Sub-Offset``: a decimal count (absent: 0)."""
    if value is None:
        return 0
    if not _DECIMAL.fullmatch(value) or len(value) > 15:
        raise HeaderError(f"{STREAM_FORK_SUB_OFFSET} must be a whole number")
    return int(value)


def _producer_number(name: str, value: str) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > 16 or int(value) > MAX_PRODUCER_NUMBER:
        raise HeaderError(f"{name} must be an integer from 0 to 2^53-1")
    return int(value)


def parse_producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    """The three producer headers: all or none; a non-empty id; integers."""
    given = [v is not None for v in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given):
        raise HeaderError(f"{PRODUCER_ID}, {PRODUCER_EPOCH} and {PRODUCER_SEQ} go together")
    if not pid:
        raise HeaderError(f"{PRODUCER_ID} must not be empty")
    return Producer(pid, _producer_number(PRODUCER_EPOCH, epoch),
                    _producer_number(PRODUCER_SEQ, seq))


def stream_path(raw: str) -> str:
    """Decode the ``{path}`` of ``/v1/stream/{path}`` segment by segment.

    :raises InvalidStreamPath: bad percent-encoding, an encoded ``/`` inside a
        segment, ``.``/``..``/empty segments, NUL, over-long paths
    """
    segments = []
    for seg in raw.split("/"):
        try:
            text = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            raise e.InvalidStreamPath("stream path is not valid UTF-8") from None
        if "/" in text or "\\" in text:
            raise e.InvalidStreamPath("encoded slash or backslash in stream path")
        segments.append(text)
    return check_path("/".join(segments))
