"""HTTP workloads that more than one benchmark runs against an Unbroken
server: closed-loop appends over keep-alive connections, and live delivery
(SSE or long-poll readers, one open-loop writer stamping its messages)."""
from __future__ import annotations

import array
import asyncio
import re
import time
import uuid
from typing import Sequence
from urllib.parse import quote

from .client import DeferredFeed, HttpConnection, ProtocolError, open_connections
from .options import STREAM_PREFIX
from .process import CpuMeter, Server
from .results import Run
from .sse import SSEParser
from .stats import Latency

SSE_WARMUP_MESSAGES = 3         # untimed messages before the measured ones
SSE_DRAIN = 5.0                 # seconds to wait for deliveries after the last POST
SSE_WRITER_CONNECTIONS = 32     # the open-loop SSE writer's connection pool
SSE_READY_TIMEOUT = 60.0        # seconds for every reader to connect and subscribe
_T0 = time.perf_counter_ns()    # SSE timestamps are relative to this (small numbers)


_MSG_RE = re.compile(rb'"i":(-?\d+),"t":(\d+)')


_OFFSET_RE = re.compile(rb'"streamNextOffset":"([^"]*)"')


def sse_message(i: int, now_ns: int | None = None) -> bytes:
    """The SSE writer's JSON body: ``{"i":i,"t":ns since the bench started}``."""
    t = (time.perf_counter_ns() if now_ns is None else now_ns) - _T0
    return b'{"i":%d,"t":%d}' % (i, t)


def message_stamps(data: bytes) -> list[tuple[int, int]]:
    """``(i, t)`` of every writer message in an SSE data payload (a JSON
    object, or an array of them)."""
    return [(int(m[1]), int(m[2])) for m in _MSG_RE.finditer(data)]


def stream_name(kind: str) -> str:
    """A new, unique stream path for a ``kind`` workload."""
    return f"{STREAM_PREFIX}bench-{kind}-{uuid.uuid4().hex[:12]}"


def json_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 10)."""
    return b'{"pad":"' + b"x" * (size - 10) + b'"}'


async def create_stream(conn: HttpConnection, path: str, content_type: str) -> str:
    """PUT ``path``; returns its tail offset."""
    resp = await conn.request("PUT", path, [("Content-Type", content_type)])
    if resp.status not in (200, 201):
        raise RuntimeError(f"PUT {path}: {resp.status} {resp.body[:200]!r}")
    return resp.header("stream-next-offset") or "-1"


async def closed_loop_appends(conns: Sequence[HttpConnection], raws: Sequence[bytes],
                              body_bytes: int, meter, warmup: float, duration: float) -> Run:
    """Each connection sends its raw POST, waits for the answer and sends it
    again, for ``warmup`` + ``duration`` seconds; the answers of the timed
    part are counted. ``meter()`` starts a CPU meter (stopped with
    ``.stop()`` -> seconds, server CPU, client CPU) when timing starts."""
    timing = False
    stopping = False
    ops = errors = 0
    first_error = ""
    lat = array.array("q")

    async def worker(conn: HttpConnection, raw: bytes) -> None:
        """POST, wait for the answer, POST again, until stopped."""
        nonlocal ops, errors, first_error
        clock = time.perf_counter_ns
        while not stopping:
            t = clock()
            resp = await conn.send(raw)
            ok = resp.status in (200, 204)
            if timing:
                if ok:
                    ops += 1
                    lat.append(clock() - t)
                else:
                    errors += 1
            if not ok and not first_error:
                first_error = f"{resp.status} {resp.body[:120]!r}"

    tasks = [asyncio.ensure_future(worker(c, r)) for c, r in zip(conns, raws)]
    try:
        await _sleep_or_fail(tasks, warmup)
        timing = True
        running = meter()
        await _sleep_or_fail(tasks, duration)
        timing = False
        seconds, srv_cpu, cli_cpu = running.stop()
        stopping = True
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        if pending:
            raise RuntimeError(f"{len(pending)} appends still unanswered 30 s after the end")
    finally:
        stopping = True
        for t in tasks:
            t.cancel()
    return Run(seconds, ops, ops * body_bytes, errors, lat, server_cpu=srv_cpu,
               client_cpu=cli_cpu, note=f"first error: {first_error}" if first_error else "")


async def _sleep_or_fail(tasks, seconds: float) -> None:
    """Sleep, but raise at once if a worker task died."""
    if seconds <= 0:
        return
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception() is not None:
            raise t.exception()


class _LiveReader:
    """What the SSE and long-poll readers share: their counters, a loop that
    reconnects after a dropped connection (and gives up, failing ``ready``,
    when the first attempt fails or the server answers wrongly), and stop()."""

    KIND = ""
    RESUBSCRIBED = ""

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        self.server, self.path, self.deferred, self.sink = server, path, deferred, sink
        self.offset = "-1"
        self.ready = asyncio.get_running_loop().create_future()
        self.conn: HttpConnection | None = None
        self.received = 0
        self.errors = 0
        self.resubscribes = 0
        self.stopping = False

    async def _once(self) -> None:
        """One request on ``self.conn``; raise RuntimeError for a wrong answer."""
        raise NotImplementedError

    async def run(self, conn: HttpConnection) -> None:
        self.conn = conn
        while not self.stopping:
            try:
                if self.conn.closed:
                    self.conn = await HttpConnection.open(self.server.host, self.server.port,
                                                          self.deferred)
                await self._once()
            except (ConnectionError, OSError, ProtocolError) as exc:
                if self.stopping:
                    return
                self.errors += 1
                if not self.ready.done():
                    self.ready.set_exception(exc)
                    return
                await asyncio.sleep(0.05)
            except RuntimeError as exc:
                if not self.ready.done():
                    self.ready.set_exception(exc)
                self.errors += 1
                return

    def stop(self) -> None:
        self.stopping = True
        if self.conn is not None:
            self.conn.close()


class SseReader(_LiveReader):
    """One live=sse reader: records each measured message's delivery latency,
    and re-subscribes from the last ``streamNextOffset`` if the server ends
    the response."""

    KIND = "sse"
    RESUBSCRIBED = "re-subscriptions"

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        super().__init__(server, path, deferred, sink)
        self.parser = SSEParser()

    def on_body(self, piece) -> None:
        """Parse a piece of the SSE body; record each measured message's latency."""
        now = self.conn.received_ns - _T0
        for kind, data in self.parser.feed(piece):
            if kind == b"data":
                for m in _MSG_RE.finditer(data):
                    if int(m[1]) >= 0:
                        self.sink.append(now - int(m[2]))
                        self.received += 1
            elif kind == b"control":
                m = _OFFSET_RE.search(data)
                if m:
                    self.offset = m[1].decode()
                if not self.ready.done():
                    self.ready.set_result(None)

    async def _once(self) -> None:
        self.parser = SSEParser()
        resp = await self.conn.request(
            "GET", f"{self.path}?offset={quote(self.offset, safe='-_')}&live=sse",
            [("Accept", "text/event-stream")], on_body=self.on_body)
        if resp.status != 200:
            raise RuntimeError(f"SSE GET {self.path}: {resp.status} {resp.body[:200]!r}")
        self.resubscribes += 1  # the server ended the response


