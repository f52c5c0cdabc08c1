"""Flow, Channel and Signal, in each connection mode.

Every behaviour runs against the three modes of ``connect()``:
``inprocess`` (the file store in this process), ``embedded`` (the server
``connect()`` starts in a background thread) and ``external`` (an
``unbroken serve`` subprocess, reached as a remote server). Streams get
unique names, so tests share one external server per module.

Beyond that: reconnects (a server restarted under a live ``subscribe``),
concurrent ``Signal.update`` from two processes, calls that crashed half-way
(a process that dies inside the handler), exactly-once appends when a
response is lost, and the PostgreSQL-backed flow (``.db()``).

No timing assertions: every wait has a generous liveness bound.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import textwrap
import uuid
from typing import TypedDict

import anyio
import httpx
import pytest

from unbroken_server.onepipe import (
    Channel,
    DataDirInUse,
    Flow,
    NoRuntime,
    OnePipeError,
    Schema,
    SchemaError,
    Signal,
    StreamClosed,
    Unavailable,
    connect,
    current_runtime,
)
from unbroken_server.onepipe.runtime import Runtime
from unbroken_server.onepipe.transport import HttpTransport, Retry, _sse_lines

pytestmark = pytest.mark.anyio

MODES = ["inprocess", "embedded", "external"]
TIMEOUT = 30.0  # liveness bound for any wait (never a timing assertion)


@pytest.fixture
def anyio_backend():
    """asyncio only: the modes under test do not depend on the loop (the
    engine's and the server's trio support is tested in their own suites)."""
    return "asyncio"


def _env() -> dict:
    """This environment without the shared-store variables (file store) and
    without OnePipe's own (each test says what it wants)."""
    drop = ("REDIS_URL", "DATABASE_URL", "ONEPIPE_STREAMS_URL", "ONEPIPE_STREAMS_MODE",
            "ONEPIPE_STREAMS_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def external(tmp_path_factory, unbroken_server):
    """One ``unbroken serve`` for the module's external-mode tests."""
    server = unbroken_server(tmp_path_factory.mktemp("external") / "streams").start()
    yield server
    server.kill()


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def runtime_for(mode: str, tmp_path, external) -> Runtime:
    """A runtime (not yet open) in ``mode``, on fresh data where it owns it."""
    if mode == "inprocess":
        return connect("inprocess", data_dir=tmp_path / "streams", environ={})
    if mode == "embedded":
        return connect("embedded", port=0, data_dir=tmp_path / "streams", environ={})
    return connect("remote", url=external.url, environ={})


@pytest.fixture
async def rt(mode, tmp_path, request):
    external = request.getfixturevalue("external") if mode == "external" else None
    async with runtime_for(mode, tmp_path, external) as runtime:
        yield runtime


@pytest.fixture(params=["embedded", "external"])
async def http_rt(request, tmp_path):
    """A runtime that talks HTTP (the modes with a network in between)."""
    external = request.getfixturevalue("external") if request.param == "external" else None
    async with runtime_for(request.param, tmp_path, external) as runtime:
        yield runtime


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass
class Order:
    id: int
    email: str
    total: float


class OrderDict(TypedDict):
    id: int
    email: str


# ---- Flow ------------------------------------------------------------------------------

async def test_flow_round_trips_events_through_its_schema(rt):
    orders = await Flow.create(name("orders")).schema(Order).build(rt)
    again = await Flow.create(orders.name).schema(Order).build(rt)  # idempotent
    await orders.append(Order(1, "a@example.com", 9.5))
    await again.append({"id": 2, "email": "b@example.com", "total": 3.0})  # a dict of fields
    events = [ev async for _, ev in orders.read()]
    assert events == [Order(1, "a@example.com", 9.5), Order(2, "b@example.com", 3.0)]
    assert all(isinstance(e, Order) for e in events)


async def test_append_many_is_one_request_and_all_or_nothing(rt):
    flow = await Flow.create(name("batch")).build(rt)
    sent = []
    real = flow.transport.append

    async def counting(path, values, **kw):
        sent.append(list(values))
        return await real(path, values, **kw)
    flow.transport.append = counting
    try:
        await flow.append_many([{"n": 1}, [1, 2], "three"])
    finally:
        del flow.transport.append
    assert sent == [[{"n": 1}, [1, 2], "three"]]  # one request; a list stays one event
    assert [ev async for _, ev in flow.read()] == [{"n": 1}, [1, 2], "three"]


async def test_every_event_offset_resumes_without_skipping(rt):
    flow = await Flow.create(name("resume")).build(rt)
    await flow.append_many([{"n": i} for i in range(5)])
    await flow.append({"n": 5})
    seen = [(off, ev["n"]) async for off, ev in flow.read()]
    assert [n for _, n in seen] == list(range(6))
    for i, (offset, _) in enumerate(seen):  # resume after each event: nothing after it is lost
        rest = [ev["n"] async for _, ev in flow.read(from_=offset)]
        after = list(range(i + 1, 6))
        assert rest == list(range(6 - len(rest), 6))  # a suffix of the flow, in order
        assert rest[len(rest) - len(after):] == after
    assert [ev async for _, ev in flow.read(from_=seen[-1][0])] == []


async def test_subscribe_delivers_live_events_and_ends_at_close(rt):
    flow = await Flow.create(name("live")).build(rt)
    await flow.append({"n": 0})
    got = []

    async def consume():
        async for _, ev in flow.subscribe():
            got.append(ev["n"])
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for n in range(1, 4):
                await flow.append({"n": n})
            while len(got) < 4:
                await anyio.sleep(0.01)
            await flow.close()
    assert got == [0, 1, 2, 3]
    with pytest.raises(StreamClosed):
        await flow.append({"n": 4})


async def test_a_closed_flow_builds_again_and_reads_its_events(rt):
    """Building is idempotent for a closed flow too, although a PUT without
    Stream-Closed to a closed stream is 409 (PROTOCOL.md §5.1)."""
    flow = await Flow.create(name("done")).build(rt)
    await flow.append({"n": 1})
    await flow.close()
    again = await Flow.create(flow.name).build(rt)
    assert [ev async for _, ev in again.read()] == [{"n": 1}]
    with pytest.raises(StreamClosed):
        await again.append({"n": 2})


async def test_subscribe_from_the_tail_sees_only_new_events(rt):
    flow = await Flow.create(name("tail")).build(rt)
    await flow.append({"old": True})
    tail = await flow.tail()
    await flow.append({"new": 1})
    await flow.close()
    with anyio.fail_after(TIMEOUT):
        assert [ev async for _, ev in flow.subscribe(from_=tail)] == [{"new": 1}]


@pytest.mark.parametrize("schema,bad", [
    (Order, {"id": 1, "email": "x"}),                          # missing field
    (Order, {"id": 1, "email": "x", "total": 1, "extra": 2}),  # unknown field
    (Order, "not an order"),
    (Order, {"id": "1", "email": "x", "total": 1.0}),          # wrong field type
    (Order, {"id": True, "email": "x", "total": 1.0}),         # a bool is not an int
    (OrderDict, {"id": "1", "email": "x"}),                    # wrong type
    (OrderDict, {"id": 1}),                                    # missing key
    (lambda ev: ev if ev.get("ok") else (_ for _ in ()).throw(ValueError("not ok")),
     {"ok": False}),
    (None, {"when": object()}),                                # not JSON
    (None, float("nan")),
    ("pydantic", {"id": "not a number", "email": "x", "total": 1}),
])
async def test_schema_errors_are_clear_and_write_nothing(rt, schema, bad):
    if schema == "pydantic":
        pydantic = pytest.importorskip("pydantic")

        class POrder(pydantic.BaseModel):
            id: int
            email: str
            total: float
        schema = POrder
    flow = await Flow.create(name("schema")).schema(schema).build(rt)
    before = await flow.tail()
    with pytest.raises(SchemaError, match=r"flow '.*': event 0|not JSON"):
        await flow.append(bad)
    with pytest.raises(SchemaError):
        await flow.append_many([bad])
    assert await flow.tail() == before
    assert [ev async for _, ev in flow.read()] == []


async def test_a_stored_event_that_no_longer_fits_is_reported_on_read(rt):
    plain = await Flow.create(name("drift")).build(rt)
    await plain.append({"id": 1})
    typed = await Flow.create(plain.name).schema(Order).build(rt)
    with pytest.raises(SchemaError, match="stored event"):
        [ev async for _, ev in typed.read()]


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "-x", "a b", "a\x00b", "x" * 129,
                                 "a%2Fb"])
