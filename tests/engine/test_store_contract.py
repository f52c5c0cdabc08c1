"""The StreamStore contract: PART A of the conformance rule book, once, for every store.

Each test runs against every store in :data:`STORE_FACTORIES` (and on both
anyio backends). ``Lnnnn`` in a docstring is the line of the conformance test
(``@durable-streams/server-conformance-tests`` ``src/index.ts``) that pins the
rule; ``A<n>.<m>`` is the section of docs/conformance-rules.md.

Time is a :class:`FakeClock` handed to the store (``clock=``): TTL tests
advance it instead of sleeping. ``wait_for_messages`` tests act once the
waiter is parked (``store.waiting``), never after a sleep; the only real wait
is the timeout test's 50 ms.

The last group (``test_restart_*``) is for the file-backed store only: it
closes a store and opens a new one on the same directory.
"""
from __future__ import annotations

import inspect
import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import anyio
import msgpack
import pytest

from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.log import layout
from unbroken_engine.stores.file import LOCK_NAME, SNAPSHOT_NAME, FileBackedStreamStore
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog
from unbroken_engine.log.memory import MemoryLog
from unbroken_engine.stores.memory import MemoryStreamStore
from unbroken_engine.protocol.offsets import NOW, START, ZERO, format_offset, parse_offset
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.protocol.media import DEFAULT_CONTENT_TYPE
from unbroken_engine.protocol.rules import MAX_PATH_BYTES
from unbroken_engine.stores.interface import (
    AppendOptions,
    CreateOptions,
    Producer,
    StreamStore,
)
from unbroken_engine.stores.base import BaseStreamStore

pytestmark = pytest.mark.anyio

ACCEPTED = ProducerOutcome.ACCEPTED
DUPLICATE = ProducerOutcome.DUPLICATE
BIN = DEFAULT_CONTENT_TYPE
TEXT = "text/plain"
JSON = "application/json"


# ---- fixtures --------------------------------------------------------------------------

class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    # starts at the real time: the file store's recovery compares its clock
    # with segment mtimes (the last write it can prove, for sliding TTLs)
    return FakeClock(float(int(time.time())))


def _file_config(durability: Durability) -> LogConfig:
    return LogConfig(segment_size=64 * 1024, durability=durability)


def _memory(tmp_path, clock):
    return MemoryStreamStore(clock=clock)


def _file(tmp_path, clock):
    return FileBackedStreamStore(tmp_path / "data", _file_config(Durability.ALWAYS), clock=clock)


def _file_never(tmp_path, clock):
    return FileBackedStreamStore(tmp_path / "data", _file_config(Durability.NEVER), clock=clock)


async def _redis(tmp_path, clock):
    url = os.environ.get("REDIS_URL") or pytest.skip("REDIS_URL is not set: no Redis to test")
    from unbroken_engine.stores.shared.redis import RedisStreamStore

    return await RedisStreamStore.open(url, prefix=f"t{uuid.uuid4().hex[:12]}:", clock=clock)


async def _postgres(tmp_path, clock):
    url = os.environ.get("DATABASE_URL") or pytest.skip(
        "DATABASE_URL is not set: no PostgreSQL to test")
    from unbroken_engine.stores.shared.postgres import PostgresStreamStore

    return await PostgresStreamStore.open(url, schema=f"t{uuid.uuid4().hex[:12]}", clock=clock)


# name -> factory(tmp_path, clock) returning a store (or an awaitable of one).
# A factory calls pytest.skip("reason") when its backend is not available.
STORE_FACTORIES = {
    "memory": _memory,
    "file": _file,
    "file-never": _file_never,
    "redis": _redis,
    "postgres": _postgres,
}
#: stores whose drivers run on asyncio only (redis-py, psycopg)
ASYNCIO_ONLY = {"redis", "postgres"}


@pytest.fixture(params=list(STORE_FACTORIES))
async def store(request, tmp_path, clock, anyio_backend):
    """A fresh, empty store owned by the test's event loop; closed afterwards."""
    if request.param in ASYNCIO_ONLY and anyio_backend != "asyncio":
        pytest.skip(f"the {request.param} store's driver runs on asyncio only")
    s = STORE_FACTORIES[request.param](tmp_path, clock)
    if inspect.isawaitable(s):
        s = await s
    try:
        yield s
    finally:
        drop = getattr(s, "drop_everything", None)
        if drop is not None:
            await drop()  # a shared backend outlives the test: leave it clean
        await s.aclose()


# ---- helpers ---------------------------------------------------------------------------

async def create(store, path, **kw):
    return await store.create(path, CreateOptions(**kw))


async def append(store, path, data, **kw):
    return await store.append(path, data, AppendOptions(**kw))


async def body(store, path, offset=None, **kw) -> bytes:
    return bytes((await store.read(path, offset, **kw)).data)


async def jbody(store, path, offset=None):
    return json.loads(await body(store, path, offset))


async def read_pages(store, path, offset=None, max_bytes=1 << 20):
    """Follow next_offset until up to date. :return: list of ReadResults."""
    pages = []
    while True:
        r = await store.read(path, offset, max_bytes=max_bytes)
        pages.append(r)
        if r.up_to_date:
            return pages
        assert r.next_offset > (offset if isinstance(offset, int) else -1)
        offset = r.next_offset


def P(epoch=0, seq=0, id="p"):
    return Producer(id, epoch, seq)


def folder_of(store, path):
    """The stream's directory for a file store, else None."""
    if isinstance(store, FileBackedStreamStore):
        return store.data_dir / layout.stream_dir_name(path)
    return None


def utc_in(clock, seconds):
    return datetime.fromtimestamp(clock.now + seconds, tz=timezone.utc)


# ======================================================================================
# A1. Offsets
# ======================================================================================

async def test_first_offset_is_zero(store):
    """A1.1, A1.6 (L3854): an empty stream's tail is the zero offset."""
    assert format_offset(0) == "0000000000000000_0000000000000000" == ZERO
    res = await create(store, "s")
    assert res.meta.next_offset == 0
    r = await store.read("s")
    assert bytes(r.data) == b"" and r.next_offset == 0 and r.up_to_date


async def test_offsets_strictly_increase_per_append(store):
    """A1.2 (L2077, L5252): offsets, and their wire strings, strictly increase."""
    await create(store, "s")
    offsets = [(await append(store, "s", b"x" * n)).next_offset for n in (1, 1, 7, 1, 300)]
    assert offsets == sorted(set(offsets))
    wire = [format_offset(o) for o in offsets]
    assert wire == sorted(set(wire))
    assert all(o > 0 for o in offsets)


async def test_append_offset_is_the_new_tail(store):
    """A1.4, A1.5 (L1539): the append's offset is HEAD's, a full read's and NOW's tail."""
    await create(store, "s", data=b"first")
    r = await append(store, "s", b"second")
    assert (await store.get("s")).next_offset == r.next_offset
    assert await store.current_offset("s") == r.next_offset
    assert (await store.read("s")).next_offset == r.next_offset
    assert (await store.read("s", NOW)).next_offset == r.next_offset


async def test_read_from_append_offset_returns_only_later_data(store):
    """A1.4 (L1910, L504): reading from a returned offset never repeats data."""
    await create(store, "s")
    o1 = (await append(store, "s", b"one")).next_offset
    o2 = (await append(store, "s", b"two")).next_offset
    await append(store, "s", b"three")
    assert await body(store, "s", o1) == b"twothree"
    assert await body(store, "s", o2) == b"three"


async def test_start_and_none_read_from_the_beginning(store):
    """A1.7 (L1468, L1488): START and no offset are the same read."""
    await create(store, "s", data=b"ab")
    await append(store, "s", b"cd")
    a, b = await store.read("s", START), await store.read("s", None)
    assert bytes(a.data) == bytes(b.data) == b"abcd"
    assert a.next_offset == b.next_offset
    assert parse_offset("-1") is START and parse_offset(None) is START


async def test_now_read_returns_nothing_at_the_tail(store):
    """A6.4 (L1514, L1539): NOW -> empty body, the tail, up to date."""
    await create(store, "s", data=b"historical")
    tail = (await store.get("s")).next_offset
    r = await store.read("s", NOW)
    assert bytes(r.data) == b"" and r.next_offset == tail and r.up_to_date and not r.closed


async def test_now_read_on_json_stream_returns_empty_array(store):
    """A6.4 (L1625): NOW on a JSON stream is exactly ``[]``."""
    await create(store, "j", content_type=JSON, data=b'[{"a":1}]')
    r = await store.read("j", NOW)
    assert bytes(r.data) == b"[]" and r.up_to_date and r.content_type == JSON


async def test_resuming_from_now_offset_returns_only_new_data(store):
    """A6.4 (L1566): the offset NOW returns leads to later data only."""
    await create(store, "s", data=b"old")
    tail = (await store.read("s", NOW)).next_offset
    await append(store, "s", b"new data")
    assert await body(store, "s", tail) == b"new data"


async def test_read_beyond_tail_is_invalid_offset(store):
    """A1.9: an offset past the tail is refused, never answered with misframed data."""
    await create(store, "s", data=b"abc")
    tail = (await store.get("s")).next_offset
    for bad in (tail + 1, tail + 1000, 10**16 - 1):
        with pytest.raises(errors.InvalidOffset):
            await store.read("s", bad)


async def test_read_at_non_boundary_offset_is_invalid_offset(store):
    """A1.9: an offset inside an append is not an offset of this stream."""
    await create(store, "s", data=b"abcdefgh")
    await append(store, "s", b"ijkl")
    first = (await store.read("s", 0, max_bytes=1)).next_offset
    for bad in (1, first - 1, first + 1):
        with pytest.raises(errors.InvalidOffset):
            await store.read("s", bad)


async def test_read_negative_offset_is_invalid_offset(store):
    await create(store, "s", data=b"abc")
    with pytest.raises(errors.InvalidOffset):
        await store.read("s", -5)


async def test_read_missing_stream_is_not_found_for_every_offset(store):
    """A1.7 (L1779): reads of a missing stream -> not found, NOW included."""
    for offset in (None, START, NOW, 0):
        with pytest.raises(errors.StreamNotFound):
            await store.read("missing", offset)


def test_parse_offset_accepts_sentinels_and_the_wire_form():
    """A1.1, A1.7."""
    assert parse_offset(None) is START
    assert parse_offset("-1") is START
    assert parse_offset("now") is NOW
    assert parse_offset(ZERO) == 0
    assert parse_offset("0000000000000000_0000000000001234") == 1234
    for pos in (0, 1, 5, 1234, 10**16 - 1):
        assert parse_offset(format_offset(pos)) == pos


def test_formatted_offsets_are_url_safe_ascii_digits():
    """A1.12: only ASCII digits and ``_``; fixed width, so string order is log order."""
    import re
    for pos in (0, 9, 10, 123456789, 10**16 - 1):
        assert re.fullmatch(r"[0-9]{16}_[0-9]{16}", format_offset(pos))
    assert format_offset(9) < format_offset(10) < format_offset(100)


@pytest.mark.parametrize("text", [
    "", " ", "\n", ",", "/", "../",
    "0,1", "0 1", "-1\n", "-1\r\n", "now ", " now", "now\n", "NOW", "-2", "-1 ",
    "../x", "x/..", "a/b", "abc", "0_0", "1_2",
    "0000000000000000_0000000000000000\n",
    "0000000000000000_0000000000000000\r\n",
    "0000000000000000_0000000000000000\x00",
    " 0000000000000000_0000000000000000",
    "0000000000000000_0000000000000000 ",
    "0000000000000000-0000000000000000",
    "0000000000000000_00000000000000001",
    "000000000000000_0000000000000001",
    "0000000000000000_000000000000000a",
    "0000000000000001_0000000000000000",
    "0000000000000000_+000000000000001",
    "0000000000000000_-000000000000001",
    "9999999999999999_9999999999999999",
])
def test_parse_offset_rejects_malformed_strings(text):
    """A1.8 (L1878, L1894, L2107, L5401): strict full-match parsing; no trimming."""
    with pytest.raises(errors.InvalidOffset):
        parse_offset(text)


@pytest.mark.parametrize("text", [
    "0000000000000000_000000000000000\uff11",             # fullwidth digit one
    "0000000000000000_\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660"
    "\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0661",   # Arabic-Indic digits
])
def test_parse_offset_rejects_non_ascii_digits(text):
    """A1.8: the wire form is ASCII digits (``\\d`` in the reference's JS regex);
    a look-alike string must not alias a real offset."""
    with pytest.raises(errors.InvalidOffset):
        parse_offset(text)


# ======================================================================================
# A2. Create
# ======================================================================================

async def test_create_new_stream_reports_created(store):
    """A2.1 (L609): a new path -> created (201)."""
    res = await create(store, "s", content_type=TEXT)
    assert res.created is True
    assert res.meta.path == "s" and res.meta.content_type == TEXT
    assert res.meta.next_offset == 0 and res.meta.closed is False
    assert await store.has("s")


async def test_idempotent_create_with_same_config_returns_existing(store):
    """A2.1 (L609, L309): same config -> created False (200), nothing re-appended."""
    await create(store, "s", content_type=TEXT, data=b"hello")
    await append(store, "s", b" world")
    res = await create(store, "s", content_type=TEXT, data=b"hello")
    assert res.created is False
    assert res.meta.next_offset == (await store.get("s")).next_offset
    assert await body(store, "s") == b"hello world"


async def test_create_with_different_content_type_conflicts(store):
    """A2.1 (L627, L325)."""
    await create(store, "s", content_type=TEXT)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s", content_type=JSON)
    assert (await store.get("s")).content_type == TEXT


async def test_idempotent_create_ignores_content_type_case_and_parameters(store):
    """A2.2 (L1287): compared on the media type; the stored type stays verbatim."""
    await create(store, "s", content_type=JSON)
    res = await create(store, "s", content_type="APPLICATION/JSON; charset=utf-8")
    assert res.created is False
    assert res.meta.content_type == JSON
    res = await create(store, "s", content_type=" application/json ;charset=latin-1")
    assert res.created is False


async def test_create_without_content_type_matches_octet_stream(store):
    """A2.2: a missing content type compares as application/octet-stream."""
    await create(store, "b")
    assert (await create(store, "b", content_type=BIN)).created is False
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "b", content_type=TEXT)
    await create(store, "t", content_type=TEXT)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "t")


async def test_default_content_type_is_octet_stream(store):
    """A2.4 (L2239)."""
    res = await create(store, "s", data=b"x")
    assert res.meta.content_type == DEFAULT_CONTENT_TYPE == "application/octet-stream"
    assert (await store.read("s")).content_type == DEFAULT_CONTENT_TYPE


async def test_content_type_is_kept_verbatim(store):
    """The stored type is echoed as given (reads and HEAD)."""
    ct = "Text/Plain; charset=UTF-8"
    await create(store, "s", content_type=ct, data=b"x")
    assert (await store.get("s")).content_type == ct
    assert (await store.read("s")).content_type == ct


async def test_idempotent_create_with_same_ttl_returns_existing(store):
    """A2.2 (L2559)."""
    await create(store, "s", ttl=3600)
    assert (await create(store, "s", ttl=3600)).created is False