class SseWriter:
    """The single logical writer of the SSE workload, open loop: a POST goes
    out on schedule on an idle connection of a small pool, whether or not the
    earlier ones have been answered (a slow server must not slow the writer
    down and so hide its own latency). Only when all SSE_WRITER_CONNECTIONS
    are busy does a POST wait; that lag is reported."""

    def __init__(self, server: Server, path: str):
        self.server, self.path = server, path
        self.idle: asyncio.Queue = asyncio.Queue()
        self.conns: list[HttpConnection] = []
        self.tasks: list = []
        self.errors = 0
        self.first_error = ""
        self.acks = array.array("q")
        self.max_lag = 0.0

    async def _conn(self) -> HttpConnection:
        if self.idle.empty() and len(self.conns) < SSE_WRITER_CONNECTIONS:
            conn = await HttpConnection.open(self.server.host, self.server.port)
            self.conns.append(conn)
            return conn
        return await self.idle.get()

    async def _post(self, conn: HttpConnection, i: int) -> None:
        t = time.perf_counter_ns()
        try:
            resp = await conn.request("POST", self.path, [("Content-Type", "application/json")],
                                      sse_message(i, t))
        except (ConnectionError, OSError, ProtocolError) as exc:
            self.errors += 1
            self.first_error = self.first_error or f"POST: {exc}"
            return
        if i >= 0:
            self.acks.append(time.perf_counter_ns() - t)
        if resp.status not in (200, 204):
            self.errors += 1
            self.first_error = self.first_error or f"POST: {resp.status} {resp.body[:120]!r}"
        self.idle.put_nowait(conn)

    async def write(self, first: int, count: int, rate: float) -> None:
        """POST messages ``first`` .. ``count - 1`` at ``rate`` per second."""
        period = 1.0 / rate
        start = time.perf_counter()
        for n, i in enumerate(range(first, count)):
            due = start + n * period
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await self._conn()
            self.max_lag = max(self.max_lag, time.perf_counter() - due)
            self.tasks.append(asyncio.ensure_future(self._post(conn, i)))

    async def finish(self, timeout: float) -> int:
        """Wait for every POST's answer; returns how many are still unanswered."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(self.tasks, timeout=timeout)
        return len(pending)

    def close(self) -> None:
        """Cancel the POSTs in flight and close the connections."""
        for t in self.tasks:
            t.cancel()
        for c in self.conns:
            c.close()


class LongPollReader(_LiveReader):
    """One live=long-poll reader: after one catch-up GET from offset -1, loops
    GET ?offset=<Stream-Next-Offset>&live=long-poll&cursor=<Stream-Cursor> on
    its keep-alive connection and records each measured message's delivery
    latency (the response's arrival minus the message's stamp)."""

    KIND = "longpoll"
    RESUBSCRIBED = "long-polls timed out (204)"

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        super().__init__(server, path, deferred, sink)
        self.cursor: str | None = None

    def target(self) -> str:
        """The next GET's target: a catch-up read first, then long-polls."""
        t = f"{self.path}?offset={quote(self.offset, safe='-_')}"
        if self.ready.done():
            t += "&live=long-poll"
            if self.cursor is not None:
                t += f"&cursor={quote(self.cursor, safe='-_')}"
        return t

    async def _once(self) -> None:
        live = self.ready.done()
        resp = await self.conn.request("GET", self.target())
        now = self.conn.received_ns - _T0
        if resp.status == 200:
            for m in _MSG_RE.finditer(resp.body):
                if int(m[1]) >= 0:
                    self.sink.append(now - int(m[2]))
                    self.received += 1
        elif resp.status == 204:
            self.resubscribes += live
        else:
            raise RuntimeError(f"long-poll GET {self.path}: {resp.status} "
                               f"{resp.body[:200]!r}")
        self.offset = resp.header("stream-next-offset") or self.offset
        self.cursor = resp.header("stream-cursor") or self.cursor
        if not self.ready.done():
            self.ready.set_result(None)


