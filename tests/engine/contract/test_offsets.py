"""A1. Offsets (docs/conformance-rules.md).

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import pytest

from support.contract import JSON, append, body, create
from unbroken_engine import errors
from unbroken_engine.protocol.offsets import NOW, START, ZERO, format_offset, parse_offset

pytestmark = pytest.mark.anyio


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