async def test_create_with_different_ttl_conflicts(store):
    """A2.2 (L2583): 3600 vs 7200; and TTL vs none."""
    await create(store, "s", ttl=3600)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s", ttl=7200)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s")


async def test_idempotent_create_with_same_expires_at_returns_existing(store, clock):
    at = utc_in(clock, 3600)
    await create(store, "s", expires_at=at)
    assert (await create(store, "s", expires_at=at)).created is False
    # the same instant in another zone is the same expiry
    same = at.astimezone(timezone(timedelta(hours=5)))
    assert (await create(store, "s", expires_at=same)).created is False


async def test_create_with_different_expires_at_conflicts(store, clock):
    await create(store, "s", expires_at=utc_in(clock, 3600))
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s", expires_at=utc_in(clock, 7200))
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s")


async def test_create_with_ttl_and_expires_at_is_invalid_request(store, clock):
    """A8.1 (L1191)."""
    with pytest.raises(errors.InvalidRequest):
        await create(store, "s", ttl=60, expires_at=utc_in(clock, 60))
    assert not await store.has("s")


async def test_create_with_negative_ttl_is_invalid_request(store):
    """A8.1 (L1220)."""
    with pytest.raises(errors.InvalidRequest):
        await create(store, "s", ttl=-1)
    assert not await store.has("s")


async def test_create_with_initial_data_makes_it_the_first_append(store):
    """A2.3 (L2010): readable at once; the create's offset is the tail after it."""
    res = await create(store, "s", content_type=TEXT, data=b"initial")
    assert res.meta.next_offset > 0
    r = await store.read("s")
    assert bytes(r.data) == b"initial" and r.next_offset == res.meta.next_offset
    await append(store, "s", b" more")
    assert await body(store, "s", res.meta.next_offset) == b" more"


async def test_create_json_with_empty_array_makes_an_empty_stream(store):
    """A2.3 (L4574): ``[]`` is allowed on create."""
    res = await create(store, "j", content_type=JSON, data=b"[]")
    assert res.created and res.meta.next_offset == 0
    r = await store.read("j")
    assert bytes(r.data) == b"[]" and r.up_to_date


async def test_create_json_initial_data_follows_append_rules(store):
    """A2.3 (L1089, L8564): a value is one message, an array is flattened once."""
    await create(store, "one", content_type=JSON, data=b'{"test":"data"}')
    assert await jbody(store, "one") == [{"test": "data"}]
    await create(store, "many", content_type=JSON, data=b'[{"a":1},{"b":2},[3]]')
    assert await jbody(store, "many") == [{"a": 1}, {"b": 2}, [3]]


async def test_create_json_with_invalid_initial_data_is_invalid_json(store):
    """A2.3: invalid JSON in a create body -> InvalidJSON, and no stream."""
    with pytest.raises(errors.InvalidJSON):
        await create(store, "j", content_type=JSON, data=b"{ invalid json }")
    with pytest.raises(errors.StreamNotFound):
        await store.get("j")
    assert (await create(store, "j", content_type=JSON)).created is True


async def test_create_closed_without_data(store):
    """A2.5 (L7066, L7104)."""
    res = await create(store, "s", closed=True)
    assert res.created and res.meta.closed is True
    r = await store.read("s")
    assert bytes(r.data) == b"" and r.closed and r.up_to_date
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"x")


async def test_create_closed_with_data(store):
    """A2.5 (L7082): the data is readable and the stream reads as closed."""
    res = await create(store, "s", content_type=TEXT, data=b"final", closed=True)
    assert res.meta.closed is True and res.meta.next_offset > 0
    r = await store.read("s")
    assert bytes(r.data) == b"final" and r.closed and r.up_to_date
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"x")


async def test_recreate_compares_closure_status(store):
    """A2.2, PROTOCOL.md §5.1 (MUST): a re-create matches only if its
    ``closed`` equals the stream's closure status; a mismatch changes nothing."""
    await create(store, "open", content_type=TEXT, data=b"a")
    await create(store, "shut", content_type=TEXT, data=b"a")
    await store.close_stream("shut")
    # open stream, no Stream-Closed -> 200
    res = await create(store, "open", content_type=TEXT)
    assert res.created is False and res.meta.closed is False
    # open stream, Stream-Closed: true -> 409, and the stream stays open
    with pytest.raises(errors.ConfigMismatch, match="closure"):
        await create(store, "open", content_type=TEXT, closed=True)
    assert not (await store.get("open")).closed
    await append(store, "open", b"b")
    # closed stream, Stream-Closed: true -> 200
    res = await create(store, "shut", content_type=TEXT, closed=True)
    assert res.created is False and res.meta.closed is True
    # closed stream, no Stream-Closed -> 409
    with pytest.raises(errors.ConfigMismatch, match="closure"):
        await create(store, "shut", content_type=TEXT)
    assert (await store.get("shut")).closed
    assert await body(store, "open") == b"ab" and await body(store, "shut") == b"a"


async def test_identical_recreate_of_a_stream_created_closed_matches(store):
    """A2.5, §5.1: ``PUT`` + ``Stream-Closed: true`` twice -> 200 the second
    time, nothing re-appended; without the header -> 409."""
    first = await create(store, "s", content_type=TEXT, data=b"final", closed=True)
    again = await create(store, "s", content_type=TEXT, data=b"final", closed=True)
    assert again.created is False and again.meta.closed is True
    assert again.meta.next_offset == first.meta.next_offset
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "s", content_type=TEXT, data=b"final")
    assert await body(store, "s") == b"final"


async def test_concurrent_identical_creates_create_once(store):
    """A2.1: racing identical creates -> one created, the rest see it; one copy
    of the initial data."""
    created = []

    async def mk():
        created.append((await create(store, "s", content_type=TEXT, data=b"init")).created)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(mk)
    assert sorted(created) == [False, False, False, True]
    assert await body(store, "s") == b"init"


async def test_json_semantics_apply_with_a_charset_parameter(store):
    """A3.3 (L4612)."""
    ct = "application/json; charset=utf-8"
    await create(store, "j", content_type=ct)
    await append(store, "j", b'[{"a":1},{"b":2}]', content_type=ct)
    with pytest.raises(errors.InvalidJSON):
        await append(store, "j", b"{nope", content_type=ct)
    r = await store.read("j")
    assert json.loads(bytes(r.data)) == [{"a": 1}, {"b": 2}] and r.content_type == ct


async def test_create_after_delete_makes_a_fresh_stream(store):
    """A9 (L357): new config, no old data."""
    await create(store, "s", content_type=JSON, data=b'["old"]', ttl=60)
    await store.delete("s")
    res = await create(store, "s", content_type=TEXT)
    assert res.created is True
    assert res.meta.content_type == TEXT and res.meta.ttl is None
    assert res.meta.next_offset == 0
    await append(store, "s", b"new")
    assert await body(store, "s") == b"new"


