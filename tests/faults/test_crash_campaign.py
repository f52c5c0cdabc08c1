"""A SIGKILL crash campaign against the real server (``unbroken serve``, file store).

What is promised. ``unbroken serve --durability always`` acknowledges an
append only once it is on disk, so however and whenever the process dies:

* every acknowledged append is stored exactly once, in acknowledgement
  (offset) order; an append that was never acknowledged is stored whole or
  not at all, at most once; a JSON batch (one POST of an array) is stored
  whole and contiguous, in order, or not at all;
* nothing a client ever saw is taken back: what a check read after one
  restart is a prefix of what the next one reads, and what an SSE reader
  received before a kill is a prefix of the stream after the restart;
* an idempotent producer retrying a request whose answer the crash swallowed
  gets 204 (duplicate) exactly when the first attempt had landed, 200 when it
  had not, and each of its seqs ends up stored once, in order;
* a close, once acknowledged, holds across every later restart (HEAD shows
  ``Stream-Closed``, an append gets 409, the tail is the one the close
  acknowledged) and the stream keeps everything acknowledged before it;
* a fork reads as its source's prefix up to the fork offset (exactly what
  reading the source from that offset leaves out) followed by its own
  acknowledged appends;
* a create is atomic: a stream whose create was cut short is either absent
  (and creatable again) or complete (with its initial data, or as a fork),
  and no temporary folder or file survives the next start.

How it is checked. :func:`test_crash_campaign` runs ``unbroken serve --port
0 --data-dir D`` in a subprocess (small segments, so rolls happen all the
time) under mixed load -- plain writers, JSON-batch writers, idempotent
producers, SSE readers and an operations thread that forks, closes and
creates streams -- and SIGKILLs it at a random moment, for many cycles,
restarting on the same data directory (about one cycle in seven ends with
SIGTERM instead, so that starts from state snapshots are crashed into too).
Every client records what the server acknowledged (with its
``Stream-Next-Offset``) and what it sent without an answer. After each
restart, before any new load, :meth:`Campaign.check` reads every stream and
checks every promise above against that record. The cycles default to 8 (``slow`` variant: 60); ``UNBROKEN_CRASH_CYCLES``
overrides both, ``UNBROKEN_CRASH_SEED`` replays the random choices (the kill
moments depend on timing as well). The figures are printed at the end
(``pytest -s``): cycles survived, acknowledged appends checked, producer
retries answered as duplicates, bytes lost (always 0, or the test fails).

Two targeted crashes kill the server at a precise step, which no signal
from outside can hit: the engine's test hook (``unbroken_engine._testhooks``,
``UNBROKEN_TEST_KILL_AT=<step>:<n>``) makes the process SIGKILL itself the
n-th time it reaches a step of a segment roll (:func:`test_kill_in_a_segment_roll`)
or of a stream create (:func:`test_kill_in_a_stream_create`). After a normal
restart: everything acknowledged is there, the stream takes appends (and
rolls again), no ``.tmp`` file or ``.tmp-`` folder is left, a half-created
stream is absent or complete and can be created again, and the checks of
``unbroken verify`` find the data directory healthy both right after the
crash and after the restart.

Every wait is bounded (``TIMEOUT``); no test asserts timing.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.sse import SSEParser

S = "/v1/stream/"
JSON_TYPE = {"Content-Type": "application/json"}
#: liveness bound for any single wait (never a timing assertion)
TIMEOUT = 30.0
#: segment size of the campaign's server: records average ~250 bytes, so every
#: busy stream rolls a few times per cycle
CAMPAIGN_SEGMENT = 16 * 1024
KILL_ENV = "UNBROKEN_TEST_KILL_AT"
OFFSET_RE = re.compile(r"[0-9]{16}_[0-9]{16}")


# ---- HTTP --------------------------------------------------------------------------------------

class Gone(Exception):
    """The server went away before the answer arrived: the outcome is unknown."""


@dataclass
class Answer:
    """A complete response: status, lower-cased headers, body."""

    status: int
    headers: dict
    body: bytes

    @property
    def offset(self) -> str | None:
        """``Stream-Next-Offset``, checked to be well-formed, or None."""
        value = self.headers.get("stream-next-offset")
        if value is not None:
            assert OFFSET_RE.fullmatch(value), value
        return value

    @property
    def closed(self) -> bool:
        """Whether the answer says ``Stream-Closed: true``."""
        return self.headers.get("stream-closed") == "true"


class Client:
    """One keep-alive connection (``http.client``); any failure to get a whole
    answer -- refused, reset, cut short -- is :class:`Gone`."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)

    def request(self, method: str, path: str, headers=None, body=None, query: str = "") -> Answer:
        """``method`` on ``/v1/stream/{path}{query}``; raises :class:`Gone`."""
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
        try:
            self.conn.request(method, S + path + query, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise Gone(exc) from exc
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def read_all(client: Client, path: str, offset: str = "-1") -> tuple[list, bool]:
    """Every value of a JSON stream from ``offset`` (following
    ``Stream-Next-Offset``) and whether the stream reads as closed."""
    values = []
    while True:
        a = client.request("GET", path, query=f"?offset={offset}")
        assert a.status == 200, (path, offset, a.status, a.body[:200])
        values += json.loads(a.body)
        offset = a.offset
        if a.headers.get("stream-up-to-date") == "true":
            return values, a.closed


def verify_offline(data: Path):
    """What ``unbroken verify DATA`` checks (read-only, in this process, the
    server stopped): asserts no stream is damaged; returns the report."""
    from unbroken_engine.tools.verify import verify

    report = verify(str(data))
    assert report.exit_status == 0, [s for s in report.streams if s.status == "damaged"]
    return report


def leftovers(data: Path) -> list[str]:
    """Temporary files and folders in a data directory: ``.tmp-``/``.trash-``
    folders of creates and removals, ``*.tmp`` files of rolls and meta writes."""
    found = [p.name for p in data.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    found += [str(p.relative_to(data)) for p in data.glob("*/*.tmp")]
    return found


def kill9(sp) -> None:
    """SIGKILL the server and reap it."""
    if sp.proc.poll() is None:
        sp.proc.send_signal(signal.SIGKILL)
    assert sp.stop() == -signal.SIGKILL, sp.output


def wait_killed_by_hook(sp, step: str) -> None:
    """Wait (bounded) for the server to SIGKILL itself at ``step``."""
    try:
        rc = sp.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server never reached {step}: {sp.output}") from None
    sp.stop()
    assert rc == -signal.SIGKILL, f"exit {rc}: {sp.output}"
    assert f"test hook: SIGKILL at {step}" in sp.output, sp.output


# ---- the model: what clients were told ---------------------------------------------------------

@dataclass
class StreamModel:
    """One stream as the clients know it.

    :ivar acks: ``(offset, writer, i, n)`` of every acknowledged append
        (``n`` values; a producer's ``i`` is its seq)
    :ivar closed_at: the offset a close acknowledged
    :ivar close_pending: a close was sent and its answer lost
    :ivar close_value: the writer of the value that close carried, if any
    :ivar seen: the stream's own values (a fork's: after its fork offset) as
        the last check read them; every later check must read them again
    """

    name: str
    source: str | None = None
    base: str | None = None
    acks: list = field(default_factory=list)
    closed_at: str | None = None
    close_pending: bool = False
    close_value: str | None = None
    seen: list = field(default_factory=list)

    @property
    def open(self) -> bool:
        """Whether clients may append (no close acknowledged or in doubt)."""
        return self.closed_at is None and not self.close_pending


@dataclass
class Producer:
    """An idempotent producer (epoch 0) of one stream.

    :ivar next_seq: the seq it sends next (a retry when ``pending``)
    :ivar pending: ``next_seq`` was sent and its answer lost
    :ivar landed: for a pending seq, whether the last check found it stored
    :ivar finished: its stream is closed to it
    """

    pid: str
    stream: str
    next_seq: int = 0
    pending: bool = False
    landed: bool | None = None
    acked: set = field(default_factory=set)
    dups: set = field(default_factory=set)
    finished: bool = False


@dataclass
class PendingCreate:
    """A create whose answer was lost: ``source`` for a fork, ``data`` the
    initial values of a plain stream (may be empty)."""

    name: str
    source: str | None
    data: list


class Figures:
    """What the campaign counted (printed at the end)."""

    def __init__(self):
        self.cycles = 0
        self.ack_checks = 0
        self.retries = 0
        self.dup_retries = 0
        self.bytes_lost = 0
        self.sse_checked = 0
        self.sse_values = 0
        self.forks = 0
        self.closes = 0
        self.creates_in_doubt = 0
        self.rolls_seen = 0
        self.clean_stops = 0


def values_of(w: str, i: int, n: int, batch: bool, pad: int) -> list | dict:
    """The body writer ``w`` sends as its ``i``-th append: one object, or a
    JSON array of ``n`` (a batch, each value carrying its place ``j``)."""
    if not batch:
        return {"w": w, "i": i, "pad": "x" * pad}
    return [{"w": w, "i": i, "j": j, "n": n, "pad": "y" * pad} for j in range(n)]


# ---- the load ------------------------------------------------------------------------------

class Campaign:
    """The clients' record across cycles, the load of one cycle, and the checks."""

    def __init__(self, rng: random.Random, *, ops: bool = True, sse: bool = True,
                 producers: int = 3):
        self.rng = rng
        self.ops = ops
        self.sse = sse
        self.lock = threading.Lock()
        self.streams: dict[str, StreamModel] = {}
        self.writers: dict[str, str] = {}  # writer (or producer id) -> its stream
        self.sizes: dict[tuple, int] = {}  # (writer, i) -> bytes of an acknowledged body
        self.producer_slots: list[Producer | None] = [None] * producers
        self.producers: list[Producer] = []
        self.pending_creates: dict[str, PendingCreate] = {}
        self.failures: list[str] = []
        self.readers: list[SSEReader] = []
        self.counter = 0
        self.fig = Figures()

    # -- bookkeeping shared by the threads

    def fail(self, what: str) -> None:
        """Record a broken promise seen by a client thread (asserted by the main thread)."""
        with self.lock:
            self.failures.append(what)

    def next_name(self, prefix: str) -> str:
        """A fresh, never used name."""
        with self.lock:
            self.counter += 1
            return f"{prefix}{self.counter}"

    def register_writer(self, w: str, stream: str) -> None:
        """Declare a writer before its first request: values of an unknown
        writer in a stream are a failure."""
        with self.lock:
            self.writers[w] = stream

    def ack(self, stream: str, offset: str, w: str, i: int, n: int, size: int) -> None:
        """Record an acknowledged append of ``n`` values, ``size`` bytes of body."""
        with self.lock:
            self.streams[stream].acks.append((offset, w, i, n))
            self.sizes[(w, i)] = size

    def open_streams(self) -> list[str]:
        """Streams clients may append to."""
        with self.lock:
            return [s.name for s in self.streams.values() if s.open]

    # -- set-up

    def create_streams(self, port: int, n: int) -> None:
        """Create ``n`` empty JSON streams (no crash expected meanwhile)."""
        c = Client(port)
        for _ in range(n):
            name = self.next_name("s")
            a = c.request("PUT", name, JSON_TYPE)
            assert a.status == 201, a
            self.streams[name] = StreamModel(name)
        c.close()

    # -- one cycle's load

    def start_load(self, port: int, cycle: int, plain_streams: int = 4) -> "Load":
        """Start this cycle's clients: writers on some open streams, the
        producers (each first retrying its pending seq), SSE readers, the
        operations thread."""
        load = Load(self, port)
        rng = self.rng
        open_now = self.open_streams()
        for name in rng.sample(open_now, min(plain_streams, len(open_now))):
            load.spawn(PlainWriter(load, name, f"c{cycle}.{self.next_name('w')}", False,
                                   rng.random()))
            if rng.random() < 0.6:
                load.spawn(PlainWriter(load, name, f"c{cycle}.{self.next_name('b')}", True,
                                       rng.random()))
        for slot, p in enumerate(self.producer_slots):
            if (p is None or p.finished) and open_now:
                p = Producer(self.next_name("p"), rng.choice(open_now))
                self.register_writer(p.pid, p.stream)
                self.producers.append(p)
                self.producer_slots[slot] = p
            if p is not None and not p.finished:
                load.spawn(ProducerWorker(load, p))
        if self.sse:
            names = list(self.streams)
            for name in rng.sample(names, min(3, len(names))):
                reader = SSEReader(port, name)
                self.readers.append(reader)
                load.spawn(reader)
        if self.ops:
            load.spawn(OpsWorker(load, ops=rng.randint(1, 3)))
        return load

    # -- the checks after a restart

    def check(self, port: int) -> None:
        """Check every promise against the record, with the server quiescent
        (just restarted, no load): see the module docstring."""
        c = Client(port)
        self._resolve_creates(c)
        current: dict[str, list] = {}
        for name, st in list(self.streams.items()):
            current[name] = self._check_stream(c, st, current)
        for reader in self.readers:
            reader.join(timeout=TIMEOUT)
            assert not reader.is_alive(), "an SSE reader outlived its server"
            seen, closed = reader.values()
            full = current[reader.path]
            assert seen == full[:len(seen)], (
                f"{reader.path}: an SSE reader saw {len(seen)} values that are not a "
                f"prefix of the stream after the restart")
            if closed:
                assert seen == full, f"{reader.path}: closed for SSE, values missing"
            self.fig.sse_checked += 1
            self.fig.sse_values += len(seen)
        self.readers = []
        c.close()

    def _resolve_creates(self, c: Client) -> None:
        """A create whose answer was lost: the stream is absent or complete
        (a fork: with no value of its own yet, its tail is its fork offset,
        and :meth:`_check_stream` checks its prefix). An absent plain stream
        is created again by the same ``PUT`` (201); an absent fork is let go
        (its source may be closed by now)."""
        for name, pc in list(self.pending_creates.items()):
            self.fig.creates_in_doubt += 1
            del self.pending_creates[name]
            a = c.request("HEAD", name)
            if a.status == 200:
                st = StreamModel(name, source=pc.source, base=a.offset if pc.source else None)
                values, _ = read_all(c, name, a.offset if pc.source else "-1")
                assert values == pc.data, f"{name}: a half-created stream: {values[:3]}"
            else:
                assert a.status == 404, (name, a)
                if pc.source is not None:
                    continue
                a = c.request("PUT", name, JSON_TYPE, pc.data or None)
                assert a.status == 201, (name, a)
                st = StreamModel(name)
            self.streams[name] = st
            if a.status == 201 and pc.data:
                self.ack(name, a.offset, pc.data[0]["w"], 0, len(pc.data),
                         len(json.dumps(pc.data)))

    def _check_stream(self, c: Client, st: StreamModel, current: dict) -> list:
        full, read_closed = read_all(c, st.name)
        head = c.request("HEAD", st.name)
        assert head.status == 200, (st.name, head)
        if st.source is not None:
            own, _ = read_all(c, st.name, st.base)
            assert full[len(full) - len(own):] == own, f"{st.name}: own values out of place"
            prefix = full[:len(full) - len(own)]
            src = current[st.source]
            assert prefix == src[:len(prefix)], f"{st.name}: not a prefix of {st.source}"
            after, _ = read_all(c, st.source, st.base)
            assert src[len(prefix):] == after, (
                f"{st.name}: forked at {st.base}, but its prefix is not {st.source} "
                f"up to that offset")
        else:
            own = full
        # nothing a check saw is ever taken back
        assert own[:len(st.seen)] == st.seen, f"{st.name}: values seen after a restart are gone"
        st.seen = own
        # closes
        if st.close_pending:
            if head.closed:
                st.closed_at = head.offset  # the close landed: it holds from now on
            if st.close_value is not None:  # one record: the value landed iff the close did
                landed = any(v["w"] == st.close_value for v in own)
                assert landed == head.closed, (st.name, st.close_value, head.closed)
            st.close_pending = False
        if st.closed_at is not None:
            assert head.closed and read_closed, f"{st.name}: acknowledged close lost"
            assert head.offset == st.closed_at, (st.name, head.offset, st.closed_at)
            a = c.request("POST", st.name, JSON_TYPE, {"w": "late", "i": 0})
            assert a.status == 409 and a.closed, (st.name, a)
            late = [o for o, *_ in st.acks if o > st.closed_at]
            assert not late, f"{st.name}: appends acknowledged after its close: {late[:3]}"
        else:
            assert not head.closed and not read_closed, f"{st.name}: closed, but never asked"
        self._check_values(st, own)
        return full

    def _check_values(self, st: StreamModel, own: list) -> None:
        """Exactly once, whole batches, each writer's appends in order with at
        most its last one unacknowledged, acknowledgement (offset) order."""
        where: dict[tuple, int] = {}
        for pos, v in enumerate(own):
            w = v["w"]
            assert self.writers.get(w) == st.name, f"{st.name}: a value nobody wrote: {v}"
            key = (w, v["i"], v.get("j", 0))
            assert key not in where, f"{st.name}: stored twice: {key}"
            where[key] = pos
        per_writer: dict[str, list] = {}
        pos = 0
        while pos < len(own):  # batches: whole, contiguous, in order
            v = own[pos]
            n = v.get("n", 1)
            got = [(x["w"], x["i"], x.get("j", 0)) for x in own[pos:pos + n]]
            assert got == [(v["w"], v["i"], j) for j in range(n)], (
                f"{st.name}: a batch is split or partial at {pos}: {got}")
            per_writer.setdefault(v["w"], []).append(v["i"])
            pos += n
        acked: dict[str, int] = {}
        lost = []
        order = []
        for offset, w, i, n in sorted(st.acks):
            acked[w] = acked.get(w, 0) + 1
            if (w, i, 0) not in where:
                lost.append((offset, w, i, n))
            else:
                order.append(where[(w, i, 0)])
        self.fig.bytes_lost += sum(self.sizes.get((w, i), 1) for _, w, i, _ in lost)
        assert not lost, f"{st.name}: {len(lost)} acknowledged appends lost, e.g. {lost[:3]}"
        offsets = [o for o, *_ in st.acks]
        assert len(set(offsets)) == len(offsets), f"{st.name}: two acks with one offset"
        assert order == sorted(order), f"{st.name}: acknowledged appends out of offset order"
        self.fig.ack_checks += len(order)
        producers = {p.pid: p for p in self.producers if p.stream == st.name}
        for w, seq in per_writer.items():
            assert seq == list(range(len(seq))), f"{st.name}: writer {w} stored {seq[:20]}"
            p = producers.get(w)
            if p is None:  # a plain writer: at most its last append unacknowledged
                assert len(seq) - acked.get(w, 0) in (0, 1), (st.name, w, len(seq), acked.get(w))
        for p in producers.values():
            stored = set(per_writer.get(p.pid, []))
            assert p.acked | p.dups <= stored, f"{p.pid}: answered seqs missing"
            if p.pending:
                assert stored <= set(range(p.next_seq + 1)), (p.pid, sorted(stored)[-3:])
                p.landed = p.next_seq in stored
            else:
                assert stored == p.acked | p.dups, (p.pid, p.next_seq, sorted(stored)[-3:])

    def settle_producers(self, port: int) -> None:
        """Retry every pending producer once more (server up, no crash):
        afterwards no outcome is in doubt."""
        load = Load(self, port)
        for p in self.producers:
            if p.pending:
                worker = ProducerWorker(load, p, once=True)
                worker.run()
        assert not any(p.pending for p in self.producers)
        assert not self.failures, self.failures

    def fill(self, port: int, size: int) -> None:
        """Append about ``size`` bytes to every open stream, acknowledged one
        by one (no crash expected meanwhile)."""
        c = Client(port)
        for name in self.open_streams():
            w = self.next_name("fill")
            self.register_writer(w, name)
            for i in range(size // 1000 + 1):
                body = json.dumps(values_of(w, i, 1, False, 1000)).encode()
                a = c.request("POST", name, JSON_TYPE, body)
                assert a.status == 204 and a.offset, a
                self.ack(name, a.offset, w, i, 1, len(body))
        c.close()

    def final_check(self, port: int) -> None:
        """:meth:`check`, then: every producer's stored seqs are exactly its
        answered ones (``0..k-1``)."""
        self.check(port)
        for p in self.producers:
            assert not p.pending
            assert p.acked | p.dups == set(range(p.next_seq)), p.pid

    def summary(self) -> str:
        """The figures, one line."""
        f = self.fig
        acks = sum(len(s.acks) for s in self.streams.values())
        return (f"crash campaign: {f.cycles} cycles survived ({f.clean_stops} of them ended "
                f"by SIGTERM, the others by SIGKILL), {acks} acknowledged appends "
                f"({f.ack_checks} checks of them) in {len(self.streams)} streams, "
                f"{f.dup_retries} of {f.retries} producer retries answered as duplicates, "
                f"{f.forks} forks, {f.closes} closes, {f.creates_in_doubt} creates in doubt, "
                f"{f.sse_checked} SSE prefixes checked ({f.sse_values} values), "
                f"{f.bytes_lost} bytes lost")


class Load:
    """The client threads of one cycle; they stop at the first failure to
    get an answer (the server died) or when told to."""

    def __init__(self, campaign: Campaign, port: int):
        self.campaign = campaign
        self.port = port
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.answered = 0  # requests answered this cycle
        self.lock = threading.Lock()

    def spawn(self, thread: threading.Thread) -> None:
        """Start a client thread and keep it for :meth:`join`."""
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def tick(self) -> None:
        """Count one answered request."""
        with self.lock:
            self.answered += 1

    def wait_answered(self, n: int, sp) -> None:
        """Wait (bounded) for ``n`` answered requests; the server must stay up."""
        deadline = time.monotonic() + TIMEOUT
        while self.answered < n:
            assert sp.proc.poll() is None, f"the server died by itself: {sp.output}"
            assert not self.campaign.failures, self.campaign.failures
            assert time.monotonic() < deadline, f"only {self.answered} answers: server stuck?"
            time.sleep(0.005)

    def join(self) -> None:
        """Stop and join every thread (after the kill they end on their own)."""
        self.stop.set()
        while True:
            with self.lock:
                threads = list(self.threads)
            for t in threads:
                t.join(timeout=TIMEOUT)
                assert not t.is_alive(), f"{t.name} did not end"
            with self.lock:
                if len(self.threads) == len(threads):
                    return


class Worker(threading.Thread):
    """A client thread: :meth:`work` runs until the server dies; an unexpected
    exception (a malformed answer, a bug here) is recorded as a failure
    instead of vanishing with the thread."""

    def __init__(self, load: "Load", name: str):
        super().__init__(daemon=True, name=name)
        self.load = load

    def run(self):
        """Run :meth:`work`, recording anything it raises but :class:`Gone`."""
        try:
            self.work()
        except Gone:
            pass  # the server died: this request's outcome is unknown
        except Exception as exc:  # noqa: BLE001 - asserted by the main thread
            self.load.campaign.fail(f"{self.name}: {exc!r}")

    def work(self) -> None:
        """The thread's requests."""
        raise NotImplementedError


class PlainWriter(Worker):
    """Appends ``values_of(w, i, ...)`` for i = 0, 1, ... to one stream (plain
    appends, or JSON batches of 1-5 values); records each acknowledgement."""

    def __init__(self, load: Load, stream: str, w: str, batch: bool, seed: float):
        super().__init__(load, f"writer {w}")
        self.stream, self.w, self.batch = stream, w, batch
        self.rng = random.Random(seed)
        load.campaign.register_writer(w, stream)

    def work(self):
        """Append until the server dies, the stream closes, or the cycle ends."""
        campaign, c = self.load.campaign, Client(self.load.port)
        i = 0
        try:
            while not self.load.stop.is_set():
                n = self.rng.randint(1, 5) if self.batch else 1
                body = json.dumps(values_of(self.w, i, n, self.batch,
                                            self.rng.randrange(400))).encode()
                a = c.request("POST", self.stream, JSON_TYPE, body)
                if a.status == 204 and a.offset is not None:
                    campaign.ack(self.stream, a.offset, self.w, i, n, len(body))
                    self.load.tick()
                    i += 1
                elif a.status == 409 and a.closed:
                    return  # the operations thread closed the stream
                elif a.status == 204:
                    return  # an answer cut short by the kill: unknown
                else:
                    campaign.fail(f"append to {self.stream}: {a.status} {a.body[:200]!r}")
                    return
        finally:
            c.close()


class ProducerWorker(Worker):
    """An idempotent producer sending seq 0, 1, 2, ...; its first request
    retries a pending seq (same seq, same body) and must be answered 204 if
    the last check found that seq stored, 200 if not."""

    def __init__(self, load: Load, p: Producer, once: bool = False):
        super().__init__(load, f"producer {p.pid}")
        self.p, self.once = p, once

    def work(self):
        """Send until the server dies, the stream closes, or the cycle ends."""
        p, campaign, c = self.p, self.load.campaign, Client(self.load.port)
        try:
            while not self.load.stop.is_set() or self.once:
                seq, retry = p.next_seq, p.pending
                p.pending = True  # in doubt until an answer comes
                body = json.dumps({"w": p.pid, "i": seq}).encode()
                a = c.request("POST", p.stream, {
                    **JSON_TYPE, "Producer-Id": p.pid, "Producer-Epoch": "0",
                    "Producer-Seq": str(seq)}, body)
                if a.status in (200, 204) and a.offset is None:
                    return  # an answer cut short by the kill: still in doubt
                if retry:
                    with campaign.lock:
                        campaign.fig.retries += 1
                    want = {True: (204,), False: (200, 409)}[bool(p.landed)]
                    if a.status not in want:
                        campaign.fail(f"{p.pid} retry of seq {seq}: {a.status}, but the "
                                      f"first attempt had{'' if p.landed else ' not'} landed")
                        return
                p.pending, p.landed = False, None
                if a.status == 200:
                    p.acked.add(seq)
                    campaign.ack(p.stream, a.offset, p.pid, seq, 1, len(body))
                elif a.status == 204 and retry:
                    p.dups.add(seq)
                    with campaign.lock:
                        campaign.fig.dup_retries += 1
                elif a.status == 409 and a.closed:
                    p.finished = True
                    return
                else:
                    campaign.fail(f"{p.pid} seq {seq} (first attempt): {a.status} {a.body!r}")
                    return
                p.next_seq += 1
                self.load.tick()
                if self.once:
                    return
        finally:
            c.close()


class OpsWorker(Worker):
    """A few operations at random moments: fork an open stream at its tail
    (then write to the fork), close an open stream (sometimes with a last
    value) and create a replacement (sometimes with initial data)."""

    def __init__(self, load: Load, ops: int):
        super().__init__(load, "operations")
        self.ops = ops
        self.rng = random.Random(load.campaign.rng.random())

    def work(self):
        """Run the operations until one loses its answer or the cycle ends."""
        c = Client(self.load.port)
        try:
            for _ in range(self.ops):
                if self.load.stop.wait(self.rng.uniform(0.01, 0.3)):
                    return
                open_now = self.load.campaign.open_streams()
                if self.rng.random() < 0.65 or len(open_now) < 3:
                    self.fork(c, self.rng.choice(open_now))
                else:
                    self.close(c, self.rng.choice(open_now))
                    self.create(c)
        finally:
            c.close()

    def fork(self, c: Client, source: str) -> None:
        """Fork ``source`` at its tail, then start a writer on the fork."""
        campaign = self.load.campaign
        name = campaign.next_name("f")
        with campaign.lock:
            campaign.pending_creates[name] = PendingCreate(name, source, [])
        a = c.request("PUT", name, {"Stream-Forked-From": source})
        if a.status != 201 or a.offset is None:
            if a.status != 201:
                campaign.fail(f"fork {name} of {source}: {a.status} {a.body!r}")
            return
        with campaign.lock:
            del campaign.pending_creates[name]
            campaign.streams[name] = StreamModel(name, source=source, base=a.offset)
            campaign.fig.forks += 1
        self.load.spawn(PlainWriter(self.load, name, f"{name}.w", self.rng.random() < 0.3,
                                    self.rng.random()))

    def close(self, c: Client, name: str) -> None:
        """Close ``name``, close-only or with a last value."""
        campaign = self.load.campaign
        st = campaign.streams[name]
        last = None
        if self.rng.random() < 0.5:
            last = campaign.next_name("x")
            campaign.register_writer(last, name)
        with campaign.lock:
            st.close_pending, st.close_value = True, last
        a = c.request("POST", name, {**JSON_TYPE, "Stream-Closed": "true"},
                      {"w": last, "i": 0} if last else None)
        if a.status != 204 or a.offset is None or not a.closed:
            if a.status != 204:
                campaign.fail(f"close {name}: {a.status} {a.body!r}")
            raise Gone("answer cut short")
        if last:
            campaign.ack(name, a.offset, last, 0, 1, len(json.dumps({"w": last, "i": 0})))
        with campaign.lock:
            st.closed_at, st.close_pending = a.offset, False
            campaign.fig.closes += 1

    def create(self, c: Client) -> None:
        """Create a new JSON stream, empty or with a batch of initial data."""
        campaign = self.load.campaign
        name = campaign.next_name("s")
        data = []
        if self.rng.random() < 0.5:
            w = f"{name}.init"
            campaign.register_writer(w, name)
            data = values_of(w, 0, self.rng.randint(1, 4), True, self.rng.randrange(100))
        with campaign.lock:
            campaign.pending_creates[name] = PendingCreate(name, None, data)
        a = c.request("PUT", name, JSON_TYPE, data or None)
        if a.status != 201 or a.offset is None:
            if a.status != 201:
                campaign.fail(f"create {name}: {a.status} {a.body!r}")
            raise Gone("answer cut short")
        with campaign.lock:
            del campaign.pending_creates[name]
            campaign.streams[name] = StreamModel(name)
        if data:
            campaign.ack(name, a.offset, data[0]["w"], 0, len(data), len(json.dumps(data)))


class SSEReader(threading.Thread):
    """Follows a stream over SSE from its start and keeps the raw body."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True, name=f"sse {path}")
        self.port, self.path = port, path
        self.raw = b""

    def run(self):
        """Read until the server dies (or the stream closes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", f"{S}{self.path}?offset=-1&live=sse")
            resp = conn.getresponse()
            if resp.status != 200:
                return
            while piece := resp.read1(65536):
                self.raw += piece
        except (OSError, http.client.HTTPException):
            pass  # the server died
        finally:
            conn.close()

    def values(self) -> tuple[list, bool]:
        """The values of every complete data event, and whether a complete
        control event said the stream is closed."""
        values, closed = [], False
        for event in SSEParser().feed(self.raw):  # not eof: a last event cut short is left out
            if event.event == "data":
                values += event.json()
            elif event.event == "control":
                closed = closed or event.json().get("streamClosed", False)
        return values, closed


# ---- the campaign --------------------------------------------------------------------------------

def _seed() -> int:
    seed = int(os.environ.get("UNBROKEN_CRASH_SEED", random.randrange(1 << 32)))
    print(f"UNBROKEN_CRASH_SEED={seed}")
    return seed


def _cycles(default: int) -> int:
    return int(os.environ.get("UNBROKEN_CRASH_CYCLES", default))


def run_campaign(server_process, tmp_path, cycles: int) -> Campaign:
    """``cycles`` times: start on the same data directory, check, load, kill -9.
    Then: a last restart and check, the producers' doubts settled, a clean
    stop, a restart and a final check, the checks of ``unbroken verify``."""
    rng = random.Random(_seed())
    data = tmp_path / "data"
    campaign = Campaign(rng)
    seg = ("--segment-size", str(CAMPAIGN_SEGMENT))
    for cycle in range(cycles):
        sp = server_process(data, *seg)
        if cycle == 0:
            campaign.create_streams(sp.port, 4)
        else:
            campaign.check(sp.port)
            campaign.fig.cycles += 1
        load = campaign.start_load(sp.port, cycle)
        load.wait_answered(rng.randint(5, 150), sp)
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment, requests in flight
        if rng.random() < 0.15:
            # now and then a clean stop instead: the next start then restores
            # producer state and closes from the state snapshots it wrote
            assert sp.stop() == 0, sp.output
            campaign.fig.clean_stops += 1
        else:
            kill9(sp)
        load.join()
        assert not campaign.failures, campaign.failures
    sp = server_process(data, *seg)
    campaign.check(sp.port)
    campaign.fig.cycles += 1
    campaign.settle_producers(sp.port)
    campaign.final_check(sp.port)
    assert sp.stop() == 0, sp.output
    assert not leftovers(data), leftovers(data)
    sp = server_process(data, *seg)
    campaign.final_check(sp.port)
    assert sp.stop() == 0, sp.output
    verify_offline(data)
    campaign.fig.rolls_seen = sum(len(list(d.glob("*.seg"))) - 1 for d in data.iterdir()
                                  if d.is_dir() and not d.name.startswith("."))
    assert campaign.fig.bytes_lost == 0
    return campaign


def test_crash_campaign(server_process, tmp_path):
    """SIGKILL at random moments under mixed load, a few cycles (``UNBROKEN_CRASH_CYCLES``)."""
    campaign = run_campaign(server_process, tmp_path, _cycles(8))
    print(campaign.summary() + f", {campaign.fig.rolls_seen} segment rolls on disk")


@pytest.mark.slow
def test_crash_campaign_long(server_process, tmp_path):
    """The same, 60 cycles by default (``UNBROKEN_CRASH_CYCLES`` overrides)."""
    campaign = run_campaign(server_process, tmp_path, _cycles(60))
    print(campaign.summary() + f", {campaign.fig.rolls_seen} segment rolls on disk")


# ---- targeted crashes: a segment roll, a stream create ------------------------------------------

ROLL_STEPS = ["roll.created", "roll.sealed", "roll.renamed", "roll.synced"]
CREATE_STEPS = ["create.log", "create.meta", "create.renamed", "create.synced"]
ROLL_SEGMENT = 4096


def _arm(monkeypatch, spec: str) -> None:
    monkeypatch.setenv(KILL_ENV, spec)


@pytest.mark.parametrize("step", ROLL_STEPS)
def test_kill_in_a_segment_roll(server_process, tmp_path, monkeypatch, step):
    """The server SIGKILLs itself at ``step`` of its third segment roll, under
    writers, batch writers and producers on two streams: after a restart
    everything acknowledged is there, the streams take appends and roll again,
    no ``.tmp`` is left, and ``unbroken verify`` is content before and after."""
    data = tmp_path / "data"
    seg = ("--segment-size", str(ROLL_SEGMENT))
    campaign = Campaign(random.Random(_seed()), ops=False)
    _arm(monkeypatch, f"{step}:3")
    sp = server_process(data, *seg)
    monkeypatch.delenv(KILL_ENV)
    campaign.create_streams(sp.port, 2)
    load = campaign.start_load(sp.port, 0)
    wait_killed_by_hook(sp, step)
    load.join()
    assert not campaign.failures, campaign.failures
    tmp_segments = list(data.glob("*/*.seg.tmp"))
    if step in ("roll.created", "roll.sealed"):  # the crash really was inside the roll
        assert tmp_segments, sorted(p.name for p in data.glob("*/*"))
    else:
        assert not tmp_segments
    verify_offline(data)  # a crashed directory is healthy as it is
    for _ in range(2):  # restart, check, write again (rolling again), crash again
        sp = server_process(data, *seg)
        assert not leftovers(data), leftovers(data)
        campaign.check(sp.port)
        load = campaign.start_load(sp.port, 1)
        load.wait_answered(100, sp)
        kill9(sp)
        load.join()
        assert not campaign.failures, campaign.failures
    sp = server_process(data, *seg)
    campaign.check(sp.port)
    campaign.settle_producers(sp.port)
    before = {name: len(list((data / name).glob("*.seg"))) for name in campaign.streams}
    campaign.fill(sp.port, 5 * ROLL_SEGMENT)  # rolls each stream a few times more
    campaign.final_check(sp.port)
    assert sp.stop() == 0
    verify_offline(data)
    for name, n in before.items():
        assert len(list((data / name).glob("*.seg"))) >= n + 4, f"{name} did not roll again"


@pytest.mark.parametrize("step", ROLL_STEPS)
def test_kill_in_the_roll_of_an_empty_segment(server_process, tmp_path, monkeypatch, step):
    """A stream's first append is larger than a segment: the empty active
    segment is replaced by one of the record's size (by the rename itself).
    Killed at ``step``: the stream is there, empty, and takes the append."""
    data = tmp_path / "data"
    seg = ("--segment-size", str(ROLL_SEGMENT))
    big = [{"w": "big", "i": 0, "j": j, "n": 30, "pad": "z" * 200} for j in range(30)]
    assert len(json.dumps(big)) > ROLL_SEGMENT
    _arm(monkeypatch, f"{step}:1")
    sp = server_process(data, *seg)
    monkeypatch.delenv(KILL_ENV)
    c = Client(sp.port)
    assert c.request("PUT", "e", JSON_TYPE).status == 201
    with pytest.raises(Gone):
        c.request("POST", "e", JSON_TYPE, big)
    wait_killed_by_hook(sp, step)
    verify_offline(data)
    sp = server_process(data, *seg)
    assert not leftovers(data), leftovers(data)
    c = Client(sp.port)
    values, closed = read_all(c, "e")
    assert values in ([], big) and not closed  # never acknowledged: whole or absent
    a = c.request("POST", "e", JSON_TYPE, big)
    assert a.status == 204, a
    a = c.request("POST", "e", JSON_TYPE, {"w": "small", "i": 0})
    assert a.status == 204, a
    after = [*values, *big, {"w": "small", "i": 0}]
    assert read_all(c, "e") == (after, False)
    assert sp.stop() == 0
    sp = server_process(data, *seg)
    assert read_all(Client(sp.port), "e") == (after, False)
    assert sp.stop() == 0
    verify_offline(data)


@pytest.mark.parametrize("what", ["empty", "with data", "fork"])
@pytest.mark.parametrize("step", CREATE_STEPS)
def test_kill_in_a_stream_create(server_process, tmp_path, monkeypatch, step, what):
    """The server SIGKILLs itself at ``step`` of its second create (the first
    made the stream ``src``, which then took acknowledged appends). After a
    restart ``src`` holds every acknowledged value; the half-created stream is
    absent before the rename and complete after it (the rename is the commit
    point), is created again (201) or confirmed (200) by the same ``PUT``,
    and takes appends; no ``.tmp-`` folder is left."""
    data = tmp_path / "data"
    _arm(monkeypatch, f"{step}:2")
    sp = server_process(data)
    monkeypatch.delenv(KILL_ENV)
    c = Client(sp.port)
    assert c.request("PUT", "src", JSON_TYPE).status == 201
    src = [{"w": "src", "i": i} for i in range(20)]
    for v in src:
        assert c.request("POST", "src", JSON_TYPE, v).status == 204
    tail = c.request("HEAD", "src").offset
    initial = values_of("init", 0, 3, True, 10) if what == "with data" else []
    if what == "fork":
        put = ({"Stream-Forked-From": "src"}, None)
        expect = src
    else:
        put = (JSON_TYPE, initial or None)
        expect = initial
    with pytest.raises(Gone):
        c.request("PUT", "victim", *put)
    wait_killed_by_hook(sp, step)
    committed = step in ("create.renamed", "create.synced")
    folders = [p.name for p in data.iterdir()]
    assert ("victim" in folders) == committed, folders
    assert any(n.startswith(".tmp-") for n in folders) != committed, folders
    verify_offline(data)

    sp = server_process(data)
    assert not leftovers(data), leftovers(data)
    c = Client(sp.port)
    assert read_all(c, "src") == (src, False)
    head = c.request("HEAD", "victim")
    if committed:
        assert head.status == 200, head
        assert read_all(c, "victim") == (expect, False)
        if what == "fork":
            assert head.offset == tail  # forked at the source's tail
    else:
        assert head.status == 404, head
    a = c.request("PUT", "victim", *put)
    assert a.status == (200 if committed else 201), a
    assert read_all(c, "victim") == (expect, False)
    assert c.request("POST", "victim", JSON_TYPE, {"w": "after", "i": 0}).status == 204
    assert c.request("POST", "src", JSON_TYPE, {"w": "src", "i": 20}).status == 204
    assert sp.stop() == 0
    sp = server_process(data)
    c = Client(sp.port)
    assert read_all(c, "victim") == ([*expect, {"w": "after", "i": 0}], False)
    assert read_all(c, "src") == ([*src, {"w": "src", "i": 20}], False)
    assert sp.stop() == 0
    verify_offline(data)
