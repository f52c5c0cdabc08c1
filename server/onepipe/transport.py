"""Transports: how the application side reaches streams.

Flow, Channel and Signal are written once, against :class:`Transport`. Two
implementations carry every connection mode:

* :class:`LocalTransport` calls a :class:`~unbroken_engine.stores.interface.StreamStore`
  in this process (the in-process mode, and ``Flow.db(...)``);
* :class:`HttpTransport` speaks the Durable Streams protocol over httpx to
  any server (the embedded server ``connect()`` starts, or a remote one).

Every OnePipe stream is a JSON stream, so a transport deals in JSON values,
and in offsets as the protocol's opaque strings (the same in every mode).
Errors are the classes of :mod:`.errors`, whatever the transport.
"""
from __future__ import annotations

import abc
import contextlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import quote

import anyio

from unbroken_engine import errors as e
from unbroken_engine.protocol.media import is_json
from unbroken_engine.protocol.offsets import NOW, format_offset, parse_offset
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer

from .errors import NotFound, OnePipeError, ProducerFenced, SeqConflict, StreamClosed, Unavailable

log = logging.getLogger("unbroken.onepipe")

__all__ = ["Transport", "LocalTransport", "HttpTransport", "Batch", "Last", "Ack",
           "START", "JSON"]

#: the wire offset of a stream's beginning
START = "-1"
JSON = "application/json"
#: how long a live wait lasts before it is renewed (in-process)
LIVE_WAIT = 30.0


@dataclass(frozen=True)
class Batch:
    """Messages read together.

    :ivar values: the JSON values, in order
    :ivar start: the offset the read started at
    :ivar next_offset: where the next read starts
    :ivar up_to_date: the read reached the tail
    :ivar closed: the stream is closed and the read reached its end
    """

    values: list
    start: str
    next_offset: str
    up_to_date: bool
    closed: bool


@dataclass(frozen=True)
class Last:
    """A stream's latest message (:meth:`Transport.read_last`).

    :ivar found: False when the stream holds no message yet
    :ivar offset: where the record holding it starts -- or, from a server
        without the extension, an offset at or before it (None when not found)
    """

    found: bool
    value: Any
    offset: str | None
    next_offset: str
    closed: bool


@dataclass(frozen=True)
class Ack:
    """An acknowledged append: ``duplicate`` when the server had it already
    (a retried producer request)."""

    next_offset: str
    duplicate: bool = False


@dataclass
class Retry:
    """Retry policy for transient failures: give up after ``retry_for`` seconds."""

    retry_for: float = 30.0
    first: float = 0.05
    most: float = 2.0

    def delays(self):
        """Jittered, growing delays until ``retry_for`` has passed."""
        deadline = time.monotonic() + self.retry_for
        delay = self.first
        while time.monotonic() < deadline:
            yield min(delay, max(0.0, deadline - time.monotonic())) * (0.5 + random.random() / 2)
            delay = min(delay * 2, self.most)


class Transport(abc.ABC):
    """The stream operations Flow, Channel and Signal need."""

    #: "inprocess", "embedded", "remote" or "postgres"
    kind = "abstract"

    @abc.abstractmethod
    async def ensure(self, path: str) -> bool:
        """Create the JSON stream ``path`` unless it exists. :return: created."""

    @abc.abstractmethod
    async def append(self, path: str, values: list, *, seq: str | None = None,
                     producer: Producer | None = None) -> Ack:
        """Append ``values`` (one or more JSON values) as one request.

        Transient failures are retried for the policy's ``retry_for``; with a
        ``producer`` a retry that the server already had is answered as a
        duplicate, so it is written once.

        :raises SeqConflict: ``seq`` is not greater than the last one
        :raises StreamClosed, NotFound, ProducerFenced, Unavailable:
        """

    @abc.abstractmethod
    async def close(self, path: str) -> None:
        """Close the stream (idempotent)."""

    @abc.abstractmethod
    async def read(self, path: str, offset: str = START) -> Batch:
        """One catch-up read from ``offset``."""

    @abc.abstractmethod
    async def read_last(self, path: str) -> Last:
        """The latest message, without reading the history where the store
        or server supports it."""

    @abc.abstractmethod
    def live(self, path: str, offset: str = START) -> AsyncIterator[Batch]:
        """Batches from ``offset`` as they are written; ends after the batch
        that reaches the end of a closed stream. Survives dropped
        connections (resumes from the last offset it delivered)."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Delete the stream."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections (not the streams)."""