@pytest.mark.parametrize("path", [
    "", "\x00", "a\x00b", "a\nb", "a\x7fb", "a/../b", "..", ".", "./a", "a/.", "a/..",
    "a//b", "/a", "a/", "/", "x" * (MAX_PATH_BYTES + 1), "\u00e9" * (MAX_PATH_BYTES // 2 + 1),
], ids=lambda p: repr(p)[:24])
async def test_create_rejects_invalid_paths(store, path):
    """Empty, NUL/control characters, empty/dot segments, over 1024 UTF-8 bytes."""
    with pytest.raises(errors.InvalidStreamPath):
        await create(store, path)
    assert await store.list_streams() == []


async def test_create_accepts_a_path_of_exactly_the_maximum_length(store):
    path = "x" * (MAX_PATH_BYTES - 2) + "\u00e9"  # 1024 bytes
    assert len(path.encode()) == MAX_PATH_BYTES
    assert (await create(store, path, data=b"a")).created
    await append(store, path, b"b")
    assert await body(store, path) == b"ab"
    assert [m.path for m in await store.list_streams()] == [path]


LOOKALIKE_PATHS = ["a/b", "a%2Fb", "a%252Fb", "a_b", "a-b", "A/b", "a.b", ".a", ".tmp-x",
                   ".trash-y", "\u00e9", "%C3%A9", "a b", "a~b", "v1/stream/x"]


async def test_distinct_paths_are_distinct_streams(store):
    """Paths that encode alike on disk never share a stream."""
    for i, path in enumerate(LOOKALIKE_PATHS):
        await create(store, path, data=str(i).encode())
    for i, path in enumerate(LOOKALIKE_PATHS):
        assert await body(store, path) == str(i).encode()
    assert [m.path for m in await store.list_streams()] == sorted(LOOKALIKE_PATHS)


# ======================================================================================
# A3. Append
# ======================================================================================

async def test_append_to_missing_stream_is_not_found(store):
    """A3.2 (L665)."""
    with pytest.raises(errors.StreamNotFound):
        await append(store, "missing", b"x")


async def test_append_with_different_content_type_is_rejected(store):
    """A3.3 (L677, L1333): ContentTypeMismatch, nothing appended."""
    await create(store, "s", content_type=TEXT, data=b"a")
    with pytest.raises(errors.ContentTypeMismatch) as exc:
        await append(store, "s", b"{}", content_type=JSON)
    assert exc.value.expected == TEXT and exc.value.received == JSON
    assert await body(store, "s") == b"a"


async def test_append_content_type_ignores_case_and_parameters(store):
    """A3.3 (L1268, L4612)."""
    await create(store, "s", content_type=TEXT)
    await append(store, "s", b"a", content_type="TEXT/PLAIN")
    await append(store, "s", b"b", content_type="text/plain; charset=utf-8")
    assert await body(store, "s") == b"ab"


async def test_append_without_content_type_uses_the_streams(store):
    await create(store, "j", content_type=JSON)
    await append(store, "j", b'{"x":1}')
    assert await jbody(store, "j") == [{"x": 1}]


async def test_append_empty_body_is_rejected(store):
    """A3.4 (L1991, L8120, L7006): no data and no close -> EmptyBody."""
    await create(store, "s", content_type=TEXT)
    with pytest.raises(errors.EmptyBody):
        await append(store, "s", b"")
    with pytest.raises(errors.EmptyBody):
        await append(store, "s", b"", content_type=TEXT, producer=P(0, 0))
    assert (await store.get("s")).next_offset == 0
    assert (await append(store, "s", b"x", producer=P(0, 0))).outcome is ACCEPTED


async def test_append_invalid_json_is_rejected(store):
    """A3.5 (L4725, L6916)."""
    await create(store, "j", content_type=JSON, data=b"[1]")
    for bad in (b"{ invalid json }", b"[1,", b"1 2", b"", b"\xff"):
        if bad:
            with pytest.raises(errors.InvalidJSON):
                await append(store, "j", bad)
    assert await jbody(store, "j") == [1]


async def test_json_lone_surrogate_escapes_are_stored_verbatim(store):
    """docs/protocol-choices.md: a lone surrogate escape is valid JSON (RFC
    8259 section 7; JSON.stringify writes one for a lone surrogate); the
    bytes are stored and served unchanged, by read and by read_last."""
    await create(store, "j", content_type=JSON, data=b'"\\ud800"')
    await append(store, "j", b'["\\udc00", "a\\ud800b"]')
    await append(store, "j", b'{"\\ud800": 1}')
    assert await body(store, "j") == (
        b'["\\ud800","\\udc00","a\\ud800b",{"\\ud800": 1}]')
    assert await jbody(store, "j") == ["\ud800", "\udc00", "a\ud800b", {"\ud800": 1}]
    assert (await last(store, "j")).data == b'{"\\ud800": 1}'
    tail = (await store.get("j")).next_offset
    for bad in (b'"\xed\xa0\x80"', b'["\\ud800", "\xed\xbf\xbf"]', b'"\xc0\x80"'):
        with pytest.raises(errors.InvalidJSON):
            await append(store, "j", bad)
        with pytest.raises(errors.InvalidJSON):
            await create(store, "k", content_type=JSON, data=bad)
    assert (await store.get("j")).next_offset == tail
    assert not await store.has("k")


async def test_append_empty_json_array_is_rejected(store):
    """A3.5 (L4593, L4825, L6939)."""
    await create(store, "j", content_type=JSON)
    with pytest.raises(errors.EmptyJSONArray):
        await append(store, "j", b"[]")
    with pytest.raises(errors.EmptyJSONArray):
        await append(store, "j", b" [ ] ")
    assert (await store.get("j")).next_offset == 0


async def test_json_append_flattens_one_level(store):
    """A3.5 (L3608, L4653, L4844): a top-level array's elements are the messages."""
    await create(store, "j", content_type=JSON)
    await append(store, "j", b"[[1,2],[3]]")
    assert await jbody(store, "j") == [[1, 2], [3]]
    await append(store, "j", b'[{"n":1}]')
    await append(store, "j", b'{"n":2}')
    await append(store, "j", b"[[[1,2,3]]]")
    await append(store, "j", b'"s"')
    assert await jbody(store, "j") == [[1, 2], [3], {"n": 1}, {"n": 2}, [[1, 2, 3]], "s"]


async def test_binary_data_is_stored_exactly(store):
    """A3.8 (L2174)."""
    data = bytes(range(256)) + b"\x00\r\n\x00"
    await create(store, "s", data=b"\x00\x01\x02\x7f\x80\xfe\xff")
    await append(store, "s", data)
    assert await body(store, "s") == b"\x00\x01\x02\x7f\x80\xfe\xff" + data


async def test_stream_seq_must_increase(store):
    """A3.6 (L834, L456): 001, 002, then 001 -> SequenceConflict."""
    await create(store, "s")
    await append(store, "s", b"a", seq="001")
    await append(store, "s", b"b", seq="002")
    with pytest.raises(errors.SequenceConflict) as exc:
        await append(store, "s", b"c", seq="001")
    assert exc.value.last == "002" and exc.value.received == "001"
    assert await body(store, "s") == b"ab"


async def test_stream_seq_is_compared_bytewise_not_numerically(store):
    """A3.6 (L876): "2" then "10" conflicts."""
    await create(store, "s")
    await append(store, "s", b"a", seq="2")
    with pytest.raises(errors.SequenceConflict):
        await append(store, "s", b"b", seq="10")


async def test_stream_seq_with_zero_padding_orders_numerically(store):
    """A3.6 (L909): "09" then "10" is accepted."""
    await create(store, "s")
    await append(store, "s", b"a", seq="09")
    await append(store, "s", b"b", seq="10")
    assert await body(store, "s") == b"ab"


async def test_equal_stream_seq_conflicts(store):
    """A3.6 (L941)."""
    await create(store, "s")
    await append(store, "s", b"a", seq="001")
    with pytest.raises(errors.SequenceConflict):
        await append(store, "s", b"b", seq="001")


async def test_stream_seq_is_case_sensitive(store):
    """A3.6 (L2142): "B" (0x42) sorts before "a" (0x61)."""
    await create(store, "s")
    await append(store, "s", b"a", seq="a")
    with pytest.raises(errors.SequenceConflict):
        await append(store, "s", b"b", seq="B")
    await append(store, "s", b"b", seq="b")


async def test_stream_seq_is_only_updated_by_successful_appends(store):
    """A3.6, A3.9: a rejected append leaves the last Stream-Seq unchanged."""
    await create(store, "j", content_type=JSON)
    await append(store, "j", b"1", seq="3")
    with pytest.raises(errors.InvalidJSON):
        await append(store, "j", b"{oops", seq="5")
    with pytest.raises(errors.EmptyJSONArray):
        await append(store, "j", b"[]", seq="6")
    with pytest.raises(errors.ContentTypeMismatch):
        await append(store, "j", b"x", content_type=TEXT, seq="7")
    await append(store, "j", b"2", seq="4")
    assert await jbody(store, "j") == [1, 2]


async def test_append_without_stream_seq_keeps_the_last_one(store):
    """A3.6: appends without Stream-Seq do not touch the stored value."""
    await create(store, "s")
    await append(store, "s", b"a", seq="5")
    await append(store, "s", b"b")
    with pytest.raises(errors.SequenceConflict):
        await append(store, "s", b"c", seq="4")
    await append(store, "s", b"c", seq="6")


async def test_concurrent_appends_with_same_stream_seq_exactly_one_wins(store):
    """A3.6 (L5535): check-and-set is atomic per stream."""
    await create(store, "s")
    results = []

    async def writer(i):
        try:
            await append(store, "s", b"w%d" % i, seq="seq-001")
            results.append("ok")
        except errors.SequenceConflict:
            results.append("conflict")

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(writer, i)
    assert results.count("ok") == 1 and results.count("conflict") == 4
    assert len(await body(store, "s")) == 2


async def test_concurrent_appends_are_all_persisted(store):
    """A11.6 (L5642): every concurrent append lands once, at its own offset."""
    await create(store, "s")
    offsets = []

    async def writer(i):
        offsets.append((await append(store, "s", b"<w%02d>" % i)).next_offset)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(writer, i)
    assert len(set(offsets)) == 10
    data = await body(store, "s")
    assert sorted(data[i:i + 5] for i in range(0, len(data), 5)) == \
        [b"<w%02d>" % i for i in range(10)]
    assert max(offsets) == (await store.get("s")).next_offset


# ---- A4. producers ------------------------------------------------------------------

async def test_producer_first_seq_zero_is_accepted(store):
    """A4.3 (L5928)."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(0, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 0 and r.producer_seq == 0
    assert r.next_offset == (await store.get("s")).next_offset > 0


async def test_producer_first_write_may_use_any_epoch(store):
    """A4.3: no state, seq 0, epoch 2 -> accepted."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(2, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 2


async def test_producer_first_seq_nonzero_is_a_gap(store):
    """A4.3 (reference): no state and seq > 0 -> gap, expected 0."""
    await create(store, "s")
    with pytest.raises(errors.ProducerSeqGap) as exc:
        await append(store, "s", b"a", producer=P(0, 3))
    assert exc.value.expected == 0 and exc.value.received == 3
    assert (await store.get("s")).next_offset == 0


async def test_producer_consecutive_seqs_are_accepted(store):
    """A4.3 (L5954, L6424): each accept echoes its own seq."""
    await create(store, "s")
    for seq in range(3):
        r = await append(store, "s", b"%d" % seq, producer=P(0, seq))
        assert r.outcome is ACCEPTED and r.producer_seq == seq
    assert await body(store, "s") == b"012"


async def test_producer_duplicate_returns_highest_accepted_seq(store):
    """A4.3 (L6424): a retry of seq 1 after 2 -> DUPLICATE with producer_seq 2."""
    await create(store, "s")
    for seq in range(3):
        await append(store, "s", b"%d" % seq, producer=P(0, seq))
    tail = (await store.get("s")).next_offset
    r = await append(store, "s", b"1", producer=P(0, 1))
    assert r.outcome is DUPLICATE
    assert r.producer_seq == 2 and r.producer_epoch == 0
    assert r.next_offset == tail


async def test_producer_duplicate_appends_no_data(store):
    """A4.5 (L6003, L6682)."""
    await create(store, "s")
    await append(store, "s", b"first", producer=P(0, 0))
    assert (await append(store, "s", b"first", producer=P(0, 0))).outcome is DUPLICATE
    await append(store, "s", b"second", producer=P(0, 1))
    assert (await append(store, "s", b"other body", producer=P(0, 1))).outcome is DUPLICATE
    assert await body(store, "s") == b"firstsecond"


async def test_producer_duplicate_does_not_corrupt_state(store):
    """A4.3 (L6375): a duplicate of seq 0, then seq 1 is accepted."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"a", producer=P(0, 0))
    r = await append(store, "s", b"b", producer=P(0, 1))
    assert r.outcome is ACCEPTED and r.producer_seq == 1


async def test_producer_json_duplicate_appends_no_data(store):
    """A4.5 (L6864)."""
    await create(store, "j", content_type=JSON)
    await append(store, "j", b'{"id":1}', producer=P(0, 0))
    await append(store, "j", b'{"id":1}', producer=P(0, 0))
    await append(store, "j", b'{"id":2}', producer=P(0, 1))
    assert await jbody(store, "j") == [{"id": 1}, {"id": 2}]


async def test_producer_seq_gap_reports_expected_and_received(store):
    """A4.3 (L6122)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    with pytest.raises(errors.ProducerSeqGap) as exc:
        await append(store, "s", b"c", producer=P(0, 2))
    assert exc.value.expected == 1 and exc.value.received == 2
    assert await body(store, "s") == b"a"


async def test_producer_stale_epoch_is_fenced_with_the_current_epoch(store):
    """A4.3 (L6086, L6517)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(1, 0))
    with pytest.raises(errors.StaleEpoch) as exc:
        await append(store, "s", b"z", producer=P(0, 0))
    assert exc.value.current_epoch == 1
    assert await body(store, "s") == b"a"


async def test_producer_split_brain_zombie_is_fenced(store):
    """A4.3 (L6467): (0,0), (1,0), then the old epoch's (0,1) -> StaleEpoch(1)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"b", producer=P(1, 0))
    with pytest.raises(errors.StaleEpoch) as exc:
        await append(store, "s", b"zombie", producer=P(0, 1))
    assert exc.value.current_epoch == 1
    assert await body(store, "s") == b"ab"


async def test_producer_new_epoch_must_start_at_seq_zero(store):
    """A4.3 (L6159): (1,5) after (0,0) -> InvalidEpochSeq."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    with pytest.raises(errors.InvalidEpochSeq):
        await append(store, "s", b"b", producer=P(1, 5))
    assert await body(store, "s") == b"a"


async def test_producer_new_epoch_at_seq_zero_is_accepted(store):
    """A4.3 (L6039): the new epoch begins; its seqs start over."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"b", producer=P(0, 1))
    r = await append(store, "s", b"c", producer=P(1, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 1 and r.producer_seq == 0
    assert (await append(store, "s", b"d", producer=P(1, 1))).outcome is ACCEPTED
    assert (await append(store, "s", b"d", producer=P(1, 1))).outcome is DUPLICATE
    assert await body(store, "s") == b"abcd"


async def test_producers_are_independent_per_id(store):
    """A4.4 (L6313, L6736)."""
    await create(store, "s")
    for seq in range(2):
        for pid in "AB":
            r = await append(store, "s", b"%s%d" % (pid.encode(), seq), producer=P(0, seq, pid))
            assert r.outcome is ACCEPTED
    assert await body(store, "s") == b"A0B0A1B1"


async def test_producer_state_is_per_stream(store):
    await create(store, "s1")
    await create(store, "s2")
    assert (await append(store, "s1", b"a", producer=P(0, 0))).outcome is ACCEPTED
    assert (await append(store, "s2", b"a", producer=P(0, 0))).outcome is ACCEPTED


async def test_producer_duplicate_is_checked_before_stream_seq(store):
    """A4.9 (L6552, L6576): an identical retry with Stream-Seq -> DUPLICATE, not a conflict."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(0, 0), seq="app-seq-001")
    assert r.outcome is ACCEPTED
    r = await append(store, "s", b"a", producer=P(0, 0), seq="app-seq-001")
    assert r.outcome is DUPLICATE
    assert await body(store, "s") == b"a"


async def test_producer_state_is_only_advanced_by_successful_appends(store):
    """A3.9 (L6238): rejected appends leave the producer where it was."""
    await create(store, "j", content_type=JSON)
    with pytest.raises(errors.InvalidJSON):
        await append(store, "j", b"{bad", producer=P(0, 0))
    with pytest.raises(errors.EmptyJSONArray):
        await append(store, "j", b"[]", producer=P(0, 0))
    with pytest.raises(errors.ContentTypeMismatch):
        await append(store, "j", b"1", content_type=TEXT, producer=P(0, 0))
    assert (await append(store, "j", b"1", producer=P(0, 0), seq="1")).outcome is ACCEPTED
    with pytest.raises(errors.SequenceConflict):
        await append(store, "j", b"2", producer=P(0, 1), seq="1")
    r = await append(store, "j", b"2", producer=P(0, 1), seq="2")
    assert r.outcome is ACCEPTED and r.producer_seq == 1
    assert await jbody(store, "j") == [1, 2]


async def test_producer_append_to_missing_stream_is_not_found(store):
    """A4.6 (L6966)."""
    with pytest.raises(errors.StreamNotFound):
        await append(store, "missing", b"a", producer=P(0, 0))


async def test_concurrent_identical_producer_requests_append_once(store):
    """A4.7: retries racing each other -> one accept, the rest duplicates."""
    await create(store, "s")
    outcomes = []

    async def send():
        outcomes.append((await append(store, "s", b"once", producer=P(0, 0))).outcome)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(send)
    assert outcomes.count(ACCEPTED) == 1 and outcomes.count(DUPLICATE) == 4
    assert await body(store, "s") == b"once"


async def test_duplicate_racing_its_original_reports_the_stored_tail(store):
    """A4.3, A1.5: a DUPLICATE says "already stored": it must not be answered
    before the original append is (durably) stored, and its tail covers it."""
    await create(store, "s")
    results = []

    async def send():
        r = await append(store, "s", b"once", producer=P(0, 0))
        results.append((r, (await store.get("s")).next_offset))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(send)
    tail = (await store.get("s")).next_offset
    assert tail > 0
    for r, seen in results:
        assert (r.outcome, r.next_offset, seen) in ((ACCEPTED, tail, tail), (DUPLICATE, tail, tail))


# ======================================================================================
# A5. Close
# ======================================================================================

async def test_close_only_append_closes_and_returns_the_tail(store):
    """A5.1 (L7125, L7179)."""
    await create(store, "s", data=b"data")
    r = await append(store, "s", b"", close=True)
    assert r.closed is True and r.outcome is None
    meta = await store.get("s")
    assert meta.closed is True and r.next_offset == meta.next_offset
    rr = await store.read("s")
    assert bytes(rr.data) == b"data" and rr.closed and rr.next_offset == r.next_offset


async def test_close_stream_closes(store):
    """A5.1: close_stream is the close-only append."""
    await create(store, "s", data=b"data")
    r = await store.close_stream("s")
    assert r.closed is True and r.next_offset == (await store.get("s")).next_offset
    assert (await store.get("s")).closed


async def test_close_only_ignores_content_type(store):
    """A5.1 (L7225): a JSON stream closed with a text/plain close-only request."""
    await create(store, "j", content_type=JSON)
    r = await append(store, "j", b"", content_type=TEXT, close=True)
    assert r.closed and (await store.get("j")).closed


async def test_close_is_idempotent(store):
    """A5.2 (L7200): closing again changes nothing."""
    await create(store, "s", data=b"x")
    first = await store.close_stream("s")
    again = await store.close_stream("s")
    also = await append(store, "s", b"", close=True)
    assert again.closed and also.closed
    assert first.next_offset == again.next_offset == also.next_offset
    assert (await store.get("s")).next_offset == first.next_offset


async def test_close_with_final_append(store):
    """A5.3 (L7144): data appended and the stream closed in one step."""
    await create(store, "s", content_type=TEXT)
    await append(store, "s", b"first message")
    r = await append(store, "s", b"final message", close=True)
    assert r.closed is True
    assert r.next_offset == (await store.get("s")).next_offset
    rr = await store.read("s")
    assert bytes(rr.data) == b"first messagefinal message" and rr.closed


async def test_append_after_close_is_stream_closed_with_the_tail(store):
    """A5.4 (L7247, L7272, L7957): the error carries the final tail; nothing appended."""
    await create(store, "s", content_type=TEXT, data=b"a")
    closed = await store.close_stream("s")
    with pytest.raises(errors.StreamClosed) as exc:
        await append(store, "s", b"b")
    assert exc.value.next_offset == closed.next_offset == (await store.get("s")).next_offset
    with pytest.raises(errors.StreamClosed) as exc:
        await append(store, "s", b"b", close=True)
    assert exc.value.next_offset == closed.next_offset
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"b", content_type=JSON)
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"b", seq="1")
    assert await body(store, "s") == b"a"


async def test_concurrent_closes_all_report_the_closed_tail(store):
    """A5.2, A1.5: an idempotent close answers only once the stream is closed,
    with the final tail."""
    await create(store, "s", data=b"x")
    seen = []

    async def close():
        r = await store.close_stream("s")
        m = await store.get("s")
        seen.append((r.closed, r.next_offset, m.closed, m.next_offset))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(close)
    tail = (await store.get("s")).next_offset
    assert seen == [(True, tail, True, tail)] * 3


async def test_stream_closed_error_agrees_with_get(store):
    """A5.4, A1.5 (L7957): when an append is refused as closed, HEAD says
    closed, with the tail the error carries."""
    await create(store, "s", data=b"x")
    seen = []

    async def closer():
        await store.close_stream("s")

    async def writer():
        await anyio.lowlevel.checkpoint()  # let the close go first
        try:
            await append(store, "s", b"y")
            seen.append("appended")
        except errors.StreamClosed as exc:
            m = await store.get("s")
            seen.append((exc.next_offset, m.closed, m.next_offset))

    async with anyio.create_task_group() as tg:
        tg.start_soon(closer)
        tg.start_soon(writer)
    tail = (await store.get("s")).next_offset
    assert seen in (["appended"], [(tail, True, tail)])


async def test_append_racing_a_delete_succeeds_or_is_not_found(store):
    """A3.2: an append to a stream deleted meanwhile either lands before the
    delete or is refused as not found -- never an internal error."""
    await create(store, "s")
    seen = []

    async def writer():
        try:
            await append(store, "s", b"y")
            seen.append("ok")
        except errors.StreamNotFound:
            seen.append("not found")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            seen.append(repr(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(store.delete, "s")
    assert seen in (["ok"], ["not found"])
    assert not await store.has("s")


async def test_close_missing_stream_is_not_found(store):
    """A5.1 (L7989)."""
    with pytest.raises(errors.StreamNotFound):
        await store.close_stream("missing")
    with pytest.raises(errors.StreamNotFound):
        await append(store, "missing", b"", close=True)


async def test_delete_closed_stream(store):
    """A5.5 (L8139)."""
    await create(store, "s", data=b"x", closed=True)
    await store.delete("s")
    with pytest.raises(errors.StreamNotFound):
        await store.get("s")


async def test_producer_close_with_append_is_accepted(store):
    """A5.6 (L7722)."""
    await create(store, "s")
    r = await append(store, "s", b"last", producer=P(0, 0), close=True)
    assert r.outcome is ACCEPTED and r.closed
    assert r.producer_epoch == 0 and r.producer_seq == 0
    assert await body(store, "s") == b"last"


async def test_producer_close_only_is_sequenced(store):
    """A5.7 (L7754): (P,0,1) close-only after (P,0,0) takes seq 1."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    r = await store.close_stream("s", producer=P(0, 1))
    assert r.closed and r.outcome is ACCEPTED
    assert r.producer_epoch == 0 and r.producer_seq == 1
    assert await body(store, "s") == b"a"


async def test_producer_close_only_without_prior_state(store):
    """A5.7 (L7910, L3027)."""
    await create(store, "s")
    r = await append(store, "s", b"", producer=P(0, 0), close=True)
    assert r.closed and r.outcome is ACCEPTED
    assert (await store.get("s")).closed


async def test_retried_closing_request_is_duplicate_even_with_a_different_body(store):
    """A5.8 (L7792, L8077): nothing appended, stream stays closed."""
    await create(store, "s")
    first = await append(store, "s", b"body-A", producer=P(0, 0), close=True)
    r = await append(store, "s", b"body-B", producer=P(0, 0), close=True)
    assert r.outcome is DUPLICATE and r.closed
    assert r.producer_seq == 0 and r.next_offset == first.next_offset
    assert await body(store, "s") == b"body-A"


async def test_retried_close_only_request_is_duplicate(store):
    """A5.8 (L7910)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    first = await store.close_stream("s", producer=P(0, 1))
    r = await store.close_stream("s", producer=P(0, 1))
    assert r.outcome is DUPLICATE and r.closed and r.next_offset == first.next_offset
    assert r.producer_seq == 1


async def test_other_producer_after_close_is_stream_closed(store):
    """A5.8 (L7832)."""
    await create(store, "s")
    closed = await append(store, "s", b"a", producer=P(0, 0, "A"), close=True)
    with pytest.raises(errors.StreamClosed) as exc:
        await append(store, "s", b"b", producer=P(0, 0, "B"))
    assert exc.value.next_offset == closed.next_offset
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"", producer=P(0, 0, "B"), close=True)
    assert await body(store, "s") == b"a"


async def test_same_producer_next_seq_after_close_is_stream_closed(store):
    """A5.8 (L7871)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0), close=True)
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"b", producer=P(0, 1))
    with pytest.raises(errors.StreamClosed):
        await append(store, "s", b"b", producer=P(1, 0))
    assert await body(store, "s") == b"a"