async def test_bad_names_are_refused_before_anything_is_sent(bad):
    for make in (Flow.create, Channel.create, lambda n: Signal.create(n, 0)):
        with pytest.raises(ValueError, match="name must be"):
            make(bad)


@pytest.mark.parametrize("chunks,lines", [
    ([b"event: data\ndata:[1]\n\n"], ["event: data", "data:[1]", ""]),
    ([b"a\r", b"\nb\r\n", b"\r\n"], ["a", "b", ""]),          # CRLF split across chunks
    ([b"a\rb\r", b"c\n"], ["a", "b", "c"]),                     # bare CRs
    (["data:\"x\u2028y\u2029z\x85\"\n".encode()], ['data:"x\u2028y\u2029z\x85"']),
    ([b"unfinished"], ["unfinished"]),
])
async def test_sse_lines_end_only_at_cr_lf_and_crlf(chunks, lines):
    async def body():
        for c in chunks:
            yield c
    assert [line async for line in _sse_lines(body())] == lines


# ---- exactly once when an answer is lost ----------------------------------------------------

class DropAnswers(httpx.AsyncBaseTransport):
    """Sends every request; drops the answer to the n-th POST when
    ``drop(n)`` (the server has written it, the client sees a broken
    connection)."""

    def __init__(self, drop):
        self.inner = httpx.AsyncHTTPTransport()
        self.drop = drop
        self.posts = 0

    async def handle_async_request(self, request):
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.drop(self.posts):
                await response.aread()
                raise httpx.ReadError("connection lost (test)")
        return response

    async def aclose(self):
        await self.inner.aclose()


