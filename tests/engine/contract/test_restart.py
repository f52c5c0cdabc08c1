"""Restart (the file-backed store only): close a store, open a new one on the same directory.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import msgpack
import pytest

from support.contract import (
    ACCEPTED,
    DUPLICATE,
    JSON,
    LOOKALIKE_PATHS,
    TEXT,
    P,
    append,
    body,
    count_record_reads,
    create,
    jbody,
    last,
    read_pages,
    utc_in,
)
from support.stores import file_config
from unbroken_engine import errors
from unbroken_engine.log.segmented import Durability
from unbroken_engine.stores.file import SNAPSHOT_NAME, FileBackedStreamStore

pytestmark = pytest.mark.anyio


async def test_restart_preserves_streams_data_and_offsets(open_file_store):
    async with open_file_store() as s:
        await create(s, "bin", content_type=TEXT, data=b"one")
        mid = (await append(s, "bin", b"two")).next_offset
        tail = (await append(s, "bin", b"three")).next_offset
        await create(s, "js", content_type=JSON, data=b"[1,2]")
        await append(s, "js", b"3")
        await create(s, "big")
        for i in range(20):
            await append(s, "big", bytes([i]) * 9000)
    async with open_file_store() as s:
        assert s.recovery.streams == 3
        assert (await s.get("bin")).next_offset == tail
        assert (await s.get("bin")).content_type == TEXT
        assert await body(s, "bin") == b"onetwothree"
        assert await body(s, "bin", mid) == b"three"
        assert await jbody(s, "js") == [1, 2, 3]
        pages = await read_pages(s, "big", max_bytes=40_000)
        assert b"".join(bytes(p.data) for p in pages) == b"".join(
            bytes([i]) * 9000 for i in range(20))
        nxt = (await append(s, "bin", b"four")).next_offset
        assert nxt > tail
        assert await body(s, "bin", tail) == b"four"


async def test_restart_preserves_producer_state(open_file_store):
    async with open_file_store() as s:
        await create(s, "s")
        await append(s, "s", b"a", producer=P(0, 0))
        await append(s, "s", b"b", producer=P(1, 0))
        await append(s, "s", b"c", producer=P(1, 1))
        await append(s, "s", b"q", producer=P(0, 0, "q"))
    async with open_file_store() as s:
        r = await append(s, "s", b"c", producer=P(1, 1))
        assert r.outcome is DUPLICATE and r.producer_seq == 1
        with pytest.raises(errors.StaleEpoch) as exc:
            await append(s, "s", b"z", producer=P(0, 1))
        assert exc.value.current_epoch == 1
        with pytest.raises(errors.ProducerSeqGap):
            await append(s, "s", b"z", producer=P(1, 5))
        assert (await append(s, "s", b"d", producer=P(1, 2))).outcome is ACCEPTED
        assert (await append(s, "s", b"q", producer=P(0, 0, "q"))).outcome is DUPLICATE
        assert await body(s, "s") == b"abcqd"


async def test_restart_preserves_stream_seq(open_file_store):
    async with open_file_store() as s:
        await create(s, "s")
        await append(s, "s", b"a", seq="005")
        await append(s, "s", b"b")
    async with open_file_store() as s:
        with pytest.raises(errors.SequenceConflict):
            await append(s, "s", b"x", seq="005")
        await append(s, "s", b"c", seq="006")
        assert await body(s, "s") == b"abc"


async def test_restart_preserves_the_closed_flag(open_file_store):
    async with open_file_store() as s:
        await create(s, "closed", data=b"a")
        tail = (await append(s, "closed", b"b", producer=P(0, 0), close=True)).next_offset
        await create(s, "born_closed", closed=True)
        await create(s, "open", data=b"o")
    async with open_file_store() as s:
        assert (await s.get("closed")).closed and (await s.get("born_closed")).closed
        assert not (await s.get("open")).closed
        with pytest.raises(errors.StreamClosed) as exc:
            await append(s, "closed", b"c")
        assert exc.value.next_offset == tail
        r = await append(s, "closed", b"other", producer=P(0, 0), close=True)
        assert r.outcome is DUPLICATE and r.closed
        rr = await s.read("closed")
        assert bytes(rr.data) == b"ab" and rr.closed


async def test_restart_preserves_forks_and_their_references(open_file_store):
    async with open_file_store() as s:
        await create(s, "src", content_type=TEXT, data=b"hello")
        await create(s, "fork", fork_from="src", fork_offset=0, fork_sub_offset=3, data=b"XY")
        await create(s, "fork2", fork_from="fork")
        await append(s, "src", b" world")
    async with open_file_store() as s:
        assert s.recovery.streams == 3
        assert await body(s, "fork") == b"helXY"
        assert await body(s, "fork2") == b"helXY"
        assert await body(s, "src") == b"hello world"
        assert (await s.get("fork")).content_type == TEXT
        assert (await create(s, "fork", fork_from="src", fork_offset=0,
                             fork_sub_offset=3)).created is False
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "fork", fork_from="src", fork_offset=0, fork_sub_offset=2)
        await s.delete("src")  # forks still reference it
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("src")
        await s.delete("fork")
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("fork")
        await s.delete("fork2")
        for p in ("src", "fork", "fork2"):
            with pytest.raises(errors.StreamNotFound):
                await s.get(p)


async def test_restart_preserves_the_soft_deleted_state(open_file_store):
    async with open_file_store() as s:
        await create(s, "src", data=b"source")
        await create(s, "fork", fork_from="src")
        await s.delete("src")
    async with open_file_store() as s:
        assert s.recovery.streams == 2
        with pytest.raises(errors.StreamSoftDeleted):
            await s.get("src")
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "src")
        assert await body(s, "fork") == b"source"
        assert [m.path for m in await s.list_streams()] == ["fork"]
        await s.delete("fork")
        with pytest.raises(errors.StreamNotFound):
            await s.get("src")
    async with open_file_store() as s:
        assert s.recovery.streams == 0
        assert (await create(s, "src")).created is True


async def test_restart_preserves_the_configuration(open_file_store, clock):
    at = utc_in(clock, 3600)
    async with open_file_store() as s:
        await create(s, "ttl", content_type="Application/JSON; charset=utf-8", ttl=600)
        await create(s, "abs", expires_at=at)
    async with open_file_store() as s:
        meta = await s.get("ttl")
        assert meta.content_type == "Application/JSON; charset=utf-8" and meta.ttl == 600
        assert (await create(s, "ttl", content_type=JSON, ttl=600)).created is False
        with pytest.raises(errors.ConfigMismatch):
            await create(s, "ttl", content_type=JSON, ttl=601)
        assert (await s.get("abs")).expires_at == at
        assert (await create(s, "abs", expires_at=at)).created is False
        await append(s, "ttl", b"[1]")
        assert await jbody(s, "ttl") == [1]


async def test_restart_keeps_expiring_streams(open_file_store, clock):
    async with open_file_store() as s:
        await create(s, "ttl", ttl=60)
        await create(s, "abs", expires_at=utc_in(clock, 60))
        await create(s, "keep")
    clock.advance(120)
    async with open_file_store() as s:
        assert [m.path for m in await s.list_streams()] == ["keep"]
        assert sorted(await s.sweep()) == ["abs", "ttl"]


async def test_restart_after_delete_keeps_the_stream_deleted(open_file_store):
    async with open_file_store() as s:
        await create(s, "s", data=b"x")
        await s.delete("s")
    async with open_file_store() as s:
        assert s.recovery.streams == 0
        with pytest.raises(errors.StreamNotFound):
            await s.get("s")


async def test_restart_keeps_lookalike_paths_apart(open_file_store):
    async with open_file_store() as s:
        for i, path in enumerate(LOOKALIKE_PATHS):
            await create(s, path, data=str(i).encode())
    async with open_file_store() as s:
        assert s.recovery.streams == len(LOOKALIKE_PATHS) and not s.recovery.corrupt
        for i, path in enumerate(LOOKALIKE_PATHS):
            assert await body(s, path) == str(i).encode()


async def _last_messages(s, paths):
    return {p: await s.read_last(p) for p in paths}


def _snapshots(tmp_path):
    return sorted((tmp_path / "data").glob("*/" + SNAPSHOT_NAME))


LAST_PATHS = ("bin", "js", "closed", "fork", "sub", "empty")


async def _write_last_fixture(s):
    await create(s, "bin", content_type=TEXT, data=b"one")
    for i in range(20):
        await append(s, "bin", b"two %d" % i)
    await create(s, "js", content_type=JSON, data=b"[1]")
    await append(s, "js", b'[2, {"three": 3}]')
    await create(s, "closed", content_type=TEXT, data=b"x")
    await append(s, "closed", b"last", close=True)
    await create(s, "fork", fork_from="bin", fork_offset=0)  # empty at "one"'s start
    await create(s, "sub", fork_from="js", fork_offset=0, fork_sub_offset=1)
    await create(s, "empty")


async def test_restart_keeps_the_last_message(open_file_store, tmp_path, monkeypatch):
    """From the snapshot written at shutdown, then from a full replay."""
    async with open_file_store() as s:
        await _write_last_fixture(s)
        before = await _last_messages(s, LAST_PATHS)
    assert before["bin"].data == b"two 19" and before["js"].data == b'{"three": 3}'
    assert before["fork"].found is False and before["sub"].data == b"1"
    assert _snapshots(tmp_path)
    async with open_file_store() as s:
        seen = count_record_reads(s, monkeypatch)
        assert await _last_messages(s, LAST_PATHS) == before
        assert seen == [before[p].offset for p in ("bin", "js", "closed", "sub")]
        monkeypatch.undo()
    for snap in _snapshots(tmp_path):
        snap.unlink()  # no snapshot: every record is replayed
    async with open_file_store() as s:
        assert await _last_messages(s, LAST_PATHS) == before
        await append(s, "bin", b"after")
        assert (await last(s, "bin")).data == b"after"


async def test_restart_from_a_snapshot_without_the_last_message(open_file_store, tmp_path,
                                                                monkeypatch):
    """A snapshot written before read_last existed lacks ``last_msg``: the
    first read_last of such a stream scans its log once, later ones do not."""
    async with open_file_store() as s:
        await _write_last_fixture(s)
        before = await _last_messages(s, LAST_PATHS)
    for snap in _snapshots(tmp_path):
        state = msgpack.unpackb(snap.read_bytes())
        assert "last_msg" in state
        del state["last_msg"]
        snap.write_bytes(msgpack.packb(state))
    async with open_file_store() as s:
        seen = count_record_reads(s, monkeypatch)
        assert (await s.read_last("bin")) == before["bin"]
        assert len(seen) > 20  # the scan: every record of "bin", once
        seen.clear()
        assert (await s.read_last("bin")) == before["bin"]
        assert seen == [before["bin"].offset]
        # an append before the first read_last: still right
        at = (await s.get("js")).next_offset
        await append(s, "js", b'"new"')
        r = await s.read_last("js")
        assert (r.data, r.offset) == (b'"new"', at)
        monkeypatch.undo()
        assert await _last_messages(s, ("closed", "fork", "sub", "empty")) == {
            p: before[p] for p in ("closed", "fork", "sub", "empty")}


async def test_a_periodic_snapshot_keeps_the_last_message(tmp_path, monkeypatch, clock):
    """A snapshot written every SNAPSHOT_EVERY appends (no clean shutdown):
    a store opened from it knows the last message without a scan."""
    monkeypatch.setattr(FileBackedStreamStore, "SNAPSHOT_EVERY", 3)
    config = file_config(Durability.ALWAYS)
    first = FileBackedStreamStore(tmp_path / "data", config, clock=clock)
    await create(first, "s", content_type=TEXT)
    starts = []
    for i in range(7):
        starts.append((await first.get("s")).next_offset)
        await append(first, "s", b"m%d" % i)
    (snap,) = _snapshots(tmp_path)
    state = msgpack.unpackb(snap.read_bytes())
    assert state["offset"] == starts[6] and state["last_msg"] == starts[5]
    first._unlock()  # no aclose: a crash (the dying process's lock goes with it)
    again = FileBackedStreamStore(tmp_path / "data", config, clock=clock)
    try:
        seen = count_record_reads(again, monkeypatch)
        r = await again.read_last("s")
        assert (r.data, r.offset) == (b"m6", starts[6])
        assert seen == [starts[6]]
    finally:
        monkeypatch.undo()
        await again.aclose()
        await first.aclose()