async def test_stale_epoch_after_close_is_rejected(store):
    """A5.8 (L8025): 403 or 409 both accepted; nothing appended."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"b", producer=P(1, 0), close=True)
    with pytest.raises((errors.StaleEpoch, errors.StreamClosed)):
        await append(store, "s", b"c", producer=P(0, 1), close=True)
    assert await body(store, "s") == b"ab"


async def test_read_of_closed_stream_reports_closed_at_the_tail(store):
    """A6.5 (L7353, L7425)."""
    await create(store, "s", data=b"content")
    tail = (await store.close_stream("s")).next_offset
    r = await store.read("s")
    assert bytes(r.data) == b"content" and r.closed and r.up_to_date
    r = await store.read("s", tail)
    assert bytes(r.data) == b"" and r.closed and r.up_to_date and r.next_offset == tail


async def test_partial_read_of_closed_stream_is_not_closed(store):
    """A6.5 (L7376): ``closed`` only on the read that reaches the tail."""
    await create(store, "s", data=b"aaaa")
    await append(store, "s", b"bbbb")
    await append(store, "s", b"cccc", close=True)
    pages = await read_pages(store, "s", max_bytes=4)
    assert [bytes(p.data) for p in pages if p.data] == [b"aaaa", b"bbbb", b"cccc"]
    assert all(not p.closed and not p.up_to_date for p in pages[:-1])
    assert pages[-1].closed and pages[-1].up_to_date


async def test_open_stream_never_reads_as_closed(store):
    """A6.5 (L7329)."""
    await create(store, "s", data=b"a")
    assert not (await store.read("s")).closed
    assert not (await store.read("s", NOW)).closed
    assert not (await store.get("s")).closed


async def test_now_read_of_closed_stream_reports_closed(store):
    """A6.4 (L8000)."""
    await create(store, "s", data=b"a", closed=True)
    r = await store.read("s", NOW)
    assert bytes(r.data) == b"" and r.closed and r.up_to_date
    assert r.next_offset == (await store.get("s")).next_offset


# ======================================================================================
# A6. Reads
# ======================================================================================

async def test_binary_read_concatenates_appends(store):
    """A6.1 (L440, L3438)."""
    await create(store, "s", content_type=TEXT)
    for chunk in (b"chunk1", b"chunk2", b"chunk3"):
        await append(store, "s", chunk)
    r = await store.read("s")
    assert bytes(r.data) == b"chunk1chunk2chunk3" and r.up_to_date and r.content_type == TEXT


async def test_json_read_is_one_array_across_appends(store):
    """A6.2 (L3608): one valid JSON array of every message in the range."""
    await create(store, "j", content_type=JSON, data=b'[{"n":0}]')
    await append(store, "j", b'[{"n":1},{"n":2}]')
    o = (await append(store, "j", b'{"n":3}')).next_offset
    await append(store, "j", b'[{"n":4}]')
    assert await jbody(store, "j") == [{"n": i} for i in range(5)]
    assert await jbody(store, "j", o) == [{"n": 4}]


async def test_json_read_of_empty_stream_is_an_empty_array(store):
    """A6.2 (L4574)."""
    await create(store, "j", content_type=JSON)
    r = await store.read("j")
    assert bytes(r.data) == b"[]" and r.up_to_date


async def test_max_bytes_never_splits_an_append(store):
    """A6.3: a page ends on an append boundary; an oversized append comes whole."""
    await create(store, "s")
    await append(store, "s", b"a" * 10)
    await append(store, "s", b"b" * 10)
    r = await store.read("s", max_bytes=15)
    assert bytes(r.data) == b"a" * 10 and not r.up_to_date
    r = await store.read("s", max_bytes=1)
    assert bytes(r.data) == b"a" * 10
    r = await store.read("s", r.next_offset, max_bytes=1)
    assert bytes(r.data) == b"b" * 10 and r.up_to_date


async def test_max_bytes_never_splits_a_json_append(store):
    """A6.3: every JSON page is a valid array of whole appends."""
    await create(store, "j", content_type=JSON)
    await append(store, "j", b"[1,2,3]")
    await append(store, "j", b"[4,5]")
    pages = await read_pages(store, "j", max_bytes=1)
    assert [json.loads(bytes(p.data)) for p in pages] == [[1, 2, 3], [4, 5]]


async def test_read_respects_max_bytes_when_appends_fit(store):
    """A6.3: with appends smaller than max_bytes, a page holds at most max_bytes."""
    await create(store, "s")
    chunks = [bytes([65 + i]) * (3 + i % 5) for i in range(30)]
    for c in chunks:
        await append(store, "s", c)
    pages = await read_pages(store, "s", max_bytes=16)
    assert all(len(p.data) <= 16 for p in pages)
    assert b"".join(bytes(p.data) for p in pages) == b"".join(chunks)


async def test_paginated_read_reassembles_the_stream(store):
    """A6.3, A11.2 (L3316): pages are whole appends, in order, ending up to date."""
    await create(store, "s")
    chunks = [bytes([i % 251]) * (1 + i * 37 % 400) for i in range(80)]
    ends = []
    for c in chunks:
        ends.append((await append(store, "s", c)).next_offset)
    pages = await read_pages(store, "s", max_bytes=1000)
    assert len(pages) > 1
    assert b"".join(bytes(p.data) for p in pages) == b"".join(chunks)
    assert all(p.next_offset in ends for p in pages)
    assert pages[-1].next_offset == ends[-1]


async def test_stream_spanning_many_segments_reads_back(store):
    """A3.7: a stream larger than a segment (64 KiB here) reads back exactly."""
    await create(store, "s")
    chunks = [bytes([i]) * 9000 for i in range(30)]
    for c in chunks:
        await append(store, "s", c)
    pages = await read_pages(store, "s", max_bytes=50_000)
    assert b"".join(bytes(p.data) for p in pages) == b"".join(chunks)


async def test_up_to_date_only_when_the_read_reaches_the_tail(store):
    """A6.1."""
    await create(store, "s", data=b"aaaa")
    await append(store, "s", b"bbbb")
    assert not (await store.read("s", max_bytes=4)).up_to_date
    assert (await store.read("s")).up_to_date


async def test_read_from_the_tail_returns_empty_and_up_to_date(store):
    """A6.1 (L1955)."""
    await create(store, "s", data=b"x")
    tail = (await store.get("s")).next_offset
    r = await store.read("s", tail)
    assert bytes(r.data) == b"" and r.up_to_date and r.next_offset == tail


async def test_read_your_writes(store):
    """A6.6 (L3475, L5295): each append is visible to the next read."""
    await create(store, "s")
    expected = b""
    for i in range(20):
        chunk = b"w%d;" % i
        expected += chunk
        off = (await append(store, "s", chunk)).next_offset
        r = await store.read("s")
        assert bytes(r.data) == expected and r.next_offset == off


async def test_data_is_immutable_by_position(store):
    """A6.7 (L2035, L5341): a re-read is a superset of the earlier read."""
    await create(store, "s", data=b"base-")
    mid = (await append(store, "s", b"one-")).next_offset
    before_all, before_mid = await body(store, "s"), await body(store, "s", mid)
    await append(store, "s", b"two-")
    await append(store, "s", b"three")
    after_all, after_mid = await body(store, "s"), await body(store, "s", mid)
    assert after_all.startswith(before_all) and after_all == b"base-one-two-three"
    assert after_mid.startswith(before_mid) and after_mid == b"two-three"


async def test_concurrent_readers_only_ever_see_prefixes(store):
    """A11.1 (L4980): snapshots during writes are prefixes of the final content."""
    await create(store, "s")
    chunks = [bytes([i * 7 % 256]) * (1 + i * 13 % 50) for i in range(25)]
    snapshots = []
    done = anyio.Event()

    async def reader():
        while not done.is_set():
            snapshots.append(await body(store, "s"))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(reader)
        for c in chunks:
            await append(store, "s", c)
            await anyio.lowlevel.checkpoint()
        done.set()
    final = b"".join(chunks)
    assert await body(store, "s") == final
    assert snapshots and all(final.startswith(s) for s in snapshots)


# ======================================================================================
# A7. wait_for_messages
# ======================================================================================

#: a woken waiter's timeout: only a waiter that is never woken (a bug) reaches it
WAKE_TIMEOUT = 30


async def _waiter(store, path, offset, timeout, out):
    try:
        out["result"] = await store.wait_for_messages(path, offset, timeout)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        out["error"] = exc


async def until_parked(store, path, n=1):
    """Return once ``n`` ``wait_for_messages`` calls on ``path`` are parked
    (checked the stream, found nothing, waiting for a notification). The
    shared stores load the row over the network first, so this polls; a
    waiter that never parks fails the test rather than letting it pass
    without having waited."""
    with anyio.fail_after(WAKE_TIMEOUT):
        while store.waiting(path) < n:
            await anyio.sleep(0.001)


async def wait_without_parking(store, path, offset):
    """``wait_for_messages(path, offset)`` with an hour's timeout, which must
    return (or raise) without parking: its result, or a failed assertion
    as soon as it parks."""
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, path, offset, 3600, out)
        while not out and not store.waiting(path):
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    assert out, "wait_for_messages parked although it had something to return"
    if "error" in out:
        raise out["error"]
    return out["result"]


async def test_wait_returns_false_after_the_timeout(store):
    """A7.2: no data -> False once the timeout passes, not before. The
    deadline is on the event loop's clock, the one the store's wait runs
    on, so a slow machine only makes the wait longer."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    t0 = anyio.current_time()
    assert await store.wait_for_messages("s", tail, 0.05) is False
    assert anyio.current_time() - t0 >= 0.05 - 1e-6
    assert store.waiting("s") == 0


async def test_wait_returns_at_once_when_data_follows_the_offset(store):
    """A7.1 (L2326)."""
    await create(store, "s", data=b"x")
    assert await wait_without_parking(store, "s", 0) is True