async def test_a_retried_append_is_written_once(http_rt):
    lossy = DropAnswers(lambda n: n == 1)
    async with httpx.AsyncClient(transport=lossy) as client:
        transport = HttpTransport(http_rt.url, client=client)
        flow = Flow(name("once"), transport, Schema.of(None))
        await transport.ensure(flow.path)
        await flow.append({"n": 1})
        await flow.append({"n": 2})
    assert lossy.posts == 3  # the first was sent twice
    other = await Flow.create(flow.name).build(http_rt)
    assert [ev async for _, ev in other.read()] == [{"n": 1}, {"n": 2}]


async def test_after_an_ambiguous_failure_the_next_append_is_not_taken_for_a_retry(http_rt):
    lossy = DropAnswers(lambda n: dropping)
    dropping = False
    async with httpx.AsyncClient(transport=lossy) as client:
        transport = HttpTransport(http_rt.url, client=client, retry=Retry(0.2))
        flow = Flow(name("ambiguous"), transport, Schema.of(None))
        await transport.ensure(flow.path)
        dropping = True
        with pytest.raises(Unavailable):
            await flow.append({"n": 1})  # written, but the client never learns it
        dropping = False
        await flow.append({"n": 2})  # must not be answered "duplicate" and dropped
    reader = await Flow.create(flow.name).build(http_rt)
    assert [ev async for _, ev in reader.read()] == [{"n": 1}, {"n": 2}]


# ---- Signal ----------------------------------------------------------------------------

async def test_signal_default_set_get_and_history(rt):
    flag = await Signal.create(name("flag"), default=False).build(rt)
    assert await flag.get() is False
    assert (await flag.state()).version == 0
    await flag.set(True)
    assert await flag.get() is True
    await flag.set([1, 2])  # a list is one value, not several
    st = await flag.state()
    assert (st.value, st.version, st.by) == ([1, 2], 2, rt.instance)
    assert [s.value for s in await flag.history()] == [True, [1, 2]]
    same = await Signal.create(flag.name, default="ignored").build(rt)
    assert await same.get() == [1, 2]


def second_runtime(rt: Runtime) -> Runtime:
    """Another runtime on the same streams (its own transport, so its
    updates race the first one's as another process's would)."""
    if rt.mode == "inprocess":
        return connect(store=rt.transport.store, environ={})
    return connect("remote", url=rt.url, environ={})


