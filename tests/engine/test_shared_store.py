"""What only the shared stores (Redis, PostgreSQL) must do, beyond the contract.

Two store objects on one backend and prefix stand for two instances. Each
test runs against Redis (``REDIS_URL``) and PostgreSQL (``DATABASE_URL``) and
is skipped, with the reason, when the variable is unset. asyncio only: the
drivers do not run on trio.

* appends racing from two instances: nothing lost, duplicated or reordered;
  producer fencing across instances;
* a dropped notification connection never strands a waiter;
* instances whose clocks disagree agree on expiry (the backend's clock);
  one sweeper at a time;
* the schema is versioned: created on first use, a newer one is refused
  untouched;
* a missing driver is named in the error, and the engine imports without one.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from support.stores import (
    URL_VARS,
    backend_url,
    open_shared_store,
    shared_backend,
    unique_prefix,
    until_parked,
)
from unbroken_engine import errors
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=list(URL_VARS))
def backend(request):
    """``(kind, url, prefix)``; the prefix's keys or schema are dropped after."""
    kind = request.param
    url = backend_url(kind)
    prefix = unique_prefix(kind, "sh")
    yield kind, url, prefix
    asyncio.run(shared_backend(kind, url, prefix).drop_everything())


async def open_instance(backend, **kw):
    return await open_shared_store(*backend, **kw)


async def values(store, path):
    r = await store.read(path)
    return json.loads(bytes(r.data))


# ---- two instances, one stream ----------------------------------------------------------------

async def test_appends_racing_from_two_instances_are_all_kept_once_in_order(backend):
    a, b = await open_instance(backend), await open_instance(backend)
    try:
        await a.create("race", CreateOptions(content_type="application/json"))
        acks = []

        async def writer(store, name, n):
            for i in range(n):
                r = await store.append("race", json.dumps({"w": name, "i": i}).encode())
                acks.append((r.next_offset, name, i))

        await asyncio.gather(*(writer(s, f"{tag}{k}", 15) for tag, s in (("a", a), ("b", b))
                               for k in range(6)))
        stored = await values(b, "race")
        assert len(stored) == len(acks) == 180
        assert len({o for o, _, _ in acks}) == 180, "two appends acknowledged at one offset"
        in_offset_order = [(w, i) for _, w, i in sorted(acks)]
        assert [(v["w"], v["i"]) for v in stored] == in_offset_order
        assert await values(a, "race") == stored
    finally:
        await a.aclose()
        await b.aclose()


async def test_one_producer_request_sent_to_both_instances_at_once_lands_once(backend):
    a, b = await open_instance(backend), await open_instance(backend)
    try:
        await a.create("p", CreateOptions(content_type="application/json"))
        for seq in range(10):
            body = json.dumps({"seq": seq}).encode()
            opts = AppendOptions(producer=Producer("prod", 0, seq))
            ra, rb = await asyncio.gather(a.append("p", body, opts), b.append("p", body, opts))
            assert {ra.outcome, rb.outcome} == {ProducerOutcome.ACCEPTED,
                                                ProducerOutcome.DUPLICATE}
            assert ra.next_offset == rb.next_offset
        assert [v["seq"] for v in await values(a, "p")] == list(range(10))
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_new_epoch_on_one_instance_fences_the_old_producer_on_the_other(backend):
    a, b = await open_instance(backend), await open_instance(backend)
    try:
        await a.create("f")
        await a.append("f", b"old0", AppendOptions(producer=Producer("p", 1, 0)))
        await b.append("f", b"new0", AppendOptions(producer=Producer("p", 2, 0)))
        with pytest.raises(errors.StaleEpoch) as info:
            await a.append("f", b"old1", AppendOptions(producer=Producer("p", 1, 1)))
        assert info.value.current_epoch == 2
        assert bytes((await b.read("f")).data) == b"old0new0"
    finally:
        await a.aclose()
        await b.aclose()


# ---- notifications -------------------------------------------------------------------------------