async def test_wait_is_woken_by_an_append(store):
    """A7.2, A7.4 (L529, L1704): woken, and the new bytes are readable from the offset."""
    tail = (await create(store, "s", data=b"old")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await append(store, "s", b"new data")
    assert out.get("result") is True and store.waiting("s") == 0
    assert await body(store, "s", tail) == b"new data"


async def test_wait_is_woken_by_a_close(store):
    """A7.3: a close while waiting ends the wait; the read then reports closed."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.close_stream("s")
    assert out.get("result") is True
    r = await store.read("s", tail)
    assert r.closed and r.up_to_date and bytes(r.data) == b""


async def test_wait_is_woken_by_a_final_append_with_its_data(store):
    """A7.5 (L7648): the final data is readable when the close wakes the waiter."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await append(store, "s", b"final", close=True)
    assert out.get("result") is True
    r = await store.read("s", tail)
    assert bytes(r.data) == b"final" and r.closed


async def test_wait_on_closed_stream_at_the_tail_returns_at_once(store):
    """A7.3 (L7459)."""
    res = await create(store, "s", data=b"x", closed=True)
    assert await wait_without_parking(store, "s", res.meta.next_offset) is True


async def test_wait_on_missing_stream_is_not_found_at_once(store):
    """A1.7 (L1789)."""
    with pytest.raises(errors.StreamNotFound):
        await wait_without_parking(store, "missing", 0)


async def test_wait_raises_not_found_when_the_stream_is_deleted(store):
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.delete("s")
    assert isinstance(out.get("error"), errors.StreamNotFound), out


async def test_wait_raises_soft_deleted_when_the_stream_is_soft_deleted(store):
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    await create(store, "f", fork_from="s")
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.delete("s")
    assert isinstance(out.get("error"), errors.StreamSoftDeleted), out


async def sleeps_through_an_append(store, path, offset, other, data):
    """Park a waiter on ``path`` and a probe on ``other``, append ``data`` to
    ``other``; once the probe is woken (its notification was delivered, and
    notifications arrive in order) the waiter must still be parked, not
    returned."""
    probe_offset = (await store.get(other)).next_offset
    out, probe = {}, {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, path, offset, WAKE_TIMEOUT, out)
        tg.start_soon(_waiter, store, other, probe_offset, WAKE_TIMEOUT, probe)
        await until_parked(store, path)
        await until_parked(store, other)
        await append(store, other, data)
        with anyio.fail_after(WAKE_TIMEOUT):
            while not probe:
                await anyio.sleep(0.001)
        await anyio.wait_all_tasks_blocked()
        assert probe.get("result") is True, probe
        assert not out and store.waiting(path) == 1, out
        tg.cancel_scope.cancel()


async def test_wait_is_not_woken_by_another_streams_append(store):
    tail = (await create(store, "a", data=b"x")).meta.next_offset
    await create(store, "b")
    await sleeps_through_an_append(store, "a", tail, "b", b"y")


async def test_fork_waiter_is_not_woken_by_a_source_append(store):
    """A7.2, A7.4 (L10044)."""
    await create(store, "src", data=b"source")
    tail = (await create(store, "fork", fork_from="src")).meta.next_offset
    await sleeps_through_an_append(store, "fork", tail, "src", b" source new")


async def test_fork_waiter_is_woken_by_a_fork_append(store):
    """A7.2 (L10044): body exactly the fork's new data."""
    await create(store, "src", data=b"source")
    tail = (await create(store, "fork", fork_from="src")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "fork", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "fork")
        await append(store, "src", b" source new")
        await append(store, "fork", b" fork new")
    assert out.get("result") is True
    assert await body(store, "fork", tail) == b" fork new"


async def test_wait_in_a_forks_inherited_range_returns_at_once(store):
    """A7.1 (L10000)."""
    await create(store, "src", data=b"inherited")
    await create(store, "fork", fork_from="src")
    assert await wait_without_parking(store, "fork", 0) is True


async def test_aclose_wakes_waiters(store):
    """StreamStore.aclose: every parked waiter wakes (server shutdown) and
    returns without data, long before its timeout."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, 3600, out)
        await until_parked(store, "s")
        await store.aclose()
        await anyio.wait_all_tasks_blocked()
        assert out, "a parked waiter was not woken by aclose()"
    assert out.get("result") is not True


# ======================================================================================
# A8. TTL and Expires-At (fake clock)
# ======================================================================================

async def test_ttl_stream_expires_when_its_window_ends(store, clock):
    """A8.2, A8.3 (L2692): expired when now >= last access + ttl."""
    await create(store, "s", ttl=10, data=b"x")
    clock.advance(9.9)
    assert (await store.get("s")).path == "s"
    clock.advance(0.1)
    with pytest.raises(errors.StreamNotFound):
        await store.get("s")


async def test_meta_reports_the_configured_ttl_not_the_time_left(store, clock):
    """A8.7 (L2613)."""
    await create(store, "s", ttl=3600)
    clock.advance(100)
    assert (await store.get("s")).ttl == 3600
    assert [m.ttl for m in await store.list_streams()] == [3600]


async def test_ttl_is_renewed_by_an_append(store, clock):
    """A8.4 (L2920)."""
    await create(store, "s", ttl=10)
    clock.advance(8)
    await append(store, "s", b"x")
    clock.advance(8)
    assert await store.has("s")
    clock.advance(2)
    assert not await store.has("s")


async def test_ttl_is_renewed_by_a_read(store, clock):
    """A8.4 (L3069)."""
    await create(store, "s", ttl=10, data=b"x")
    clock.advance(8)
    await store.read("s")
    clock.advance(8)
    assert await store.has("s")
    clock.advance(2)
    assert not await store.has("s")


async def test_ttl_is_renewed_by_a_now_read(store, clock):
    """A8.4 (L2954)."""
    await create(store, "s", ttl=10, data=b"x")
    clock.advance(8)
    assert (await store.read("s", NOW)).up_to_date
    clock.advance(8)
    assert await store.has("s")


async def test_ttl_is_renewed_by_a_close_only_append(store, clock):
    """A8.4 (L2990)."""
    await create(store, "s", ttl=10)
    clock.advance(8)
    await store.close_stream("s")
    clock.advance(8)
    assert (await store.get("s")).closed


async def test_ttl_is_renewed_by_a_producer_close_only_append(store, clock):
    """A8.4 (L3027)."""
    await create(store, "s", ttl=10)
    clock.advance(8)
    await store.close_stream("s", producer=Producer("ttl-close-producer", 0, 0))
    clock.advance(8)
    assert (await store.get("s")).closed


async def test_ttl_is_not_renewed_by_get(store, clock):
    """A8.4 (L3102): HEAD never renews."""
    await create(store, "s", ttl=10)
    clock.advance(8)
    await store.get("s")
    await store.has("s")
    await store.current_offset("s")
    await store.list_streams()
    clock.advance(2)
    with pytest.raises(errors.StreamNotFound):
        await store.get("s")


@pytest.mark.parametrize("op", ["get", "read", "read_now", "append", "close", "delete",
                                "wait"])
async def test_expired_stream_is_not_found(store, clock, op):
    """A8.2 (L2692, L2721, L2748): every operation treats it as missing."""
    await create(store, "s", ttl=10, data=b"x")
    clock.advance(10)
    call = {
        "get": lambda: store.get("s"),
        "read": lambda: store.read("s"),
        "read_now": lambda: store.read("s", NOW),
        "append": lambda: append(store, "s", b"y"),
        "close": lambda: store.close_stream("s"),
        "delete": lambda: store.delete("s"),
        "wait": lambda: store.wait_for_messages("s", 0, 1),
    }[op]
    with pytest.raises(errors.StreamNotFound):
        await call()


async def test_create_after_expiry_makes_a_fresh_stream_with_the_new_config(store, clock):
    """A2.7, A8.2 (L2880)."""
    await create(store, "s", ttl=10, content_type=TEXT, data=b"old data")
    clock.advance(11)
    res = await create(store, "s", content_type=JSON, ttl=3600, data=b'["new data"]')
    assert res.created is True and res.meta.content_type == JSON and res.meta.ttl == 3600
    assert await jbody(store, "s") == ["new data"]


async def test_expires_at_is_absolute(store, clock):
    """A8.5 (L3135): reads and writes do not extend it."""
    await create(store, "s", expires_at=utc_in(clock, 4), data=b"x")
    clock.advance(2)
    await store.read("s")
    await append(store, "s", b"y")
    clock.advance(1.9)
    assert await store.has("s")
    clock.advance(0.1)
    with pytest.raises(errors.StreamNotFound):
        await store.read("s")


async def test_meta_reports_expires_at(store, clock):
    at = utc_in(clock, 3600)
    await create(store, "s", expires_at=at)
    meta = await store.get("s")
    assert meta.expires_at == at and meta.ttl is None


async def test_expires_at_in_the_past_makes_an_expired_stream(store, clock):
    await create(store, "s", expires_at=utc_in(clock, -1))
    assert not await store.has("s")


async def test_list_streams_hides_expired_streams(store, clock):
    """A8.2."""
    await create(store, "keep")
    await create(store, "short", ttl=10)
    await create(store, "abs", expires_at=utc_in(clock, 5))
    assert [m.path for m in await store.list_streams()] == ["abs", "keep", "short"]
    clock.advance(10)
    assert [m.path for m in await store.list_streams()] == ["keep"]


async def test_sweep_removes_expired_streams_and_returns_their_paths(store, clock):
    await create(store, "keep", data=b"k")
    await create(store, "t1", ttl=10, data=b"a")
    await create(store, "t2", expires_at=utc_in(clock, 5))
    await create(store, "later", ttl=100)
    folders = {p: folder_of(store, p) for p in ("keep", "t1", "t2", "later")}
    clock.advance(10)
    assert sorted(await store.sweep()) == ["t1", "t2"]
    assert [m.path for m in await store.list_streams()] == ["keep", "later"]
    for p in ("t1", "t2"):
        with pytest.raises(errors.StreamNotFound):
            await store.get(p)
    if folders["t1"] is not None:
        assert not folders["t1"].exists() and not folders["t2"].exists()
        assert folders["keep"].exists() and folders["later"].exists()
        assert not [e for e in store.data_dir.iterdir() if e.name.startswith(".")
                    and e.name != LOCK_NAME]
    assert await store.sweep() == []
    assert await body(store, "keep") == b"k"


async def test_sweep_reports_an_expired_source_and_its_expired_fork(store, clock):
    """sweep() returns every path it removed, forks that expired with their source included."""
    await create(store, "src", ttl=10, data=b"x")
    await create(store, "fork", fork_from="src")  # inherits ttl=10
    clock.advance(10)
    assert sorted(await store.sweep()) == ["fork", "src"]
    for p in ("src", "fork"):
        with pytest.raises(errors.StreamNotFound):
            await store.get(p)
    if folder_of(store, "src") is not None:
        assert [e.name for e in store.data_dir.iterdir() if e.name != LOCK_NAME] == []


async def test_sweep_with_nothing_expired_removes_nothing(store, clock):
    await create(store, "a", ttl=10)
    clock.advance(5)
    assert await store.sweep() == []
    assert await store.has("a")


async def test_expired_stream_with_forks_keeps_its_data_for_them(store, clock):
    """A8.2 exception, A10.13 (L10821): the source goes (404 or 410), the fork reads on."""
    await create(store, "src", ttl=10, data=b"source data")
    await create(store, "fork", fork_from="src", ttl=1000)
    clock.advance(11)
    with pytest.raises((errors.StreamNotFound, errors.StreamSoftDeleted)):
        await store.get("src")
    assert await body(store, "fork") == b"source data"
    assert [m.path for m in await store.list_streams()] == ["fork"]


async def test_sweep_keeps_data_of_an_expired_source_with_forks(store, clock):
    await create(store, "src", ttl=10, data=b"source data")
    await create(store, "fork", fork_from="src", ttl=1000)
    clock.advance(11)
    assert await store.sweep() == ["src"]
    with pytest.raises((errors.StreamNotFound, errors.StreamSoftDeleted)):
        await store.get("src")
    assert await body(store, "fork") == b"source data"
    await store.delete("fork")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")
    if folder_of(store, "src") is not None:
        assert not folder_of(store, "src").exists()


# ======================================================================================
# A9. Delete
# ======================================================================================

async def test_delete_removes_the_stream(store):
    """A9 (L811, L343, L8139)."""
    await create(store, "s", data=b"x")
    folder = folder_of(store, "s")
    await store.delete("s")
    with pytest.raises(errors.StreamNotFound):
        await store.get("s")
    with pytest.raises(errors.StreamNotFound):
        await store.read("s")
    with pytest.raises(errors.StreamNotFound):
        await append(store, "s", b"y")
    assert await store.list_streams() == []
    if folder is not None:
        assert not folder.exists()


async def test_delete_missing_stream_is_not_found(store):
    """A9 (L801)."""
    with pytest.raises(errors.StreamNotFound):
        await store.delete("missing")
    await create(store, "s")
    await store.delete("s")
    with pytest.raises(errors.StreamNotFound):
        await store.delete("s")


@pytest.mark.parametrize("op", ["get", "read", "read_now", "append", "close", "delete"])
async def test_soft_deleted_stream_is_gone_for_direct_operations(store, op):
    """A9 (L10256, L10328, L10351, L10378): StreamSoftDeleted (410)."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    call = {
        "get": lambda: store.get("src"),
        "read": lambda: store.read("src"),
        "read_now": lambda: store.read("src", NOW),
        "append": lambda: append(store, "src", b"y"),
        "close": lambda: store.close_stream("src"),
        "delete": lambda: store.delete("src"),
    }[op]
    with pytest.raises(errors.StreamSoftDeleted):
        await call()
    assert not await store.has("src")


async def test_create_over_a_soft_deleted_path_conflicts(store):
    """A2.7, A9 (L10296)."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "src", data=b"x")
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "src", content_type=TEXT)


async def test_fork_from_a_soft_deleted_source_conflicts(store):
    """A9, A10.2 (L10403)."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fork2", fork_from="src")
    assert not await store.has("fork2")


async def test_soft_deleted_data_stays_readable_through_the_fork(store):
    """A9 (L10256, L11156)."""
    await create(store, "src", content_type=TEXT, data=b"source data")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    await append(store, "fork", b" + fork")
    assert await body(store, "fork") == b"source data + fork"
    assert [m.path for m in await store.list_streams()] == ["fork"]


async def test_deleting_the_last_fork_removes_a_soft_deleted_source(store):
    """A9 (L10487): cascading GC; the path can then be created afresh."""
    await create(store, "src", data=b"x")
    await create(store, "f1", fork_from="src")
    await create(store, "f2", fork_from="src")
    await store.delete("src")
    await store.delete("f1")
    with pytest.raises(errors.StreamSoftDeleted):
        await store.get("src")
    await store.delete("f2")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")
    if folder_of(store, "src") is not None:
        assert not folder_of(store, "src").exists()
    assert (await create(store, "src", content_type=TEXT)).created is True


async def test_delete_cascades_through_three_levels(store):
    """A9 (L10527)."""
    await create(store, "l0", data=b"A")
    await create(store, "l1", fork_from="l0")
    await create(store, "l2", fork_from="l1")
    await store.delete("l0")
    await store.delete("l1")
    for p in ("l0", "l1"):
        with pytest.raises(errors.StreamSoftDeleted):
            await store.get(p)
    await store.delete("l2")
    for p in ("l2", "l1", "l0"):
        with pytest.raises(errors.StreamNotFound):
            await store.get(p)
    if folder_of(store, "l0") is not None:
        assert [e.name for e in store.data_dir.iterdir() if e.name != LOCK_NAME] == []


async def test_deleting_the_middle_of_a_chain(store):
    """A9 (L10582): the middle is soft-deleted; leaf and root read on."""
    await create(store, "l0", data=b"A")
    await create(store, "l1", fork_from="l0", data=b"B")
    await create(store, "l2", fork_from="l1", data=b"C")
    await store.delete("l1")
    with pytest.raises(errors.StreamSoftDeleted):
        await store.get("l1")
    assert await body(store, "l2") == b"ABC"
    assert await body(store, "l0") == b"A"


async def test_deleting_all_forks_keeps_a_live_source(store):
    """A9 (L10639)."""
    await create(store, "src", data=b"source")
    await create(store, "f1", fork_from="src")
    await create(store, "f2", fork_from="src")
    await store.delete("f1")
    await store.delete("f2")
    assert await body(store, "src") == b"source"
    await store.delete("src")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")


async def test_deleting_a_fork_leaves_its_source_intact(store):
    """A9 (L10214)."""
    await create(store, "src", data=b"source data")
    await create(store, "fork", fork_from="src", data=b"+")
    await store.delete("fork")
    with pytest.raises(errors.StreamNotFound):
        await store.read("fork")
    assert await body(store, "src") == b"source data"


@pytest.mark.parametrize("reject", ["content_type", "offset", "sub_offset", "initial_json",
                                    "ttl_and_expires_at"])
async def test_a_rejected_fork_takes_no_reference(store, clock, reject):
    """A9 (L10454): after a refused fork, deleting the source removes it fully."""
    await create(store, "src", content_type=JSON, data=b"[1,2]")
    kw = {
        "content_type": dict(content_type=TEXT),
        "offset": dict(fork_offset=10**9),
        "sub_offset": dict(fork_offset=0, fork_sub_offset=5),
        "initial_json": dict(data=b"{nope"),
        "ttl_and_expires_at": dict(ttl=5, expires_at=utc_in(clock, 5)),
    }[reject]
    with pytest.raises((errors.ConfigMismatch, errors.InvalidOffset, errors.InvalidRequest,
                        errors.InvalidJSON)):
        await create(store, "fork", fork_from="src", **kw)
    assert not await store.has("fork")
    await store.delete("src")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")


# ======================================================================================
# A10. Forks
# ======================================================================================

async def test_fork_defaults_to_the_source_tail(store):
    """A10.1 (L8187)."""
    await create(store, "src", content_type=TEXT, data=b"chunk1")
    await append(store, "src", b"chunk2")
    tail = (await store.get("src")).next_offset
    res = await create(store, "fork", fork_from="src")
    assert res.created is True and res.meta.next_offset == tail
    assert res.meta.content_type == TEXT and res.meta.closed is False
    r = await store.read("fork")
    assert bytes(r.data) == b"chunk1chunk2" and r.up_to_date and r.next_offset == tail


async def test_fork_at_zero_offset_inherits_nothing(store):
    """A10.1 (L8253)."""
    await create(store, "src", data=b"data")
    res = await create(store, "fork", fork_from="src", fork_offset=parse_offset(ZERO))
    assert res.meta.next_offset == 0
    r = await store.read("fork")
    assert bytes(r.data) == b"" and r.up_to_date


async def test_fork_at_a_middle_boundary_inherits_the_prefix(store):
    """A10.1 (L8214)."""
    mid = (await create(store, "src", data=b"first")).meta.next_offset
    await append(store, "src", b"second")
    res = await create(store, "fork", fork_from="src", fork_offset=mid)
    assert res.meta.next_offset == mid
    assert await body(store, "fork") == b"first"


async def test_fork_at_the_head_offset_inherits_everything(store):
    """A10.1 (L8285)."""
    await create(store, "src", data=b"chunk1")
    head = (await append(store, "src", b"chunk2")).next_offset
    await create(store, "fork", fork_from="src", fork_offset=head)
    assert await body(store, "fork") == b"chunk1chunk2"


async def test_fork_at_every_boundary(store):
    """A10.1 (L11227)."""
    offsets = [0, (await create(store, "src", data=b"A")).meta.next_offset]
    for c in (b"B", b"C"):
        offsets.append((await append(store, "src", c)).next_offset)
    for i, off in enumerate(offsets):
        await create(store, f"f{i}", fork_from="src", fork_offset=off)
        assert await body(store, f"f{i}") == b"ABC"[:i]


async def test_fork_offset_beyond_the_tail_is_invalid_offset(store):
    """A10.1 (L8340)."""
    tail = (await create(store, "src", data=b"data")).meta.next_offset
    for bad in (tail + 1, parse_offset("0000000000000000_9999999999999999")):
        with pytest.raises(errors.InvalidOffset):
            await create(store, "fork", fork_from="src", fork_offset=bad)
    assert not await store.has("fork")


async def test_fork_offset_that_is_not_a_boundary_is_invalid_offset(store):
    """A1.9, A10.1."""
    await create(store, "src", data=b"abcdefgh")
    with pytest.raises(errors.InvalidOffset):
        await create(store, "fork", fork_from="src", fork_offset=3)
    with pytest.raises(errors.InvalidOffset):
        await create(store, "fork", fork_from="src", fork_offset=-1)
    assert not await store.has("fork")


async def test_fork_from_a_missing_source_is_not_found(store):
    """A10.2 (L8326)."""
    with pytest.raises(errors.StreamNotFound):
        await create(store, "fork", fork_from="missing")
    assert not await store.has("fork")


async def test_fork_from_an_expired_source_is_not_found(store, clock):
    """A8.2, A10.2 (reference)."""
    await create(store, "src", ttl=10, data=b"x")
    clock.advance(10)
    with pytest.raises(errors.StreamNotFound):
        await create(store, "fork", fork_from="src")


async def test_fork_offset_without_a_source_is_invalid_request(store):
    """A10.7 (L9065)."""
    await create(store, "src", data=b"x")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "a", fork_sub_offset=1)
    with pytest.raises(errors.InvalidRequest):
        await create(store, "b", fork_offset=0)


async def test_fork_inherits_the_content_type_when_none_is_given(store):
    """A10.3 (L8489)."""
    await create(store, "src", content_type=JSON, data=b'{"key":"source"}')
    res = await create(store, "fork", fork_from="src")
    assert res.meta.content_type == JSON
    await append(store, "fork", b'[{"key":"appended"}]', content_type=JSON)
    assert await jbody(store, "fork") == [{"key": "source"}, {"key": "appended"}]
    assert (await create(store, "fork", fork_from="src")).created is False


async def test_fork_with_a_matching_content_type(store):
    """A10.3 (L8459): compared on the media type."""
    await create(store, "src", content_type=JSON, data=b'{"event":"one"}')
    res = await create(store, "fork", fork_from="src", content_type="Application/JSON; charset=utf-8")
    assert res.created
    assert await jbody(store, "fork") == [{"event": "one"}]


async def test_fork_with_a_different_content_type_conflicts(store):
    """A10.3 (L10433)."""
    await create(store, "src", content_type=JSON, data=b"1")
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fork", fork_from="src", content_type=TEXT)
    assert not await store.has("fork")


async def test_fork_onto_an_existing_regular_stream_conflicts(store):
    """A10.2 (L8364)."""
    await create(store, "src", content_type=TEXT, data=b"x")
    await create(store, "target", content_type=JSON)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "target", fork_from="src", content_type=TEXT)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "target", fork_from="src")
    assert (await store.get("target")).content_type == JSON


async def test_fork_read_stitches_inherited_and_own_data(store):
    """A10.4 (L9257, L9488)."""
    await create(store, "src", content_type=TEXT, data=b"source ")
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b"fork")
    r = await store.read("fork")
    assert bytes(r.data) == b"source fork" and r.up_to_date
    assert r.next_offset == (await store.get("fork")).next_offset


async def test_json_fork_read_is_one_array_across_the_boundary(store):
    """A10.4 (L11108)."""
    await create(store, "src", content_type=JSON, data=b'[{"from":"source"}]')
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b'[{"from":"fork"}]')
    assert await jbody(store, "fork") == [{"from": "source"}, {"from": "fork"}]


async def test_fork_does_not_see_source_appends_after_the_fork_point(store):
    """A10.4 (L9660), A10.10."""
    await create(store, "src", content_type=TEXT, data=b"initial")
    await create(store, "fork", fork_from="src")
    await append(store, "src", b" extra")
    await append(store, "fork", b" mine")
    assert await body(store, "src") == b"initial extra"
    assert await body(store, "fork") == b"initial mine"


async def test_read_from_the_fork_offset_returns_only_the_forks_data(store):
    """A1.11 (L9321)."""
    head = (await create(store, "src", data=b"inherited")).meta.next_offset
    await create(store, "fork", fork_from="src")
    own = (await append(store, "fork", b"own")).next_offset
    assert own > head
    assert await body(store, "fork", head) == b"own"


async def test_read_from_an_inherited_offset_continues_into_fork_data(store):
    """A1.11 (L10142)."""
    a = (await create(store, "src", data=b"A")).meta.next_offset
    await append(store, "src", b"B")
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b"C")
    assert await body(store, "fork", a) == b"BC"


async def test_fork_read_at_a_non_boundary_inherited_offset_is_invalid_offset(store):
    """A1.9: the fork's inherited range keeps the source's boundaries."""
    await create(store, "src", data=b"abcdefgh")
    await append(store, "src", b"ijkl")
    await create(store, "fork", fork_from="src")
    for bad in (1, 5):
        with pytest.raises(errors.InvalidOffset):
            await store.read("fork", bad)


async def test_paginated_fork_read_crosses_the_boundary_without_splitting(store):
    await create(store, "src", data=b"aaaa")
    await append(store, "src", b"bbbb")
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b"cccc")
    await append(store, "fork", b"dddd")
    pages = await read_pages(store, "fork", max_bytes=4)
    assert [bytes(p.data) for p in pages if p.data] == [b"aaaa", b"bbbb", b"cccc", b"dddd"]


async def test_fork_read_respects_max_bytes_across_the_boundary(store):
    """A6.3: a page that can hold whole appends never exceeds max_bytes."""
    await create(store, "src", data=b"aaaa")
    await append(store, "src", b"bbbb")
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b"cccc")
    r = await store.read("fork", max_bytes=9)
    assert bytes(r.data) == b"aaaabbbb" and not r.up_to_date


async def test_source_does_not_see_fork_appends(store):
    await create(store, "src", data=b"s")
    await create(store, "fork", fork_from="src")
    await append(store, "fork", b"f")
    assert await body(store, "src") == b"s"


async def test_recursive_forks_three_levels(store):
    """A10.4 (L9745, L9803)."""
    await create(store, "l0", data=b"A")
    await create(store, "l1", fork_from="l0")
    await append(store, "l1", b"B")
    await create(store, "l2", fork_from="l1")
    await append(store, "l2", b"C")
    assert [await body(store, p) for p in ("l0", "l1", "l2")] == [b"A", b"AB", b"ABC"]


async def test_fork_of_a_fork_inside_its_inherited_range(store):
    """A10.1: a fork's offsets below its fork point are the source's boundaries."""
    a = (await create(store, "l0", data=b"A")).meta.next_offset
    b = (await append(store, "l0", b"B")).next_offset
    await create(store, "l1", fork_from="l0")
    await append(store, "l1", b"C")
    await create(store, "at_a", fork_from="l1", fork_offset=a)
    await create(store, "at_b", fork_from="l1", fork_offset=b)
    assert await body(store, "at_a") == b"A"
    assert await body(store, "at_b") == b"AB"
    with pytest.raises(errors.InvalidOffset):
        await create(store, "bad", fork_from="l1", fork_offset=a - 1)


async def test_fork_sub_offset_keeps_the_first_bytes_of_a_binary_message(store):
    """A10.6 (L8532)."""
    await create(store, "src", content_type=TEXT, data=b"hello")
    res = await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3)
    assert await body(store, "fork") == b"hel"
    r = await store.read("fork", res.meta.next_offset)
    assert bytes(r.data) == b"" and r.up_to_date  # L9079


async def test_fork_sub_offset_keeps_the_first_values_of_a_json_message(store):
    """A10.6 (L8564): a 4-element create is one message."""
    await create(store, "src", content_type=JSON, data=b'[{"a":1},{"b":2},{"c":3},{"d":4}]')
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=2)
    assert await jbody(store, "fork") == [{"a": 1}, {"b": 2}]


async def test_fork_sub_offset_anchored_between_appends(store):
    """A10.6 (L9003)."""
    anchor = (await create(store, "src", data=b"first")).meta.next_offset
    await append(store, "src", b"second")
    await create(store, "fork", fork_from="src", fork_offset=anchor, fork_sub_offset=3)
    assert await body(store, "fork") == b"firstsec"


async def test_fork_sub_offset_equal_to_the_message_length_is_allowed(store):
    """A10.6 (L9132, L9158)."""
    await create(store, "bin", data=b"hello")
    await create(store, "fb", fork_from="bin", fork_offset=0, fork_sub_offset=5)
    assert await body(store, "fb") == b"hello"
    await create(store, "js", content_type=JSON, data=b"[1,2,3]")
    await create(store, "fj", fork_from="js", fork_offset=0, fork_sub_offset=3)
    assert await jbody(store, "fj") == [1, 2, 3]


async def test_fork_sub_offset_past_the_message_is_invalid_request(store):
    """A10.7 (L8631, L8654)."""
    await create(store, "bin", data=b"hi")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "fb", fork_from="bin", fork_offset=0, fork_sub_offset=5)
    await create(store, "js", content_type=JSON, data=b"[1,2,3]")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "fj", fork_from="js", fork_offset=0, fork_sub_offset=4)
    assert not await store.has("fb") and not await store.has("fj")


async def test_fork_sub_offset_on_an_empty_source_is_invalid_request(store):
    """A10.7 (L9110)."""
    await create(store, "src")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=1)


async def test_fork_sub_offset_with_the_default_offset_is_invalid_request(store):
    """A10.7 (L9041): the default offset is the tail; no message follows it."""
    await create(store, "src", data=b"hello")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "fork", fork_from="src", fork_sub_offset=2)


async def test_negative_fork_sub_offset_is_invalid_request(store):
    """A10.7 (L8677)."""
    await create(store, "src", data=b"hello")
    with pytest.raises(errors.InvalidRequest):
        await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=-1)


async def test_fork_sub_offset_zero_is_the_same_as_none(store):
    """A10.7 (L8596)."""
    await create(store, "src", data=b"hello")
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=0)
    assert await body(store, "fork") == b""
    assert (await create(store, "fork", fork_from="src", fork_offset=0)).created is False


async def test_fork_initial_data_lands_after_the_prefix(store):
    """A10.6 (L9184)."""
    await create(store, "src", content_type=TEXT, data=b"hello")
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3, data=b"XY")
    assert await body(store, "fork") == b"helXY"


async def test_append_after_a_sub_offset_prefix(store):
    """A10.6 (L8824)."""
    await create(store, "src", data=b"hello")
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3)
    await append(store, "fork", b"LO")
    assert await body(store, "fork") == b"helLO"
    assert await body(store, "src") == b"hello"


async def test_chained_sub_offset_forks_compose(store):
    """A10.6 (L9932)."""
    await create(store, "l0", data=b"abcdef")
    await create(store, "l1", fork_from="l0", fork_offset=0, fork_sub_offset=4)
    assert await body(store, "l1") == b"abcd"
    await create(store, "l2", fork_from="l1", fork_offset=0, fork_sub_offset=2)
    assert await body(store, "l2") == b"ab"
    await append(store, "l2", b"Z")
    assert await body(store, "l2") == b"abZ"


async def test_fork_of_a_closed_source_starts_open(store):
    """A10.9 (L8393)."""
    await create(store, "src", data=b"data", closed=True)
    res = await create(store, "fork", fork_from="src")
    assert res.meta.closed is False
    assert not (await store.read("fork")).closed
    await append(store, "fork", b"+more")
    assert await body(store, "fork") == b"data+more"
    assert (await store.get("src")).closed


async def test_fork_sub_offset_from_a_closed_source(store):
    """A10.6 (L9214)."""
    await create(store, "src", data=b"hello", closed=True)
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3)
    assert await body(store, "fork") == b"hel"
    assert not (await store.get("fork")).closed


async def test_closing_a_fork_leaves_the_source_open(store):
    """A10.9 (L9577)."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    assert (await store.close_stream("fork")).closed
    assert not (await store.get("src")).closed
    await append(store, "src", b"y")


async def test_closing_the_source_leaves_the_fork_open(store):
    """A10.9 (L9618)."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    await store.close_stream("src")
    assert not (await store.get("fork")).closed
    await append(store, "fork", b"y")
    r = await store.read("fork")
    assert bytes(r.data) == b"xy" and not r.closed


async def test_producer_state_is_not_inherited_by_a_fork(store):
    """A10.11 (L8945, L9524): the same tuple on the fork is a fresh accept."""
    await create(store, "src")
    await append(store, "src", b"hello", producer=P(0, 0))
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3)
    r = await append(store, "fork", b"LO", producer=P(0, 0))
    assert r.outcome is ACCEPTED
    assert (await append(store, "fork", b"LO", producer=P(0, 0))).outcome is DUPLICATE
    assert await body(store, "fork") == b"helLO"


async def test_producer_state_is_not_inherited_by_a_json_fork(store):
    """A10.11 (L8884)."""
    await create(store, "src", content_type=JSON)
    await append(store, "src", b'[{"i":1},{"i":2}]', producer=P(0, 0))
    await create(store, "fork", fork_from="src", fork_offset=0, fork_sub_offset=1)
    r = await append(store, "fork", b'[{"i":99}]', producer=P(0, 0))
    assert r.outcome is ACCEPTED
    assert await jbody(store, "fork") == [{"i": 1}, {"i": 99}]