async def test_signal_update_applies_every_concurrent_change_once(rt):
    async with second_runtime(rt) as other:
        a = await Signal.create(name("counter"), default=0).build(rt)
        b = await Signal.create(a.name, default=0).build(other)
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon((a if i % 2 else b).update, lambda n: n + 1)
        assert await a.get() == 40
        assert [s.version for s in await a.history()] == list(range(1, 41))
        assert {s.by for s in await a.history()} == {rt.instance, other.instance}


async def test_signal_update_with_an_async_function_and_a_schema(rt):
    sig = await Signal.create(name("typed"), default={"id": 0, "email": ""}) \
        .schema(OrderDict).build(rt)

    async def bump(v):
        return {**v, "id": v["id"] + 1}
    assert await sig.update(bump) == {"id": 1, "email": ""}
    with pytest.raises(SchemaError):
        await sig.set({"id": "two"})
    assert (await sig.state()).version == 1


async def test_watch_streams_changes_made_elsewhere(rt, tmp_path, mode, request):
    sig = await Signal.create(name("watched"), default="off").build(rt)
    seen = []

    async def watch():
        async for value in sig.watch():
            seen.append(value)
            if value == "done":
                return
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            while not seen:
                await anyio.sleep(0.01)
            writer = await Signal.create(sig.name, default="off").build(rt)
            for v in ("on", "off", "done"):
                await writer.set(v)
    assert seen == ["off", "on", "off", "done"]


async def test_signal_get_reads_only_the_latest_record(http_rt):
    rt = http_rt
    sig = await Signal.create(name("cheap"), default=0).build(rt)
    for i in range(30):
        await sig.set(i)
    requests = []

    async def log(request):
        requests.append((request.method, str(request.url)))
    rt.transport.client.event_hooks["request"].append(log)
    try:
        assert await sig.get() == 29
    finally:
        rt.transport.client.event_hooks["request"].remove(log)
    assert len(requests) == 1 and "last=true" in requests[0][1]


# ---- Channel ---------------------------------------------------------------------------

async def test_channel_records_calls_before_and_after(rt):
    sent = []

    async def send(to, subject="hi"):
        sent.append((to, subject))
        return {"queued": to}
    email = await Channel.create(name("email")).handler(send).build(rt)
    assert await email.call("a@example.com", subject="Order 1") == {"queued": "a@example.com"}
    assert await email.call_as("checkout", "b@example.com") == {"queued": "b@example.com"}
    calls = await email.calls()
    assert [(c.args, c.kwargs, c.status, c.result) for c in calls] == [
        (["a@example.com"], {"subject": "Order 1"}, "ok", {"queued": "a@example.com"}),
        (["b@example.com"], {}, "ok", {"queued": "b@example.com"})]
    assert [c.caller for c in calls] == [rt.instance, "checkout"]
    assert all(c.finished_at >= c.started_at for c in calls)
    assert sent == [("a@example.com", "Order 1"), ("b@example.com", "hi")]


async def test_a_failing_call_is_recorded_and_reraised(rt):
    def boom(n):
        raise RuntimeError(f"bad {n}")
    ch = await Channel.create(name("boom")).handler(boom).build(rt)
    with pytest.raises(RuntimeError, match="bad 3"):
        await ch.call(3)
    [c] = await ch.calls(status="error")
    assert c.error == {"type": "RuntimeError", "message": "bad 3"}


async def test_a_call_is_seen_running_while_its_handler_runs(rt):
    release = anyio.Event()

    async def slow():
        await release.wait()
        return "done"
    ch = await Channel.create(name("slow")).handler(slow).build(rt)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ch.call)
        with anyio.fail_after(TIMEOUT):
            while not await ch.calls(status="running"):
                await anyio.sleep(0.01)
        release.set()
    assert [c.status for c in await ch.calls()] == ["ok"]


async def test_non_json_arguments_are_refused_and_nothing_recorded(rt):
    ch = await Channel.create(name("strict")).handler(lambda x: x).build(rt)
    with pytest.raises(SchemaError, match="not JSON"):
        await ch.call(object())
    assert await ch.calls() == []


