"""A3. Append: content types, empty bodies, JSON appends, Stream-Seq.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import anyio
import pytest

from support.contract import ACCEPTED, JSON, TEXT, P, append, body, create, jbody, last
from unbroken_engine import errors

pytestmark = pytest.mark.anyio


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