async def test_fork_with_an_explicit_ttl_uses_it(store, clock):
    """A10.12 (L10901, L11030): no capping by the source's TTL."""
    await create(store, "src", ttl=10, data=b"x")
    res = await create(store, "fork", fork_from="src", ttl=99999)
    assert res.meta.ttl == 99999
    clock.advance(11)
    assert not await store.has("src")
    assert (await store.get("fork")).ttl == 99999
    assert await body(store, "fork") == b"x"


async def test_fork_without_ttl_inherits_the_sources_ttl(store):
    """A10.12 (L10867)."""
    await create(store, "src", ttl=3600)
    res = await create(store, "fork", fork_from="src")
    assert res.meta.ttl == 3600 and (await store.get("fork")).ttl == 3600


async def test_fork_without_expiry_inherits_the_sources_expires_at(store, clock):
    """A10.12 (L10709)."""
    at = utc_in(clock, 3600)
    await create(store, "src", expires_at=at)
    res = await create(store, "fork", fork_from="src")
    assert res.meta.expires_at == at and res.meta.ttl is None


async def test_fork_with_explicit_expires_at_is_not_capped(store, clock):
    """A10.12 (L10989)."""
    await create(store, "src", ttl=10, data=b"x")
    at = utc_in(clock, 3600)
    res = await create(store, "fork", fork_from="src", expires_at=at)
    assert res.meta.expires_at == at
    clock.advance(100)
    assert await body(store, "fork") == b"x"


async def test_fork_sliding_ttl_starts_at_the_forks_creation(store, clock):
    """A10.12: an inherited TTL value, the fork's own clock."""
    await create(store, "src", ttl=10, data=b"x")
    clock.advance(5)
    await create(store, "fork", fork_from="src")
    clock.advance(6)
    assert not await store.has("src")
    assert await store.has("fork")
    clock.advance(4)
    assert not await store.has("fork")


async def test_fork_expiry_releases_the_source_reference(store, clock):
    """A10.13 (L10777): once the expired fork is gone, the source deletes fully."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src", ttl=10)
    clock.advance(11)
    with pytest.raises(errors.StreamNotFound):
        await store.get("fork")
    await store.delete("src")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")


async def test_fork_expiry_removes_a_soft_deleted_source(store, clock):
    """A9, A10.13: expiry of the last fork cascades like its deletion."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src", ttl=10)
    await store.delete("src")
    clock.advance(11)
    with pytest.raises(errors.StreamNotFound):
        await store.read("fork")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")


async def test_soft_deleted_source_goes_when_its_last_fork_expires(store, clock):
    """A9, A10.13: no one need look at the expired fork first; the path is free again."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src", ttl=10)
    await store.delete("src")
    clock.advance(11)
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")
    assert (await create(store, "src", content_type=TEXT)).created is True


async def test_an_expired_fork_does_not_keep_its_source_from_being_deleted(store, clock):
    """A8.2, A10.13: an expired fork is non-existent, even before anything looks at it."""
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src", ttl=10)
    clock.advance(11)
    await store.delete("src")
    with pytest.raises(errors.StreamNotFound):
        await store.get("src")
    assert (await create(store, "src", content_type=TEXT)).created is True


async def test_reading_a_fork_does_not_renew_the_sources_ttl(store, clock):
    """A10.13 (L10936): the fork outlives its source."""
    await create(store, "src", ttl=2, data=b"x")
    await create(store, "fork", fork_from="src")
    clock.advance(1.5)
    assert await body(store, "fork") == b"x"
    clock.advance(0.5)
    with pytest.raises((errors.StreamNotFound, errors.StreamSoftDeleted)):
        await store.get("src")
    assert (await store.get("fork")).path == "fork"
    clock.advance(1.4)
    assert await body(store, "fork") == b"x"


async def test_idempotent_fork_create_returns_existing(store):
    """A10.2, A2.2 (L11316): the default offset is not compared, even after growth."""
    await create(store, "src", data=b"a")
    res = await create(store, "fork", fork_from="src")
    await append(store, "src", b"b")
    again = await create(store, "fork", fork_from="src")
    assert again.created is False and again.meta.next_offset == res.meta.next_offset
    assert (await create(store, "fork", fork_from="src",
                         fork_offset=res.meta.next_offset)).created is False


async def test_idempotent_fork_create_with_the_same_sub_offset(store):
    """A10.8 (L8702, L8763)."""
    await create(store, "bin", data=b"hello")
    await create(store, "fb", fork_from="bin", fork_offset=0, fork_sub_offset=2)
    assert (await create(store, "fb", fork_from="bin", fork_offset=0,
                         fork_sub_offset=2)).created is False
    await create(store, "js", content_type=JSON, data=b"[1,2,3]")
    await create(store, "fj", fork_from="js", fork_offset=0, fork_sub_offset=2)
    assert (await create(store, "fj", fork_from="js", fork_offset=0,
                         fork_sub_offset=2)).created is False
    assert await body(store, "fb") == b"he"


async def test_fork_create_with_a_different_sub_offset_conflicts(store):
    """A10.8 (L8733, L8794)."""
    await create(store, "bin", data=b"hello")
    await create(store, "fb", fork_from="bin", fork_offset=0, fork_sub_offset=2)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fb", fork_from="bin", fork_offset=0, fork_sub_offset=3)
    await create(store, "js", content_type=JSON, data=b"[1,2,3]")
    await create(store, "fj", fork_from="js", fork_offset=0, fork_sub_offset=2)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fj", fork_from="js", fork_offset=0, fork_sub_offset=3)


async def test_fork_create_with_a_different_offset_or_source_conflicts(store):
    """A2.2 (reference): explicit offsets and the source are compared."""
    a = (await create(store, "src", data=b"a")).meta.next_offset
    await append(store, "src", b"b")
    await create(store, "other", data=b"o")
    await create(store, "fork", fork_from="src", fork_offset=a)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fork", fork_from="src", fork_offset=0)
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fork", fork_from="other")
    with pytest.raises(errors.ConfigMismatch):
        await create(store, "fork")


async def test_many_forks_share_the_source_data(store):
    """A10.4 (L11187)."""
    await create(store, "src", data=b"shared data")
    for i in range(10):
        await create(store, f"f{i}", fork_from="src")
    for i in range(10):
        assert await body(store, f"f{i}") == b"shared data"


# ======================================================================================
# list_streams, has, current_offset
# ======================================================================================

async def test_list_streams_returns_sorted_live_streams_with_the_prefix(store):
    for path in ("b", "a/2", "a/1", "ab", "c", "gone"):
        await create(store, path, content_type=TEXT, data=path.encode())
    await store.delete("gone")
    metas = await store.list_streams()
    assert [m.path for m in metas] == ["a/1", "a/2", "ab", "b", "c"]
    assert [m.path for m in await store.list_streams("a")] == ["a/1", "a/2", "ab"]
    assert [m.path for m in await store.list_streams("a/")] == ["a/1", "a/2"]
    assert await store.list_streams("zzz") == []
    m = (await store.list_streams("c"))[0]
    assert m.content_type == TEXT and m.next_offset == (await store.get("c")).next_offset


async def test_list_streams_hides_soft_deleted_streams(store):
    await create(store, "src", data=b"x")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    assert [m.path for m in await store.list_streams()] == ["fork"]


async def test_has_reports_live_streams_only(store):
    await create(store, "s")
    assert await store.has("s")
    assert not await store.has("missing")
    await store.delete("s")
    assert not await store.has("s")


# ======================================================================================
# read_last: the last message (an extension, docs/protocol-choices.md)
# ======================================================================================

async def last(store, path):
    """``store.read_last(path)``, checked against the default implementation
    of :class:`StreamStore` (which pages through the whole stream with plain
    reads): the fast path of each store must agree with it."""
    got = await store.read_last(path)
    assert await StreamStore.read_last(store, path) == got, path
    return got


def count_record_reads(store, monkeypatch) -> list:
    """From now on, the offsets of the records ``store`` takes from its logs
    (or its backend) are appended to the returned list."""
    seen: list = []
    if isinstance(store, BaseStreamStore):
        for cls in (SegmentedLog, MemoryLog):
            def counting(self, offset=None, _orig=cls.records):
                for rec in _orig(self, offset):
                    seen.append(rec.offset)
                    yield rec
            monkeypatch.setattr(cls, "records", counting)
    else:
        orig = store._b.records

        async def counting_backend(rid, lo, hi, limit):
            recs = await orig(rid, lo, hi, limit)
            seen.extend(r.offset for r in recs)
            return recs
        monkeypatch.setattr(store._b, "records", counting_backend)
    return seen


async def test_read_last_of_an_empty_stream(store):
    await create(store, "b")
    await create(store, "j", content_type=JSON, data=b"[]")
    for path, ct in (("b", BIN), ("j", JSON)):
        r = await last(store, path)
        assert (r.data, r.offset, r.found, r.closed) == (b"", None, False, False)
        assert r.next_offset == 0 and r.content_type == ct


async def test_read_last_of_a_bytes_stream_is_the_last_append(store):
    await create(store, "s", content_type=TEXT, data=b"initial")
    r = await last(store, "s")
    assert (r.data, r.offset, r.found) == (b"initial", 0, True)
    before = r.next_offset
    await append(store, "s", b"one")
    mid = (await store.get("s")).next_offset
    tail = (await append(store, "s", b"two, longer")).next_offset
    r = await last(store, "s")
    assert r.data == b"two, longer" and r.offset == mid and r.next_offset == tail
    assert r.found and not r.closed and r.content_type == TEXT
    assert 0 < before < mid < tail
    # reading from the offset it reports starts with that append
    assert await body(store, "s", r.offset) == b"two, longer"


async def test_read_last_of_a_json_stream_is_the_last_value_only(store):
    await create(store, "j", content_type=JSON, data=b"[1, 2]")
    r = await last(store, "j")
    assert (r.data, r.offset) == (b"2", 0)
    at = (await store.get("j")).next_offset
    tail = (await append(store, "j", b' [ {"a": [1, 2]} , [3, 4],\n "last" ] ')).next_offset
    r = await last(store, "j")
    assert r.data == b'"last"' and r.offset == at and r.next_offset == tail
    assert json.loads(r.data) == "last"
    at = tail
    await append(store, "j", b'{"k": [1, "]"]}')  # one value, not an array
    r = await last(store, "j")
    assert json.loads(r.data) == {"k": [1, "]"]} and r.offset == at
    await append(store, "j", b"[[5, 6]]")  # an array of one array: flattened once
    assert json.loads((await last(store, "j")).data) == [5, 6]
    await append(store, "j", b'["a,b", "c\\"d"]')
    assert json.loads((await last(store, "j")).data) == 'c"d'


async def test_read_last_after_a_close(store):
    """A close record carries no message: the last one stays the answer."""
    await create(store, "c", content_type=TEXT)
    await append(store, "c", b"x")
    tail = (await store.close_stream("c")).next_offset
    r = await last(store, "c")
    assert (r.data, r.offset, r.closed, r.found) == (b"x", 0, True, True)
    assert r.next_offset == tail > len(b"x")
    await create(store, "dc", content_type=TEXT, data=b"first")
    at = (await store.get("dc")).next_offset
    await append(store, "dc", b"y", close=True)  # data and close in one record
    r = await last(store, "dc")
    assert (r.data, r.offset, r.closed) == (b"y", at, True)
    await create(store, "pc", content_type=JSON, data=b"[1, 2]", closed=True)
    r = await last(store, "pc")
    assert (r.data, r.offset, r.closed) == (b"2", 0, True)
    await create(store, "ec", closed=True)
    r = await last(store, "ec")
    assert (r.data, r.offset, r.found, r.closed) == (b"", None, False, True)
    assert r.next_offset == (await store.get("ec")).next_offset > 0


async def test_read_last_of_forks(store):
    await create(store, "src", content_type=TEXT, data=b"a")
    t1 = (await append(store, "src", b"bb")).next_offset
    t0 = (await store.read("src", 0, max_bytes=1)).next_offset  # where "bb" starts
    t2 = (await append(store, "src", b"ccc")).next_offset
    await create(store, "at-tail", fork_from="src")
    await create(store, "mid", fork_from="src", fork_offset=t0)
    await create(store, "zero", fork_from="src", fork_offset=0)
    await append(store, "src", b"dddd")  # after the forks: none of them sees it
    r = await last(store, "at-tail")
    assert (r.data, r.offset, r.next_offset, r.found) == (b"ccc", t1, t2, True)
    r = await last(store, "mid")
    assert (r.data, r.offset, r.next_offset) == (b"a", 0, t0)
    r = await last(store, "zero")
    assert (r.data, r.offset, r.next_offset, r.found) == (b"", None, 0, False)
    assert (await last(store, "src")).data == b"dddd"
    # a fork of a fork with nothing of its own: through both
    await create(store, "grand", fork_from="at-tail")
    assert (await last(store, "grand")).data == b"ccc"
    # its own appends come first; a close of its own changes nothing
    tail = (await append(store, "mid", b"own")).next_offset
    r = await last(store, "mid")
    assert (r.data, r.offset, r.next_offset) == (b"own", t0, tail)
    await create(store, "closed-fork", fork_from="src", fork_offset=t1)
    await store.close_stream("closed-fork")
    r = await last(store, "closed-fork")
    assert (r.data, r.offset, r.closed) == (b"bb", t0, True)


async def test_read_last_of_a_fork_with_a_sub_offset(store):
    """The fork keeps the first bytes (JSON: values) of the message at its
    offset: that prefix is its last message until it appends."""
    await create(store, "src", content_type=TEXT, data=b"hello")
    await append(store, "src", b"world")
    await create(store, "f", fork_from="src", fork_offset=0, fork_sub_offset=3)
    r = await last(store, "f")
    assert (r.data, r.offset, r.found) == (b"hel", 0, True)
    await create(store, "js", content_type=JSON, data=b'[1, {"two": 2}, 3]')
    await create(store, "jf", fork_from="js", fork_offset=0, fork_sub_offset=2)
    r = await last(store, "jf")
    assert json.loads(r.data) == {"two": 2} and r.offset == 0
    await append(store, "jf", b"[4, 5]")
    assert (await last(store, "jf")).data == b"5"


async def test_read_last_of_missing_and_deleted_streams(store):
    with pytest.raises(errors.StreamNotFound):
        await store.read_last("missing")
    await create(store, "gone", data=b"x")
    await store.delete("gone")
    with pytest.raises(errors.StreamNotFound):
        await store.read_last("gone")
    await create(store, "src", data=b"kept")
    await create(store, "fork", fork_from="src")
    await store.delete("src")
    with pytest.raises(errors.StreamSoftDeleted):
        await store.read_last("src")
    assert (await last(store, "fork")).data == b"kept"  # still there for the fork


async def test_read_last_renews_a_sliding_ttl(store, clock):
    await create(store, "s", ttl=10, data=b"x")
    clock.advance(8)
    assert (await store.read_last("s")).data == b"x"
    clock.advance(8)
    assert await store.has("s")
    clock.advance(2)
    assert not await store.has("s")
    with pytest.raises(errors.StreamNotFound):
        await store.read_last("s")


async def test_read_last_takes_one_record_not_the_history(store, monkeypatch):
    """Behaviour, not time: it takes no plain read and at most the one
    record it answers with from storage (the shared stores may have it in
    their record cache and take none)."""
    await create(store, "s", content_type=JSON)
    for i in range(60):
        await append(store, "s", b"[%d, %d]" % (i, -i))
    at = (await store.get("s")).next_offset
    await append(store, "s", b'["end"]')
    await store.close_stream("s")

    async def no_plain_reads(*args, **kwargs):
        raise AssertionError("read_last paged through the stream")
    monkeypatch.setattr(store, "read", no_plain_reads)
    seen = count_record_reads(store, monkeypatch)
    r = await store.read_last("s")
    assert (r.data, r.offset, r.closed) == (b'"end"', at, True)
    assert seen in ([], [at])


async def test_read_last_sees_only_what_readers_may_see(store, request):
    """Under ``always`` durability readers see a log up to its durable end
    only: an append whose flush failed (written, not acknowledged) is not
    the last message; the next flush that succeeds makes it visible along
    with what follows. The flush fails through the C core's sync switch."""
    if request.node.callspec.params["store"] != "file":
        pytest.skip("only the file store under always holds written, not yet durable records")
    await create(store, "s", content_type=TEXT, data=b"a")
    b_at = (await store.get("s")).next_offset
    seen_end = (await append(store, "s", b"b")).next_offset
    nat._test_fail_next_sync(1)
    try:
        with pytest.raises(errors.StorageIOError):
            await append(store, "s", b"c")  # written, not acknowledged
        assert nat._test_fail_next_sync(0) == 0, "the armed failure did not strike"
    finally:
        nat._test_fail_next_sync(0)
    r = await last(store, "s")
    assert (r.data, r.offset, r.next_offset) == (b"b", b_at, seen_end)
    await append(store, "s", b"d")
    assert (await last(store, "s")).data == b"d"
    assert await body(store, "s") == b"abcd"


