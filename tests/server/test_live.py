"""Live reads (server/live.py): SSE framing and its safety, the live phase,
long-poll, and what happens when readers vanish, stall, or the server stops.

SSE bodies are parsed with a WHATWG-conformant parser (lines end at CRLF, CR
or LF), i.e. exactly what a browser's EventSource sees, and events are tied
to the HTTP chunk that carried them.
"""
from __future__ import annotations

import base64
import json
import re

import anyio
import pytest

from unbroken_engine import MemoryStreamStore
from unbroken_engine.protocol.offsets import format_offset, parse_offset
from unbroken_engine.stores.interface import AppendOptions, CreateOptions
from unbroken_server.cursor import current_interval

pytestmark = pytest.mark.anyio

S = "/v1/stream/"
TEXT = ("Content-Type", "text/plain")


async def create(ctx, path, content_type="text/plain", data=b"", **kw):
    await ctx.store.create(path, CreateOptions(content_type=content_type, data=data, **kw))


async def append(ctx, path, data, content_type="text/plain", close=False):
    return await ctx.store.append(path, data, AppendOptions(content_type=content_type,
                                                            close=close))


def controls_of(events):
    return [json.loads(e.data) for e in events if e.event == "control"]


def check_pairing(events):
    """Every data event is immediately followed by a control event that came
    in the same HTTP chunk; the offsets of those controls strictly increase,
    and no control ever goes back (a bare control -- the first one, the one
    ending a response -- may repeat the last offset)."""
    paired = []
    for i, ev in enumerate(events):
        assert ev.event in ("data", "control"), ev
        if ev.event == "data":
            nxt = events[i + 1]
            assert nxt.event == "control", events
            assert nxt.chunk == ev.chunk, "a data event and its control came in different writes"
            paired.append(parse_offset(json.loads(nxt.data)["streamNextOffset"]))
    assert paired == sorted(paired) and len(set(paired)) == len(paired), paired
    offsets = [parse_offset(c["streamNextOffset"]) for c in controls_of(events)]
    assert offsets == sorted(offsets), offsets


def is_up_to_date(ev):
    return ev.event == "control" and json.loads(ev.data).get("upToDate") is True


def check_control(c, closed=False):
    assert isinstance(c["streamNextOffset"], str)
    parse_offset(c["streamNextOffset"])
    assert set(c) <= {"streamNextOffset", "streamCursor", "upToDate", "streamClosed"}, c
    if closed:
        assert c.get("streamClosed") is True and "streamCursor" not in c
    else:
        assert "streamClosed" not in c
        assert re.fullmatch(r"[0-9]+", c["streamCursor"]), c


# ---- SSE encoding ---------------------------------------------------------------------------

INJECTIONS = [
    pytest.param('hello\r\nevent: control\r\ndata: {"injected":true}\r\n\r\nafter', id="crlf"),
    pytest.param('hello\nevent: data\ndata: fake-event\n\nevent: control\ndata: {"lf":1}\n\n',
                 id="lf"),
    pytest.param('a\revent: control\rdata: {"cr_injected":true}\r\rb', id="cr"),
    pytest.param("\r\n\r\n\n\n\r\r", id="only-newlines"),
    pytest.param("mixed\r\r\n\n\r\n\rend\n", id="mixed"),
    pytest.param("id: 7\nretry: 1\n:comment\ndata:x", id="other-fields"),
]


def normalise(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


@pytest.mark.parametrize("payload", INJECTIONS)
async def test_sse_payload_line_breaks_cannot_forge_events(make_ctx, open_pair, payload):
    ctx = make_ctx()
    await create(ctx, "inj")
    await append(ctx, "inj", payload.encode())
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "inj?offset=-1&live=sse")
        events = await sse.read_until(is_up_to_date)
        assert [e.event for e in events] == ["data", "control"]
        check_pairing(events)
        assert events[0].data == normalise(payload)  # the payload survives, as text
        c = json.loads(events[1].data)
        check_control(c)
        assert not {"injected", "lf", "cr_injected"} & set(c)
        assert c["upToDate"] is True
        assert "stream-sse-data-encoding" not in sse.head.headers
        # the same payloads in the live phase: one data + one control per append
        for i in range(3):
            await append(ctx, "inj", (payload + str(i)).encode())
            events = await sse.controls(1)
            assert [e.event for e in events] == ["data", "control"]
            assert events[0].data == normalise(payload + str(i))
            check_control(json.loads(events[1].data))
        check_pairing(sse.events)


