"""Request handlers: one small function per operation on ``/v1/stream/{path}``.

Each takes the server context and a :class:`~.http.Request` and returns a
:class:`~.http.Response` (or a streaming one for SSE, see :mod:`.live`).
Parsing lives in :mod:`.headers`, error mapping in :mod:`.errors`, protocol
rules in the store; a handler only translates.
"""
from __future__ import annotations

from dataclasses import replace

from unbroken_engine import errors as e
from unbroken_engine.protocol import framing
from unbroken_engine.protocol.media import is_json
from unbroken_engine.protocol.offsets import NOW, START, format_offset, parse_offset
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.interface import AppendOptions, CreateOptions

from . import cors
from . import headers as h
from . import live
from .context import RETRY_AFTER, ServerContext
from .errors import text_response
from .headers import STREAM_PREFIX, HeaderError, stream_path
from .http import Request, Response
from .reads import read_response

# ---- PUT: create ------------------------------------------------------------------------

def _create_options(req: Request) -> CreateOptions:
    ttl = h.parse_ttl(req.header("stream-ttl"))
    expires_at = h.parse_expires_at(req.header("stream-expires-at"))
    if ttl is not None and expires_at is not None:
        raise HeaderError(f"{h.STREAM_TTL} and {h.STREAM_EXPIRES_AT} are exclusive")
    fork_from = req.header("stream-forked-from")
    fork_offset_raw = req.header("stream-fork-offset")
    sub_raw = req.header("stream-fork-sub-offset")
    if fork_from is None and (fork_offset_raw is not None or sub_raw is not None):
        raise HeaderError(f"{h.STREAM_FORK_OFFSET}/{h.STREAM_FORK_SUB_OFFSET} need "
                          f"{h.STREAM_FORKED_FROM}")
    fork_offset = None
    if fork_offset_raw is not None:
        parsed = parse_offset(fork_offset_raw)
        fork_offset = 0 if parsed is START else (None if parsed is NOW else parsed)
    sub = h.parse_sub_offset(sub_raw)
    if sub and fork_offset_raw is None:
        raise HeaderError(f"{h.STREAM_FORK_SUB_OFFSET} needs {h.STREAM_FORK_OFFSET} "
                          f"(the default fork offset is the tail: no message follows it)")
    return CreateOptions(content_type=_content_type(req), ttl=ttl, expires_at=expires_at,
                         closed=h.parse_bool(h.STREAM_CLOSED, req.header("stream-closed")),
                         data=req.body,
                         fork_from=None if fork_from is None else _source_path(fork_from),
                         fork_offset=fork_offset, fork_sub_offset=sub)


def _content_type(req: Request) -> str | None:
    ct = req.header("content-type")
    if ct is None or not ct.strip():
        return None
    if "/" not in ct.split(";", 1)[0] or len(ct) > 256:
        raise HeaderError("Content-Type must be a media type such as text/plain")
    return ct.strip()


def _source_path(value: str) -> str:
    """``Stream-Forked-From`` names a stream by its URL path (or bare path)."""
    value = value.strip()
    if value.startswith(STREAM_PREFIX):
        return stream_path(value[len(STREAM_PREFIX):])
    if value.startswith("/"):
        raise e.InvalidStreamPath(f"{h.STREAM_FORKED_FROM} must name a stream under "
                                  f"{STREAM_PREFIX}")
    return stream_path(value)


async def handle_create(ctx: ServerContext, req: Request, path: str) -> Response:
    """``PUT``: create, confirm an identical stream (200), or fork."""
    result = await ctx.store.create(path, _create_options(req))
    meta = result.meta
    headers = [*cors.COMMON, ("Content-Type", meta.content_type),
               (h.STREAM_NEXT_OFFSET, format_offset(meta.next_offset))]
    if meta.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    if result.created:
        host = req.header("host") or "localhost"
        headers.append(("Location", f"{req.scheme}://{host}{req.path}"))
    return Response(201 if result.created else 200, headers)


# ---- POST: append / close -------------------------------------------------------------------

async def handle_append(ctx: ServerContext, req: Request, path: str) -> Response:
    """``POST``: append, append and close, or close only."""
    producer = h.parse_producer(req.header("producer-id"), req.header("producer-epoch"),
                                req.header("producer-seq"))
    close = h.parse_bool(h.STREAM_CLOSED, req.header("stream-closed"))
    body = req.body
    if not body and not close:
        raise e.EmptyBody("an append needs a body (or Stream-Closed: true)")
    content_type = None
    if body:
        content_type = _content_type(req)
        if content_type is None:
            raise HeaderError("Content-Type is required on an append with a body")
    result = await ctx.store.append(path, body, AppendOptions(
        content_type=content_type, seq=req.header("stream-seq"), producer=producer, close=close))
    headers = [*cors.COMMON, (h.STREAM_NEXT_OFFSET, format_offset(result.next_offset))]
    if result.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    status = 204
    if producer is not None:
        headers += [(h.PRODUCER_EPOCH, str(result.producer_epoch)),
                    (h.PRODUCER_SEQ, str(result.producer_seq))]
        if result.outcome is ProducerOutcome.ACCEPTED and body:
            status = 200
    return Response(status, headers)


