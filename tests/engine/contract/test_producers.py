"""A4. Idempotent producers: epochs, sequence numbers, duplicates.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import anyio
import pytest

from support.contract import ACCEPTED, DUPLICATE, JSON, TEXT, P, append, body, create, jbody
from unbroken_engine import errors

pytestmark = pytest.mark.anyio


async def test_producer_first_seq_zero_is_accepted(store):
    """A4.3 (L5928)."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(0, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 0 and r.producer_seq == 0
    assert r.next_offset == (await store.get("s")).next_offset > 0


async def test_producer_first_write_may_use_any_epoch(store):
    """A4.3: no state, seq 0, epoch 2 -> accepted."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(2, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 2


async def test_producer_first_seq_nonzero_is_a_gap(store):
    """A4.3 (reference): no state and seq > 0 -> gap, expected 0."""
    await create(store, "s")
    with pytest.raises(errors.ProducerSeqGap) as exc:
        await append(store, "s", b"a", producer=P(0, 3))
    assert exc.value.expected == 0 and exc.value.received == 3
    assert (await store.get("s")).next_offset == 0


async def test_producer_consecutive_seqs_are_accepted(store):
    """A4.3 (L5954, L6424): each accept echoes its own seq."""
    await create(store, "s")
    for seq in range(3):
        r = await append(store, "s", b"%d" % seq, producer=P(0, seq))
        assert r.outcome is ACCEPTED and r.producer_seq == seq
    assert await body(store, "s") == b"012"


async def test_producer_duplicate_returns_highest_accepted_seq(store):
    """A4.3 (L6424): a retry of seq 1 after 2 -> DUPLICATE with producer_seq 2."""
    await create(store, "s")
    for seq in range(3):
        await append(store, "s", b"%d" % seq, producer=P(0, seq))
    tail = (await store.get("s")).next_offset
    r = await append(store, "s", b"1", producer=P(0, 1))
    assert r.outcome is DUPLICATE
    assert r.producer_seq == 2 and r.producer_epoch == 0
    assert r.next_offset == tail


async def test_producer_duplicate_appends_no_data(store):
    """A4.5 (L6003, L6682)."""
    await create(store, "s")
    await append(store, "s", b"first", producer=P(0, 0))
    assert (await append(store, "s", b"first", producer=P(0, 0))).outcome is DUPLICATE
    await append(store, "s", b"second", producer=P(0, 1))
    assert (await append(store, "s", b"other body", producer=P(0, 1))).outcome is DUPLICATE
    assert await body(store, "s") == b"firstsecond"


async def test_producer_duplicate_does_not_corrupt_state(store):
    """A4.3 (L6375): a duplicate of seq 0, then seq 1 is accepted."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"a", producer=P(0, 0))
    r = await append(store, "s", b"b", producer=P(0, 1))
    assert r.outcome is ACCEPTED and r.producer_seq == 1


async def test_producer_json_duplicate_appends_no_data(store):
    """A4.5 (L6864)."""
    await create(store, "j", content_type=JSON)
    await append(store, "j", b'{"id":1}', producer=P(0, 0))
    await append(store, "j", b'{"id":1}', producer=P(0, 0))
    await append(store, "j", b'{"id":2}', producer=P(0, 1))
    assert await jbody(store, "j") == [{"id": 1}, {"id": 2}]


async def test_producer_seq_gap_reports_expected_and_received(store):
    """A4.3 (L6122)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    with pytest.raises(errors.ProducerSeqGap) as exc:
        await append(store, "s", b"c", producer=P(0, 2))
    assert exc.value.expected == 1 and exc.value.received == 2
    assert await body(store, "s") == b"a"


async def test_producer_stale_epoch_is_fenced_with_the_current_epoch(store):
    """A4.3 (L6086, L6517)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(1, 0))
    with pytest.raises(errors.StaleEpoch) as exc:
        await append(store, "s", b"z", producer=P(0, 0))
    assert exc.value.current_epoch == 1
    assert await body(store, "s") == b"a"


async def test_producer_split_brain_zombie_is_fenced(store):
    """A4.3 (L6467): (0,0), (1,0), then the old epoch's (0,1) -> StaleEpoch(1)."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"b", producer=P(1, 0))
    with pytest.raises(errors.StaleEpoch) as exc:
        await append(store, "s", b"zombie", producer=P(0, 1))
    assert exc.value.current_epoch == 1
    assert await body(store, "s") == b"ab"


async def test_producer_new_epoch_must_start_at_seq_zero(store):
    """A4.3 (L6159): (1,5) after (0,0) -> InvalidEpochSeq."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    with pytest.raises(errors.InvalidEpochSeq):
        await append(store, "s", b"b", producer=P(1, 5))
    assert await body(store, "s") == b"a"