CRASHER = textwrap.dedent("""
    import os, sys, anyio
    from unbroken_server.onepipe import Channel, connect

    async def main(mode, where, channel):
        kw = {"url": where} if mode == "remote" else {"data_dir": where}
        async with connect(mode, **kw) as rt:
            def handler(to):
                print("handler started", flush=True)
                os._exit(3)  # the process dies half-way through the call
            ch = await Channel.create(channel).handler(handler).build(rt)
            await ch.call(to="x@example.com")
    anyio.run(main, *sys.argv[1:])
""")


async def test_a_call_that_crashed_half_way_is_visible_and_can_be_replayed(
        rt, mode, tmp_path, request):
    channel = name("crashy")
    if mode == "inprocess":  # one process per data directory: the child goes first
        await rt.aclose()
        args = ["inprocess", str(tmp_path / "streams")]
    else:
        args = ["remote", rt.url]
    done = await anyio.run_process([sys.executable, "-c", CRASHER, *args, channel],
                                   check=False, env=_env(), cwd=tmp_path)  # not the source tree
    assert done.returncode == 3, done.stderr.decode()
    assert b"handler started" in done.stdout
    rt2 = runtime_for(mode, tmp_path, request.getfixturevalue("external")
                      if mode == "external" else None) if mode == "inprocess" else None
    async with (rt2 or _Same(rt)) as live:
        ch = await Channel.create(channel).handler(lambda to: f"sent to {to}").build(live)
        [crashed] = await ch.calls(status="unfinished")
        assert crashed.kwargs == {"to": "x@example.com"}
        assert await ch.replay(crashed) == "sent to x@example.com"
        calls = await ch.calls()
        assert [(c.status, c.replay_of) for c in calls] == [("unfinished", None),
                                                             ("ok", crashed.id)]
        assert await ch.result_of(calls[1]) == "sent to x@example.com"


class _Same:
    """An already open runtime, as an async context manager that leaves it open."""

    def __init__(self, rt):
        self.rt = rt

    async def __aenter__(self):
        return self.rt

    async def __aexit__(self, *exc):
        return None


# ---- the runtime -------------------------------------------------------------------------

async def test_build_uses_the_current_runtime_and_fails_clearly_without_one(tmp_path):
    with pytest.raises(NoRuntime, match="async with connect"):
        await Flow.create("x").build()
    async with connect("inprocess", data_dir=tmp_path / "s", environ={}) as rt:
        assert current_runtime() is rt
        flow = await Flow.create("x").build()
        assert flow.transport is rt.transport
    with pytest.raises(NoRuntime):
        current_runtime()


def test_the_mode_comes_from_the_arguments_then_the_environment():
    assert connect(environ={}).mode == "embedded"
    assert connect(environ={}).port == 9999
    assert connect(environ={"ONEPIPE_STREAMS_PORT": "8123"}).port == 8123
    rt = connect(environ={"ONEPIPE_STREAMS_URL": "http://h:1"})
    assert (rt.mode, rt.url) == ("remote", "http://h:1")
    assert connect(environ={"ONEPIPE_STREAMS_MODE": "inprocess"}).mode == "inprocess"
    assert str(connect(environ={}).data_dir) == ".onepipe/streams"
    assert str(connect(environ={"ONEPIPE_STREAMS_DIR": "/d"}).data_dir) == "/d"
    assert connect(store=object(), environ={"ONEPIPE_STREAMS_URL": "http://h:1"}).mode \
        == "inprocess"
    with pytest.raises(OnePipeError, match="ONEPIPE_STREAMS_PORT"):
        connect(environ={"ONEPIPE_STREAMS_PORT": "99999"})
    with pytest.raises(OnePipeError, match="unknown mode"):
        connect("sideways", environ={})


async def test_embedded_joins_a_server_already_on_its_port(tmp_path):
    async with connect("embedded", port=0, data_dir=tmp_path / "a", environ={}) as first:
        async with connect("embedded", port=first._server.port, data_dir=tmp_path / "b",
                           environ={}) as second:
            assert second.joined and second.url == first.url
            a = await Signal.create("shared", default=0).build(first)
            b = await Signal.create("shared", default=0).build(second)
            await a.set(7)
            assert await b.get() == 7
    assert not (tmp_path / "b").exists()  # the joiner opened no store of its own


async def test_embedded_refuses_a_port_taken_by_something_else(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OnePipeError, match="not an Unbroken server"):
            async with connect("embedded", port=port, data_dir=tmp_path / "s", environ={}):
                pass


