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
* Every send goes out in slices of at most ``SEND_SLICE`` bytes, each of
  which must be taken within ``idle_timeout`` (``sse_send_timeout`` for a
  whole SSE chunk): a client that stops reading holds at most one response
  (or one SSE chunk) in the server's memory, and only for that long.
* Request bodies in flight are bounded (``max_inflight_bytes``): a body that
  would go over gets 503 with ``Retry-After`` before it is read (from
  Content-Length), or as a chunked body crosses the bound.
* After an error response sent before the request's body was read whole
  (413, 503, 408 mid-body...) the server half-closes and drains what the
  client still sends for a moment (a lingering close, as nginx does), so a
  client busy sending its body reads the response instead of a reset.
* :func:`refuse_connection` answers a connection over ``max_connections``
  with a complete 503 (``Retry-After``) and closes it the same way.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

import anyio
import anyio.abc
import h11

from . import cors
from .context import RETRY_AFTER, ServerContext
from .errors import error_response, text_response
from .http import Request, Response, StreamingResponse
from .routing import handle

log = logging.getLogger("unbroken.server")
RECEIVE_SIZE = 64 * 1024
PASSTHROUGH_MIN = 64 * 1024  # bodies larger than this are sent without joining
SEND_SLICE = 256 * 1024  # most bytes handed to the socket at once (and buffered per connection)
LINGER_QUIET = 1.0  # a lingering close ends when the client sends nothing for this long...
LINGER_MAX = 5.0  # ...or after this long in all
REFUSE_HEAD_WAIT = 1.0  # how long a refused connection may take to send its request head


class _Refused(Exception):
    """The request cannot be served on this connection (413, 408...)."""

    def __init__(self, response: Response):
        self.response = response


