"""Load (``-m slow``): many live readers and many idle connections on one
in-process server over real sockets. These check outcomes and a generous
memory bound, never timing.
"""
from __future__ import annotations

import json
import resource

import anyio
import pytest

from unbroken_engine.stores.interface import CreateOptions

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

S = "/v1/stream/"
READERS = 1000
MESSAGES = 20
IDLE = 2000


def ensure_fds(needed: int) -> None:
    """Raise RLIMIT_NOFILE to ``needed`` (both ends of every connection live in
    this process), or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed} file descriptors needed")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        pytest.skip(f"cannot raise RLIMIT_NOFILE to {needed}: {exc}")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no VmRSS in /proc/self/status")


# ~18 s per backend on 2 cores (both ends in one process); it passes on trio
# too, but once is enough for a load bound: asyncio is what `unbroken serve` runs.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_1000_sse_readers_each_get_every_message_once_in_order(make_ctx, run_server):
    ensure_fds(2 * READERS + 200)
    ctx = make_ctx(shutdown_grace=5)
    await ctx.store.create("fan", CreateOptions(content_type="application/json"))
    async with run_server(ctx) as server:
        results: list[list] = []
        subscribed = 0
        all_subscribed = anyio.Event()
        limit = anyio.Semaphore(200)  # pace the connects (listen backlog)

        async def reader():
            nonlocal subscribed
            async with limit:
                client = await server.connect()
                sse = await client.open_sse(S + "fan?offset=-1&live=sse")
                await sse.next_events(timeout=60)  # the first control: subscribed
            subscribed += 1
            if subscribed == READERS:
                all_subscribed.set()
            values = []
            try:
                with anyio.fail_after(60):
                    while len(values) < MESSAGES:
                        for ev in await sse.next_events(timeout=60):
                            if ev.event == "data":
                                values += json.loads(ev.data)
                results.append(values)
            finally:
                await client.aclose()

        async with anyio.create_task_group() as tg:
            for _ in range(READERS):
                tg.start_soon(reader)
            with anyio.fail_after(60):
                await all_subscribed.wait()
            writer = await server.connect()
            for i in range(MESSAGES):
                r = await writer.request("POST", S + "fan", [("Content-Type", "application/json")],
                                         json.dumps({"n": i}).encode())
                assert r.status == 204
            await writer.aclose()
        assert len(results) == READERS
        expected = [{"n": i} for i in range(MESSAGES)]
        bad = [v for v in results if v != expected]
        assert not bad, f"{len(bad)} readers got something else, e.g. {bad[0]}"


async def test_2000_idle_keep_alive_connections(make_ctx, run_server):
    ensure_fds(2 * IDLE + 200)
    ctx = make_ctx(shutdown_grace=5)
    async with run_server(ctx) as server:
        # warm up allocator and code paths before measuring
        warm = await server.connect()
        assert (await warm.request("GET", "/health")).status == 200
        await warm.aclose()
        before = rss_bytes()
        clients = []
        limit = anyio.Semaphore(200)

        async def open_one():
            async with limit:
                c = await server.connect()
                r = await c.request("GET", "/health")
                assert r.status == 200
                clients.append(c)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(IDLE):
                    tg.start_soon(open_one)
        assert len(clients) == IDLE
        with anyio.fail_after(30):
            while ctx.connections < IDLE:
                await anyio.sleep(0.01)
        # a normal request is still served while they all idle
        r = await server.request("PUT", S + "still-served", [("Content-Type", "text/plain")])
        assert r.status == 201
        assert ctx.connections >= IDLE
        # the idle connections are all still open and usable
        for c in clients[::100]:
            assert (await c.request("GET", "/health")).status == 200
        growth = rss_bytes() - before  # client and server ends both live in this process
        print(f"RSS growth for {IDLE} idle connections: {growth / 2**20:.1f} MiB")
        assert growth < 200 << 20, f"RSS grew by {growth >> 20} MiB for {IDLE} idle connections"
        for c in clients:
            await c.aclose()
        with anyio.fail_after(30):
            while ctx.connections:
                await anyio.sleep(0.01)