def _translate(exc: Exception, path: str) -> Exception:
    """The onepipe error for an engine error."""
    if isinstance(exc, (e.StreamNotFound, e.StreamSoftDeleted)):
        return NotFound(f"stream {path!r} does not exist")
    if isinstance(exc, e.StreamClosed):
        return StreamClosed(f"stream {path!r} is closed")
    if isinstance(exc, e.SequenceConflict):
        return SeqConflict(str(exc))
    if isinstance(exc, (e.StaleEpoch, e.ProducerSeqGap, e.InvalidEpochSeq)):
        return ProducerFenced(str(exc))
    if isinstance(exc, e.BackendUnavailable):
        return Unavailable(str(exc))
    return OnePipeError(f"{path}: {exc}")


def _encode(values: list) -> bytes:
    """The JSON body of an append: UTF-8, except that a string holding a lone
    surrogate (which UTF-8 cannot carry) is sent with ``\\uXXXX`` escapes,
    as JavaScript's ``JSON.stringify`` does; the server stores those as sent."""
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(values, separators=(",", ":"), allow_nan=False).encode()


# ---- in-process ------------------------------------------------------------------------

class LocalTransport(Transport):
    """Streams of a :class:`~unbroken_engine.stores.interface.StreamStore` in this process.

    :param owns: close the store with :meth:`aclose`
    """

    kind = "inprocess"

    def __init__(self, store, *, owns: bool = False, retry: Retry | None = None,
                 kind: str | None = None):
        self.store = store
        self._owns = owns
        self._retry = retry or Retry()
        if kind:
            self.kind = kind

    async def _call(self, path: str, fn, *args):
        """``fn(*args)``, retrying a backend outage (shared stores) for a while."""
        delays = self._retry.delays()
        while True:
            try:
                return await fn(*args)
            except e.BackendUnavailable as exc:
                delay = next(delays, None)
                if delay is None:
                    raise Unavailable(f"{path}: {exc}") from exc
                await anyio.sleep(delay)
            except e.UnbrokenError as exc:
                raise _translate(exc, path) from exc

    async def ensure(self, path: str) -> bool:
        return await self._call(path, self._ensure, path)

    async def _ensure(self, path: str) -> bool:
        try:
            return (await self.store.create(path, CreateOptions(content_type=JSON))).created
        except e.ConfigMismatch:
            # a create without ``closed`` conflicts with a closed stream
            # (PROTOCOL.md §5.1); a closed JSON stream is there all the same
            meta = await self.store.get(path)
            if meta.closed and is_json(meta.content_type):
                return False
            raise

    async def append(self, path, values, *, seq=None, producer=None) -> Ack:
        r = await self._call(path, self.store.append, path, _encode(values),
                             AppendOptions(content_type=JSON, seq=seq, producer=producer))
        return Ack(format_offset(r.next_offset), r.outcome is not None
                   and r.outcome.name == "DUPLICATE")

    async def close(self, path: str) -> None:
        await self._call(path, self.store.close_stream, path)

    async def read(self, path: str, offset: str = START) -> Batch:
        try:
            at = parse_offset(offset)
        except e.InvalidOffset as exc:
            raise OnePipeError(f"not an offset: {offset!r}") from exc
        r = await self._call(path, self.store.read, path, at)
        start = offset if at is not NOW else format_offset(r.next_offset)
        return Batch(json.loads(bytes(r.data)), start, format_offset(r.next_offset),
                     r.up_to_date, r.closed)

    async def read_last(self, path: str) -> Last:
        r = await self._call(path, self.store.read_last, path)
        value = json.loads(bytes(r.data)) if r.found else None
        return Last(r.found, value, format_offset(r.offset) if r.found else None,
                    format_offset(r.next_offset), r.closed)

    async def live(self, path: str, offset: str = START):
        while True:
            batch = await self.read(path, offset)
            if batch.values or batch.closed:
                yield batch
            if batch.closed:
                return
            offset = batch.next_offset
            if batch.up_to_date:
                await self._call(path, self.store.wait_for_messages, path,
                                 parse_offset(offset), LIVE_WAIT)

    async def delete(self, path: str) -> None:
        await self._call(path, self.store.delete, path)

    async def aclose(self) -> None:
        if self._owns:
            await self.store.aclose()


async def scan_last(t: Transport, path: str, first: Batch | None = None) -> Last:
    """The latest message by reading everything (servers without the
    extension), starting with ``first``, a read from the start already made."""
    offset, last, b = START, None, first
    while True:
        if b is None:
            b = await t.read(path, offset)
        if b.values:
            last = (b.values[-1], b.start)
        offset = b.next_offset
        if b.up_to_date:
            break
        b = None
    if last is None:
        return Last(False, None, None, offset, b.closed)
    return Last(True, last[0], last[1], offset, b.closed)