class HTTPConnection:
    """An h11 connection over an anyio byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, max_header_bytes: int):
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)

    async def send(self, *events, timeout: float | None = None) -> None:
        """Send h11 events in one write (one TCP segment for a head and a small
        body); a large body goes out as the buffer it already is, not copied,
        in slices of ``SEND_SLICE`` bytes. With ``timeout``, each write must
        be taken within it (else TimeoutError): a send that cannot progress
        ends the connection. A failed send marks the connection broken."""
        try:
            pieces: list = []
            for event in events:
                pieces.extend(self.conn.send_with_data_passthrough(event) or ())
            small = [p for p in pieces if len(p) <= PASSTHROUGH_MIN]
            if len(small) == len(pieces):
                await self._write(b"".join(pieces), timeout)
                return
            run: list = []
            for piece in pieces:
                if len(piece) > PASSTHROUGH_MIN:
                    if run:
                        await self._write(b"".join(run), timeout)
                        run = []
                    await self._write(piece, timeout)
                else:
                    run.append(piece)
            if run:
                await self._write(b"".join(run), timeout)
        except BaseException:
            self.conn.send_failed()
            raise

    async def _write(self, data, timeout: float | None) -> None:
        if len(data) <= SEND_SLICE:
            with anyio.fail_after(timeout):
                await self.stream.send(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_SLICE):
            with anyio.fail_after(timeout):
                await self.stream.send(view[start:start + SEND_SLICE])

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

    async def read_body(self, request: h11.Request, limit: int,
                        reserve=None) -> bytes:
        """The whole body, or :class:`_Refused` (413) past ``limit``.

        ``reserve(n)`` is called before ``n`` more bytes are taken in (the
        whole Content-Length at once, before reading; a chunked body piece by
        piece) and raises :class:`_Refused` when they do not fit.
        """
        length = dict(request.headers).get(b"content-length")
        if length is not None and int(length) > limit:
            raise _Refused(text_response(413, f"body over the limit of {limit} bytes"))
        if length is not None and reserve is not None:
            reserve(int(length))
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                if length is None and reserve is not None:
                    reserve(len(event.data))
                body += event.data
                if len(body) > limit:
                    raise _Refused(text_response(413, f"body over the limit of {limit} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:  # ConnectionClosed mid-body: nothing reaches the store
                raise anyio.EndOfStream

    async def send_response(self, response, head_only: bool, send_timeout: float,
                            stall_timeout: float | None = None) -> None:
        """Send a :class:`Response` or :class:`StreamingResponse`.

        Each SSE chunk must be taken within ``send_timeout``; every other
        write within ``stall_timeout`` (None: no bound). A streaming body is
        always closed (``aclose``), even when its head cannot be sent.
        """
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        streaming = isinstance(response, StreamingResponse)
        body = b"" if streaming else response.body
        if not streaming and response.status not in (204, 304) and not head_only:
            headers.append((b"content-length", str(len(body)).encode()))
        head = h11.Response(status_code=response.status, headers=headers,
                            reason=_reason(response.status))
        if streaming:
            chunks = response.chunks
            try:
                # at once: clients see the headers before any event
                await self.send(head, timeout=stall_timeout)
                async for chunk in chunks:
                    with anyio.fail_after(send_timeout):
                        await self.send(h11.Data(data=chunk), timeout=stall_timeout)
            finally:
                await chunks.aclose()
            await self.send(h11.EndOfMessage(), timeout=stall_timeout)
            return
        with_body = len(body) and not head_only and response.status not in (204, 304)
        if with_body:
            await self.send(head, h11.Data(data=body), h11.EndOfMessage(),
                            timeout=stall_timeout)
        else:
            await self.send(head, h11.EndOfMessage(), timeout=stall_timeout)

    async def shutdown_and_clean_up(self) -> None:
        """Close the socket, politely if we can, within a second."""
        with anyio.move_on_after(1, shield=True):
            try:
                await self.stream.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass


def _check_head_size(event: h11.Request, limit: int) -> None:
    """h11 bounds a head that arrives in pieces; this bounds one that arrives
    whole. It also refuses a head with both Content-Length and
    Transfer-Encoding: h11 would frame the body by the latter, a proxy in
    front might by the former, and that disagreement is how requests are
    smuggled (RFC 9112 6.1: reject or close; this does both)."""
    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    if size > limit:
        raise h11.RemoteProtocolError("request header too large", error_status_hint=431)
    names = {k for k, _ in event.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise h11.RemoteProtocolError("Content-Length together with Transfer-Encoding",
                                      error_status_hint=400)


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
                           scheme: str = "http", *, admitted: bool = False) -> None:
    """Serve requests on one connection until it closes (or the server stops).

    :param admitted: the accept loop already counted this connection
        (:meth:`ServerContext.admit_connection`); otherwise it is counted here
    """
    cfg = ctx.config
    http = HTTPConnection(stream, cfg.max_header_bytes)
    if not admitted:
        ctx.connection_opened()
    held = 0  # bytes of the current request's body reserved in ctx.inflight_bytes

    def reserve(more: int) -> None:
        nonlocal held
        if not ctx.reserve_body(held, more):
            raise _Refused(text_response(
                503, f"server busy: too many request bytes in flight (limit "
                     f"{cfg.max_inflight_bytes}); retry later", [("Retry-After", RETRY_AFTER)]))
        held += more

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
                    body = await http.read_body(event, cfg.max_body, reserve)
            except TimeoutError:
                raise _Refused(text_response(408, "request not received in time")) from None
            method = event.method.decode("ascii")
            try:
                response = await handle(ctx, _request(event, body, scheme))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a response
                response = error_response(exc)
            finally:
                body = None  # the store has it (or never will): no longer in flight
                ctx.release_body(held)
                held = 0
            await http.send_response(response, method == "HEAD", cfg.sse_send_timeout,
                                     cfg.idle_timeout)
            if http.conn.our_state is not h11.DONE or http.conn.their_state is not h11.DONE:
                return
            http.conn.start_next_cycle()
    except _Refused as refused:
        ctx.release_body(held)
        held = 0
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
        ctx.release_body(held)
        await http.shutdown_and_clean_up()
        ctx.connection_closed()


async def _send_error(http: HTTPConnection, response: Response) -> None:
    """Answer an unserviceable request, if a response can still start, and close
    (lingering if the client may still be sending)."""
    if http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response.headers.append(("Connection", "close"))
    try:
        with anyio.move_on_after(5):
            await http.send_response(response, False, 5, 5)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, h11.LocalProtocolError,
            TimeoutError, OSError):
        return
    if http.conn.their_state is h11.SEND_BODY:  # the client may still be sending it
        await lingering_close(http.stream)


async def lingering_close(stream: anyio.abc.ByteStream) -> None:
    """Half-close ``stream`` and discard what the peer still sends, until it
    closes, goes quiet for ``LINGER_QUIET`` or ``LINGER_MAX`` has passed.

    Closing a socket with unread bytes in its receive buffer sends a reset,
    and a reset can destroy the response the client has not read yet; after
    this the close is clean in the common case (a client that finished
    sending and reads the response).
    """
    with anyio.move_on_after(LINGER_MAX):
        try:
            await stream.send_eof()
            while True:
                with anyio.fail_after(LINGER_QUIET):
                    await stream.receive(RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                TimeoutError, NotImplementedError, OSError):
            pass


def _refusal() -> bytes:
    body = b"server busy: too many connections; retry later\n"
    headers = [*cors.COMMON, ("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body))), ("Retry-After", RETRY_AFTER),
               ("Connection", "close")]
    head = "HTTP/1.1 503 Service Unavailable\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


REFUSAL = _refusal()  #: the whole response to a connection over the cap


async def refuse_connection(stream: anyio.abc.ByteStream) -> None:
    """Answer a connection over ``max_connections``: wait briefly for its
    request head (so the answer follows a request), send a complete 503 with
    ``Retry-After`` and ``Connection: close``, and close with a lingering
    close. Takes at most ``REFUSE_HEAD_WAIT + LINGER_MAX`` (plus a second to
    close); the caller bounds how many run at once."""
    try:
        seen, total = b"", 0
        with anyio.move_on_after(REFUSE_HEAD_WAIT):
            try:
                while b"\r\n\r\n" not in seen and total < RECEIVE_SIZE:
                    piece = await stream.receive(RECEIVE_SIZE)
                    seen, total = seen[-3:] + piece, total + len(piece)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                return  # gone before asking: nobody to answer
        try:
            with anyio.fail_after(5):
                await stream.send(REFUSAL)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            return
        await lingering_close(stream)
    finally:
        with anyio.move_on_after(1, shield=True):
            try:
                await stream.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass
