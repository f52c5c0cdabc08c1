"""A8. TTL and Expires-At, on a fake clock.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import pytest

from support.contract import JSON, TEXT, append, body, create, folder_of, jbody, utc_in
from unbroken_engine import errors
from unbroken_engine.protocol.offsets import NOW
from unbroken_engine.stores.file import LOCK_NAME
from unbroken_engine.stores.interface import Producer

pytestmark = pytest.mark.anyio


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
