"""Live reads: long-poll and Server-Sent Events.

Both wait on the store's notifier (``wait_for_messages``), never poll.

SSE framing (byte-exact, what clients and the conformance suite expect):
``event: data`` then one ``data:`` line per line of the payload -- split on
CRLF, CR and LF so a payload can never end an event or forge one, and a line
that starts with a space given one more (readers strip one) -- then a
blank line; after *every* data event a ``control`` event carrying
``streamNextOffset``, ``streamCursor`` and ``upToDate``; each pair goes out in
one write. Binary streams carry base64 (header ``Stream-SSE-Data-Encoding:
base64``); ``text/*`` and JSON carry text. At the tail of a closed stream the
last control says ``streamClosed`` (no cursor) and the response ends. The
server also ends a response after ``sse_max_duration`` (about 60 s, for CDN
collapsing) and on shutdown, each time after a final control event.

Live readers (SSE and long-poll together) are capped by
``ServerConfig.max_live_readers``: the handler takes a slot before calling
:func:`long_poll` or :func:`sse` (over the cap: 429), and an SSE body holds
its slot until it ends or is closed (:class:`HoldingSlot`).
"""
from __future__ import annotations

import base64
import json
import re
import time

from unbroken_engine import errors as e
from unbroken_engine.protocol.media import is_text
from unbroken_engine.protocol.offsets import NOW, START, format_offset

from . import cors
from . import headers as h
from .cursor import next_cursor
from .http import Response, StreamingResponse
from .reads import read_response

_LINES = re.compile(rb"\r\n|\r|\n")
KEEPALIVE = b":\n\n"
KEEPALIVE_EVERY = 15.0


async def long_poll(ctx, req, path: str, offset) -> Response:
    """``live=long-poll``: data now, data within the timeout, or 204."""
    store, chunk = ctx.store, ctx.config.read_chunk
    cursor = next_cursor(req.param("cursor"))
    if offset is NOW:
        at, closed = (await store.get(path)).next_offset, False
    else:
        r = await store.read(path, offset, chunk)
        if r.has_messages:
            return read_response(req, path, req.param("offset"), r,
                                 extra=[(h.STREAM_CURSOR, cursor)])
        at, closed = r.next_offset, r.closed
    deadline = time.monotonic() + ctx.config.long_poll_timeout
    while not closed and not ctx.shutting_down:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not await wait(ctx, path, at, remaining):
            break
        r = await store.read(path, at, chunk)
        if r.has_messages:
            return read_response(req, path, format_offset(at), r,
                                 extra=[(h.STREAM_CURSOR, cursor)])
        at, closed = r.next_offset, r.closed
    meta = await store.get(path)
    headers = [*cors.COMMON, (h.STREAM_NEXT_OFFSET, format_offset(meta.next_offset)),
               (h.STREAM_UP_TO_DATE, "true")]
    if meta.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    else:
        headers.append((h.STREAM_CURSOR, cursor))
    return Response(204, headers)


# ---- SSE ---------------------------------------------------------------------------------------

def data_event(payload: bytes, binary: bool) -> bytes:
    """One ``event: data``; text split into safe ``data:`` lines."""
    if binary:
        lines = [base64.b64encode(payload)]
    else:
        lines = _LINES.split(payload)
    # an SSE reader strips one space after "data:": a line that starts with
    # one gets another, so its own survives
    return b"event: data\n" + b"".join(
        (b"data: " if ln[:1] == b" " else b"data:") + ln + b"\n" for ln in lines) + b"\n"


def control_event(next_offset: int, cursor: str | None, up_to_date: bool,
                  closed: bool = False) -> bytes:
    """One ``event: control`` with the reader's position (a closing one carries
    ``streamClosed`` and no cursor)."""
    body = {"streamNextOffset": format_offset(next_offset)}
    if closed:
        body["streamClosed"] = True
    else:
        body["streamCursor"] = cursor
    if up_to_date:
        body["upToDate"] = True
    return b"event: control\ndata:" + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def sse(ctx, req, path: str, offset) -> StreamingResponse:
    """``live=sse``: catch up, then follow the stream until it closes."""
    store = ctx.store
    meta = await store.get(path)  # errors are plain HTTP, before the stream starts
    binary = not is_text(meta.content_type)
    if offset is NOW:
        offset = meta.next_offset
    elif offset is START:
        offset = None
    else:
        await store.read(path, offset, 0)  # validate the offset now: a 400, not an event
    headers = [*cors.COMMON, ("Content-Type", "text/event-stream"), cors.NO_CACHE,
               ("Connection", "keep-alive")]
    if binary:
        headers.append((h.STREAM_SSE_DATA_ENCODING, "base64"))
    return StreamingResponse(200, headers, _events(ctx, req, path, offset, binary))


async def _events(ctx, req, path: str, offset, binary: bool):
    store, cfg = ctx.store, ctx.config
    cursor = req.param("cursor")
    ends = time.monotonic() + cfg.sse_max_duration
    announced = False
    while True:
        try:
            r = await store.read(path, START if offset is None else offset, cfg.read_chunk)
        except (e.StreamNotFound, e.StreamSoftDeleted):
            return  # deleted while we followed it: end the response
        except e.BackendUnavailable:
            return  # the shared store went away: end cleanly; the client reconnects
        offset = r.next_offset
        cursor = next_cursor(cursor)
        if r.has_messages:
            # a data event and its control go out in one write; at the end of
            # a closed stream the control is the closing one
            yield data_event(bytes(r.data), binary) + control_event(
                offset, cursor, r.up_to_date, r.closed)
            announced = True
            if r.closed:
                return
            if not r.up_to_date:
                continue  # more to catch up on
            # at the tail: wait now rather than read again to find nothing
            # (with many readers, that empty read was one per reader per append)
        elif r.closed:
            yield control_event(offset, None, True, True)
            return
        elif not announced:
            yield control_event(offset, cursor, True)
            announced = True
        remaining = ends - time.monotonic()
        if remaining <= 0 or ctx.shutting_down:
            yield control_event(offset, next_cursor(cursor), True)
            return
        try:
            woken = await wait(ctx, path, offset, min(remaining, KEEPALIVE_EVERY))
        except e.BackendUnavailable:
            return  # the shared store went away: end cleanly; the client reconnects
        if not woken:
            yield KEEPALIVE  # finds a vanished client; ignored by SSE parsers


class HoldingSlot:
    """An SSE body that holds a live-reader slot: ``release`` runs exactly
    once, when the body ends (or fails) or is closed -- also when it is closed
    without ever being iterated (an async generator that never started runs
    no ``finally``, so the generator itself cannot do this)."""

    def __init__(self, chunks, release):
        self._chunks = chunks
        self._release = release

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:  # the end, a failure, or a cancellation: no more chunks
            self._done()
            raise

    async def aclose(self) -> None:
        """Close the underlying body and release the slot."""
        try:
            await self._chunks.aclose()
        finally:
            self._done()


async def _wait_store(ctx, path: str, offset: int, timeout: float) -> bool:
    try:
        return await ctx.store.wait_for_messages(path, offset, timeout)
    except (e.StreamNotFound, e.StreamSoftDeleted):
        return True  # gone: the caller's next read says so (404/410, or the SSE ends)


async def wait(ctx, path: str, offset: int, timeout: float) -> bool:
    """Wait for data after ``offset``, a close, a delete, or the server's shutdown.

    Shutdown needs no watcher of its own: :meth:`ServerContext.shutdown` wakes
    every waiter through the store's notifier, and callers check
    ``ctx.shutting_down`` before they wait (with no await in between).
    """
    return await _wait_store(ctx, path, offset, timeout)