async def test_embedded_server_keeps_data_across_runs(tmp_path):
    for run in range(2):
        async with connect("embedded", port=0, data_dir=tmp_path / "s", environ={}) as rt:
            flow = await Flow.create("orders").build(rt)
            await flow.append({"run": run})
    async with connect("inprocess", data_dir=tmp_path / "s", environ={}) as rt:
        flow = await Flow.create("orders").build(rt)
        assert [ev async for _, ev in flow.read()] == [{"run": 0}, {"run": 1}]


def test_the_sync_facade(tmp_path):
    from unbroken_server.onepipe.sync import connect as sync_connect

    with sync_connect(mode="embedded", port=0, data_dir=tmp_path / "s", environ={}) as rt:
        orders = rt.build(Flow.create("orders").schema(Order))
        orders.append(Order(1, "a@example.com", 2.5))
        orders.append_many([Order(2, "b@example.com", 1.0)])
        assert [o.id for _, o in orders.read()] == [1, 2]
        flag = rt.build(Signal.create("flag", default=False))
        flag.update(lambda v: not v)
        assert flag.get() is True
        ch = rt.build(Channel.create("echo").handler(lambda x: x * 2))
        assert ch.call(21) == 42
        assert [c.status for c in ch.calls()] == ["ok"]
        orders.close()
        assert len(list(orders.subscribe())) == 2


# ---- reconnects, several processes, PostgreSQL ---------------------------------------------

