"""The load generator's HTTP/1.1 client: an incremental response parser
(Content-Length, chunked, until close) and keep-alive connections over raw
asyncio sockets, one request at a time, bodies handed over as they arrive."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from .options import KiB

CONNECT_PARALLEL = 50           # connections opened at once


class ProtocolError(Exception):
    """The server's bytes are not HTTP/1.1 as this client understands it."""


@dataclass
class Response:
    """A parsed response: status, headers and (unless streamed) body."""

    status: int
    headers: dict   # lower-cased name -> value (repeated headers joined by ", ")
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case), None when absent."""
        return self.headers.get(name)


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)
MAX_HEAD = 256 * KiB


def parse_head(head: bytes) -> Response:
    """``HTTP/1.1 204 No Content\\r\\nA: b...`` (without the blank line) -> Response."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}") from None
    headers: dict = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        key = name.strip().lower().decode("latin-1")
        val = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return Response(status, headers)


class ResponseParser:
    """Incremental parser of HTTP/1.1 responses (Content-Length, chunked, or
    delimited by the connection's end).

    Set ``expect_body`` (False after a HEAD) and ``on_body`` before each
    request: with ``on_body`` the body is handed over piece by piece (as
    memoryviews or bytearrays, valid only during the call) and
    ``Response.body`` stays empty; without, the body is collected.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._resp: Response | None = None
        self._parts: list = []
        self.expect_body = True
        self.on_body: Callable | None = None

    @property
    def idle(self) -> bool:
        """Between responses with nothing buffered."""
        return self._state == _HEAD and not self._buf

    def _deliver(self, piece) -> None:
        if self.on_body is not None:
            self.on_body(piece)
        else:
            self._parts.append(bytes(piece))

    def _finish(self, out: list) -> None:
        resp = self._resp
        if self._parts:
            resp.body = b"".join(self._parts)
        self._resp, self._parts, self._state = None, [], _HEAD
        out.append(resp)

    def _start_body(self, resp: Response, out: list) -> None:
        self._resp = resp
        te = resp.headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            self._state = _CHUNK_SIZE
            return
        length = resp.headers.get("content-length")
        if length is None:
            self._state = _UNTIL_CLOSE
            return
        try:
            self._remaining = int(length)
        except ValueError:
            raise ProtocolError(f"bad Content-Length {length!r}") from None
        if self._remaining < 0:
            raise ProtocolError(f"bad Content-Length {length!r}")
        self._state = _LENGTH
        if self._remaining == 0:
            self._finish(out)

    def feed(self, data) -> list[Response]:
        """Consume ``data``; return the responses it completed, in order."""
        out: list[Response] = []
        buf = self._buf
        if not buf and self._state in (_LENGTH, _CHUNK_DATA) and len(data):
            # fast path for large bodies: hand the piece over without buffering it
            view = memoryview(data)
            n = min(len(view), self._remaining)
            self._deliver(view[:n])
            self._remaining -= n
            data = view[n:]
            if self._remaining == 0:
                if self._state == _LENGTH:
                    self._finish(out)
                else:
                    self._state = _CHUNK_END
        buf += data
        while True:
            st = self._state
            if st == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("response head too large")
                    break
                resp = parse_head(bytes(buf[:i]))
                del buf[:i + 4]
                if 100 <= resp.status < 200:
                    continue  # informational (100 Continue): the real one follows
                if not self.expect_body or resp.status in (204, 304):
                    self._resp = resp
                    self._finish(out)
                    continue
                self._start_body(resp, out)
            elif st == _LENGTH or st == _CHUNK_DATA:
                if not buf:
                    break
                n = min(len(buf), self._remaining)
                self._deliver(buf[:n])
                del buf[:n]
                self._remaining -= n
                if self._remaining == 0:
                    if st == _LENGTH:
                        self._finish(out)
                    else:
                        self._state = _CHUNK_END
            elif st == _CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                try:
                    size = int(bytes(buf[:i]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {bytes(buf[:i])[:40]!r}") from None
                del buf[:i + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining, self._state = size, _CHUNK_DATA
            elif st == _CHUNK_END:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif st == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                del buf[:i + 2]
                if i == 0:
                    self._finish(out)
            else:  # _UNTIL_CLOSE
                if buf:
                    self._deliver(buf)
                    buf.clear()
                break
        return out

    def eof(self) -> Response | None:
        """The connection ended: the response it completes, or None when idle.

        :raises ProtocolError: it ended in the middle of a response
        """
        if self._state == _UNTIL_CLOSE:
            out: list = []
            self._finish(out)
            return out[0]
        if self.idle:
            return None
        raise ProtocolError("connection closed in the middle of a response")


def request_bytes(method: str, target: str, host: str, headers=(), body: bytes = b"") -> bytes:
    """A complete HTTP/1.1 request (keep-alive, Content-Length when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class DeferredFeed:
    """Stamps each piece's arrival time, then parses every piece of one event-loop
    pass afterwards: with hundreds of readers woken at once, the readers served
    later in the pass are not charged for parsing the earlier ones."""

    def __init__(self) -> None:
        self._pending: list = []
        self._scheduled = False

    def add(self, conn: "HttpConnection", data: bytes) -> None:
        """Stamp ``data`` arriving on ``conn`` now; parse it later in this pass."""
        self._pending.append((conn, data, time.perf_counter_ns()))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Parse every piece stamped so far, in arrival order."""
        pending, self._pending, self._scheduled = self._pending, [], False
        for conn, data, ts in pending:
            conn.received_ns = ts
            conn.feed(data)


RECV_BUFFER = 256 * KiB


class HttpConnection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection; one request at a time. Receives into
    one preallocated buffer (no allocation per read for large bodies)."""

    def __init__(self, host: str, port: int, deferred: DeferredFeed | None = None) -> None:
        self.host_header = f"{host}:{port}"
        self._rbuf = memoryview(bytearray(RECV_BUFFER if deferred is None else 16 * KiB))
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received_ns = 0
        self._waiter: asyncio.Future | None = None
        self._deferred = deferred

    @classmethod
    async def open(cls, host: str, port: int,
                   deferred: DeferredFeed | None = None) -> "HttpConnection":
        """Connect to ``host``:``port`` (with ``deferred``: parse its pieces deferred)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(host, port, deferred), host, port)
        return conn

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        """asyncio: the connection is open."""
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        """asyncio: where to receive (the one preallocated buffer)."""
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        """asyncio: ``nbytes`` arrived: stamp them and parse (or defer)."""
        if self._deferred is not None:
            self._deferred.add(self, bytes(self._rbuf[:nbytes]))
        else:
            self.received_ns = time.perf_counter_ns()
            self.feed(self._rbuf[:nbytes])

    def connection_lost(self, exc) -> None:
        """asyncio: the connection ended; end the request in flight, if any."""
        if self._deferred is not None:
            self._deferred.flush()
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        try:
            resp = self.parser.eof()
        except ProtocolError as err:
            waiter.set_exception(ConnectionError(f"connection lost: {err}"))
            return
        if resp is None:
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))
        else:
            waiter.set_result(resp)

    def feed(self, data) -> None:
        """Parse received ``data``; complete the request in flight with its response."""
        try:
            done = self.parser.feed(data)
        except ProtocolError as err:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(err)
            self.close()
            return
        for resp in done:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(resp)

    # requests
    def send(self, raw: bytes, *, expect_body: bool = True,
             on_body: Callable | None = None) -> asyncio.Future:
        """Write a prepared request; the future resolves to its Response."""
        if self.closed:
            raise ConnectionError("connection closed")
        if self._waiter is not None:
            raise RuntimeError("one request at a time on a connection")
        self.parser.expect_body = expect_body
        self.parser.on_body = on_body
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    async def request(self, method: str, target: str, headers=(), body: bytes = b"", *,
                      on_body: Callable | None = None) -> Response:
        """Send a request and await its response (``on_body``: stream the body to it)."""
        raw = request_bytes(method, target, self.host_header, headers, body)
        return await self.send(raw, expect_body=method != "HEAD", on_body=on_body)

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()


async def open_connections(host: str, port: int, n: int,
                           deferred: DeferredFeed | None = None) -> list[HttpConnection]:
    """``n`` connections, at most CONNECT_PARALLEL connecting at once."""
    sem = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one():
        async with sem:
            return await HttpConnection.open(host, port, deferred)

    return list(await asyncio.gather(*(one() for _ in range(n))))