async def test_sse_head(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "h", data=b"x")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "h?offset=-1&live=sse")
        assert sse.head.status == 200
        assert sse.head.headers["content-type"] == "text/event-stream"
        assert "no-cache" in sse.head.headers["cache-control"]
        assert "content-length" not in sse.head.headers
        assert sse.head.headers["transfer-encoding"] == "chunked"
        assert sse.head.headers["x-content-type-options"] == "nosniff"
        assert "content-encoding" not in sse.head.headers


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png",
                                          "application/x-protobuf"])
async def test_sse_binary_streams_are_base64(make_ctx, open_pair, content_type):
    ctx = make_ctx()
    payloads = [b"Hello", bytes([0, 0x0A, 0x0D, 0xFF, 0xFE]), bytes(range(256)) * 4,
                b"\r\n\r\nevent: control\r\n"]
    await create(ctx, "bin", content_type)
    await append(ctx, "bin", payloads[0], content_type)
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "bin?offset=-1&live=sse", [("Accept", "text/event-stream")])
        assert sse.head.headers["stream-sse-data-encoding"] == "base64"
        events = await sse.read_until(is_up_to_date)
        assert events[0].data == "SGVsbG8="
        for p in payloads[1:]:
            await append(ctx, "bin", p, content_type)
            events = await sse.controls(1)
            assert [e.event for e in events] == ["data", "control"]
            text = re.sub(r"\s", "", events[0].data)
            assert len(text) % 4 == 0
            assert base64.b64decode(text, validate=True) == p
        check_pairing(sse.events)


async def test_sse_text_and_json_are_not_base64(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "t", "text/markdown; charset=utf-8", data=b"# hi")
    await create(ctx, "j", "application/json", data=b"[1]")
    for path, data in (("t", "# hi"), ("j", "[1]")):
        async with open_pair(ctx) as pair:
            sse = await pair.open_sse(S + path + "?offset=-1&live=sse")
            assert "stream-sse-data-encoding" not in sse.head.headers
            events = await sse.read_until(is_up_to_date)
            assert events[0].data == data


async def test_sse_json_data_events_are_arrays(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "js", "application/json")
    await append(ctx, "js", b'{"id":1,"message":"hello"}', "application/json")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "js?offset=-1&live=sse")
        events = await sse.read_until(is_up_to_date)
        assert json.loads(events[0].data) == [{"id": 1, "message": "hello"}]
        sent = [b'[1,2,3]', b'{"text":"line1\\nline2\\r\\nevent: control"}', b'"str"', b"null"]
        for body in sent:
            await append(ctx, "js", body, "application/json")
            events = await sse.controls(1)
            value = json.loads(events[0].data)
            assert isinstance(value, list)
            expected = json.loads(body)
            assert value == (expected if isinstance(expected, list) else [expected])
        check_pairing(sse.events)


async def test_sse_catch_up_then_live_with_increasing_controls(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "cu")
    for i in range(5):
        await append(ctx, "cu", f"m{i};".encode())
    tail = (await ctx.store.get("cu")).next_offset
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "cu?offset=-1&live=sse")
        events = await sse.read_until(is_up_to_date)
        assert "".join(e.data for e in events if e.event == "data") == "m0;m1;m2;m3;m4;"
        controls = controls_of(events)
        for c in controls:
            check_control(c)
        assert controls[-1]["upToDate"] is True
        assert all("upToDate" not in c for c in controls[:-1])
        assert parse_offset(controls[-1]["streamNextOffset"]) == tail
        # live: appends made after connecting, in order, each with its control
        for i in range(5, 10):
            r = await append(ctx, "cu", f"m{i};".encode())
            events = await sse.controls(1)
            assert events[0].data == f"m{i};"
            c = json.loads(events[1].data)
            check_control(c)
            assert parse_offset(c["streamNextOffset"]) == r.next_offset
            assert c["upToDate"] is True
        check_pairing(sse.events)


async def test_sse_resume_from_a_control_offset_skips_what_was_seen(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "rs")
    await append(ctx, "rs", b"old")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "rs?offset=-1&live=sse")
        resume = json.loads((await sse.read_until(is_up_to_date))[-1].data)["streamNextOffset"]
    await append(ctx, "rs", b"new")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + f"rs?offset={resume}&live=sse")
        events = await sse.read_until(is_up_to_date)
        assert [e.data for e in events if e.event == "data"] == ["new"]


async def test_sse_offset_now_sends_one_control_only(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "now", data=b"history")
    await append(ctx, "now", b"more history")
    tail = (await ctx.store.get("now")).next_offset
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "now?offset=now&live=sse")
        events = await sse.next_events()
        assert [e.event for e in events] == ["control"]
        c = json.loads(events[0].data)
        check_control(c)
        assert c["upToDate"] is True and parse_offset(c["streamNextOffset"]) == tail
        await append(ctx, "now", b"fresh")
        events = await sse.controls(1)
        assert [(e.event, e.data) for e in events][0] == ("data", "fresh")
    async with open_pair(ctx) as pair:  # an empty stream: the same single control
        await create(ctx, "empty")
        sse = await pair.open_sse(S + "empty?offset=-1&live=sse")
        events = await sse.next_events()
        assert [e.event for e in events] == ["control"]
        assert json.loads(events[0].data)["streamNextOffset"] == format_offset(0)


async def test_sse_close_while_connected_delivers_data_then_closed_control_then_end(
        make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "c")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "c?offset=-1&live=sse")
        await sse.read_until(is_up_to_date)
        await append(ctx, "c", b"last words", close=True)
        rest = await sse.read_to_end()
        assert [e.event for e in rest][0] == "data" and rest[0].data == "last words"
        assert rest[-1].event == "control"
        final = json.loads(rest[-1].data)
        check_control(final, closed=True)
        assert sse.ended
        check_pairing(sse.events)
        # the connection is still usable after the SSE response ended
        assert (await pair.request("GET", "/health")).status == 200


async def test_sse_close_only_while_connected(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "co", data=b"x")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "co?offset=-1&live=sse")
        await sse.read_until(is_up_to_date)
        await ctx.store.close_stream("co")
        rest = await sse.read_to_end()
        assert [e.event for e in rest] == ["control"]
        check_control(json.loads(rest[0].data), closed=True)


async def test_sse_on_a_closed_stream_at_its_tail_ends_at_once(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "done", data=b"all", closed=True)
    tail = (await ctx.store.get("done")).next_offset
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + f"done?offset={format_offset(tail)}&live=sse")
        events = await sse.read_to_end()
        assert [e.event for e in events] == ["control"]
        c = json.loads(events[0].data)
        check_control(c, closed=True)
        assert parse_offset(c["streamNextOffset"]) == tail
        sse2 = await pair.open_sse(S + "done?offset=-1&live=sse")
        events = await sse2.read_to_end()
        assert [e.event for e in events] == ["data", "control"]
        check_control(json.loads(events[1].data), closed=True)


async def test_sse_echoed_cursor_gets_a_larger_one(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "cur", data=b"x")
    echoed = current_interval() + 5
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + f"cur?offset=-1&live=sse&cursor={echoed}")
        events = await sse.read_until(is_up_to_date)
        for c in controls_of(events):
            assert int(c["streamCursor"]) > echoed


async def test_sse_errors_are_plain_http(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "e")
    async with open_pair(ctx) as pair:
        assert (await pair.request("GET", S + "missing?offset=-1&live=sse")).status == 404
        assert (await pair.request("GET", S + "e?live=sse")).status == 400
        assert (await pair.request("GET", S + "e?offset=junk&live=sse")).status == 400
        r = await pair.request("GET", S + f"e?offset={format_offset(999)}&live=sse")
        assert r.status == 400 and "text/event-stream" not in r.headers.get("content-type", "")


async def test_sse_max_duration_ends_with_a_control(make_ctx, open_pair):
    ctx = make_ctx(sse_max_duration=0.2)
    await create(ctx, "md", data=b"x")
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "md?offset=-1&live=sse")
        events = await sse.read_to_end()
        assert events[-1].event == "control"
        c = json.loads(events[-1].data)
        check_control(c)
        assert c["upToDate"] is True
        check_pairing(events)
        assert (await pair.request("GET", "/health")).status == 200  # keep-alive continues


# ---- long-poll -------------------------------------------------------------------------------------

async def test_long_poll_times_out_with_204_and_a_cursor(make_ctx, open_pair):
    ctx = make_ctx(long_poll_timeout=0.2)
    await create(ctx, "lp", data=b"x")
    tail = format_offset((await ctx.store.get("lp")).next_offset)
    async with open_pair(ctx) as pair:
        for target in (f"lp?offset={tail}&live=long-poll", "lp?offset=now&live=long-poll"):
            r = await pair.request("GET", S + target)
            assert r.status == 204 and r.body == b""
            assert re.fullmatch(r"[0-9]+", r.headers["stream-cursor"])
            assert r.headers["stream-up-to-date"] == "true"
            assert r.headers["stream-next-offset"] == tail
            assert "stream-closed" not in r.headers
            assert r.headers["x-content-type-options"] == "nosniff"


async def test_long_poll_returns_data_at_once_when_there_is_some(make_ctx, open_pair):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "lpd", data=b"ready")
    async with open_pair(ctx) as pair:
        r = await pair.request("GET", S + "lpd?offset=-1&live=long-poll")  # < 10 s bound
        assert r.status == 200 and r.body == b"ready"
        assert re.fullmatch(r"[0-9]+", r.headers["stream-cursor"])
        assert r.headers["stream-up-to-date"] == "true"


async def test_long_poll_wakes_with_200_when_an_append_arrives(make_ctx, open_pair, until_parked):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "w", data=b"before;")
    tail = format_offset((await ctx.store.get("w")).next_offset)
    async with open_pair(ctx) as pair:
        for target in (f"w?offset={tail}&live=long-poll", "w?offset=now&live=long-poll"):
            await pair.send_request("GET", S + target)
            await until_parked(ctx, "w")
            r_append = await append(ctx, "w", b"after;")
            r = await pair.read_response(timeout=5)
            assert r.status == 200 and r.body == b"after;"
            assert r.headers["stream-next-offset"] == format_offset(r_append.next_offset)
            assert re.fullmatch(r"[0-9]+", r.headers["stream-cursor"])
            assert r.headers["stream-up-to-date"] == "true"
            tail = r.headers["stream-next-offset"]


async def test_long_poll_on_a_closed_stream_at_its_tail_is_204_at_once(make_ctx, open_pair):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "lc", data=b"x", closed=True)
    tail = format_offset((await ctx.store.get("lc")).next_offset)
    async with open_pair(ctx) as pair:
        r = await pair.request("GET", S + f"lc?offset={tail}&live=long-poll")  # < 10 s bound
        assert r.status == 204
        assert r.headers["stream-closed"] == "true"
        assert r.headers["stream-up-to-date"] == "true"
        assert r.headers["stream-next-offset"] == tail


async def test_long_poll_close_while_waiting_ends_it(make_ctx, open_pair, until_parked):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "lw")
    async with open_pair(ctx) as pair:
        await pair.send_request("GET", S + "lw?offset=now&live=long-poll")
        await until_parked(ctx, "lw")
        await ctx.store.close_stream("lw")
        r = await pair.read_response(timeout=5)
        assert r.status == 204 and r.headers["stream-closed"] == "true"


async def test_long_poll_cursor_jitter(make_ctx, open_pair):
    ctx = make_ctx(long_poll_timeout=0.05)
    await create(ctx, "cj")
    async with open_pair(ctx) as pair:
        first = await pair.request("GET", S + "cj?offset=now&live=long-poll")
        cursor = int(first.headers["stream-cursor"])
        assert cursor >= current_interval() - 1
        for _ in range(3):  # echoing the current (or a collapsed, later) cursor
            r = await pair.request("GET", S + f"cj?offset=now&live=long-poll&cursor={cursor}")
            assert int(r.headers["stream-cursor"]) > cursor
            cursor = int(r.headers["stream-cursor"])
        old = await pair.request("GET", S + "cj?offset=now&live=long-poll&cursor=12")
        assert int(old.headers["stream-cursor"]) >= current_interval() - 1
        junk = await pair.request("GET", S + "cj?offset=now&live=long-poll&cursor=abc")
        assert re.fullmatch(r"[0-9]+", junk.headers["stream-cursor"])


async def test_long_poll_errors(make_ctx, open_pair):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "le")
    async with open_pair(ctx) as pair:
        assert (await pair.request("GET", S + "missing?offset=now&live=long-poll")).status == 404
        assert (await pair.request("GET", S + "le?live=long-poll")).status == 400


# ---- streams going away under live readers ---------------------------------------------------------------

async def test_long_poll_on_a_stream_deleted_while_waiting_is_404(make_ctx, open_pair,
                                                                  until_parked):
    ctx = make_ctx(long_poll_timeout=30)
    await create(ctx, "del")
    async with open_pair(ctx) as pair:
        await pair.send_request("GET", S + "del?offset=now&live=long-poll")
        await until_parked(ctx, "del")
        await ctx.store.delete("del")
        r = await pair.read_response(timeout=5)
        assert r.status == 404, (r.status, r.body)


async def test_sse_on_a_stream_deleted_while_following_ends_and_server_survives(
        make_ctx, run_server, until_parked):
    ctx = make_ctx(shutdown_grace=2)
    await create(ctx, "gone", data=b"x")
    async with run_server(ctx) as server:
        client = await server.connect()
        sse = await client.open_sse(S + "gone?offset=-1&live=sse")
        await sse.read_until(is_up_to_date)
        await until_parked(ctx, "gone")
        assert (await server.request("DELETE", S + "gone")).status == 204
        await sse.read_to_end()  # the response ends ...
        assert (await server.request("GET", "/health")).status == 200  # ... the server lives
        await client.aclose()


async def test_sse_on_a_stream_that_expires_while_following_ends(make_ctx, open_pair,
                                                                 until_parked):
    now = [1_800_000_000.0]
    ctx = make_ctx(MemoryStreamStore(clock=lambda: now[0]))
    await create(ctx, "ttl", data=b"x", ttl=5)
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "ttl?offset=-1&live=sse")
        await sse.read_until(is_up_to_date)
        await until_parked(ctx, "ttl")
        now[0] += 60
        # what serve()'s sweeper does every second (the reader's own next
        # look at the stream may expire it first: the same path either way)
        await ctx.store.sweep()
        await sse.read_to_end()  # the response ends properly ...
        assert (await pair.request("GET", S + "ttl?offset=-1")).status == 404  # ... keep-alive


# ---- readers that vanish or stall ------------------------------------------------------------------------

async def test_client_disconnecting_mid_sse_ends_its_task(make_ctx, open_pair):
    ctx = make_ctx()
    await create(ctx, "dc", data=b"x")
    before = ctx.connections
    async with open_pair(ctx) as other:
        async with open_pair(ctx) as pair:
            sse = await pair.open_sse(S + "dc?offset=-1&live=sse")
            await sse.read_until(is_up_to_date)
            assert ctx.connections == before + 2
            await pair.aclose()  # the reader vanishes
            await append(ctx, "dc", b"y")  # the next write finds out
            await pair.wait_server_done()
        assert ctx.connections == before + 1
        assert (await other.request("GET", S + "dc?offset=-1")).body == b"xy"
    assert ctx.connections == before