async def _kill_listener(kind: str, store) -> None:
    """Cut the instance's notification connection from the server side."""
    if kind == "redis":
        import redis.asyncio as aioredis

        admin = aioredis.Redis.from_url(store._b.url)
        try:  # only this store's subscriber: others may share this Redis
            mine = [c for c in await admin.client_list(_type="pubsub")
                    if c.get("name") == store._b.client_name]
            assert mine, "the store's subscriber connection is not named"
            for c in mine:
                await admin.client_kill_filter(_id=c["id"])
        finally:
            await admin.aclose()
    else:
        import psycopg

        pid = store._b._listen_conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(store._b.url, autocommit=True) as c:
            await c.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_dropped_notification_connection_never_strands_a_waiter(backend):
    kind = backend[0]
    a, b = await open_instance(backend), await open_instance(backend)
    try:
        tail = (await a.create("n", CreateOptions(data=b"x"))).meta.next_offset
        waiter = asyncio.ensure_future(b.wait_for_messages("n", tail, 30))
        await until_parked(b, "n")
        await _kill_listener(kind, b)
        await a.append("n", b"y")  # its notification may well be lost
        assert await asyncio.wait_for(waiter, 15) is True
        # and notifications flow again after the reconnect
        tail = (await b.get("n")).next_offset
        for _ in range(100):
            waiter = asyncio.ensure_future(b.wait_for_messages("n", tail, 30))
            await until_parked(b, "n")
            await a.append("n", b"z")
            assert await asyncio.wait_for(waiter, 15) is True
            if not b._b._listener.done():
                break
        t0 = time.monotonic()
        tail = (await b.get("n")).next_offset
        waiter = asyncio.ensure_future(b.wait_for_messages("n", tail, 30))
        await until_parked(b, "n")
        await a.append("n", b"w")
        assert await asyncio.wait_for(waiter, 15) is True
        assert not b._b._listener.done()
        print(f"[{kind}] woken {time.monotonic() - t0:.3f} s after the listener came back")
    finally:
        await a.aclose()
        await b.aclose()


async def test_waiters_woken_together_share_one_backend_read(backend):
    """Fifty live readers of one stream on one instance: an append wakes all
    of them, and they check the stream with one backend read, not fifty; a
    reader cancelled meanwhile does not disturb the others."""
    a, b = await open_instance(backend), await open_instance(backend)
    try:
        tail = (await a.create("fan", CreateOptions(data=b"x"))).meta.next_offset

        async def follow():  # as an SSE response does: wait, then read
            assert await b.wait_for_messages("fan", tail, 30)
            return bytes((await b.read("fan", tail)).data)

        waiters = [asyncio.ensure_future(follow()) for _ in range(50)]
        await until_parked(b, "fan", 50)
        loads = []
        real_load = b._b.load

        async def counting_load(path):
            loads.append(path)
            return await real_load(path)

        b._b.load = counting_load
        waiters[0].cancel()
        await a.append("fan", b"y")
        assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 15) == [b"y"] * 49
        assert len(loads) < 10, f"{len(loads)} backend reads for one notification"
    finally:
        await a.aclose()
        await b.aclose()


def test_record_cache_serves_only_runs_that_follow_each_other_and_evicts_the_oldest():
    from unbroken_engine.stores.shared.store import Rec, RecordCache

    cache = RecordCache(capacity=3 * (100 + 64))
    recs, at = [], 0
    for i in range(4):
        recs.append(Rec(at, 1, 1, b"", bytes([i]) * 100))
        at = recs[-1].next_offset
    cache.add("r", recs[:2])
    cache.add("r", recs[3:])  # a gap at recs[2]
    assert [r.offset for r in cache.run("r", 0, at)] == [0, recs[1].offset]
    assert cache.run("r", recs[2].offset, at) == []
    assert cache.run("other", 0, at) == []
    assert [r.offset for r in cache.run("r", 0, recs[1].offset)] == [0]  # stops at hi
    cache.add("r", [recs[2]])  # over capacity: the least recently used goes
    assert cache.size <= cache.capacity
    assert cache.run("r", recs[2].offset, at)[0] is recs[2]


# ---- time and the sweeper ---------------------------------------------------------------------

