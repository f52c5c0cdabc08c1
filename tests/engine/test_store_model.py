"""Model-based test of the stream stores: each store against an independent model.

The oracle is :mod:`tests.engine.stream_model` -- a small model of stream
semantics written from the Durable Streams spec (§4-§5, §7.1) and
docs/protocol-choices.md, sharing no rule code with the engine (the stores
all share theirs: comparing one store with another could not catch a rule
bug). A Hypothesis state machine drives one store -- memory, file (8 KiB
segments so records roll across segment files, ``Durability.ALWAYS``), and
Redis / PostgreSQL when ``REDIS_URL`` / ``DATABASE_URL`` are set (a unique
key prefix or schema per example, dropped after; skipped otherwise) -- on
one asyncio event loop with one fake clock, and after every step the model
judges the answer and moves on. An invariant checks ``list_streams()``.

What the model judges exactly: every error and its fields (404/410 after
delete, soft delete and expiry; ConfigMismatch on a re-create with other
configuration or of a soft-deleted path; content-type mismatch with the
media type compared case-insensitively before ``;``; empty body; invalid JSON,
``[]`` in an append; Stream-Seq conflicts, byte-wise; the producer table of
§5.2.1 -- stale epoch, new epoch not at seq 0, gaps, duplicates answered with
the current tail -- ; appends and closes to a closed stream), every
CreateResult, AppendResult, StreamMeta (HEAD, list) and the content of every
read: a read from an offset the store returned yields exactly the messages
appended after it (JSON flattened one level on the raw text, each value's
bytes as sent), ``up_to_date`` exactly at the tail, ``closed`` exactly when
closed and at the tail; offsets grow with every append; TTL and absolute
expiry on the fake clock (renewed by reads and appends, not by HEAD; a fork
inherits its source's; an expired source with live forks is soft-deleted,
its data kept for them); a fork's content is its source's below the fork
point, the sub-offset's prefix of the next append, then its own.

What it leaves to weaker invariants, and why:

* offset values -- opaque: the model only learns what each offset stands
  for from the answers that return it, and compares offsets for order;
* how many appends a read with a small ``max_bytes`` returns -- the store's
  choice; the model checks its documented rule (store.py, protocol-choices:
  a read returns whole appends, at least one below the tail, over the budget
  only for a single append, all of them when they fit with a byte to spare)
  and chained reads reach the tail;
* a read at an offset the stream never returned (another stream's, one past
  one, an arbitrary number): 400, or a run of whole appends ending at the
  returned next offset; 400 when the model knows it is no boundary;
* ``sweep``'s list: the stores expire lazily (on lookup) and the shared ones
  do not remove on a read-only lookup, so the list is judged as a subset of
  the paths that may still have been there; the effect is judged exactly
  by the next ``list_streams``;
* the order of checks the spec leaves open: an empty body is refused before
  or after the stream lookup (a parameter of the model: the shared stores
  refuse it first), a stale producer epoch on a closed stream is 403 or 409.

A re-PUT is judged with §5.1's closure rule: ``Stream-Closed`` must match
the stream's closure status (a closed stream re-PUT without it, or an open
one with it, is 409).

The fake clock starts a day ahead of the OS clock: after a restart the file
store takes a sliding TTL's last access as the latest of the one saved at
shutdown and its newest segment's mtime (OS clock); with the clocks close,
how long the run took (seconds, under ASan) could decide which streams
expired, and a replayed example would draw from another live set (Hypothesis:
FlakyStrategyDefinition).

Reproducing a failure: Hypothesis prints the failing steps and a
``@reproduce_failure`` blob; ``--hypothesis-seed=N`` reruns a seed.
``UNBROKEN_MODEL_EXAMPLES`` sets the examples per store (shared stores: a third
of it: each example opens a backend).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from support.stores import URL_VARS, open_shared_store, unique_prefix
from unbroken_engine import errors
from unbroken_engine.log import Durability, LogConfig
from unbroken_engine.protocol.offsets import NOW, START
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import (
    DEFAULT_READ_CHUNK,
    AppendOptions,
    AppendResult,
    CreateOptions,
    CreateResult,
    Producer,
    ReadResult,
    StreamMeta,
)
from unbroken_engine.stores.memory import MemoryStreamStore


def _load_model():
    """tests/ is no package (``--import-mode=importlib``): load the model
    module beside this file by its path."""
    name = "unbroken_tests_stream_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("stream_model.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


stream_model = _load_model()
StreamModel, media = stream_model.StreamModel, stream_model.media

CONFIG = LogConfig(segment_size=8192, index_interval=256, durability=Durability.ALWAYS)

PATHS = ["a", "b", "f/x", "f/y"]
FORK_PATHS = PATHS + ["f/z"]  # one only forks go to, so that a fork mostly finds room
CONTENT_TYPES = ["application/octet-stream", "text/plain", "text/plain; charset=utf-8",
                 "TEXT/PLAIN", "application/json", "application/json; charset=utf-8"]
# byte-wise ordered: "a" < "a0" < "b" < "c" < "c~"
SEQS = ["a", "a0", "b", "c", "c~"]
PRODUCER_IDS = ["p", "q"]

# JSON texts as a client sends them: whitespace around and inside, escapes,
# commas inside strings (no lone-surrogate escapes: their validation is changing)
JSON_TEXTS = [
    b"1", b'"a"', b"null", b" true ", b"-0.5e3", b'""', b'"x,y"',
    b'{"k":[1,{"z":null}]}', b"[1,2]", b'[[1],2,"x,y"]', b"[{}]", b"[]", b"[[]]",
    b'[1, "two", {"3": [4]}]', b'["' + b"j" * 3000 + b'", 2]',
    b' [ "a\\"]," , {"c" : [1 , 2]}\n, "\\u00e9\\\\" ] ', b'\t{"s": "]}"}\r\n', b"[ ]",
]
BAD_JSON = [b"nul", b"[1,", b"{'a':1}", b'{"a":1}{"b":2}', b"1 2", b"]", b"[1,]", b"\xff"]


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


def is_json(content_type: str) -> bool:
    return media(content_type) == "application/json"


def printable(value):
    if isinstance(value, ReadResult):
        return ReadResult(bytes(value.data)[:80], value.next_offset, value.up_to_date,
                          value.closed, value.content_type)
    return value


class StoreMachine(RuleBasedStateMachine):
    """Drives one store (``kind``) and judges every answer with the model."""

    def __init__(self, kind: str, in_hypothesis: bool = True):
        super().__init__()
        self.kind = kind
        self.in_hypothesis = in_hypothesis
        self.dir = tempfile.mkdtemp(prefix="unbroken-model-") if kind == "file" else None
        self.prefix = unique_prefix(kind, "mdl")
        # a day ahead of the OS clock: see the module docstring
        self.now = float(int(time.time())) + 86400.0
        self.model = StreamModel(empty_body_first=kind in URL_VARS)
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.store = None
        self.store = self.portal.call(self._open)
        self.offsets = [0]  # every offset an answer returned (of any stream)
        self.live: list[str] = []  # from list_streams()
        self.restarts = 0
        self.created: list[tuple[str, CreateOptions]] = []

    # ---- plumbing ---------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    async def _open(self):
        if self.kind == "memory":
            return MemoryStreamStore(clock=self.clock)
        if self.kind == "file":
            return FileBackedStreamStore(self.dir, CONFIG, clock=self.clock)
        url = os.environ[URL_VARS[self.kind]]
        return await open_shared_store(self.kind, url, self.prefix, clock=self.clock)

    def call(self, method, *args):
        """Run one operation on the store; the model judges the answer."""
        fn = getattr(self.store, method)
        try:
            outcome = ("ok", self.portal.call(functools.partial(fn, *args)))
        except errors.UnbrokenError as exc:
            if isinstance(exc, (errors.LogClosedError, errors.CorruptSegment,
                                errors.BackendUnavailable)):
                raise  # never expected here
            outcome = ("raised", exc)
        try:
            getattr(self.model, method)(*args, self.now, outcome)
        except AssertionError as exc:
            raise AssertionError(f"{method}{args!r} answered {printable(outcome[1])!r}: "
                                 f"{exc}") from None
        self._note(outcome)
        if self.in_hypothesis:
            kind = type(outcome[1]).__name__ if outcome[0] == "raised" else "ok"
            event(f"{method}: {kind}")
        return outcome

    def _note(self, outcome):
        value = outcome[1]
        if isinstance(value, CreateResult):
            found = [value.meta.next_offset]
        elif isinstance(value, (AppendResult, StreamMeta, ReadResult)):
            found = [value.next_offset]
        else:
            found = []
        for off in found:
            if off not in self.offsets:
                self.offsets.append(off)

    def teardown(self):
        try:
            if self.store is not None:
                try:
                    if self.kind in URL_VARS:
                        self.portal.call(self.store.drop_everything)
                finally:
                    self.portal.call(self.store.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def model_stream(self, path):
        state, s = self.model.status(path, self.now)
        return s if state == "live" else None

    # ---- what to draw -------------------------------------------------------------

    def draw_path(self, data, label="path"):
        """Mostly a live stream, sometimes any path of the pool."""
        if self.live:
            live = st.sampled_from(self.live)
            return data.draw(st.one_of(live, live, live, st.sampled_from(PATHS)), label=label)
        return data.draw(st.sampled_from(PATHS), label=label)

    def draw_body(self, data, path):
        s = self.model_stream(path)
        bodies = BODIES_ANY if s is None else BODIES_JSON if s.json else BODIES_OTHER
        return data.draw(bodies, label="body")

    def draw_offset(self, data):
        known = st.sampled_from(self.offsets)
        return data.draw(st.one_of(known, known, known.map(lambda o: o + 1), st.just(START),
                                   st.just(NOW), st.integers(0, 20000)), label="offset")

    def create_stream(self, path, options):
        source = options.fork_from and self.model_stream(options.fork_from)
        if source and options.fork_offset is not None and source.known_unit(
                options.fork_offset) is None and not source.not_a_boundary(options.fork_offset):
            return  # a repeat whose fork offset this source never returned: no judge
        outcome = self.call("create", path, options)
        if outcome[0] == "ok":
            self.created.append((path, options))

    # ---- create, fork ----------------------------------------------------------

    @initialize(content_type=st.sampled_from(CONTENT_TYPES), data=st.data())
    def first_streams(self, content_type, data):
        """Start with two open streams, so that most steps meet one."""
        self.create_stream("a", CreateOptions(content_type=content_type))
        body = data.draw(BODIES_JSON if is_json(content_type) else BODIES_OTHER, label="body")
        self.create_stream("b", CreateOptions(content_type=content_type, data=body))
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
        self.create_stream(path, CreateOptions(content_type=content_type, ttl=ttl,
                                               expires_at=expires_at, closed=closed, data=body))

    @rule(content_type=st.one_of(st.none(), st.none(), st.sampled_from(CONTENT_TYPES)),
          ttl=ttls, sub_offset=st.integers(0, 3),
          closed=rarely, data=st.data())
    def fork(self, content_type, ttl, sub_offset, closed, data):
        """A fork at the default tail, at an offset the source returned, or at
        one past it where the model knows that is no boundary."""
        source = self.draw_path(data, "source")
        free = st.sampled_from([p for p in FORK_PATHS if p not in self.live and p != source]
                               or FORK_PATHS)
        path = data.draw(st.one_of(free, free, free, free, free, st.sampled_from(PATHS)),
                         label="path")
        s = self.model.streams.get(source)
        offsets = st.just(None)
        if s is not None:
            known = sorted(t for t, u in s.tokens.items() if len(u) == 1)
            inside = [t for t in known if t < s.tail]  # a sub-offset needs an append after
            past = [t + 1 for t in known if s.not_a_boundary(t + 1)]
            offsets = st.one_of(offsets, *(st.sampled_from(c) for c in (known, inside, inside,
                                                                         past) if c))
        offset = data.draw(offsets, label="fork_offset")
        body = data.draw(st.one_of(st.just(b""), st.just(b""), BODIES_ANY), label="body")
        self.create_stream(path, CreateOptions(content_type=content_type, ttl=ttl,
                                               closed=closed, data=body, fork_from=source,
                                               fork_offset=offset, fork_sub_offset=sub_offset))

    @precondition(lambda self: self.created)
    @rule(data=st.data())
    def create_again(self, data):
        """Repeat a create that succeeded: identical (200) if the stream is
        still there, else created anew (or refused)."""
        path, options = data.draw(st.sampled_from(self.created), label="earlier create")
        self.create_stream(path, options)

    # ---- appends ------------------------------------------------------------------

    @rule(content_type=append_types, data=st.data())
    def append(self, content_type, data):
        path = self.draw_path(data)
        self.call("append", path, self.draw_body(data, path),
                  AppendOptions(content_type=content_type))

    @rule(seq=st.sampled_from(SEQS), data=st.data())
    def append_with_seq(self, seq, data):
        path = self.draw_path(data)
        self.call("append", path, self.draw_body(data, path), AppendOptions(seq=seq))

    def draw_producer(self, data, path):
        """Producer headers near the model's state for that id: the next seq,
        a retry of the last or an older one, a gap, a new epoch (from 0 or
        not), a stale one."""
        pid = data.draw(st.sampled_from(PRODUCER_IDS), label="producer id")
        s = self.model.streams.get(path)
        state = s.producers.get(pid) if s is not None else None
        if state is None:
            return data.draw(st.builds(Producer, st.just(pid), st.integers(0, 2),
                                       st.sampled_from([0, 0, 0, 1])), label="producer")
        e, q = state
        choices = [(e, q + 1), (e, q + 1), (e, q), (e, max(q - 1, 0)), (e, q + 2),
                   (e + 1, 0), (e + 1, 1), (max(e - 1, 0), q + 1)]
        epoch, seq = data.draw(st.sampled_from(choices), label="producer epoch, seq")
        return Producer(pid, epoch, seq)

    @rule(stream_seq=st.one_of(st.none(), st.none(), st.sampled_from(SEQS)),
          close=st.integers(0, 9).map(lambda n: n == 0), data=st.data())
    def append_as_producer(self, stream_seq, close, data):
        """A producer's session: a few requests in a row, each drawn near
        the state the previous ones left (so fencing and gaps happen)."""
        path = self.draw_path(data)
        for _ in range(data.draw(st.integers(1, 4), label="requests")):
            producer = self.draw_producer(data, path)
            self.call("append", path, self.draw_body(data, path),
                      AppendOptions(seq=stream_seq, close=close, producer=producer))

    @rule(with_data=st.booleans(), seq=st.one_of(st.none(), st.sampled_from(SEQS)),
          as_producer=st.booleans(), data=st.data())
    def close(self, with_data, seq, as_producer, data):
        """Close with data or close only (idempotent), as a producer or not."""
        path = self.draw_path(data)
        producer = self.draw_producer(data, path) if as_producer else None
        body = self.draw_body(data, path) if with_data else b""
        self.call("append", path, body, AppendOptions(seq=seq, producer=producer, close=True))

    # ---- reads, metadata, delete --------------------------------------------------

    @rule(max_bytes=max_bytes_st, data=st.data())
    def read(self, max_bytes, data):
        path = self.draw_path(data)
        self.call("read", path, self.draw_offset(data), max_bytes)

    @rule(max_bytes=max_bytes_st, data=st.data())
    def read_to_the_tail(self, max_bytes, data):
        """Chained reads from the start, as a catch-up client does."""
        path = self.draw_path(data)
        outcome = self.call("read", path, START, max_bytes)
        for _ in range(500):
            if outcome[0] != "ok" or outcome[1].up_to_date:
                return
            outcome = self.call("read", path, outcome[1].next_offset, max_bytes)
        raise AssertionError("chained reads never reached the tail")

    @rule(data=st.data())
    def head(self, data):
        self.call("get", self.draw_path(data))

    @rule(data=st.data())
    def delete(self, data):
        self.call("delete", self.draw_path(data))

    # ---- time, sweep, restart -------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 4, 6, 59, 61, 299, 301, 1000]))
    def advance_clock(self, seconds):
        self.now += seconds

    @rule()
    def sweep(self):
        self.call("sweep")

    @precondition(lambda self: self.kind != "memory" and self.restarts < 4)
    @rule()
    def restart(self):
        """Close the store and open it again (file: on the same directory;
        shared: a new instance on the same backend): same streams, closure,
        Stream-Seq, producer state, TTLs and forks, judged by every later step."""
        self.restarts += 1
        self.portal.call(self.store.aclose)
        self.store = None
        self.store = self.portal.call(self._open)
        if self.kind == "file":
            recovery = self.store.recovery
            assert recovery.corrupt == {}, recovery.summary()
            assert recovery.bytes_cut == 0, recovery.summary()  # a clean close cuts nothing
        for path in list(self.live):  # every live stream reads back whole
            self.call("get", path)
            self.call("read", path, START, DEFAULT_READ_CHUNK)

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def same_streams(self):
        outcome = self.call("list_streams")
        self.live = [meta.path for meta in outcome[1]]


EXAMPLES = int(os.environ.get("UNBROKEN_MODEL_EXAMPLES", "200"))


def machine_settings(kind):
    return settings(
        max_examples=EXAMPLES if kind not in URL_VARS else max(1, EXAMPLES // 3),
        stateful_step_count=40,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


@pytest.mark.parametrize("kind", ["memory", "file", "redis", "postgres"])
def test_store_against_model(kind):
    if kind in URL_VARS and not os.environ.get(URL_VARS[kind]):
        pytest.skip(f"{URL_VARS[kind]} is not set: no {kind} server to drive")
    run_state_machine_as_test(lambda: StoreMachine(kind), settings=machine_settings(kind))


# ---- a divergence the model found (the shared stores answered 404) -----------------------------

@pytest.mark.parametrize("kind", ["memory", "file", "redis", "postgres"])
def test_an_expired_source_with_a_live_fork_is_soft_deleted(kind):
    """An expired stream that still has forks is soft-deleted: 410 for every
    direct operation, 409 for a re-create, its data kept for the fork
    (docs/protocol-choices.md, Reading and Deleting); judged by the model."""
    if kind in URL_VARS and not os.environ.get(URL_VARS[kind]):
        pytest.skip(f"{URL_VARS[kind]} is not set: no {kind} server to drive")
    m = StoreMachine(kind, in_hypothesis=False)
    try:
        m.create_stream("s", CreateOptions(ttl=5, data=b"kept"))
        m.now += 3
        m.create_stream("f", CreateOptions(fork_from="s"))  # inherits ttl=5, from now
        m.now += 3  # "s" expired, "f" not
        assert m.model.status("s", m.now)[0] == "soft"
        m.call("get", "s")
        m.call("read", "s", START, DEFAULT_READ_CHUNK)
        m.call("append", "s", b"x", AppendOptions())
        m.call("create", "s", CreateOptions(ttl=5))
        m.call("read", "f", START, DEFAULT_READ_CHUNK)
        m.now += 5  # the fork expires too: both go
        m.call("get", "s")
        m.call("create", "s", CreateOptions())
    finally:
        m.teardown()
