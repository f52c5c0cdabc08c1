"""A5. Close: close-only and final appends, idempotent closes.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import anyio
import pytest

from support.contract import ACCEPTED, DUPLICATE, JSON, TEXT, P, append, body, create, read_pages
from unbroken_engine import errors
from unbroken_engine.protocol.offsets import NOW

pytestmark = pytest.mark.anyio


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
