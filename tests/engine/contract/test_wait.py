"""A7. wait_for_messages: woken by appends, closes, deletes; never by another stream.

Part of the store contract suite: see conftest.py here.
"""
from __future__ import annotations

import anyio
import pytest

from support.contract import append, body, create
from support.stores import until_parked
from unbroken_engine import errors

pytestmark = pytest.mark.anyio


#: a woken waiter's timeout: only a waiter that is never woken (a bug) reaches it
WAKE_TIMEOUT = 30


async def _waiter(store, path, offset, timeout, out):
    try:
        out["result"] = await store.wait_for_messages(path, offset, timeout)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        out["error"] = exc


async def wait_without_parking(store, path, offset):
    """``wait_for_messages(path, offset)`` with an hour's timeout, which must
    return (or raise) without parking: its result, or a failed assertion
    as soon as it parks."""
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, path, offset, 3600, out)
        while not out and not store.waiting(path):
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    assert out, "wait_for_messages parked although it had something to return"
    if "error" in out:
        raise out["error"]
    return out["result"]


async def test_wait_returns_false_after_the_timeout(store):
    """A7.2: no data -> False once the timeout passes, not before. The
    deadline is on the event loop's clock, the one the store's wait runs
    on, so a slow machine only makes the wait longer."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    t0 = anyio.current_time()
    assert await store.wait_for_messages("s", tail, 0.05) is False
    assert anyio.current_time() - t0 >= 0.05 - 1e-6
    assert store.waiting("s") == 0


async def test_wait_returns_at_once_when_data_follows_the_offset(store):
    """A7.1 (L2326)."""
    await create(store, "s", data=b"x")
    assert await wait_without_parking(store, "s", 0) is True


async def test_wait_is_woken_by_an_append(store):
    """A7.2, A7.4 (L529, L1704): woken, and the new bytes are readable from the offset."""
    tail = (await create(store, "s", data=b"old")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await append(store, "s", b"new data")
    assert out.get("result") is True and store.waiting("s") == 0
    assert await body(store, "s", tail) == b"new data"


async def test_wait_is_woken_by_a_close(store):
    """A7.3: a close while waiting ends the wait; the read then reports closed."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.close_stream("s")
    assert out.get("result") is True
    r = await store.read("s", tail)
    assert r.closed and r.up_to_date and bytes(r.data) == b""


async def test_wait_is_woken_by_a_final_append_with_its_data(store):
    """A7.5 (L7648): the final data is readable when the close wakes the waiter."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await append(store, "s", b"final", close=True)
    assert out.get("result") is True
    r = await store.read("s", tail)
    assert bytes(r.data) == b"final" and r.closed


async def test_wait_on_closed_stream_at_the_tail_returns_at_once(store):
    """A7.3 (L7459)."""
    res = await create(store, "s", data=b"x", closed=True)
    assert await wait_without_parking(store, "s", res.meta.next_offset) is True


async def test_wait_on_missing_stream_is_not_found_at_once(store):
    """A1.7 (L1789)."""
    with pytest.raises(errors.StreamNotFound):
        await wait_without_parking(store, "missing", 0)


async def test_wait_raises_not_found_when_the_stream_is_deleted(store):
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.delete("s")
    assert isinstance(out.get("error"), errors.StreamNotFound), out


async def test_wait_raises_soft_deleted_when_the_stream_is_soft_deleted(store):
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    await create(store, "f", fork_from="s")
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "s")
        await store.delete("s")
    assert isinstance(out.get("error"), errors.StreamSoftDeleted), out


async def sleeps_through_an_append(store, path, offset, other, data):
    """Park a waiter on ``path`` and a probe on ``other``, append ``data`` to
    ``other``; once the probe is woken (its notification was delivered, and
    notifications arrive in order) the waiter must still be parked, not
    returned."""
    probe_offset = (await store.get(other)).next_offset
    out, probe = {}, {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, path, offset, WAKE_TIMEOUT, out)
        tg.start_soon(_waiter, store, other, probe_offset, WAKE_TIMEOUT, probe)
        await until_parked(store, path)
        await until_parked(store, other)
        await append(store, other, data)
        with anyio.fail_after(WAKE_TIMEOUT):
            while not probe:
                await anyio.sleep(0.001)
        await anyio.wait_all_tasks_blocked()
        assert probe.get("result") is True, probe
        assert not out and store.waiting(path) == 1, out
        tg.cancel_scope.cancel()


async def test_wait_is_not_woken_by_another_streams_append(store):
    tail = (await create(store, "a", data=b"x")).meta.next_offset
    await create(store, "b")
    await sleeps_through_an_append(store, "a", tail, "b", b"y")


async def test_fork_waiter_is_not_woken_by_a_source_append(store):
    """A7.2, A7.4 (L10044)."""
    await create(store, "src", data=b"source")
    tail = (await create(store, "fork", fork_from="src")).meta.next_offset
    await sleeps_through_an_append(store, "fork", tail, "src", b" source new")


async def test_fork_waiter_is_woken_by_a_fork_append(store):
    """A7.2 (L10044): body exactly the fork's new data."""
    await create(store, "src", data=b"source")
    tail = (await create(store, "fork", fork_from="src")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "fork", tail, WAKE_TIMEOUT, out)
        await until_parked(store, "fork")
        await append(store, "src", b" source new")
        await append(store, "fork", b" fork new")
    assert out.get("result") is True
    assert await body(store, "fork", tail) == b" fork new"


async def test_wait_in_a_forks_inherited_range_returns_at_once(store):
    """A7.1 (L10000)."""
    await create(store, "src", data=b"inherited")
    await create(store, "fork", fork_from="src")
    assert await wait_without_parking(store, "fork", 0) is True


async def test_aclose_wakes_waiters(store):
    """StreamStore.aclose: every parked waiter wakes (server shutdown) and
    returns without data, long before its timeout."""
    tail = (await create(store, "s", data=b"x")).meta.next_offset
    out = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_waiter, store, "s", tail, 3600, out)
        await until_parked(store, "s")
        await store.aclose()
        await anyio.wait_all_tasks_blocked()
        assert out, "a parked waiter was not woken by aclose()"
    assert out.get("result") is not True
