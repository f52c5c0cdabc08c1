"""read_last: the last message (an extension, docs/protocol-choices.md).

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import json

import pytest

from support.contract import BIN, JSON, TEXT, append, body, count_record_reads, create, last
from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.stores.base import BaseStreamStore

pytestmark = pytest.mark.anyio


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
