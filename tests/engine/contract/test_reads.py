"""A6. Reads: binary and JSON bodies, pages, up-to-date, read-your-writes.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import json

import anyio
import pytest

from support.contract import JSON, TEXT, append, body, create, jbody, read_pages

pytestmark = pytest.mark.anyio


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
