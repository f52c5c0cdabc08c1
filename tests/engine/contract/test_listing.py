"""list_streams, has, current_offset.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import pytest

from support.contract import TEXT, create

pytestmark = pytest.mark.anyio


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
