"""Fixtures for the HTTP server's tests.

Test files run in importlib mode and cannot import each other, so every
shared helper lives here and reaches the tests through a fixture:

* ``make_ctx(store=None, **config)`` -- a :class:`ServerContext` over a
  MemoryStreamStore (or the given store) with a :class:`ServerConfig`; its
  ``shutdown_event`` is set up as ``serve()`` would, so ``ctx.shutdown()``
  ends live readers of an in-memory pair too.
* ``open_pair(ctx)`` -- an async context manager giving a
  :class:`ClientServerPair`: an ``h11.Connection(h11.CLIENT)`` coupled to
  ``serve_connection`` over an in-memory byte stream (after h11's
  ConnectionPair). Fast and deterministic; ``server_buffer`` bounds the
  server-to-client direction to simulate a reader that stops reading.
* ``run_server(ctx)`` -- an async context manager running ``app.serve`` on
  127.0.0.1, port 0; ``server.connect()`` gives an :class:`HTTPClient` over a
  real socket. Leaving the block calls ``ctx.shutdown()``.
* ``call(ctx, method, target, headers, body)`` -- ``routing.handle`` on a
  :class:`Request`, returning a :class:`Resp` (streaming bodies untouched).
* ``store`` -- a MemoryStreamStore or a FileBackedStreamStore in tmp_path
  (parametrized), closed at teardown.
* ``sse_parse(raw)`` -- the SSE parser of tests/support/sse.py, following the
  WHATWG rules (lines end at CRLF, CR or LF), so a test sees exactly what a
  browser would; the :class:`SSEReader` of ``client.open_sse(target)`` uses
  it chunk by chunk.

Every wait has a generous liveness bound (``TIMEOUT``); no test asserts timing.
"""
from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import h11
import pytest

from support.sse import SSEEvent, SSEParser, parse_sse
from support.stores import close_test_store, open_test_store, until_parked
from unbroken_engine import MemoryStreamStore
from unbroken_engine.log.segmented import LogConfig
from unbroken_server.app import serve
from unbroken_server.connection import serve_connection
from unbroken_server.context import ServerConfig, ServerContext
from unbroken_server.errors import error_response
from unbroken_server.http import Request, StreamingResponse
from unbroken_server.routing import handle

#: liveness bound for any single wait in these tests (never a timing assertion)
TIMEOUT = 10.0


# ---- in-memory byte stream ----------------------------------------------------------------

