"""One HTTP/1.1 connection, read top to bottom (after h11's trio example and
hypercorn's tcp_server).

Policy choices:

* Keep-alive and pipelining come from h11: one request at a time, the next
  read once the response is out.
* A connection idle between requests for ``idle_timeout`` is closed quietly;
  a request whose head and body do not arrive within ``request_timeout`` gets
  408 and the connection is closed.
* A request head over ``max_header_bytes`` gets 431; a body over ``max_body``
  gets 413 -- decided from Content-Length before reading, or as a chunked
  body crosses the limit -- and the connection is closed without reading it.
* A malformed request gets the status h11 suggests (400) and the connection
  is closed. No client input reaches a traceback: handler errors become
  responses in :mod:`.errors`.
* A response body already in memory goes out without another copy
  (``send_with_data_passthrough``). A streaming response (SSE) sends each
  chunk under ``sse_send_timeout``: a reader that stops reading is cut off and
  never slows the writers or other readers.
* A client that vanishes mid-body or mid-SSE only ends its own task: nothing
  reaches the store until a whole body has arrived.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

import anyio
import anyio.abc
import h11

from .errors import error_response, text_response
from .handlers import ServerContext, handle
from .http import Request, Response, StreamingResponse

log = logging.getLogger("unbroken.server")
RECEIVE_SIZE = 64 * 1024
PASSTHROUGH_MIN = 64 * 1024  # bodies larger than this are sent without joining


class _Refused(Exception):
    """The request cannot be served on this connection (413, 408...)."""

    def __init__(self, response: Response):
        self.response = response


class HTTPConnection:
    """An h11 connection over an anyio byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, max_header_bytes: int):
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)

    async def send(self, *events) -> None:
        """Send h11 events in one write (one TCP segment for a head and a small
        body); a large body goes out as the buffer it already is, not copied.
        A failed send marks the connection broken."""
        try:
            pieces: list = []
            for event in events:
                pieces.extend(self.conn.send_with_data_passthrough(event) or ())
            small = [p for p in pieces if len(p) <= PASSTHROUGH_MIN]
            if len(small) == len(pieces):
                await self.stream.send(b"".join(pieces))
                return
            run: list = []
            for piece in pieces:
                if len(piece) > PASSTHROUGH_MIN:
                    if run:
                        await self.stream.send(b"".join(run))
                        run = []
                    await self.stream.send(piece)
                else:
                    run.append(piece)
            if run:
                await self.stream.send(b"".join(run))
        except BaseException:
            self.conn.send_failed()
            raise

    async def wait_for_request(self) -> None:
        """Return once a request has begun to arrive (or the peer closed).
        Bytes already buffered (a pipelined request) count as arrived."""
        if self.conn.trailing_data[0] or self.conn.trailing_data[1]:
            return
        try:
            data = await self.stream.receive(RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = b""
        self.conn.receive_data(data)

    async def next_event(self):
        """The next h11 event, reading from the socket as needed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                data = await self.stream.receive(RECEIVE_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
            self.conn.receive_data(data)

    async def read_body(self, request: h11.Request, limit: int) -> bytes:
        """The whole body, or :class:`_Refused` (413) past ``limit``."""
        length = dict(request.headers).get(b"content-length")
        if length is not None and int(length) > limit:
            raise _Refused(text_response(413, f"body over the limit of {limit} bytes"))
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _Refused(text_response(413, f"body over the limit of {limit} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:  # ConnectionClosed mid-body: nothing reaches the store
                raise anyio.EndOfStream

    async def send_response(self, response, head_only: bool, send_timeout: float) -> None:
        """Send a :class:`Response` or :class:`StreamingResponse`."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        streaming = isinstance(response, StreamingResponse)
        body = b"" if streaming else response.body
        if not streaming and response.status not in (204, 304) and not head_only:
            headers.append((b"content-length", str(len(body)).encode()))
        head = h11.Response(status_code=response.status, headers=headers,
                            reason=_reason(response.status))
        if streaming:
            await self.send(head)  # at once: clients see the headers before any event
            chunks = response.chunks
            try:
                async for chunk in chunks:
                    with anyio.fail_after(send_timeout):
                        await self.send(h11.Data(data=chunk))
            finally:
                await chunks.aclose()
            await self.send(h11.EndOfMessage())
            return
        with_body = len(body) and not head_only and response.status not in (204, 304)
        if with_body:
            await self.send(head, h11.Data(data=body), h11.EndOfMessage())
        else:
            await self.send(head, h11.EndOfMessage())

    async def shutdown_and_clean_up(self) -> None:
        """Close the socket, politely if we can, within a second."""
        with anyio.move_on_after(1, shield=True):
            try:
                await self.stream.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass


def _check_head_size(event: h11.Request, limit: int) -> None:
    """h11 bounds a head that arrives in pieces; this bounds one that arrives whole."""
    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    if size > limit:
        raise h11.RemoteProtocolError("request header too large", error_status_hint=431)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _request(event: h11.Request, body: bytes, scheme: str) -> Request:
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
    return Request.from_target(event.method.decode("ascii"), event.target.decode("latin-1"),
                               headers, body, scheme)


async def serve_connection(stream: anyio.abc.ByteStream, ctx: ServerContext,
                           scheme: str = "http") -> None:
    """Serve requests on one connection until it closes (or the server stops)."""
    cfg = ctx.config
    http = HTTPConnection(stream, cfg.max_header_bytes)
    ctx.connection_opened()
    try:
        while True:
            idle = anyio.CancelScope(deadline=anyio.current_time() + cfg.idle_timeout)
            with ctx.idle(idle):
                await http.wait_for_request()
            if idle.cancelled_caught:
                return  # idle too long, or shutting down
            try:
                with anyio.fail_after(cfg.request_timeout):  # head and body together
                    event = await http.next_event()
                    if not isinstance(event, h11.Request):
                        return  # the client left
                    _check_head_size(event, cfg.max_header_bytes)
                    body = await http.read_body(event, cfg.max_body)
            except TimeoutError:
                raise _Refused(text_response(408, "request not received in time")) from None
            method = event.method.decode("ascii")
            try:
                response = await handle(ctx, _request(event, body, scheme))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a response
                response = error_response(exc)
            await http.send_response(response, method == "HEAD", cfg.sse_send_timeout)
            if http.conn.our_state is not h11.DONE or http.conn.their_state is not h11.DONE:
                return
            http.conn.start_next_cycle()
    except _Refused as refused:
        await _send_error(http, refused.response)
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        message = "request header too large" if status == 431 else f"bad request: {exc}"
        await _send_error(http, text_response(status, message))
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
            TimeoutError, h11.LocalProtocolError, OSError):
        pass  # the client went away or stopped reading
    except Exception:  # noqa: BLE001 - one connection's bug must not stop the server
        log.exception("unbroken: connection failed")
    finally:
        await http.shutdown_and_clean_up()
        ctx.connection_closed()


async def _send_error(http: HTTPConnection, response: Response) -> None:
    """Answer an unserviceable request, if a response can still start, and close."""
    if http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response.headers.append(("Connection", "close"))
    try:
        with anyio.move_on_after(5):
            await http.send_response(response, False, 5)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, h11.LocalProtocolError,
            OSError):
        pass
