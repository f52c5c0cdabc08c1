"""Request handlers: one small function per operation on ``/v1/stream/{path}``.

Each takes the server context and a :class:`~.http.Request` and returns a
:class:`~.http.Response` (or a streaming one for SSE, see :mod:`.live`).
Parsing lives in :mod:`.headers`, error mapping in :mod:`.errors`, protocol
rules in the store; a handler only translates.
"""
from __future__ import annotations

import gzip
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

import anyio
import xxhash

from unbroken_engine import __version__
from unbroken_engine import errors as e
from unbroken_engine.media import is_json
from unbroken_engine.offsets import NOW, START, format_offset, parse_offset
from unbroken_engine.producers import ProducerOutcome
from unbroken_engine.store import AppendOptions, CreateOptions, StreamStore
from unbroken_engine.streams import check_path

from . import cors, live
from . import headers as h
from .errors import text_response
from .headers import HeaderError
from .http import Request, Response

STREAM_PREFIX = "/v1/stream/"
RESERVED_PREFIX = "__ds"
GZIP_MIN = 1024


@dataclass
class ServerConfig:
    """Tunables of the HTTP layer (see ``unbroken serve --help``)."""

    long_poll_timeout: float = 2.0
    sse_max_duration: float = 60.0
    sse_send_timeout: float = 10.0
    max_body: int = 16 << 20
    max_header_bytes: int = 64 << 10
    read_chunk: int = 1 << 20
    request_timeout: float = 30.0
    idle_timeout: float = 75.0
    shutdown_grace: float = 10.0
    max_connections: int = 4096
    """Open connections served at once (``--max-connections``). One more gets
    a complete ``503`` with ``Retry-After`` and is closed. ``serve()`` lowers
    it to fit the process's ``RLIMIT_NOFILE`` (see :func:`.app.connection_cap`)."""
    max_live_readers: int = 2048
    """SSE responses and long-polls open at once, together
    (``--max-live-readers``). One more live request gets ``429`` with
    ``Retry-After``; catch-up reads and appends are not counted."""
    max_inflight_bytes: int = 256 << 20
    """Bytes of request bodies being received or awaiting the store, over all
    connections (``--max-inflight-bytes``). A body that would go over gets
    ``503`` with ``Retry-After`` (the connection is closed) instead of being
    buffered; a body is always admitted when no other is in flight, so one
    body up to ``max_body`` can always get through."""


#: seconds a shed client is asked to wait (``Retry-After``) before trying again
RETRY_AFTER = "1"


@dataclass
class ServerContext:
    """What every handler may use: the store, the config, the shutdown signal,
    and the bookkeeping graceful shutdown and load shedding need (open
    connections, idle ones, live readers, request bytes in flight, refusals)."""

    store: StreamStore
    config: ServerConfig = field(default_factory=ServerConfig)
    started: float = field(default_factory=time.monotonic)
    shutting_down: bool = False
    shutdown_event: anyio.Event | None = None
    connections: int = 0
    idle_scopes: set = field(default_factory=set)
    #: the connection cap in force (``serve()`` sets it; 0: ``config.max_connections``)
    connection_limit: int = 0
    live_readers: int = 0
    inflight_bytes: int = 0
    refused_connections: int = 0
    refused_live_readers: int = 0
    refused_bodies: int = 0

    def shutdown(self) -> None:
        """Stop: live readers finish, idle connections close."""
        self.shutting_down = True
        if self.shutdown_event is not None:
            self.shutdown_event.set()
        for scope in list(self.idle_scopes):
            scope.cancel()
        self.store.notify_all()

    def connection_opened(self) -> None:
        """Count a connection being served (unconditionally)."""
        self.connections += 1

    def connection_closed(self) -> None:
        """Count a served connection as closed."""
        self.connections -= 1

    def admit_connection(self) -> bool:
        """Count a new connection if it fits under the cap; False (and counted
        as refused) if it does not."""
        limit = self.connection_limit or self.config.max_connections
        if self.connections >= limit:
            self.refused_connections += 1
            return False
        self.connections += 1
        return True

    def admit_live_reader(self) -> bool:
        """Take a live-reader slot (SSE or long-poll); False (and counted as
        refused) when they are all taken. Give it back with
        :meth:`live_reader_done`."""
        if self.live_readers >= self.config.max_live_readers:
            self.refused_live_readers += 1
            return False
        self.live_readers += 1
        return True

    def live_reader_done(self) -> None:
        """Give back a slot taken by :meth:`admit_live_reader`."""
        self.live_readers -= 1

    def reserve_body(self, held: int, more: int) -> bool:
        """Reserve ``more`` bytes for a request body that already holds ``held``.

        Admitted when the total stays within ``max_inflight_bytes``, or when
        no other body is in flight (so one body up to ``max_body`` always gets
        through). False (counted as refused) otherwise; the caller then owns
        ``held`` bytes still, to give back with :meth:`release_body`.
        """
        if (self.inflight_bytes + more > self.config.max_inflight_bytes
                and self.inflight_bytes > held):
            self.refused_bodies += 1
            return False
        self.inflight_bytes += more
        return True

    def release_body(self, held: int) -> None:
        """Give back bytes reserved with :meth:`reserve_body`."""
        self.inflight_bytes -= held

    @contextmanager
    def idle(self, scope: anyio.CancelScope):
        """Run the wait for a connection's next request in ``scope``, which
        shutdown cancels."""
        if self.shutting_down:
            scope.cancel()
        self.idle_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self.idle_scopes.discard(scope)