async def test_producer_new_epoch_at_seq_zero_is_accepted(store):
    """A4.3 (L6039): the new epoch begins; its seqs start over."""
    await create(store, "s")
    await append(store, "s", b"a", producer=P(0, 0))
    await append(store, "s", b"b", producer=P(0, 1))
    r = await append(store, "s", b"c", producer=P(1, 0))
    assert r.outcome is ACCEPTED and r.producer_epoch == 1 and r.producer_seq == 0
    assert (await append(store, "s", b"d", producer=P(1, 1))).outcome is ACCEPTED
    assert (await append(store, "s", b"d", producer=P(1, 1))).outcome is DUPLICATE
    assert await body(store, "s") == b"abcd"


async def test_producers_are_independent_per_id(store):
    """A4.4 (L6313, L6736)."""
    await create(store, "s")
    for seq in range(2):
        for pid in "AB":
            r = await append(store, "s", b"%s%d" % (pid.encode(), seq), producer=P(0, seq, pid))
            assert r.outcome is ACCEPTED
    assert await body(store, "s") == b"A0B0A1B1"


async def test_producer_state_is_per_stream(store):
    await create(store, "s1")
    await create(store, "s2")
    assert (await append(store, "s1", b"a", producer=P(0, 0))).outcome is ACCEPTED
    assert (await append(store, "s2", b"a", producer=P(0, 0))).outcome is ACCEPTED


async def test_producer_duplicate_is_checked_before_stream_seq(store):
    """A4.9 (L6552, L6576): an identical retry with Stream-Seq -> DUPLICATE, not a conflict."""
    await create(store, "s")
    r = await append(store, "s", b"a", producer=P(0, 0), seq="app-seq-001")
    assert r.outcome is ACCEPTED
    r = await append(store, "s", b"a", producer=P(0, 0), seq="app-seq-001")
    assert r.outcome is DUPLICATE
    assert await body(store, "s") == b"a"


async def test_producer_state_is_only_advanced_by_successful_appends(store):
    """A3.9 (L6238): rejected appends leave the producer where it was."""
    await create(store, "j", content_type=JSON)
    with pytest.raises(errors.InvalidJSON):
        await append(store, "j", b"{bad", producer=P(0, 0))
    with pytest.raises(errors.EmptyJSONArray):
        await append(store, "j", b"[]", producer=P(0, 0))
    with pytest.raises(errors.ContentTypeMismatch):
        await append(store, "j", b"1", content_type=TEXT, producer=P(0, 0))
    assert (await append(store, "j", b"1", producer=P(0, 0), seq="1")).outcome is ACCEPTED
    with pytest.raises(errors.SequenceConflict):
        await append(store, "j", b"2", producer=P(0, 1), seq="1")
    r = await append(store, "j", b"2", producer=P(0, 1), seq="2")
    assert r.outcome is ACCEPTED and r.producer_seq == 1
    assert await jbody(store, "j") == [1, 2]


async def test_producer_append_to_missing_stream_is_not_found(store):
    """A4.6 (L6966)."""
    with pytest.raises(errors.StreamNotFound):
        await append(store, "missing", b"a", producer=P(0, 0))


async def test_concurrent_identical_producer_requests_append_once(store):
    """A4.7: retries racing each other -> one accept, the rest duplicates."""
    await create(store, "s")
    outcomes = []

    async def send():
        outcomes.append((await append(store, "s", b"once", producer=P(0, 0))).outcome)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(send)
    assert outcomes.count(ACCEPTED) == 1 and outcomes.count(DUPLICATE) == 4
    assert await body(store, "s") == b"once"


async def test_duplicate_racing_its_original_reports_the_stored_tail(store):
    """A4.3, A1.5: a DUPLICATE says "already stored": it must not be answered
    before the original append is (durably) stored, and its tail covers it."""
    await create(store, "s")
    results = []

    async def send():
        r = await append(store, "s", b"once", producer=P(0, 0))
        results.append((r, (await store.get("s")).next_offset))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(send)
    tail = (await store.get("s")).next_offset
    assert tail > 0
    for r, seen in results:
        assert (r.outcome, r.next_offset, seen) in ((ACCEPTED, tail, tail), (DUPLICATE, tail, tail))