async def sse_run(server: Server, readers: int, rate: float, duration: float,
                  reader_cls=None, *, writer_server: Server | None = None, meter=None) -> Run:
    """``readers`` SSE readers (or ``reader_cls`` ones: LongPollReader) on
    ``server``, one writer at ``rate`` messages/s for ``duration`` s, posting
    to ``writer_server`` (default: the same server; another instance of a
    shared store makes every delivery cross instances). ``meter()`` starts
    the CPU meter of the timed part (default: ``CpuMeter(server)``)."""
    reader_cls = reader_cls or SseReader
    writer_server = writer_server or server
    host, port = server.host, server.port
    path = stream_name(reader_cls.KIND)
    deferred = DeferredFeed()
    sink = array.array("q")
    subs: list = []
    tasks: list = []
    writer = SseWriter(writer_server, path)
    try:
        setup = await HttpConnection.open(writer_server.host, writer_server.port)
        try:
            await create_stream(setup, path, "application/json")
        finally:
            setup.close()
        conns = await open_connections(host, port, readers, deferred)
        subs = [reader_cls(server, path, deferred, sink) for _ in conns]
        tasks = [asyncio.ensure_future(r.run(c)) for r, c in zip(subs, conns)]
        await asyncio.wait_for(asyncio.gather(*(r.ready for r in subs)), SSE_READY_TIMEOUT)
        await writer.write(-SSE_WARMUP_MESSAGES, 0, rate)   # warm-up: never counted
        await writer.finish(SSE_DRAIN)
        count = max(1, round(duration * rate))
        running = meter() if meter is not None else CpuMeter(server)
        t0 = time.perf_counter()
        await writer.write(0, count, rate)
        written = time.perf_counter() - t0
        unanswered = await writer.finish(SSE_DRAIN)
        expected = count * readers
        deadline = time.perf_counter() + SSE_DRAIN
        while sum(r.received for r in subs) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        seconds, srv_cpu, cli_cpu = running.stop()
        received = sum(r.received for r in subs)
        errors = writer.errors + sum(r.errors for r in subs)
        resub = sum(r.resubscribes for r in subs)
        acks = Latency.of_ns(writer.acks)
        note = (f"{count} messages x {readers} readers, written at "
                f"{(count - 1) / written if written > 0 and count > 1 else rate:.1f}/s "
                f"(writer lag max {writer.max_lag * 1e3:.0f} ms, "
                f"{len(writer.conns)} writer connections)")
        if acks:
            note += f"; POST answered p50 {acks.p50:.1f} ms, p99 {acks.p99:.1f} ms"
        if unanswered:
            note += f"; {unanswered} POSTs unanswered"
        if resub:
            note += f"; {resub} {reader_cls.RESUBSCRIBED}"
        if writer.first_error:
            note += f"; first error: {writer.first_error}"
        return Run(seconds, received, 0, errors, array.array("q", sink),
                   missing=max(0, expected - received), server_cpu=srv_cpu,
                   client_cpu=cli_cpu, note=note)
    finally:
        for r in subs:
            r.stop()
        writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