# ---- routing -------------------------------------------------------------------------

async def handle(ctx: ServerContext, req: Request):
    """Route a request to its handler; errors become responses in :mod:`.errors`."""
    if req.method == "OPTIONS":
        return Response(204, [*cors.COMMON, cors.PREFLIGHT_MAX_AGE])
    if req.path == "/health":
        if req.method in ("GET", "HEAD"):
            return health(ctx, req)
        return _method_not_allowed("GET, HEAD, OPTIONS")
    if not req.path.startswith(STREAM_PREFIX):
        return text_response(404, "not found: streams live under /v1/stream/{path}")
    path = stream_path(req.path[len(STREAM_PREFIX):])
    if path.startswith(RESERVED_PREFIX):
        return text_response(404, f"paths starting with {RESERVED_PREFIX} are reserved")
    handler = _HANDLERS.get(req.method)
    if handler is None:
        return _method_not_allowed("GET, HEAD, PUT, POST, DELETE, OPTIONS")
    return await handler(ctx, req, path)


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


def _method_not_allowed(allow: str) -> Response:
    return text_response(405, "method not allowed", [("Allow", allow)])


def health(ctx: ServerContext, req: Request) -> Response:
    """``GET /health``: status, store kind, uptime, version, and the load:
    open connections, live readers (and how many of them are parked, waiting
    for data), request-body bytes in flight, and how many of each were
    refused since start-up."""
    body = json.dumps({"status": "shutting-down" if ctx.shutting_down else "ok",
                       "store": ctx.store.kind,
                       "uptime": round(time.monotonic() - ctx.started, 3),
                       "version": __version__,
                       "connections": ctx.connections,
                       "live_readers": ctx.live_readers,
                       "parked_readers": ctx.store.waiting(),
                       "inflight_bytes": ctx.inflight_bytes,
                       "refused": {"connections": ctx.refused_connections,
                                   "live_readers": ctx.refused_live_readers,
                                   "bodies": ctx.refused_bodies}}).encode()
    return Response(200, [*cors.COMMON, cors.NO_STORE, ("Content-Type", "application/json")],
                    b"" if req.method == "HEAD" else body)


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
    if is_json(r.content_type):
        body = b"[" + r.data + b"]" if r.found else b"[]"
    else:
        body = r.data
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


def etag(path: str, start: str, r) -> str:
    """An ETag for a read: the path, where it started, where it ended, closed."""
    key = f"{path}\0{start}\0{r.next_offset}\0{int(r.closed)}".encode("utf-8", "surrogatepass")
    return f'"{xxhash.xxh3_64_hexdigest(key)}"'


def _matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or tag in candidates or f"W/{tag}" in candidates


def read_response(req: Request, path: str, raw_offset: str | None, r, *, status: int = 200,
                  cache=None, extra=()) -> Response:
    """Headers and body of a read (catch-up and long-poll with data)."""
    headers = [*cors.COMMON, ("Content-Type", r.content_type),
               (h.STREAM_NEXT_OFFSET, format_offset(r.next_offset)), *extra]
    if r.up_to_date:
        headers.append((h.STREAM_UP_TO_DATE, "true"))
    if r.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    if raw_offset != "now":
        tag = etag(path, raw_offset or "-1", r)
        headers.append(("ETag", tag))
        if _matches(req.header("if-none-match"), tag):
            return Response(304, [*cors.COMMON, ("ETag", tag)])
    headers.append(cache or (cors.NO_CACHE if r.up_to_date else cors.IMMUTABLE_CHUNK))
    body = r.data
    if len(body) >= GZIP_MIN and accepts_gzip(req.header("accept-encoding")):
        body = gzip.compress(body, compresslevel=1)
        headers = [(k, v[:-1] + '-gz"' if k == "ETag" else v) for k, v in headers]
        headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
    return Response(status, headers, body)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` does not)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


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


_HANDLERS = {
    "PUT": handle_create,
    "POST": handle_append,
    "GET": handle_read,
    "HEAD": handle_head,
    "DELETE": handle_delete,
}