# ---- HTTP --------------------------------------------------------------------------------

class HttpTransport(Transport):
    """The Durable Streams protocol over httpx, to any conforming server.

    :param base_url: the server: ``http://host:port`` (streams under
        ``/v1/stream/``, Unbroken's layout), or a URL with a path, taken as
        the streams' base as it is (``http://gw/streams`` → ``/streams/{path}``;
        the protocol prescribes no layout)
    :param client: an ``httpx.AsyncClient`` to use (not closed by :meth:`aclose`)
    """

    kind = "remote"

    def __init__(self, base_url: str, *, client=None, retry: Retry | None = None,
                 kind: str | None = None):
        import httpx

        self._httpx = httpx
        base = base_url.rstrip("/")
        self.base_url = base
        has_path = bool(httpx.URL(base).path.strip("/"))
        self.streams_url = base if has_path else base + "/v1/stream"
        self._owns = client is None
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        self._retry = retry or Retry()
        self._transient = (httpx.TransportError,)
        if kind:
            self.kind = kind

    def url(self, path: str) -> str:
        """The URL of stream ``path``."""
        return f"{self.streams_url}/{quote(path, safe='/')}"

    async def _request(self, method: str, path: str, *, params=None, headers=None,
                       content: bytes | None = None):
        """One request, retried on connection failures and 503s until the
        policy gives up (then :class:`Unavailable`)."""
        delays = self._retry.delays()
        while True:
            try:
                r = await self.client.request(method, self.url(path), params=params,
                                              headers=headers, content=content)
            except self._transient as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code not in (429, 502, 503):  # overloaded or restarting: retry
                    return r
                why = f"{r.status_code} {r.text.strip()[:200]}"
            delay = next(delays, None)
            if delay is None:
                raise Unavailable(f"{method} {self.url(path)}: {why}")
            log.debug("retrying %s %s in %.2f s (%s)", method, path, delay, why)
            await anyio.sleep(delay)

    def _fail(self, r, path: str):
        """The onepipe error for an unsuccessful response."""
        text = r.text.strip()[:300]
        if r.status_code == 404:
            return NotFound(f"stream {path!r} does not exist ({text})")
        if r.status_code == 410:
            return NotFound(f"stream {path!r}: gone (deleted, or the offset is before the "
                            f"data it retains): {text}")
        if r.status_code == 409 and r.headers.get("stream-closed", "").lower() == "true":
            return StreamClosed(f"stream {path!r} is closed")
        if r.status_code == 403 or "producer-expected-seq" in r.headers:
            return ProducerFenced(f"{path}: {r.status_code} {text}")
        if r.status_code == 409:
            return SeqConflict(f"{path}: {text}")
        return OnePipeError(f"{path}: HTTP {r.status_code} {text}")

    async def ensure(self, path: str) -> bool:
        r = await self._request("PUT", path, headers={"Content-Type": JSON})
        if r.status_code in (200, 201):
            return r.status_code == 201
        if r.status_code == 409 and await self._closed_json(path):
            return False  # a PUT without Stream-Closed to a closed stream is 409 (§5.1)
        if r.status_code == 409:
            raise OnePipeError(f"stream {path!r} exists with another configuration "
                               f"(not a JSON stream?): {r.text.strip()[:200]}")
        raise self._fail(r, path)

    async def _closed_json(self, path: str) -> bool:
        """Whether ``path`` is a closed JSON stream (asked with ``HEAD``)."""
        r = await self._request("HEAD", path)
        return (r.status_code == 200 and r.headers.get("stream-closed", "").lower() == "true"
                and is_json(r.headers.get("content-type", "")))

    async def append(self, path, values, *, seq=None, producer=None) -> Ack:
        headers = {"Content-Type": JSON}
        if seq is not None:
            headers["Stream-Seq"] = seq
        if producer is not None:
            headers.update({"Producer-Id": producer.id, "Producer-Epoch": str(producer.epoch),
                            "Producer-Seq": str(producer.seq)})
        r = await self._request("POST", path, headers=headers, content=_encode(values))
        if r.status_code in (200, 204):
            nxt = r.headers.get("stream-next-offset")
            if nxt is None:
                # Some servers leave it out of a duplicate's answer (the
                # reference server does); the tail is at or after the data.
                nxt = (await self.read(path, "now")).next_offset
            return Ack(nxt, producer is not None and r.status_code == 204)
        raise self._fail(r, path)

    async def close(self, path: str) -> None:
        r = await self._request("POST", path, headers={"Stream-Closed": "true",
                                                       "Content-Type": JSON})
        if r.status_code not in (200, 204):
            raise self._fail(r, path)

    def _batch(self, r, start: str) -> Batch:
        values = json.loads(r.content) if r.content else []
        return Batch(values, start, r.headers["stream-next-offset"],
                     r.headers.get("stream-up-to-date", "").lower() == "true",
                     r.headers.get("stream-closed", "").lower() == "true")

    async def read(self, path: str, offset: str = START) -> Batch:
        r = await self._request("GET", path, params={"offset": offset})
        if r.status_code != 200:
            raise self._fail(r, path)
        return self._batch(r, offset if offset != "now" else r.headers["stream-next-offset"])

    async def read_last(self, path: str) -> Last:
        r = await self._request("GET", path, params={"last": "true"})
        if r.status_code != 200:
            raise self._fail(r, path)
        if r.headers.get("stream-read", "").lower() != "last":
            # A server without the extension ignored the parameter and sent
            # an ordinary read from the start: go on reading from there.
            return await scan_last(self, path, self._batch(r, START))
        values = json.loads(r.content) if r.content else []
        closed = r.headers.get("stream-closed", "").lower() == "true"
        nxt = r.headers["stream-next-offset"]
        if not values:
            return Last(False, None, None, nxt, closed)
        return Last(True, values[-1], r.headers.get("stream-last-offset"), nxt, closed)

    async def live(self, path: str, offset: str = START):
        delays = None  # the retry budget of the current outage, if any
        while True:
            heard = False
            try:
                async with contextlib.aclosing(self._sse(path, offset)) as batches:
                    async for batch in batches:
                        heard, delays = True, None  # it works: a later outage starts afresh
                        if batch.values or batch.closed:
                            yield batch
                        offset = batch.next_offset
                        if batch.closed:
                            return
            except self._transient as exc:
                why = f"{type(exc).__name__}: {exc}"
            except _Retryable as exc:
                why = str(exc)
            else:
                # The server ended the response (it does so about once a
                # minute, and on shutdown): reconnect at once -- after a
                # short pause if it said nothing, so a server that keeps
                # ending responses empty is not hammered.
                if not heard:
                    await anyio.sleep(self._retry.first * (0.5 + random.random()))
                continue
            if delays is None:
                delays = self._retry.delays()
            delay = next(delays, None)
            if delay is None:
                raise Unavailable(f"live read of {path!r}: {why}")
            log.info("live read of %s interrupted (%s); resuming from %s", path, why, offset)
            await anyio.sleep(delay)

    async def _sse(self, path: str, offset: str):
        """One SSE response, as batches (a data event then its control event)."""
        timeout = self._httpx.Timeout(30.0, read=120.0)
        async with self.client.stream("GET", self.url(path),
                                      params={"offset": offset, "live": "sse"},
                                      timeout=timeout) as r:
            if r.status_code in (429, 502, 503):  # overloaded or restarting: retry
                raise _Retryable(f"{r.status_code} from the server")
            if r.status_code != 200:
                await r.aread()
                raise self._fail(r, path)
            values: list = []
            start = offset
            event, data = None, []
            async with contextlib.aclosing(_sse_lines(r.aiter_bytes())) as lines:
                async for line in lines:
                    if line:
                        if line.startswith(":"):
                            continue
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                        continue
                    if event == "data" and data:
                        values.extend(json.loads("\n".join(data)))
                    elif event == "control" and data:
                        c = json.loads("\n".join(data))
                        nxt = c.get("streamNextOffset", start)
                        closed = bool(c.get("streamClosed"))
                        yield Batch(values, start, nxt, bool(c.get("upToDate")) or closed, closed)
                        values, start = [], nxt
                        if closed:
                            return
                    event, data = None, []

    async def delete(self, path: str) -> None:
        r = await self._request("DELETE", path)
        if r.status_code not in (200, 204):
            raise self._fail(r, path)

    async def aclose(self) -> None:
        if self._owns:
            await self.client.aclose()


_EOL = re.compile(rb"\r\n|\r|\n")


async def _sse_lines(chunks):
    """The lines of an SSE body. SSE ends lines at CRLF, CR or LF only --
    not at U+2028, U+2029 or U+0085, which JSON leaves unescaped and
    ``str.splitlines`` (so httpx's ``aiter_lines``) would also cut at."""
    pending = b""
    after_cr = False  # the last chunk ended with CR: an LF first in the next is its pair
    async for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        lines = _EOL.split(pending + chunk)
        pending = lines.pop()  # the unfinished line (b"" after a line end)
        for line in lines:
            yield line.decode("utf-8")
    if pending:
        yield pending.decode("utf-8")


class _Retryable(Exception):
    """A live response that failed in a way worth retrying."""