async def test_instances_whose_clocks_disagree_agree_on_expiry(backend):
    """A's clock is 20 s ahead, B's 20 s behind: both correct it by the
    backend's, so a stream that expires 10 s from now is there for both (A
    uncorrected would call it expired), and 15 s later for neither (B
    uncorrected would still see it). The machine's clock is a fake one that
    both instances read, so the 15 s pass without sleeping; the margins (5 s)
    only have to cover the real time between the instances' clock readings."""
    machine = [time.time()]
    a = await open_instance(backend, local_clock=lambda: machine[0] + 20)
    b = await open_instance(backend, local_clock=lambda: machine[0] - 20)
    try:
        expires = datetime.fromtimestamp(a._now() + 10, timezone.utc)
        await a.create("e", CreateOptions(expires_at=expires))
        assert (await b.get("e")).path == "e"
        assert (await a.get("e")).path == "e"
        machine[0] += 15
        for store in (a, b):
            with pytest.raises(errors.StreamNotFound):
                await store.get("e")
    finally:
        await a.aclose()
        await b.aclose()


async def test_only_one_instance_sweeps_at_a_time(backend):
    clock = [time.time()]
    a = await open_instance(backend, clock=lambda: clock[0])
    b = await open_instance(backend, clock=lambda: clock[0])
    try:
        for i in range(3):
            await a.create(f"t{i}", CreateOptions(ttl=5))
        await a.create("keep")
        clock[0] += 10
        async with a._b.sweep_lock() as mine:
            assert mine
            assert await b.sweep() == []  # A holds the lock: B leaves it to A
            async with b._b.sweep_lock() as also:
                assert not also
        assert await b.sweep() == ["t0", "t1", "t2"]
        assert await a.sweep() == []
        assert [m.path for m in await a.list_streams()] == ["keep"]
    finally:
        await a.aclose()
        await b.aclose()


# ---- schema versions ---------------------------------------------------------------------------

async def test_schema_is_created_on_first_use_and_a_newer_one_is_refused_untouched(backend):
    kind, url, prefix = backend
    store = await open_instance(backend)
    await store.create("kept", CreateOptions(data=b"data"))
    await store.aclose()
    if kind == "redis":
        import redis.asyncio as aioredis

        from unbroken_engine.stores.shared.redis import SCHEMA_VERSION

        r = aioredis.Redis.from_url(url)
        assert int(await r.get(prefix + "schema")) == SCHEMA_VERSION
        await r.set(prefix + "schema", SCHEMA_VERSION + 1)
        await r.aclose()
    else:
        import psycopg

        from unbroken_engine.stores.shared.postgres import SCHEMA_VERSION

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            q = f"SELECT value FROM {prefix}.meta WHERE key = 'schema_version'"
            assert int((await (await c.execute(q)).fetchone())[0]) == SCHEMA_VERSION
            await c.execute(f"UPDATE {prefix}.meta SET value = %s "
                            "WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(errors.BackendSchemaError, match="upgrade Unbroken"):
        await open_instance(backend)
    # nothing was changed: put the version back and the data is there
    if kind == "redis":
        r = aioredis.Redis.from_url(url)
        await r.set(prefix + "schema", SCHEMA_VERSION)
        await r.aclose()
    else:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            await c.execute(f"UPDATE {prefix}.meta SET value = %s "
                            "WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    store = await open_instance(backend)
    try:
        assert bytes((await store.read("kept")).data) == b"data"
    finally:
        await store.aclose()


async def test_two_instances_starting_together_create_the_schema_once(backend):
    stores = await asyncio.gather(*(open_instance(backend) for _ in range(4)))
    try:
        await stores[0].create("s", CreateOptions(data=b"1"))
        for s in stores:
            assert bytes((await s.read("s")).data) == b"1"
    finally:
        for s in stores:
            await s.aclose()


# ---- drivers are optional ------------------------------------------------------------------------

def test_the_engine_and_the_server_import_without_the_drivers(tmp_path):
    code = ("import sys; sys.modules['redis'] = None; sys.modules['psycopg'] = None; "
            "sys.modules['psycopg_pool'] = None; import unbroken_engine, unbroken_server.cli; "
            "from unbroken_engine import errors; from unbroken_engine.stores.opening import open_store\n"
            "import asyncio\n"
            "for url in ('redis://localhost/0', 'postgresql://localhost/x'):\n"
            "    try:\n"
            "        asyncio.run(open_store(url))\n"
            "    except errors.MissingExtra as exc:\n"
            "        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "pip install 'unbroken[redis]'" in out.stdout
    assert "pip install 'unbroken[postgres]'" in out.stdout