async def test_client_disconnecting_mid_sse_over_tcp(make_ctx, run_server):
    ctx = make_ctx(shutdown_grace=2)
    await create(ctx, "dct", data=b"x")
    async with run_server(ctx) as server:
        with anyio.fail_after(10):
            while ctx.connections:
                await anyio.sleep(0.01)
        readers = []
        for _ in range(5):
            c = await server.connect()
            sse = await c.open_sse(S + "dct?offset=-1&live=sse")
            await sse.read_until(is_up_to_date)
            readers.append(c)
        assert ctx.connections == 5
        for c in readers:
            await c.aclose()
        # writes on dead sockets end the tasks: the first may still be taken
        # by the kernel, a later one meets the reset (EPIPE). Append until no
        # reader is left, each time once the server is quiet again -- every
        # connection still open is a reader parked on the stream.
        with anyio.fail_after(10):
            while ctx.connections:
                assert (await server.request("POST", S + "dct", [TEXT], b"z")).status == 204
                while ctx.connections != ctx.store.waiting("dct"):
                    await anyio.sleep(0.001)
        assert (await server.request("GET", "/health")).status == 200


async def test_slow_sse_reader_is_cut_off_without_slowing_writers(make_ctx, open_pair):
    ctx = make_ctx(sse_send_timeout=0.2)
    await create(ctx, "slow")
    n = 40
    async with open_pair(ctx) as fast, open_pair(ctx) as writer, \
            open_pair(ctx, server_buffer=4) as slow:
        slow_sse = await slow.open_sse(S + "slow?offset=-1&live=sse")
        await slow_sse.read_until(is_up_to_date)  # then it stops reading
        fast_sse = await fast.open_sse(S + "slow?offset=-1&live=sse")
        await fast_sse.read_until(is_up_to_date)
        received = []

        async def read_fast():
            while len(received) < n:
                for ev in await fast_sse.next_events():
                    if ev.event == "data":
                        received.append(ev.data)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_fast)
            with anyio.fail_after(10):
                for i in range(n):
                    r = await writer.request("POST", S + "slow", [TEXT], f"{i:04d}".encode() * 256)
                    assert r.status == 204
        await slow.wait_server_done()  # cut off after sse_send_timeout
        assert "".join(received) == "".join(f"{i:04d}" * 256 for i in range(n))
        assert ctx.connections == 2


# ---- shutdown ----------------------------------------------------------------------------------------

async def test_shutdown_ends_sse_with_a_final_control_and_a_parked_long_poll_with_204(
        make_ctx, run_server, until_parked):
    ctx = make_ctx(long_poll_timeout=30, shutdown_grace=5)
    await create(ctx, "sd", data=b"x")
    async with run_server(ctx) as server:
        reader = await server.connect()
        sse = await reader.open_sse(S + "sd?offset=-1&live=sse")
        await sse.read_until(is_up_to_date)
        poller = await server.connect()
        await poller.send_request("GET", S + "sd?offset=now&live=long-poll")
        idle = await server.connect()
        assert (await idle.request("GET", "/health")).status == 200
        await until_parked(ctx, "sd", 2)  # the SSE reader and the long-poll
        health = json.loads((await idle.request("GET", "/health")).body)
        assert (health["live_readers"], health["parked_readers"]) == (2, 2)
        ctx.shutdown()
        events = await sse.read_to_end(timeout=5)
        assert events and events[-1].event == "control"
        check_control(json.loads(events[-1].data))
        r = await poller.read_response(timeout=5)
        assert r.status == 204 and "stream-cursor" in r.headers
        for c in (reader, poller, idle):
            assert await c.read_until_eof(timeout=5) == b""  # then each connection closes
        with anyio.fail_after(5):
            await server.done.wait()
        for c in (reader, poller, idle):
            await c.aclose()
    assert ctx.connections == 0
