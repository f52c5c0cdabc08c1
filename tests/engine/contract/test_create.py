"""A2. Create: idempotent re-creates, content types, initial data, paths.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import json
from datetime import timedelta, timezone

import anyio
import pytest

from support.contract import BIN, JSON, LOOKALIKE_PATHS, TEXT, append, body, create, jbody, utc_in
from unbroken_engine import errors
from unbroken_engine.protocol.media import DEFAULT_CONTENT_TYPE
from unbroken_engine.protocol.rules import MAX_PATH_BYTES

pytestmark = pytest.mark.anyio


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


async def test_distinct_paths_are_distinct_streams(store):
    """Paths that encode alike on disk never share a stream."""
    for i, path in enumerate(LOOKALIKE_PATHS):
        await create(store, path, data=str(i).encode())
    for i, path in enumerate(LOOKALIKE_PATHS):
        assert await body(store, path) == str(i).encode()
    assert [m.path for m in await store.list_streams()] == sorted(LOOKALIKE_PATHS)
