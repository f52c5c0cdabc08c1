"""A9. Delete: hard and soft (a forked source).

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import pytest

from support.contract import JSON, TEXT, append, body, create, folder_of, utc_in
from unbroken_engine import errors
from unbroken_engine.protocol.offsets import NOW
from unbroken_engine.stores.file import LOCK_NAME

pytestmark = pytest.mark.anyio


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
