"""How a read frames messages: the one owner of the bytes a read adds.

A stream stores messages; a read returns them in one body:

* a JSON stream's read is one JSON array -- ``[`` + the values joined by
  ``,`` + ``]``, and ``[]`` when it holds none. Each stored JSON record is
  already its values joined by ``,`` (an append flattens one array level),
  and the log's JSON-mode read joins records the same way (in C, as it
  gathers them), so the array's *contents* are what the log and the shared
  backends hand up; only :func:`join` adds the brackets;
* any other stream's read is its messages' bytes, concatenated.

Whether a read holds a message is decided here too (:func:`holds_messages`),
for catch-up, long-poll and SSE alike. It needs no count from the store: no
message is ever empty (an append with no body is refused, a fork's prefix
keeps at least one byte or value, and a JSON value is at least one byte), so
a body holds messages exactly when it is longer than its empty framing. That
is content-type aware on purpose: a binary message whose bytes are ``[]`` is
a message.
"""
from __future__ import annotations

from typing import Sequence

#: The body of a JSON read that holds no message.
EMPTY_JSON_ARRAY = b"[]"


def empty(json: bool) -> bytes:
    """The body of a read that holds no message."""
    return EMPTY_JSON_ARRAY if json else b""


def join(parts: Sequence, json: bool) -> bytes:
    """One read's body from its parts, in log order.

    :param parts: byte strings (or buffers); for a JSON stream each is the
        contents of an array (values joined by ``,``; empty parts are skipped)
    :param json: whether the stream is a JSON stream
    """
    if json:
        return b"[" + b",".join(p for p in parts if len(p)) + b"]"
    if len(parts) == 1:
        return parts[0]  # no copy for the common single part
    return b"".join(parts)


def holds_messages(body, json: bool) -> bool:
    """Whether a read's body holds at least one message (see the module
    docstring for why the body alone decides)."""
    return len(body) > (len(EMPTY_JSON_ARRAY) if json else 0)