async def _subscribe_across_a_restart(writer_rt, reader_rt, restart) -> None:
    """A live subscribe on ``reader_rt`` keeps going while ``restart()``
    stops and starts the server; every event arrives once, in order."""
    flow = await Flow.create(name("restart")).build(writer_rt)
    reader = await Flow.create(flow.name).build(reader_rt)
    got = []

    async def consume():
        async for _, ev in reader.subscribe():
            got.append(ev["n"])

    async def until(n):
        while len(got) < n:
            await anyio.sleep(0.01)
    with anyio.fail_after(TIMEOUT * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for n in range(3):
                await flow.append({"n": n})
            await until(3)
            await restart()
            for n in range(3, 6):
                await flow.append({"n": n})  # retried until the server is back
            await until(6)
            await flow.close()
    assert got == list(range(6))


async def test_subscribe_resumes_after_an_external_server_restart(tmp_path, unbroken_server):
    server = unbroken_server(tmp_path / "streams").start()  # a restart keeps its port
    try:
        async with connect("remote", url=server.url, environ={}) as w, \
                connect("remote", url=server.url, environ={}) as r:
            async def restart():
                server.kill()  # kill -9: the live response breaks mid-stream
                await anyio.to_thread.run_sync(server.start)
            await _subscribe_across_a_restart(w, r, restart)
    finally:
        server.kill()


async def test_subscribe_resumes_after_the_embedded_server_restarts(tmp_path):
    async with connect("embedded", port=free_port(), data_dir=tmp_path / "s",
                       environ={}) as rt:
        async def restart():
            await anyio.to_thread.run_sync(rt._server.stop)  # graceful: SSE ends cleanly
            await anyio.to_thread.run_sync(rt._server.start)
        await _subscribe_across_a_restart(rt, rt, restart)


UPDATER = textwrap.dedent("""
    import sys, anyio
    from unbroken_server.onepipe import Signal, connect

    async def main(mode, where, signal, n):
        kw = {"url": where} if mode == "remote" else {"port": int(where), "data_dir": "unused"}
        async with connect(mode, **kw) as rt:
            assert mode == "remote" or rt.joined, "expected to join the test's server"
            sig = await Signal.create(signal, default=0).build(rt)
            for _ in range(int(n)):
                await sig.update(lambda v: v + 1)
    anyio.run(main, *sys.argv[1:])
""")


@pytest.mark.parametrize("how", ["external", "embedded"])
async def test_signal_updates_from_two_processes_each_apply_once(how, tmp_path, request):
    n = 60
    if how == "external":
        server = request.getfixturevalue("external")
        ctx, args = connect("remote", url=server.url, environ={}), ["remote", server.url]
    else:
        port = free_port()
        ctx = connect("embedded", port=port, data_dir=tmp_path / "s", environ={})
        args = ["embedded", str(port)]
    async with ctx as rt:
        sig = await Signal.create(name("shared-counter"), default=0).build(rt)
        results = []

        async def child():
            results.append(await anyio.run_process(
                [sys.executable, "-c", UPDATER, *args, sig.name, str(n)], check=False,
                env=_env(), cwd=tmp_path))
        with anyio.fail_after(TIMEOUT * 4):
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
                tg.start_soon(child)
        for r in results:
            assert r.returncode == 0, r.stderr.decode()
        assert await sig.get() == 2 * n
        history = await sig.history()
        assert [s.version for s in history] == list(range(1, 2 * n + 1))
        assert len({s.by for s in history}) == 2


@pytest.fixture
def database_url():
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("set DATABASE_URL (PostgreSQL) to test Flow.db()")
    return url


async def test_a_db_flow_lives_in_postgres_and_is_shared_live(database_url, tmp_path):
    psycopg = pytest.importorskip("psycopg")
    from psycopg_pool import AsyncConnectionPool

    schema = f"onepipe_test_{uuid.uuid4().hex[:8]}"
    pool = AsyncConnectionPool(database_url, open=False)
    try:
        async with connect("inprocess", data_dir=tmp_path / "a", environ={}) as a, \
                connect("embedded", port=0, data_dir=tmp_path / "b", environ={}) as b:
            writer = await Flow.create("orders").schema(Order).db(database_url, schema=schema) \
                .build(a)
            reader = await Flow.create("orders").schema(Order).db(pool, schema=schema).build(b)
            assert writer.transport.kind == "postgres"
            got = []

            async def consume():
                async for _, order in reader.subscribe():
                    got.append(order.id)
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await writer.append(Order(1, "a@example.com", 1.0))
                    await writer.append_many([Order(2, "b@example.com", 2.0),
                                              Order(3, "c@example.com", 3.0)])
                    while len(got) < 3:
                        await anyio.sleep(0.01)
                    await writer.close()
            assert got == [1, 2, 3]
            # not on the streams server: the runtime's own store never saw it
            assert not await a.transport.store.has("flows/orders")
    finally:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("how", ["inprocess", "embedded"])
async def test_the_runtime_runs_on_trio_too(how, tmp_path):
    async with runtime_for(how, tmp_path, None) as rt:
        flow = await Flow.create("orders").schema(Order).build(rt)
        await flow.append(Order(1, "a@example.com", 1.0))
        await flow.close()
        assert [o.id async for _, o in flow.subscribe()] == [1]
        flag = await Signal.create("flag", default=0).build(rt)
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(flag.update, lambda n: n + 1)
        assert await flag.get() == 5


@pytest.mark.parametrize("given,streams", [
    ("http://h:1", "http://h:1/v1/stream"),
    ("http://h:1/", "http://h:1/v1/stream"),
    ("http://h:1/v1/stream", "http://h:1/v1/stream"),
    ("http://gw/streams/", "http://gw/streams"),   # a path: the streams' base, as given
])
async def test_where_the_http_transport_finds_streams(given, streams):
    t = HttpTransport(given)
    try:
        assert t.streams_url == streams
        assert t.url("flows/a b") == streams + "/flows/a%20b"
    finally:
        await t.aclose()


def test_a_float_field_read_back_as_an_integer_is_a_float_again():
    schema = Schema.of(Order)
    order = schema.decode({"id": 1, "email": "e", "total": 9})  # a JS server wrote 9.0 as 9
    assert order == Order(1, "e", 9.0) and type(order.total) is float
    with pytest.raises(SchemaError, match="expected an object"):
        schema.decode([1, "e", 9.0])


async def test_a_data_dir_a_server_has_open_is_not_opened_again(tmp_path, unbroken_server):
    server = unbroken_server(tmp_path / "streams").start()
    try:
        for mode in ("inprocess", "embedded"):
            with pytest.raises(DataDirInUse, match="connect to that server"):
                async with connect(mode, port=0, data_dir=tmp_path / "streams", environ={}):
                    pass
        async with connect("remote", url=server.url, environ={}) as rt:  # what to do instead
            await (await Flow.create("fine").build(rt)).append({"ok": True})
    finally:
        server.kill()
