"""Model-based test of the stream stores: the file store against the memory store.

A Hypothesis state machine drives a FileBackedStreamStore (a fresh temporary
directory per example; 8 KiB segments so that records roll across segment
files; ``Durability.ALWAYS``) and a MemoryStreamStore (the reference) with the
same operations, both on one event loop (an anyio blocking portal) and both
reading one fake clock. After every step both must give the same answer:
equal results (CreateResult, AppendResult, ReadResult with ``bytes(data)``,
StreamMeta, sweep lists) or the same exception type carrying the same fields.
An invariant compares ``list_streams()`` after every step.

What the rules cover:

* create -- paths from a small pool (``a``, ``b``, ``f/x``, ``f/y``), content types
  octet / text (with a parameter, other case) / JSON, optional sliding TTL or
  absolute expiry (both at once is refused), created closed, initial data
  (JSON texts and arrays, ``[]``, invalid JSON, binary up to more than a
  segment); an identical create again is a 200, another one a ConfigMismatch;
* append -- plain (matching, other or no content type); with Stream-Seq from a
  small ordered alphabet (so conflicts happen); as an idempotent producer
  (ids ``p``/``q``; epoch and seq drawn near the stream's state for that id:
  the next seq, retries of the last or an older one -- duplicates --, gaps,
  new epochs starting at 0 or not, stale epochs), with or without Stream-Seq
  and close; close with data; close-only (again: idempotent; with a producer);
  JSON bodies (values, arrays, ``[]``, invalid);
* fork -- from any path, at an offset an earlier answer returned (a boundary,
  another stream's offset, or one byte past one) or the default tail, with a
  sub-offset 0..3, inheriting or overriding content type and TTL, with
  initial data, closed; forks of forks;
* delete (a source with forks is soft-deleted and goes with its last fork);
  HEAD; reads at offsets returned earlier (or one past them), START, NOW or
  arbitrary, with ``max_bytes`` from 0 up; chained catch-up reads to the tail;
* time -- the fake clock advances, so sliding TTLs and absolute expiries pass
  (lazily on lookup, or by ``sweep``); forks keep an expired source readable;
* restart -- the file store is closed and reopened on the same directory (the
  memory store keeps going); it must come back with the same streams, closure,
  Stream-Seq, producer state and fork links (compared directly), and answer
  every later step as before.

Divergences that are by design, and how the comparison adapts:

* ``sweep()`` lists the removed paths in the order of the store's dict, which
  after a restart is the recovery order (folder names), not creation order:
  the lists are compared sorted.
* After a restart a sliding TTL restarts from the last write the file store
  can prove (the newest segment file's mtime, or the creation time), as
  ``FileBackedStreamStore._stream_from`` documents: reads are not recorded.
  (The mtime is on the OS clock, not the injected one, which starts a day
  ahead so that the mtime cannot win by however long the run took.) So after each restart
  the reference's ``last_access`` is set to what the file store recovered,
  and expiry is compared exactly from there on.

One divergence is a bug (see ``test_read_budget_below_first_record`` at the
end, which fails until it is fixed): a read whose first record is larger than
``max_bytes`` also returns, from the file store, the zero-length close record
that follows; the memory store stops after the first record. The state machine
recognises exactly that divergence (same bytes, and the memory store reaches
the file store's answer by reading on over records holding no bytes), counts
it as a Hypothesis event and goes on; ``UNBROKEN_MODEL_STRICT=1`` makes it a
failure like any other.

Reproducing a failure: Hypothesis prints the failing steps (paste them into a
test to replay) and a ``@reproduce_failure`` blob; ``--hypothesis-seed=N``
reruns a seed. ``UNBROKEN_MODEL_EXAMPLES`` changes the number of examples.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone

from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from unbroken_engine import errors
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.protocol.media import is_json
from unbroken_engine.stores.memory import MemoryStreamStore
from unbroken_engine.protocol.offsets import NOW, START
from unbroken_engine.stores.interface import (DEFAULT_READ_CHUNK, AppendOptions, AppendResult,
                                   CreateOptions, CreateResult, Producer, ReadResult,
                                   StreamMeta)
from unbroken_engine.stores.sync import SyncStreamStore

CONFIG = LogConfig(segment_size=8192, index_interval=256, durability=Durability.ALWAYS)

PATHS = ["a", "b", "f/x", "f/y"]
CONTENT_TYPES = ["application/octet-stream", "text/plain", "text/plain; charset=utf-8",
                 "TEXT/PLAIN", "application/json", "application/json; charset=utf-8"]
# byte-wise ordered: "a" < "a0" < "b" < "c" < "c~"
SEQS = ["a", "a0", "b", "c", "c~"]
PRODUCER_IDS = ["p", "q"]

JSON_TEXTS = [
    b"1", b'"a"', b"null", b" true ", b"-0.5e3", b'""', b'"x,y"',
    b'{"k":[1,{"z":null}]}', b"[1,2]", b'[[1],2,"x,y"]', b"[{}]", b"[]", b"[[]]",
    b'[1, "two", {"3": [4]}]', b'["' + b"j" * 3000 + b'", 2]',
]
BAD_JSON = [b"nul", b"[1,", b"{'a':1}", b'{"a":1}{"b":2}', b"1 2", b"]"]


@st.composite
def binary(draw):
    size = draw(st.one_of(st.integers(1, 40), st.integers(1, 600),
                          st.sampled_from([3000, 8000, 8200, 9000])))
    byte = draw(st.integers(0, 255))
    return bytes((byte + i) % 256 for i in range(size))


json_bodies = st.sampled_from(JSON_TEXTS)
bad_json = st.sampled_from(BAD_JSON)
# JSON streams mostly get JSON, other streams mostly bytes; b"" is an empty body
BODIES_JSON = st.one_of(json_bodies, json_bodies, json_bodies, bad_json, binary(), st.just(b""))
BODIES_OTHER = st.one_of(binary(), binary(), binary(), json_bodies, st.just(b""))
BODIES_ANY = st.one_of(json_bodies, bad_json, binary(), st.just(b""))

ttls = st.one_of(st.none(), st.none(), st.sampled_from([5, 60, 300]))
max_bytes_st = st.sampled_from([0, 1, 7, 64, 500, 4000, 10000, DEFAULT_READ_CHUNK])
append_types = st.one_of(st.none(), st.none(), st.sampled_from(CONTENT_TYPES))
rarely = st.integers(0, 5).map(lambda n: n == 0)

# fields an exception must carry identically from both stores
EXC_FIELDS = {
    errors.StreamClosed: ("path", "next_offset"),
    errors.SequenceConflict: ("last", "received"),
    errors.StaleEpoch: ("current_epoch",),
    errors.InvalidEpochSeq: ("epoch", "seq"),
    errors.ProducerSeqGap: ("expected", "received"),
    errors.ContentTypeMismatch: ("expected", "received"),
    errors.StreamNotFound: ("path",),
    errors.StreamSoftDeleted: ("path",),
    errors.OffsetGone: ("offset", "earliest"),
}


def normalize(value):
    """A comparable, printable form of a store's answer."""
    if isinstance(value, ReadResult):
        return ("ReadResult", bytes(value.data), value.next_offset, value.up_to_date,
                value.closed, value.content_type)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value  # AppendResult, CreateResult, StreamMeta: frozen dataclasses of plain values