# ---- GET: catch-up, long-poll, SSE ------------------------------------------------------------

async def handle_read(ctx: ServerContext, req: Request, path: str):
    """``GET``: a catch-up read, or live (``live=long-poll`` / ``live=sse``),
    or the last message (``last=true``, an extension)."""
    if any(name == "last" for name, _ in req.query):
        return await handle_read_last(ctx, req, path)
    try:
        raw = req.param("offset")
        mode = req.param("live")
        offset = parse_offset(raw)
        if raw == "":
            raise e.InvalidOffset("", "empty offset")
    except (e.InvalidOffset, HeaderError):
        await ctx.store.get(path)  # a missing stream is a 404 before a bad offset
        raise
    if mode in ("long-poll", "sse") and raw is None:
        await ctx.store.get(path)
        raise HeaderError(f"live={mode} needs an offset (-1, now, or one the server returned)")
    if mode in ("long-poll", "sse"):
        return await _live_read(ctx, req, path, offset, mode)
    r = await ctx.store.read(path, offset, ctx.config.read_chunk)
    return read_response(req, path, raw, r, cache=cors.NO_STORE if offset is NOW else None)


async def handle_read_last(ctx: ServerContext, req: Request, path: str) -> Response:
    """``GET ?last=true``: the stream's last message and its tail, marked
    ``Stream-Read: last`` (an extension; see docs/protocol-choices.md).

    The body is what a read of that one message would be: ``[value]`` (or
    ``[]``) for a JSON stream, the last append's bytes (or nothing) for any
    other. ``Stream-Last-Offset`` is where the record holding it starts.
    """
    try:
        last, live_mode, raw = req.param("last"), req.param("live"), req.param("offset")
        if last != "true":
            raise HeaderError("last must be true (or absent)")
        if live_mode is not None:
            raise HeaderError("last=true cannot be combined with live=")
        if raw not in (None, "-1"):
            raise HeaderError("last=true reads from the tail: offset must be -1 or absent")
    except HeaderError:
        await ctx.store.get(path)  # a missing stream is a 404 before a bad query
        raise
    r = await ctx.store.read_last(path)
    body = framing.join([r.data] if r.found else [], is_json(r.content_type))
    headers = [*cors.COMMON, ("Content-Type", r.content_type),
               (h.STREAM_NEXT_OFFSET, format_offset(r.next_offset)),
               (h.STREAM_UP_TO_DATE, "true"), (h.STREAM_READ, "last"), cors.NO_STORE]
    if r.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    if r.found:
        headers.append((h.STREAM_LAST_OFFSET, format_offset(r.offset)))
    return Response(200, headers, body)


async def _live_read(ctx: ServerContext, req: Request, path: str, offset, mode: str):
    """A long-poll or SSE read, if a live-reader slot is free (else 429).

    The slot is held until the long-poll answers, or until the SSE body ends
    or is closed (:class:`~.live.HoldingSlot`).
    """
    if not ctx.admit_live_reader():
        return text_response(
            429, f"too many live readers (limit {ctx.config.max_live_readers}): retry "
                 f"later, or read without live=", [("Retry-After", RETRY_AFTER)])
    if mode == "long-poll":
        try:
            return await live.long_poll(ctx, req, path, offset)
        finally:
            ctx.live_reader_done()
    try:
        response = await live.sse(ctx, req, path, offset)
    except BaseException:
        ctx.live_reader_done()
        raise
    return replace(response, chunks=live.HoldingSlot(response.chunks, ctx.live_reader_done))


# ---- HEAD, DELETE ------------------------------------------------------------------------------------

async def handle_head(ctx: ServerContext, req: Request, path: str) -> Response:
    """``HEAD``: metadata, never a body, never renews a TTL."""
    meta = await ctx.store.get(path)
    headers = [*cors.COMMON, cors.NO_STORE, ("Content-Type", meta.content_type),
               (h.STREAM_NEXT_OFFSET, format_offset(meta.next_offset))]
    if meta.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    if meta.ttl is not None:
        headers.append((h.STREAM_TTL, str(meta.ttl)))
    if meta.expires_at is not None:
        headers.append((h.STREAM_EXPIRES_AT,
                        meta.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")))
    return Response(200, headers)


async def handle_delete(ctx: ServerContext, req: Request, path: str) -> Response:
    """``DELETE``: 204; with live forks the stream is soft-deleted."""
    await ctx.store.delete(path)
    return Response(204, list(cors.COMMON))