async def test_read_last_of_rows_written_before_it_was_kept(store, monkeypatch):
    """A shared store's rows from before ``last_msg`` existed: read_last
    finds the last message by reading the records, until an append sets it."""
    if isinstance(store, BaseStreamStore):
        pytest.skip("the in-process stores' equivalent is an old snapshot (restart tests)")
    from unbroken_engine.stores.shared.store import Row

    def old_to_dict(row, _new=Row.to_dict):
        d = _new(row)
        del d["lm"]
        return d
    monkeypatch.setattr(Row, "to_dict", old_to_dict)
    await create(store, "s", content_type=JSON, data=b"[1, 2]")
    at = (await store.get("s")).next_offset
    await append(store, "s", b"[3, 4]")
    await store.close_stream("s")
    await create(store, "e", content_type=TEXT)
    monkeypatch.undo()
    r = await last(store, "s")
    assert (r.data, r.offset, r.closed) == (b"4", at, True)
    assert (await last(store, "e")).found is False
    await create(store, "t", content_type=TEXT, data=b"old")
    monkeypatch.setattr(Row, "to_dict", old_to_dict)
    await append(store, "t", b"older")
    monkeypatch.undo()
    at = (await store.get("t")).next_offset
    await append(store, "t", b"new")  # written now: the row says where
    seen = count_record_reads(store, monkeypatch)
    r = await store.read_last("t")
    assert (r.data, r.offset) == (b"new", at) and seen in ([], [at])


# ======================================================================================
# Restart (file-backed store only)
# ======================================================================================

@pytest.fixture(params=[Durability.ALWAYS, Durability.NEVER], ids=["always", "never"])
def open_file_store(request, tmp_path, clock, anyio_backend):
    """Opens a FileBackedStreamStore on one data directory, as often as called."""
    config = _file_config(request.param)
    return lambda: FileBackedStreamStore(tmp_path / "data", config, clock=clock)


async def test_restart_preserves_streams_data_and_offsets(open_file_store):
    async with open_file_store() as s:
        await create(s, "bin", content_type=TEXT, data=b"one")
        mid = (await append(s, "bin", b"two")).next_offset
        tail = (await append(s, "bin", b"three")).next_offset
        await create(s, "js", content_type=JSON, data=b"[1,2]")
        await append(s, "js", b"3")
        await create(s, "big")
        for i in range(20):
            await append(s, "big", bytes([i]) * 9000)
    async with open_file_store() as s:
        assert s.recovery.streams == 3
        assert (await s.get("bin")).next_offset == tail
        assert (await s.get("bin")).content_type == TEXT
        assert await body(s, "bin") == b"onetwothree"
        assert await body(s, "bin", mid) == b"three"
        assert await jbody(s, "js") == [1, 2, 3]
        pages = await read_pages(s, "big", max_bytes=40_000)
        assert b"".join(bytes(p.data) for p in pages) == b"".join(
            bytes([i]) * 9000 for i in range(20))
        nxt = (await append(s, "bin", b"four")).next_offset
        assert nxt > tail
        assert await body(s, "bin", tail) == b"four"


async def test_restart_preserves_producer_state(open_file_store):
    async with open_file_store() as s:
        await create(s, "s")
        await append(s, "s", b"a", producer=P(0, 0))
        await append(s, "s", b"b", producer=P(1, 0))
        await append(s, "s", b"c", producer=P(1, 1))
        await append(s, "s", b"q", producer=P(0, 0, "q"))
    async with open_file_store() as s:
        r = await append(s, "s", b"c", producer=P(1, 1))
        assert r.outcome is DUPLICATE and r.producer_seq == 1
        with pytest.raises(errors.StaleEpoch) as exc:
            await append(s, "s", b"z", producer=P(0, 1))
        assert exc.value.current_epoch == 1
        with pytest.raises(errors.ProducerSeqGap):
            await append(s, "s", b"z", producer=P(1, 5))
        assert (await append(s, "s", b"d", producer=P(1, 2))).outcome is ACCEPTED
        assert (await append(s, "s", b"q", producer=P(0, 0, "q"))).outcome is DUPLICATE
        assert await body(s, "s") == b"abcqd"


async def test_restart_preserves_stream_seq(open_file_store):
    async with open_file_store() as s:
        await create(s, "s")
        await append(s, "s", b"a", seq="005")
        await append(s, "s", b"b")
    async with open_file_store() as s:
        with pytest.raises(errors.SequenceConflict):
            await append(s, "s", b"x", seq="005")
        await append(s, "s", b"c", seq="006")
        assert await body(s, "s") == b"abc"


async def test_restart_preserves_the_closed_flag(open_file_store):
    async with open_file_store() as s:
        await create(s, "closed", data=b"a")
        tail = (await append(s, "closed", b"b", producer=P(0, 0), close=True)).next_offset
        await create(s, "born_closed", closed=True)
        await create(s, "open", data=b"o")
    async with open_file_store() as s:
        assert (await s.get("closed")).closed and (await s.get("born_closed")).closed
        assert not (await s.get("open")).closed
        with pytest.raises(errors.StreamClosed) as exc:
            await append(s, "closed", b"c")
        assert exc.value.next_offset == tail
        r = await append(s, "closed", b"other", producer=P(0, 0), close=True)
        assert r.outcome is DUPLICATE and r.closed
        rr = await s.read("closed")
        assert bytes(rr.data) == b"ab" and rr.closed


async def test_restart_preserves_forks_and_their_references(open_file_store):
    async with open_file_store() as s:
        await create(s, "src", content_type=TEXT, data=b"hello")
        await create(s, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3, data=b"XY")
        await create(s, "fork2", fork_from="fork")
        await append(s, "src", b" world")
    async with open_file_store() as s:
        assert s.recovery.streams == 3
        assert await body(s, "fork") == b"helXY"
        assert await body(s, "fork2") == b"helXY"
        assert await body(s, "src") == b"hello world"
        assert (await s.get("fork")).content_type == TEXT
        assert (await create(s, "fork", fork_from="src", fork_offset=0,
                             fork_sub_offset=3)).created is False
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "fork", fork_from="src", fork_offset=0, fork_sub_offset=2)
        await s.delete("src")  # forks still reference it
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("src")
        await s.delete("fork")
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("fork")
        await s.delete("fork2")
        for p in ("src", "fork", "fork2"):
            with pytest.raises(errors.StreamNotFound):
                await s.get(p)


async def test_restart_preserves_the_soft_deleted_state(open_file_store):
    async with open_file_store() as s:
        await create(s, "src", data=b"source")
        await create(s, "fork", fork_from="src")
        await s.delete("src")
    async with open_file_store() as s:
        assert s.recovery.streams == 2
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("src")
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "src")
        assert await body(s, "fork") == b"source"
        assert [m.path for m in await s.list_streams()] == ["fork"]
        await s.delete("fork")
        with pytest.raises(errors.StreamNotFound):
            await s.get("src")
    async with open_file_store() as s:
        assert s.recovery.streams == 0
        assert (await create(s, "src")).created is True


async def test_restart_preserves_the_configuration(open_file_store, clock):
    at = utc_in(clock, 3600)
    async with open_file_store() as s:
        await create(s, "ttl", content_type="Application/JSON; charset=utf-8", ttl=600)
        await create(s, "abs", expires_at=at)
    async with open_file_store() as s:
        meta = await s.get("ttl")
        assert meta.content_type == "Application/JSON; charset=utf-8" and meta.ttl == 600
        assert (await create(s, "ttl", content_type=JSON, ttl=600)).created is False
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "ttl", content_type=JSON, ttl=601)
        assert (await s.get("abs")).expires_at == at
        assert (await create(s, "abs", expires_at=at)).created is False
        await append(s, "ttl", b"[1]")
        assert await jbody(s, "ttl") == [1]


async def test_restart_keeps_expiring_streams(open_file_store, clock):
    async with open_file_store() as s:
        await create(s, "ttl", ttl=60)
        await create(s, "abs", expires_at=utc_in(clock, 60))
        await create(s, "keep")
    clock.advance(120)
    async with open_file_store() as s:
        assert [m.path for m in await s.list_streams()] == ["keep"]
        assert sorted(await s.sweep()) == ["abs", "ttl"]


async def test_restart_after_delete_keeps_the_stream_deleted(open_file_store):
    async with open_file_store() as s:
        await create(s, "s", data=b"x")
        await s.delete("s")
    async with open_file_store() as s:
        assert s.recovery.streams == 0
        with pytest.raises(errors.StreamNotFound):
            await s.get("s")


async def test_restart_keeps_lookalike_paths_apart(open_file_store):
    async with open_file_store() as s:
        for i, path in enumerate(LOOKALIKE_PATHS):
            await create(s, path, data=str(i).encode())
    async with open_file_store() as s:
        assert s.recovery.streams == len(LOOKALIKE_PATHS) and not s.recovery.corrupt
        for i, path in enumerate(LOOKALIKE_PATHS):
            assert await body(s, path) == str(i).encode()


async def _last_messages(s, paths):
    return {p: await s.read_last(p) for p in paths}


def _snapshots(tmp_path):
    return sorted((tmp_path / "data").glob("*/" + SNAPSHOT_NAME))


LAST_PATHS = ("bin", "js", "closed", "fork", "sub", "empty")


async def _write_last_fixture(s):
    await create(s, "bin", content_type=TEXT, data=b"one")
    for i in range(20):
        await append(s, "bin", b"two %d" % i)
    await create(s, "js", content_type=JSON, data=b"[1]")
    await append(s, "js", b'[2, {"three": 3}]')
    await create(s, "closed", content_type=TEXT, data=b"x")
    await append(s, "closed", b"last", close=True)
    await create(s, "fork", fork_from="bin", fork_offset=0)  # empty at "one"'s start
    await create(s, "sub", fork_from="js", fork_offset=0, fork_sub_offset=1)
    await create(s, "empty")


async def test_restart_keeps_the_last_message(open_file_store, tmp_path, monkeypatch):
    """From the snapshot written at shutdown, then from a full replay."""
    async with open_file_store() as s:
        await _write_last_fixture(s)
        before = await _last_messages(s, LAST_PATHS)
    assert before["bin"].data == b"two 19" and before["js"].data == b'{"three": 3}'
    assert before["fork"].found is False and before["sub"].data == b"1"
    assert _snapshots(tmp_path)
    async with open_file_store() as s:
        seen = count_record_reads(s, monkeypatch)
        assert await _last_messages(s, LAST_PATHS) == before
        assert seen == [before[p].offset for p in ("bin", "js", "closed", "sub")]
        monkeypatch.undo()
    for snap in _snapshots(tmp_path):
        snap.unlink()  # no snapshot: every record is replayed
    async with open_file_store() as s:
        assert await _last_messages(s, LAST_PATHS) == before
        await append(s, "bin", b"after")
        assert (await last(s, "bin")).data == b"after"


async def test_restart_from_a_snapshot_without_the_last_message(open_file_store, tmp_path,
                                                                monkeypatch):
    """A snapshot written before read_last existed lacks ``last_msg``: the
    first read_last of such a stream scans its log once, later ones do not."""
    async with open_file_store() as s:
        await _write_last_fixture(s)
        before = await _last_messages(s, LAST_PATHS)
    for snap in _snapshots(tmp_path):
        state = msgpack.unpackb(snap.read_bytes())
        assert "last_msg" in state
        del state["last_msg"]
        snap.write_bytes(msgpack.packb(state))
    async with open_file_store() as s:
        seen = count_record_reads(s, monkeypatch)
        assert (await s.read_last("bin")) == before["bin"]
        assert len(seen) > 20  # the scan: every record of "bin", once
        seen.clear()
        assert (await s.read_last("bin")) == before["bin"]
        assert seen == [before["bin"].offset]
        # an append before the first read_last: still right
        at = (await s.get("js")).next_offset
        await append(s, "js", b'"new"')
        r = await s.read_last("js")
        assert (r.data, r.offset) == (b'"new"', at)
        monkeypatch.undo()
        assert await _last_messages(s, ("closed", "fork", "sub", "empty")) == {
            p: before[p] for p in ("closed", "fork", "sub", "empty")}


async def test_a_periodic_snapshot_keeps_the_last_message(tmp_path, monkeypatch, clock):
    """A snapshot written every SNAPSHOT_EVERY appends (no clean shutdown):
    a store opened from it knows the last message without a scan."""
    monkeypatch.setattr(FileBackedStreamStore, "SNAPSHOT_EVERY", 3)
    config = _file_config(Durability.ALWAYS)
    first = FileBackedStreamStore(tmp_path / "data", config, clock=clock)
    await create(first, "s", content_type=TEXT)
    starts = []
    for i in range(7):
        starts.append((await first.get("s")).next_offset)
        await append(first, "s", b"m%d" % i)
    (snap,) = _snapshots(tmp_path)
    state = msgpack.unpackb(snap.read_bytes())
    assert state["offset"] == starts[6] and state["last_msg"] == starts[5]
    first._unlock()  # no aclose: a crash (the dying process's lock goes with it)
    again = FileBackedStreamStore(tmp_path / "data", config, clock=clock)
    try:
        seen = count_record_reads(again, monkeypatch)
        r = await again.read_last("s")
        assert (r.data, r.offset) == (b"m6", starts[6])
        assert seen == [starts[6]]
    finally:
        monkeypatch.undo()
        await again.aclose()
        await first.aclose()
