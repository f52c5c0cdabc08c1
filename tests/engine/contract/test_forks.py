"""A10. Forks.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import pytest

from support.contract import (
    ACCEPTED,
    DUPLICATE,
    JSON,
    TEXT,
    P,
    append,
    body,
    create,
    jbody,
    read_pages,
    utc_in,
)
from unbroken_engine import errors
from unbroken_engine.protocol.offsets import ZERO, parse_offset

pytestmark = pytest.mark.anyio


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