class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory, bidirectional byte stream made of two
    memory object streams. ``receive`` hands out at most one sent item (split
    to ``max_bytes``), so the peer sees writes as they were made."""

    def __init__(self, send: anyio.abc.ObjectSendStream, receive: anyio.abc.ObjectReceiveStream):
        self._send = send
        self._receive = receive
        self._pending = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = await self._receive.receive()  # EndOfStream when the peer closed
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def send(self, item: bytes) -> None:
        if item:
            await self._send.send(bytes(item))  # BrokenResourceError when the peer closed

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair(server_buffer: float = math.inf):
    """``(client_end, server_end)``; ``server_buffer`` bounds the number of
    writes the server can queue before a send blocks (a non-reading client)."""
    c2s_send, c2s_receive = anyio.create_memory_object_stream[bytes](math.inf)
    s2c_send, s2c_receive = anyio.create_memory_object_stream[bytes](server_buffer)
    return MemoryByteStream(c2s_send, s2c_receive), MemoryByteStream(s2c_send, c2s_receive)


# ---- responses --------------------------------------------------------------------------

@dataclass
class Resp:
    """A response as a test sees it: ``headers`` keyed by lower-case name
    (repeated headers joined with ", "), ``header_list`` in order."""

    status: int
    headers: dict
    body: bytes = b""
    header_list: list = field(default_factory=list)
    informational: list = field(default_factory=list)
    reason: bytes = b""
    #: the body iterator of a StreamingResponse (``call`` on an SSE request)
    chunks: object = None

    def json(self):
        return json.loads(self.body)


def _resp_headers(pairs) -> tuple[dict, list]:
    out: dict = {}
    items = []
    for k, v in pairs:
        k = k.decode("latin-1").lower() if isinstance(k, bytes) else k.lower()
        v = v.decode("latin-1") if isinstance(v, bytes) else v
        items.append((k, v))
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out, items


# ---- an HTTP/1.1 client on h11 ----------------------------------------------------------------

class ServerClosed(Exception):
    """The server closed the connection where a response was expected."""


class HTTPClient:
    """An ``h11.Connection(h11.CLIENT)`` over any anyio byte stream.

    Requests go out either through h11 (:meth:`send_request`) or as raw
    bytes (:meth:`send_raw`); :meth:`read_response` parses the next response
    either way (for raw requests pass ``method`` so h11 knows how the
    response is framed, e.g. HEAD).
    """

    def __init__(self, stream: anyio.abc.ByteStream, host: str = "test.local"):
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)
        self.eof = False

    # -- sending
    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_slowly(self, data: bytes, step: int = 1) -> None:
        """Send ``data`` ``step`` bytes per write, yielding between writes."""
        for i in range(0, len(data), step):
            await self.stream.send(data[i:i + step])
            await anyio.sleep(0)

    def request_bytes(self, method: str, target: str, headers=(), body: bytes = b"") -> bytes:
        """The bytes of a well-formed request (Host and Content-Length added)."""
        names = {k.lower() for k, _ in headers}
        hdrs = [] if "host" in names else [("Host", self.host)]
        hdrs += list(headers)
        if body and "content-length" not in names and "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _send_event(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send(data)

    async def send_head(self, method: str, target: str, headers=()) -> None:
        names = {k.lower() for k, _ in headers}
        hdrs = [] if "host" in names else [("Host", self.host)]
        await self._send_event(h11.Request(method=method, target=target,
                                           headers=hdrs + list(headers)))

    async def send_body(self, body: bytes = b"", end: bool = True) -> None:
        if body:
            await self._send_event(h11.Data(data=body))
        if end:
            await self._send_event(h11.EndOfMessage())

    async def send_request(self, method: str, target: str, headers=(), body: bytes = b"") -> None:
        names = {k.lower() for k, _ in headers}
        headers = list(headers)
        if body and "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(len(body))))
        await self.send_head(method, target, headers)
        await self.send_body(body)

    async def request(self, method: str, target: str, headers=(), body: bytes = b"") -> Resp:
        await self.send_request(method, target, headers, body)
        return await self.read_response()

    # -- receiving
    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.eof = True
            return b""

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self._receive())

    def _prime(self, method: str) -> None:
        """Make h11 expect a response to a request sent as raw bytes."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        if self.conn.our_state is h11.IDLE:
            self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            self.conn.send(h11.EndOfMessage())

    async def read_head(self, method: str | None = None, timeout: float = TIMEOUT) -> Resp:
        """The next response head (1xx responses are collected on the way)."""
        if method is not None:
            self._prime(method)
        informational = []
        with anyio.fail_after(timeout):
            while True:
                event = await self.next_event()
                if isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                    continue
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    raise ServerClosed("connection closed before a response")
                raise AssertionError(f"unexpected event {event!r}")
        headers, items = _resp_headers(event.headers)
        return Resp(event.status_code, headers, b"", items, informational, event.reason)

    async def read_body(self, timeout: float = TIMEOUT) -> bytes:
        body = bytearray()
        with anyio.fail_after(timeout):
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise ServerClosed(f"body interrupted by {event!r}")
        self._next_cycle()
        return bytes(body)

    async def read_response(self, method: str | None = None, timeout: float = TIMEOUT) -> Resp:
        resp = await self.read_head(method, timeout)
        resp.body = await self.read_body(timeout)
        return resp

    def _next_cycle(self) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()

    async def read_chunk(self, timeout: float = TIMEOUT) -> bytes | None:
        """The next whole HTTP chunk of a chunked body; None at its end."""
        data = bytearray()
        with anyio.fail_after(timeout):
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    data += event.data
                    if event.chunk_end:
                        return bytes(data)
                elif isinstance(event, h11.EndOfMessage):
                    self._next_cycle()
                    assert not data, "a chunk was cut short by the end of the body"
                    return None
                else:
                    raise ServerClosed(f"body interrupted by {event!r}")

    async def read_until_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Everything left until the server closes (raw bytes, h11 bypassed)."""
        data, closed = self.conn.trailing_data
        out = bytearray(data)
        if closed or self.eof:
            return bytes(out)
        with anyio.fail_after(timeout):
            while True:
                piece = await self._receive()
                if not piece:
                    return bytes(out)
                out += piece

    async def open_sse(self, target: str, headers=()) -> "SSEReader":
        """Send a GET and read the head of its (SSE) response."""
        await self.send_request("GET", target, headers)
        head = await self.read_head()
        return SSEReader(self, head)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass


class SSEReader:
    """The body of an SSE response, chunk by chunk and event by event."""

    def __init__(self, client: HTTPClient, head: Resp):
        self.client = client
        self.head = head
        self.parser = SSEParser()
        self.chunks: list[bytes] = []
        self.events: list[SSEEvent] = []
        self.ended = False  # the response body ended (EndOfMessage)

    async def next_events(self, timeout: float = TIMEOUT) -> list[SSEEvent]:
        """The events of the next HTTP chunk (possibly none: a comment)."""
        chunk = await self.client.read_chunk(timeout)
        if chunk is None:
            self.ended = True
            return []
        self.chunks.append(chunk)
        events = self.parser.feed(chunk, len(self.chunks) - 1)
        self.events += events
        return events

    async def read_until(self, predicate, timeout: float = TIMEOUT) -> list[SSEEvent]:
        """Read until ``predicate(event)`` holds for an event (returned list
        ends with it) or the response ends (then AssertionError)."""
        got = []
        with anyio.fail_after(timeout):
            while True:
                for ev in await self.next_events():
                    got.append(ev)
                    if predicate(ev):
                        return got
                if self.ended:
                    raise AssertionError(f"SSE response ended before the predicate held: {got}")

    async def read_to_end(self, timeout: float = TIMEOUT) -> list[SSEEvent]:
        got = []
        with anyio.fail_after(timeout):
            while not self.ended:
                got += await self.next_events()
        return got

    async def controls(self, n: int, timeout: float = TIMEOUT) -> list[SSEEvent]:
        """Read until ``n`` more control events have arrived."""
        seen = 0

        def enough(ev):
            nonlocal seen
            seen += ev.event == "control"
            return seen >= n
        return await self.read_until(enough, timeout)


# ---- the in-memory pair ------------------------------------------------------------------

class ClientServerPair(HTTPClient):
    """An h11 client wired to ``serve_connection`` over memory streams."""

    def __init__(self, ctx: ServerContext, server_buffer: float = math.inf):
        client_end, server_end = memory_stream_pair(server_buffer)
        super().__init__(client_end)
        self.ctx = ctx
        self.server_end = server_end
        self.server_done = anyio.Event()

    async def _serve(self) -> None:
        try:
            await serve_connection(self.server_end, self.ctx)
        finally:
            self.server_done.set()

    async def next_write(self, timeout: float = TIMEOUT) -> bytes:
        """The bytes of the server's next ``send()`` (h11 bypassed), to check
        how a response is split into writes (network packets)."""
        assert not self.stream._pending
        with anyio.fail_after(timeout):
            return await self.stream._receive.receive()

    async def wait_server_done(self, timeout: float = TIMEOUT) -> None:
        """Wait until the server side of this connection has finished."""
        with anyio.fail_after(timeout):
            await self.server_done.wait()


@asynccontextmanager
async def _open_pair(ctx: ServerContext, *, server_buffer: float = math.inf):
    pair = ClientServerPair(ctx, server_buffer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pair._serve)
        try:
            yield pair
        finally:
            # A server task that is still running (an SSE reader waiting for
            # data notices a vanished client only on its next write) is
            # cancelled; tests that check a task ends by itself wait for
            # ``server_done`` before leaving the block.
            await pair.aclose()
            tg.cancel_scope.cancel()


@pytest.fixture
def open_pair():
    """``async with open_pair(ctx) as pair:`` -- see :class:`ClientServerPair`."""
    return _open_pair


# ---- contexts, stores ------------------------------------------------------------------------

def _make_ctx(store=None, **config) -> ServerContext:
    ctx = ServerContext(store if store is not None else MemoryStreamStore(),
                        ServerConfig(**config))
    ctx.shutdown_event = anyio.Event()  # as serve() does: live readers see shutdown
    return ctx


@pytest.fixture
def make_ctx():
    """``make_ctx(store=None, **ServerConfig fields)``; call inside an async test."""
    return _make_ctx


async def _until_parked(ctx: ServerContext, path: str, n: int = 1,
                        timeout: float = TIMEOUT) -> None:
    """Return once ``n`` live readers of ``path`` are parked in the store,
    waiting for data (``store.waiting``; :func:`support.stores.until_parked`):
    what a test appends, closes or deletes after is then sure to reach them
    through the wake-up, not their first read. A reader that never parks
    fails the test."""
    await until_parked(ctx.store, path, n, timeout)


@pytest.fixture(name="until_parked")
def until_parked_fixture():
    """``await until_parked(ctx, path, n=1)`` -- see :func:`_until_parked`."""
    return _until_parked


@pytest.fixture(params=["memory", "file"])
async def store(request, tmp_path, anyio_backend):
    """Each store kind the server runs on (the file store in its default
    configuration); closed after the test."""
    s = await open_test_store(request.param, tmp_path, config=LogConfig())
    try:
        yield s
    finally:
        await close_test_store(s)


async def _call(ctx: ServerContext, method: str, target: str, headers=None,
                body: bytes = b"") -> Resp:
    items = [(k.lower(), v) for k, v in (headers.items() if isinstance(headers, dict)
                                          else (headers or ()))]
    try:
        response = await handle(ctx, Request.from_target(method, target, items, body))
    except Exception as exc:  # as serve_connection does: every failure is a response
        response = error_response(exc)
    hdrs, pairs = _resp_headers(response.headers)
    if isinstance(response, StreamingResponse):
        return Resp(response.status, hdrs, b"", pairs, chunks=response.chunks)
    return Resp(response.status, hdrs, bytes(response.body), pairs)


@pytest.fixture
def call():
    """``await call(ctx, method, target, headers=None, body=b"")`` -> :class:`Resp`:
    ``handle()`` plus the exception-to-response step of the connection loop."""
    return _call


@pytest.fixture
def sse_parse():
    """``parse_sse(raw) -> [SSEEvent]``."""
    return parse_sse


# ---- a real server -------------------------------------------------------------------------------

class RunningServer:
    def __init__(self, ctx: ServerContext, port: int):
        self.ctx = ctx
        self.port = port

    async def connect(self) -> HTTPClient:
        stream = await anyio.connect_tcp("127.0.0.1", self.port)
        return HTTPClient(stream, host=f"127.0.0.1:{self.port}")

    async def request(self, method: str, target: str, headers=(), body: bytes = b"") -> Resp:
        """One request on a fresh connection, closed afterwards."""
        client = await self.connect()
        try:
            return await client.request(method, target, headers, body)
        finally:
            await client.aclose()


@asynccontextmanager
async def _run_server(ctx: ServerContext):
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        async def run(task_status=anyio.TASK_STATUS_IGNORED):
            try:
                await serve(ctx, "127.0.0.1", 0, handle_signals=False, task_status=task_status)
            finally:
                done.set()
        port = await tg.start(run)
        server = RunningServer(ctx, port)
        server.done = done
        try:
            yield server
        finally:
            ctx.shutdown()
            with anyio.move_on_after(ctx.config.shutdown_grace + TIMEOUT, shield=True):
                await done.wait()
            tg.cancel_scope.cancel()


@pytest.fixture
def run_server():
    """``async with run_server(ctx) as server:`` -- ``server.port``,
    ``server.connect()``, ``server.request(...)``, ``server.done`` (an Event)."""
    return _run_server