def exc_key(exc: BaseException):
    if not isinstance(exc, errors.UnbrokenError):
        raise exc  # a TypeError or the like is a bug whichever store raises it
    if isinstance(exc, (errors.LogClosedError, errors.CorruptSegment)):
        raise exc  # never expected here
    fields = EXC_FIELDS.get(type(exc), ())
    return ("raised", type(exc).__name__, tuple((f, getattr(exc, f)) for f in fields))


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="unbroken-model-")
        # A day ahead of the OS clock, so a segment file's mtime (OS clock)
        # never outruns the injected one at a restart: how far real time ran
        # (ASan makes it seconds) must not decide which streams expired, or
        # a replayed example draws from another live set (hypothesis calls
        # that FlakyStrategyDefinition).
        self.now = float(int(time.time())) + 86400.0
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.mem = self.portal.call(self._build_memory)
        self.file = self.portal.call(self._build_file)
        self.offsets = [0]  # every offset an answer returned (of any stream)
        self.live: dict[str, str] = {}  # path -> content type, from list_streams()
        self.restarts = 0
        self.created: list[tuple[str, CreateOptions]] = []  # creates that succeeded

    # ---- plumbing ---------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    async def _build_memory(self):
        return MemoryStreamStore(clock=self.clock)

    async def _build_file(self):
        return FileBackedStreamStore(self.dir, CONFIG, clock=self.clock)

    def _call(self, store, method, *args, **kwargs):
        fn = getattr(store, method)
        try:
            return ("ok", normalize(self.portal.call(functools.partial(fn, *args, **kwargs))))
        except Exception as exc:  # noqa: BLE001 - compared by the caller
            return exc_key(exc)

    def both(self, method, *args, **kwargs):
        """Run one operation on both stores; they must answer alike."""
        mem = self._call(self.mem, method, *args, **kwargs)
        fil = self._call(self.file, method, *args, **kwargs)
        if method == "sweep":  # dict order, see the module docstring
            mem = (mem[0], sorted(mem[1])) if mem[0] == "ok" else mem
            fil = (fil[0], sorted(fil[1])) if fil[0] == "ok" else fil
        if fil != mem and method == "read" and self._memory_read_stops_short(args, mem, fil):
            event("known bug: MemoryLog.read stops before a zero-length close record")
            self._note_offsets(fil[1])
            return fil
        assert fil == mem, (f"{method}{args!r} {kwargs!r}:\n  file store:   {fil!r}\n"
                            f"  memory store: {mem!r}")
        if mem[0] == "ok":
            if method == "create":
                self.created.append(args)
            self._note_offsets(mem[1])
            outcome = getattr(mem[1], "outcome", None)
            event(f"{method}: ok" + (f" ({outcome.value})" if outcome else ""))
        else:
            event(f"{method}: {mem[1]}")
        return mem

    def _memory_read_stops_short(self, args, mem, fil) -> bool:
        """True only for the known divergence (module docstring): same bytes,
        the first record alone over ``max_bytes``, and the memory store reaches
        the file store's answer by reading on over records holding no bytes."""
        if not (mem[0] == fil[0] == "ok" and os.environ.get("UNBROKEN_MODEL_STRICT") != "1"):
            return False
        path, _, max_bytes = args
        _, m_data, m_next, m_up, m_closed, m_type = mem[1]
        _, f_data, f_next, f_up, f_closed, f_type = fil[1]
        json_mode = is_json(m_type)
        content = len(m_data) - (2 if json_mode else 0)
        if m_data != f_data or m_type != f_type or not m_next < f_next or content <= max_bytes:
            return False
        empty = b"[]" if json_mode else b""
        nxt, up, closed = m_next, m_up, m_closed
        while nxt < f_next:
            r = self.portal.call(self.mem.read, path, nxt, max_bytes)
            if bytes(r.data) != empty:
                return False
            nxt, up, closed = r.next_offset, r.up_to_date, r.closed
        return (nxt, up, closed) == (f_next, f_up, f_closed)

    def _note_offsets(self, value):
        if isinstance(value, CreateResult):
            found = [value.meta.next_offset]
        elif isinstance(value, (AppendResult, StreamMeta)):
            found = [value.next_offset]
        elif isinstance(value, tuple) and value and value[0] == "ReadResult":
            found = [value[2]]
        else:
            found = []
        for off in found:
            if off not in self.offsets:
                self.offsets.append(off)

    def teardown(self):
        try:
            for store in (self.mem, self.file):
                try:
                    self.portal.call(store.aclose)
                except Exception:  # noqa: BLE001 - closing after a failure
                    pass
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- what to draw -------------------------------------------------------------

    def draw_path(self, data, label="path"):
        """Mostly a live stream, sometimes any path of the pool."""
        if self.live:
            live = st.sampled_from(sorted(self.live))
            return data.draw(st.one_of(live, live, live, st.sampled_from(PATHS)), label=label)
        return data.draw(st.sampled_from(PATHS), label=label)

    def draw_body(self, data, path):
        ctype = self.live.get(path)
        bodies = BODIES_ANY if ctype is None else BODIES_JSON if is_json(ctype) else BODIES_OTHER
        return data.draw(bodies, label="body")

    def draw_offset(self, data):
        known = st.sampled_from(self.offsets)
        return data.draw(st.one_of(known, known, known.map(lambda o: o + 1), st.just(START),
                                   st.just(NOW), st.integers(0, 20000)), label="offset")

    # ---- create, fork ----------------------------------------------------------

    @initialize(content_type=st.sampled_from(CONTENT_TYPES), data=st.data())
    def first_streams(self, content_type, data):
        """Start with two open streams, so that most steps meet one."""
        self.both("create", "a", CreateOptions(content_type=content_type))
        body = data.draw(BODIES_JSON if is_json(content_type) else BODIES_OTHER, label="body")
        self.both("create", "b", CreateOptions(content_type=content_type, data=body))
        self.same_streams()

    @rule(path=st.sampled_from(PATHS), content_type=st.one_of(st.none(),
          st.sampled_from(CONTENT_TYPES)), ttl=ttls,
          expires_in=st.one_of(st.none(), st.none(), st.none(), st.sampled_from([30, 400])),
          closed=rarely, data=st.data())
    def create(self, path, content_type, ttl, expires_in, closed, data):
        expires_at = None
        if expires_in is not None:
            expires_at = datetime.fromtimestamp(self.now + expires_in, timezone.utc)
        body = data.draw(BODIES_ANY if content_type is None else BODIES_JSON
                         if is_json(content_type) else BODIES_OTHER, label="body")
        self.both("create", path, CreateOptions(content_type=content_type, ttl=ttl,
                                                 expires_at=expires_at, closed=closed,
                                                 data=body))

    @rule(content_type=st.one_of(st.none(), st.none(), st.sampled_from(CONTENT_TYPES)),
          ttl=ttls, sub_offset=st.one_of(st.just(0), st.integers(0, 3)),
          closed=rarely, data=st.data())
    def fork(self, content_type, ttl, sub_offset, closed, data):
        free = st.sampled_from([p for p in PATHS if p not in self.live] or PATHS)
        path = data.draw(st.one_of(free, free, free, st.sampled_from(PATHS)), label="path")
        source = self.draw_path(data, "source")
        offset = data.draw(st.one_of(st.none(), st.sampled_from(self.offsets)),
                           label="fork_offset")
        body = data.draw(st.one_of(st.just(b""), st.just(b""), BODIES_ANY), label="body")
        self.both("create", path, CreateOptions(content_type=content_type, ttl=ttl,
                                                 closed=closed, data=body, fork_from=source,
                                                 fork_offset=offset, fork_sub_offset=sub_offset))

    @precondition(lambda self: self.created)
    @rule(data=st.data())
    def create_again(self, data):
        """Repeat a create that succeeded: identical (200, ``created=False``)
        if the stream is still there, else created anew (or refused)."""
        path, options = data.draw(st.sampled_from(self.created), label="earlier create")
        self.both("create", path, options)

    # ---- appends ------------------------------------------------------------------

    @rule(content_type=append_types, data=st.data())
    def append(self, content_type, data):
        path = self.draw_path(data)
        body = self.draw_body(data, path)
        self.both("append", path, body, AppendOptions(content_type=content_type))

    @rule(seq=st.sampled_from(SEQS), data=st.data())
    def append_with_seq(self, seq, data):
        path = self.draw_path(data)
        self.both("append", path, self.draw_body(data, path), AppendOptions(seq=seq))

    def draw_producer(self, data, path):
        """Producer headers near the stream's state for that id (read from the
        reference store, only to steer the draw): the next seq, a retry of the
        last or an older one, a gap, a new epoch (from 0 or not), a stale one."""
        pid = data.draw(st.sampled_from(PRODUCER_IDS), label="producer id")
        s = self.mem._streams.get(path)
        state = s.producers.get(pid) if s is not None else None
        if state is None:
            return data.draw(st.builds(Producer, st.just(pid), st.integers(0, 2),
                                       st.sampled_from([0, 0, 0, 1])), label="producer")
        e, q = state.epoch, state.last_seq
        choices = [(e, q + 1), (e, q + 1), (e, q), (e, max(q - 1, 0)), (e, q + 2),
                   (e + 1, 0), (e + 1, 1), (max(e - 1, 0), q + 1)]
        epoch, seq = data.draw(st.sampled_from(choices), label="producer epoch, seq")
        return Producer(pid, epoch, seq)

    @rule(stream_seq=st.one_of(st.none(), st.none(), st.sampled_from(SEQS)),
          close=st.integers(0, 9).map(lambda n: n == 0), data=st.data())
    def append_as_producer(self, stream_seq, close, data):
        path = self.draw_path(data)
        producer = self.draw_producer(data, path)
        body = self.draw_body(data, path)
        self.both("append", path, body,
                  AppendOptions(seq=stream_seq, close=close, producer=producer))

    @rule(with_data=st.booleans(), seq=st.one_of(st.none(), st.sampled_from(SEQS)),
          as_producer=st.booleans(), data=st.data())
    def close(self, with_data, seq, as_producer, data):
        """Close with data (a DATA_CLOSE record) or close only (idempotent)."""
        path = self.draw_path(data)
        producer = self.draw_producer(data, path) if as_producer else None
        if with_data:
            self.both("append", path, self.draw_body(data, path),
                      AppendOptions(seq=seq, producer=producer, close=True))
        else:
            self.both("close_stream", path, producer)

    # ---- reads, metadata, delete --------------------------------------------------

    @rule(max_bytes=max_bytes_st, data=st.data())
    def read(self, max_bytes, data):
        path = self.draw_path(data)
        self.both("read", path, self.draw_offset(data), max_bytes)

    @rule(max_bytes=max_bytes_st, data=st.data())
    def read_to_the_tail(self, max_bytes, data):
        """Chained reads from the start, as a catch-up client does."""
        path = self.draw_path(data)
        result = self.both("read", path, START, max_bytes)
        for _ in range(500):
            if result[0] != "ok" or result[1][3]:  # failed, or up to date
                return
            result = self.both("read", path, result[1][2], max_bytes)
        raise AssertionError("chained reads never reached the tail")

    @rule(data=st.data())
    def head(self, data):
        self.both("get", self.draw_path(data))

    @rule(data=st.data())
    def delete(self, data):
        self.both("delete", self.draw_path(data))

    # ---- time, sweep, restart -------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 4, 6, 59, 61, 299, 301, 1000]))
    def advance_clock(self, seconds):
        self.now += seconds

    @rule()
    def sweep(self):
        self.both("sweep")

    @precondition(lambda self: self.restarts < 4)
    @rule()
    def restart_file_store(self):
        self.restarts += 1
        self.portal.call(self.file.aclose)
        self.file = self.portal.call(self._build_file)
        recovery = self.file.recovery
        assert recovery.corrupt == {}, recovery.summary()
        assert recovery.bytes_cut == 0, recovery.summary()  # a clean close cuts nothing
        if self.portal.call(self._compare_recovered_state):
            event("a restart moved a last_access")
        for path in sorted(self.live):  # every live stream reads back whole
            self.both("read", path, START, DEFAULT_READ_CHUNK)

    def _compare_recovered_state(self):
        """What the file store rebuilt from disk is what the memory store holds
        (soft-deleted and not yet removed expired streams included); then
        align ``last_access`` (module docstring). :return: whether one moved."""
        assert sorted(self.file._streams) == sorted(self.mem._streams), \
            "the restarted file store holds other streams than the memory store"
        moved = False
        for path, f in self.file._streams.items():
            m = self.mem._streams[path]
            mine = (f.soft_deleted, f.closed_at, f.last_seq, f.producers, f.refs, f.fork_offset,
                    f.source.path if f.source else None, f.requested, f.created_at)
            ref = (m.soft_deleted, m.closed_at, m.last_seq, m.producers, m.refs, m.fork_offset,
                   m.source.path if m.source else None, m.requested, m.created_at)
            assert mine == ref, f"{path}: recovered {mine} != reference {ref}"
            moved = moved or f.last_access != m.last_access
            m.last_access = f.last_access
        return moved

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def same_streams(self):
        result = self.both("list_streams")
        self.live = {meta.path: meta.content_type for meta in result[1]}


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=int(os.environ.get("UNBROKEN_MODEL_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)


# ---- the known divergence, pinned down ----------------------------------------------

def test_read_budget_below_first_record(tmp_path):
    """A read whose first record is larger than ``max_bytes`` returns that
    record whole. The file store (SegmentedLog.read raises the budget to the
    first record, as tests/engine/test_log_model.py specifies) then also
    returns the close record that follows, which holds no bytes, and reports
    the stream closed; the memory store (MemoryLog.read) stops after the first
    record. Both stores must answer this read alike.

    FAILS until MemoryLog.read (unbroken_engine/memory_log.py) raises its
    budget to the first record's size as SegmentedLog.read does."""
    stores = {"file": SyncStreamStore(lambda: FileBackedStreamStore(tmp_path, CONFIG)),
              "memory": SyncStreamStore(MemoryStreamStore)}
    answers = {}
    try:
        for name, store in stores.items():
            store.create("s")
            store.append("s", b"12345")
            store.close_stream("s")
            r = store.read("s", START, max_bytes=1)
            answers[name] = (bytes(r.data), r.next_offset, r.up_to_date, r.closed)
    finally:
        for store in stores.values():
            store.close()
    assert answers["file"] == (b"12345", 37, True, True)  # 16 + 5, then a 16-byte close
    assert answers["memory"] == answers["file"]
