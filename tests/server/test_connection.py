"""The connection layer (server/connection.py): keep-alive, pipelining,
limits, timeouts, hostile and broken clients, and the headers every response
carries. Most tests drive ``serve_connection`` over an in-memory byte stream
(``open_pair``); a few use a real socket (``run_server``).
"""
from __future__ import annotations

import os
import re

import anyio
import h11
import pytest

from unbroken_engine import FileBackedStreamStore
from unbroken_engine.protocol.offsets import START
from unbroken_engine.stores.interface import AppendOptions, CreateOptions

pytestmark = pytest.mark.anyio

TEXT = ("Content-Type", "text/plain")
S = "/v1/stream/"
CORS_ALLOW_ORIGIN = "access-control-allow-origin"


def assert_common_headers(resp, allowed_5xx=()):
    """What every response carries, errors included (rule book B2); and no
    client input ever causes a 5xx (but the ``allowed_5xx`` statuses)."""
    assert resp.status < 500 or resp.status in allowed_5xx, (resp.status, resp.body)
    assert resp.headers.get("x-content-type-options") == "nosniff", resp.headers
    assert resp.headers.get(CORS_ALLOW_ORIGIN) == "*", resp.headers
    assert "PUT" in resp.headers.get("access-control-allow-methods", "")
    assert resp.headers.get("cross-origin-resource-policy") == "cross-origin"


async def tail(ctx, path: str) -> int:
    return (await ctx.store.get(path)).next_offset


async def contents(ctx, path: str) -> bytes:
    return bytes((await ctx.store.read(path, START)).data)


def split_raw_responses(raw: bytes) -> list[bytes]:
    """Split raw bytes holding several *bodiless* responses into their heads;
    anything between one head's blank line and the next status line would be
    a body that must not be there."""
    heads = []
    rest = raw
    while rest:
        assert rest.startswith(b"HTTP/1.1 "), f"expected a status line, got {rest[:80]!r}"
        end = rest.index(b"\r\n\r\n") + 4
        heads.append(rest[:end])
        rest = rest[end:]
    return heads


# ---- keep-alive, pipelining, partial writes ------------------------------------------------

async def test_keep_alive_serves_many_requests_on_one_connection(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        assert (await pair.request("PUT", S + "ka", [TEXT])).status == 201
        offsets = []
        for i in range(5):
            r = await pair.request("POST", S + "ka", [TEXT], f"m{i};".encode())
            assert r.status == 204
            offsets.append(r.headers["stream-next-offset"])
        assert offsets == sorted(offsets) and len(set(offsets)) == 5
        r = await pair.request("GET", S + "ka?offset=-1")
        assert (r.status, r.body) == (200, b"m0;m1;m2;m3;m4;")
        r = await pair.request("GET", "/health")
        assert r.status == 200 and r.json()["status"] == "ok"
        assert "connection" not in r.headers
        assert ctx.connections == 1
    assert ctx.connections == 0


async def test_pipelined_requests_are_answered_in_order(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        raw = b"".join([
            pair.request_bytes("PUT", S + "p", [TEXT]),
            pair.request_bytes("POST", S + "p", [TEXT], b"one"),
            pair.request_bytes("GET", S + "missing?offset=-1"),
            pair.request_bytes("POST", S + "p", [TEXT], b"two"),
            pair.request_bytes("GET", S + "p?offset=-1"),
        ])
        await pair.send_raw(raw)  # one write
        statuses = []
        for method in ("PUT", "POST", "GET", "POST", "GET"):
            r = await pair.read_response(method)
            statuses.append(r.status)
            last = r
        assert statuses == [201, 204, 404, 204, 200]
        assert last.body == b"onetwo"


def _three_requests(host_client) -> bytes:
    return b"".join([
        host_client.request_bytes("PUT", S + "bb", [TEXT, ("Stream-TTL", "3600")]),
        host_client.request_bytes("POST", S + "bb", [TEXT, ("Stream-Seq", "a")], b"hello\nworld"),
        host_client.request_bytes("GET", S + "bb?offset=-1", [("Accept", "*/*")]),
    ])


async def test_byte_by_byte_requests_get_the_same_responses(make_ctx, open_pair):
    results = []
    for step in (None, 1, 7):
        ctx = make_ctx()
        async with open_pair(ctx) as pair:
            raw = _three_requests(pair)
            if step is None:
                await pair.send_raw(raw)
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pair.send_slowly, raw, step)
            got = [await pair.read_response(m) for m in ("PUT", "POST", "GET")]
        results.append([(r.status, r.header_list, r.body) for r in got])
    assert [s for s, _, _ in results[0]] == [201, 204, 200]
    assert results[0][2][2] == b"hello\nworld"
    assert results[1] == results[0]
    assert results[2] == results[0]


# ---- limits ----------------------------------------------------------------------------------

async def test_oversized_head_in_one_write_gets_431_and_close(make_ctx, open_pair):
    ctx = make_ctx(max_header_bytes=4096)
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("GET", "/health", [("X-Big", "a" * 8000)]))
        r = await pair.read_response("GET")
        assert r.status == 431
        assert r.headers.get("connection") == "close"
        assert_common_headers(r)
        assert await pair.read_until_eof() == b""
        await pair.wait_server_done()


async def test_many_small_headers_over_the_limit_get_431(make_ctx, open_pair):
    ctx = make_ctx(max_header_bytes=4096)
    async with open_pair(ctx) as pair:
        headers = [(f"X-H{i}", "v" * 20) for i in range(400)]
        try:
            await pair.send_slowly(pair.request_bytes("GET", "/health", headers), 512)
        except anyio.BrokenResourceError:
            pass  # the server refused before the head was complete, as it should
        r = await pair.read_response("GET")
        assert r.status == 431
        await pair.wait_server_done()


async def test_head_just_under_the_limit_is_served(make_ctx, open_pair):
    ctx = make_ctx(max_header_bytes=4096)
    async with open_pair(ctx) as pair:
        r = await pair.request("GET", "/health", [("X-Big", "a" * 3000)])
        assert r.status == 200


async def test_body_over_max_body_by_content_length_gets_413(make_ctx, open_pair):
    ctx = make_ctx(max_body=100)
    await ctx.store.create("big", _text_options())
    before = await tail(ctx, "big")
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("POST", S + "big", [TEXT], b"x" * 101))
        r = await pair.read_response("POST")
        assert r.status == 413
        assert r.headers.get("connection") == "close"
        assert_common_headers(r)
        await pair.wait_server_done()
    assert await tail(ctx, "big") == before


async def test_413_by_content_length_is_decided_before_the_body_arrives(make_ctx, open_pair):
    """The server answers from Content-Length alone (even with Expect:
    100-continue it never asks for the body)."""
    ctx = make_ctx(max_body=100)
    await ctx.store.create("big", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_head("POST", S + "big", [TEXT, ("Content-Length", str(10 << 30)),
                                                 ("Expect", "100-continue")])
        r = await pair.read_head()
        assert r.status == 413 and 100 not in r.informational
        await pair.wait_server_done()
    assert await contents(ctx, "big") == b""


async def test_chunked_body_over_max_body_gets_413_and_nothing_is_appended(make_ctx, open_pair):
    ctx = make_ctx(max_body=100)
    await ctx.store.create("big", _text_options())
    before = await tail(ctx, "big")
    async with open_pair(ctx) as pair:
        await pair.send_head("POST", S + "big", [TEXT, ("Transfer-Encoding", "chunked")])
        for _ in range(4):
            await pair.send_body(b"y" * 30, end=False)
        r = await pair.read_head()  # decided as the body crosses 100 bytes
        assert r.status == 413
        assert r.headers.get("connection") == "close"
        await pair.wait_server_done()
    assert await tail(ctx, "big") == before


async def test_chunked_request_body_is_accepted(make_ctx, open_pair):
    ctx = make_ctx(max_body=1000)
    await ctx.store.create("ch", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_head("POST", S + "ch", [TEXT, ("Transfer-Encoding", "chunked")])
        for piece in (b"abc", b"", b"def", b"g" * 500):
            await pair.send_body(piece, end=False)
        await pair.send_body(end=True)
        r = await pair.read_response()
        assert r.status == 204
        # raw chunked framing, split oddly, on the same connection
        raw = (b"POST " + (S + "ch").encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nxyz\r\n2\r\n!!\r\n0\r\n\r\n")
        await pair.send_slowly(raw, 5)
        assert (await pair.read_response("POST")).status == 204
    assert await contents(ctx, "ch") == b"abcdef" + b"g" * 500 + b"xyz!!"


async def test_body_of_exactly_max_body_is_accepted(make_ctx, open_pair):
    ctx = make_ctx(max_body=100)
    await ctx.store.create("edge", _text_options())
    async with open_pair(ctx) as pair:
        assert (await pair.request("POST", S + "edge", [TEXT], b"z" * 100)).status == 204
        await pair.send_head("POST", S + "edge", [TEXT, ("Transfer-Encoding", "chunked")])
        await pair.send_body(b"w" * 100)
        assert (await pair.read_response()).status == 204
    assert await contents(ctx, "edge") == b"z" * 100 + b"w" * 100


async def test_expect_100_continue_gets_100_then_the_response(make_ctx, open_pair):
    ctx = make_ctx()
    await ctx.store.create("e", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_head("POST", S + "e", [TEXT, ("Content-Length", "5"),
                                               ("Expect", "100-continue")])
        with anyio.fail_after(10):
            event = await pair.next_event()
        assert isinstance(event, h11.InformationalResponse) and event.status_code == 100
        await pair.send_body(b"hello")
        r = await pair.read_response()
        assert r.status == 204
        # and the connection stays usable
        assert (await pair.request("GET", S + "e?offset=-1")).body == b"hello"


# ---- malformed requests, timeouts -----------------------------------------------------------------

MALFORMED = [
    pytest.param(b"GARBAGE\r\n\r\n", id="no-target"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", id="bad-header"),
    pytest.param(b"GET /health HTTP/1.1\r\n\r\n", id="no-host"),
    pytest.param(b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", id="space-in-target"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n", id="neg-length"),
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                 b"Content-Length: 2\r\n\r\n", id="two-lengths"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)) + b"\r\n\r\n",
                 id="tls-hello"),
    pytest.param(b"\x00\x01\x02\xff\r\n\r\n", id="binary"),
    # request smuggling shapes: a front end and this server must never
    # disagree on where a body ends, so these are refused, not guessed at
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
                 id="length-and-chunked"),
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="two-transfer-encodings"),
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                 b" 2\r\n\r\nxx", id="folded-length"),
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length : 1\r\n\r\nx",
                 id="space-before-colon"),
    pytest.param(b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1\r\n\r\nx",
                 id="hex-length"),
]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_request_gets_400_and_close(make_ctx, open_pair, raw):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        await pair.send_raw(raw)
        r = await pair.read_response("GET")
        # (h11 answers two Transfer-Encoding headers as an unsupported coding: 501)
        te = b"Transfer-Encoding: chunked\r\nTransfer-Encoding" in raw
        assert r.status == (501 if te else 400), r
        assert r.headers.get("connection") == "close"
        assert_common_headers(r, allowed_5xx=(501,) if te else ())
        assert await pair.read_until_eof() == b""
        await pair.wait_server_done()


async def test_malformed_second_request_after_a_good_one(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        assert (await pair.request("GET", "/health")).status == 200
        await pair.send_raw(b"BROKEN REQUEST\r\n\r\n")
        assert (await pair.read_response("GET")).status == 400
        await pair.wait_server_done()


async def test_request_timeout_mid_body_gets_408_and_close(make_ctx, open_pair):
    ctx = make_ctx(request_timeout=0.2)
    await ctx.store.create("slow", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("POST", S + "slow", [TEXT, ("Content-Length", "10")])
                            + b"abc")
        r = await pair.read_response("POST")
        assert r.status == 408
        assert r.headers.get("connection") == "close"
        assert_common_headers(r)
        assert await pair.read_until_eof() == b""
        await pair.wait_server_done()
    assert await contents(ctx, "slow") == b""


async def test_request_timeout_mid_head_gets_408(make_ctx, open_pair):
    """The policy (connection.py): "a request whose head and body do not
    arrive within request_timeout gets 408". A head that stops half-way is
    held by the idle timeout instead (75 s by default) and closed silently."""
    ctx = make_ctx(request_timeout=0.2, idle_timeout=30)
    async with open_pair(ctx) as pair:
        await pair.send_raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        r = await pair.read_response("GET", timeout=5)
        assert r.status == 408
        await pair.wait_server_done()


async def test_idle_connection_is_closed_quietly(make_ctx, open_pair):
    ctx = make_ctx(idle_timeout=0.2)
    async with open_pair(ctx) as pair:
        assert await pair.read_until_eof() == b""  # nothing sent, nothing received
        await pair.wait_server_done()
    async with open_pair(ctx) as pair:
        assert (await pair.request("GET", "/health")).status == 200
        assert await pair.read_until_eof() == b""  # idle after a response: closed, no 408
        await pair.wait_server_done()
    assert ctx.connections == 0


async def until_inflight(ctx, n: int) -> None:
    """Return once ``n`` request-body bytes are in flight (reserved when the
    server takes in a body: its whole Content-Length, or each chunk as it
    arrives): the server is then reading that body."""
    with anyio.fail_after(10):
        while ctx.inflight_bytes != n:
            await anyio.sleep(0.001)


async def test_client_vanishing_mid_body_appends_nothing(make_ctx, open_pair):
    ctx = make_ctx()
    await ctx.store.create("v", _text_options())
    before = await tail(ctx, "v")
    for chunked in (False, True):
        async with open_pair(ctx) as pair:
            if chunked:
                await pair.send_head("POST", S + "v", [TEXT, ("Transfer-Encoding", "chunked")])
                await pair.send_body(b"partial", end=False)
            else:
                await pair.send_raw(pair.request_bytes(
                    "POST", S + "v", [TEXT, ("Content-Length", "100")]) + b"partial")
            await until_inflight(ctx, len(b"partial") if chunked else 100)  # mid-body
            await pair.stream.send_eof()  # the client is gone
            await pair.wait_server_done()
    assert await tail(ctx, "v") == before
    assert ctx.inflight_bytes == 0  # the bodies' reservations are given back
    async with open_pair(ctx) as other:  # the server keeps serving others
        assert (await other.request("POST", S + "v", [TEXT], b"ok")).status == 204
    assert await contents(ctx, "v") == b"ok"
    assert ctx.connections == 0


async def test_client_vanishing_mid_body_over_tcp(make_ctx, run_server):
    ctx = make_ctx(shutdown_grace=2)
    await ctx.store.create("v", _text_options())
    async with run_server(ctx) as server:
        for _ in range(3):
            c = await server.connect()
            await c.send_raw(c.request_bytes("POST", S + "v", [TEXT, ("Content-Length", "1000")])
                             + b"x" * 500)
            await until_inflight(ctx, 1000)  # the server is reading the body...
            await c.aclose()
            with anyio.fail_after(10):  # ...and notices the client is gone
                while ctx.connections or ctx.inflight_bytes:
                    await anyio.sleep(0.001)
        r = await server.request("POST", S + "v", [TEXT], b"after")
        assert r.status == 204
        assert await contents(ctx, "v") == b"after"
        with anyio.fail_after(10):
            while ctx.connections:
                await anyio.sleep(0.01)


# ---- paths, methods --------------------------------------------------------------------------------

BAD_PATHS = [
    pytest.param(S + "a%2Fb", id="encoded-slash"),
    pytest.param(S + "a%2fb", id="encoded-slash-lower"),
    pytest.param(S + "a%5Cb", id="encoded-backslash"),
    pytest.param(S + "a/../b", id="dotdot"),
    pytest.param(S + "..", id="dotdot-only"),
    pytest.param(S + "%2e%2e/etc", id="encoded-dotdot"),
    pytest.param(S + "a/%2E/b", id="encoded-dot"),
    pytest.param(S + "a//b", id="empty-segment"),
    pytest.param(S + "a%00b", id="nul"),
    pytest.param(S + "a%0Ab", id="newline"),
    pytest.param(S + "%ff%fe", id="not-utf8"),
    pytest.param(S + "a" * 1100, id="overlong"),
    pytest.param(S + "%E2%82%AC" * 400, id="overlong-utf8"),
    pytest.param(S, id="empty"),
]


@pytest.mark.parametrize("target", BAD_PATHS)
async def test_bad_stream_paths_get_400(make_ctx, open_pair, target):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        for method in ("PUT", "POST", "GET", "HEAD", "DELETE"):
            body = b"x" if method == "POST" else b""
            r = await pair.request(method, target, [TEXT] if method in ("PUT", "POST") else [],
                                   body)
            assert r.status == 400, (method, r.status, r.body)
            assert_common_headers(r)
    assert await ctx.store.list_streams() == []


async def test_path_traversal_creates_nothing_outside_the_data_dir(make_ctx, open_pair, tmp_path):
    data = tmp_path / "data"
    store = FileBackedStreamStore(data)
    try:
        ctx = make_ctx(store)
        async with open_pair(ctx) as pair:
            for target in (S + "..%2F..%2Fescaped", S + "%2E%2E/escaped", S + "../escaped",
                           S + "a%2F..%2F..%2Fescaped"):
                assert (await pair.request("PUT", target, [TEXT])).status == 400
            assert (await pair.request("PUT", S + "fine/..x/y", [TEXT])).status == 201
    finally:
        await store.aclose()
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert not any("escaped" in name for name in os.listdir(data))


@pytest.mark.parametrize("target,status", [
    (S + "__ds", 404), (S + "__ds/subscriptions", 404), (S + "__dsx", 404),
    (S + "%5F%5Fds/x", 404),
    (S + "__ds%2Fx", 400),  # an encoded slash is refused before routing
])
async def test_reserved_ds_paths_are_refused(make_ctx, open_pair, target, status):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        for method, headers in (("PUT", [TEXT]), ("GET", []), ("POST", [TEXT]), ("HEAD", [])):
            r = await pair.request(method, target, headers, b"x" if method == "POST" else b"")
            assert r.status == status, (method, r.status)
            assert_common_headers(r)
    assert await ctx.store.list_streams() == []


async def test_non_stream_paths_get_404(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        for target in ("/", "/v1/stream", "/v1/streams/x", "/v2/stream/x", "/favicon.ico",
                       "/health/x", "//v1/stream/x"):
            r = await pair.request("GET", target)
            assert r.status == 404, target
            assert_common_headers(r)


@pytest.mark.parametrize("method", ["PATCH", "BREW", "TRACE", "CONNECT", "get", "PROPFIND"])
async def test_unknown_methods_get_405(make_ctx, open_pair, method):
    ctx = make_ctx()
    await ctx.store.create("m", _text_options())
    async with open_pair(ctx) as pair:
        r = await pair.request(method, S + "m")
        assert r.status == 405
        assert "allow" in r.headers and "GET" in r.headers["allow"]
        assert_common_headers(r)
        r = await pair.request(method, S + "missing")
        assert r.status == 405
        # the connection is still good
        assert (await pair.request("GET", "/health")).status == 200


async def test_post_to_health_is_405(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        r = await pair.request("POST", "/health", [TEXT], b"x")
        assert r.status == 405 and "GET" in r.headers["allow"]


# ---- bodiless responses ------------------------------------------------------------------------------

async def test_head_responses_have_no_body(make_ctx, open_pair):
    ctx = make_ctx()
    await ctx.store.create("h", _text_options(data=b"some data"))
    async with open_pair(ctx) as pair:
        raw = b"".join([
            pair.request_bytes("HEAD", S + "h"),
            pair.request_bytes("HEAD", S + "missing"),  # a 404 whose GET has a text body
            pair.request_bytes("HEAD", "/health"),
            pair.request_bytes("HEAD", S + "%2e%2e"),  # 400
            pair.request_bytes("HEAD", S + "h", [("Connection", "close")]),
        ])
        await pair.send_raw(raw)
        heads = split_raw_responses(await pair.read_until_eof())
    statuses = [int(h.split(b" ")[1]) for h in heads]
    assert statuses == [200, 404, 200, 400, 200]
    for h in heads:
        assert b"\r\ncontent-length: " not in h.lower() or b"content-length: 0\r\n" in h.lower()


async def test_204_and_304_have_no_body(make_ctx, open_pair):
    ctx = make_ctx()
    await ctx.store.create("n", _text_options(data=b"abc"))
    async with open_pair(ctx) as pair:
        etag = (await pair.request("GET", S + "n?offset=-1")).headers["etag"]
        raw = b"".join([
            pair.request_bytes("POST", S + "n", [TEXT], b"def"),               # 204
            pair.request_bytes("GET", S + "n?offset=-1", [("If-None-Match", etag)]),  # 200 (changed)
            pair.request_bytes("OPTIONS", S + "n"),                            # 204
            pair.request_bytes("PUT", S + "gone", [TEXT]),                     # 201
            pair.request_bytes("DELETE", S + "gone"),                          # 204
        ])
        await pair.send_raw(raw)
        got = [await pair.read_response(m) for m in ("POST", "GET", "OPTIONS", "PUT", "DELETE")]
        assert [r.status for r in got] == [204, 200, 204, 201, 204]
        etag2 = got[1].headers["etag"]
        assert etag2 != etag
        raw = b"".join([
            pair.request_bytes("GET", S + "n?offset=-1", [("If-None-Match", etag2)]),  # 304
            pair.request_bytes("POST", S + "n", [("Stream-Closed", "true")]),      # 204
            pair.request_bytes("GET", "/health", [("Connection", "close")]),
        ])
        await pair.send_raw(raw)
        rest = await pair.read_until_eof()
    heads = []
    for expected in (b"HTTP/1.1 304", b"HTTP/1.1 204"):
        assert rest.startswith(expected), rest[:60]  # nothing between: no body
        head, _, rest = rest.partition(b"\r\n\r\n")
        heads.append(head.lower())
    assert rest.startswith(b"HTTP/1.1 200"), rest[:60]
    assert b"stream-closed: true" in heads[1]
    for head in heads:
        assert b"transfer-encoding" not in head
        assert b"content-length: " not in head or b"content-length: 0" in head


# ---- headers on every response -----------------------------------------------------------------------

async def test_every_response_carries_nosniff_and_cors(make_ctx, open_pair):
    ctx = make_ctx(max_body=64, max_header_bytes=2048, long_poll_timeout=0.05,
                   request_timeout=0.2)
    await ctx.store.create("c", _text_options(data=b"x"))
    cases = [
        ("GET", S + "c?offset=-1", [], b""),
        ("GET", S + "c?offset=now", [], b""),
        ("GET", S + "c?offset=now&live=long-poll", [], b""),  # 204
        ("GET", S + "c?offset=-1&live=long-poll", [], b""),  # 200
        ("HEAD", S + "c", [], b""),
        ("POST", S + "c", [TEXT], b"y"),
        ("POST", S + "c", [("Content-Type", "application/json")], b"1"),  # 409
        ("PUT", S + "c", [("Content-Type", "application/json")], b""),  # 409
        ("PUT", S + "d", [TEXT], b""),  # 201
        ("PUT", S + "d", [TEXT], b""),  # 200
        ("DELETE", S + "d", [], b""),
        ("GET", S + "missing?offset=-1", [], b""),
        ("GET", S + "c?offset=bogus", [], b""),
        ("POST", S + "c", [TEXT, ("Producer-Id", "p")], b"z"),  # 400
        ("BREW", S + "c", [], b""),
        ("GET", "/nope", [], b""),
        ("GET", "/health", [], b""),
        ("OPTIONS", S + "anything", [], b""),
    ]
    async with open_pair(ctx) as pair:
        for method, target, headers, body in cases:
            r = await pair.request(method, target, headers, body)
            assert_common_headers(r)
        sse = await pair.open_sse(S + "c?offset=-1&live=sse")
        assert_common_headers(sse.head)
    # the ones that close the connection
    for raw in (b"NOT HTTP\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 4000 + b"\r\n\r\n",
                b"POST /v1/stream/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 65\r\n\r\n" + b"a" * 65,
                b"POST /v1/stream/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 10\r\n\r\nabc"):
        async with open_pair(ctx) as pair:
            try:
                await pair.send_slowly(raw, 256)  # a head past the limit arrives in pieces
            except anyio.BrokenResourceError:
                pass
            r = await pair.read_response("POST")
            assert r.status in (400, 408, 413, 431)
            assert_common_headers(r)


@pytest.mark.parametrize("target", [S + "never-created", "/", "/elsewhere/x", "*",
                                    S + "%2e%2e", S + "__ds/x", "/health"])
async def test_options_preflight_on_any_path_is_204_and_allows_if_none_match(
        make_ctx, open_pair, target):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        r = await pair.request("OPTIONS", target, [
            ("Origin", "https://example.com"), ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "if-none-match")])
        assert r.status == 204 and r.body == b""
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "if-none-match" in allowed or allowed == "*"
        for name in ("stream-seq", "producer-id", "stream-closed", "content-type"):
            assert name in allowed
        exposed = r.headers["access-control-expose-headers"].lower()
        for name in ("stream-next-offset", "stream-cursor", "etag", "location",
                     "stream-sse-data-encoding"):
            assert name in exposed
        assert_common_headers(r)


@pytest.mark.parametrize("coding", ["gzip, chunked", "identity", "deflate"])
async def test_unsupported_transfer_coding_is_501_and_appends_nothing(make_ctx, open_pair, coding):
    ctx = make_ctx()
    await ctx.store.create("tc", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("POST", S + "tc", [TEXT, ("Transfer-Encoding", coding)])
                            + b"3\r\nabc\r\n0\r\n\r\n")
        r = await pair.read_response("POST")
        assert r.status == 501
        assert_common_headers(r, allowed_5xx=(501,))
        await pair.wait_server_done()
    assert await contents(ctx, "tc") == b""


# ---- graceful shutdown ---------------------------------------------------------------------------------

async def test_shutdown_lets_an_in_flight_append_finish(make_ctx, run_server):
    ctx = make_ctx(shutdown_grace=5)
    await ctx.store.create("sd", _text_options())
    async with run_server(ctx) as server:
        client = await server.connect()
        await client.send_raw(client.request_bytes(
            "POST", S + "sd", [TEXT, ("Content-Length", "10")]) + b"01234")
        await until_inflight(ctx, 10)  # the append is in flight: head read, body half-sent
        ctx.shutdown()
        with anyio.fail_after(10):  # the server stops accepting (it closes its listener)
            while True:
                try:
                    late = await anyio.connect_tcp("127.0.0.1", server.port)
                except OSError:
                    break
                await late.aclose()  # got in before the listener closed: try again
                await anyio.sleep(0.001)
        assert ctx.inflight_bytes == 10  # the append still waits for the rest of its body
        await client.send_raw(b"56789")
        r = await client.read_response("POST")
        assert r.status == 204
        assert await client.read_until_eof() == b""  # then the connection closes
        await client.aclose()
        with anyio.fail_after(10):
            await server.done.wait()
    assert await contents(ctx, "sd") == b"0123456789"
    assert ctx.connections == 0


# ---- writes -------------------------------------------------------------------------------------------

async def test_a_response_head_goes_out_in_one_write(make_ctx, open_pair):
    """One send() -- one TCP segment with TCP_NODELAY -- per response head,
    not one per header line: fewer packets, and a crash can never leave a
    client with a plausible-looking but truncated head."""
    ctx = make_ctx()
    await ctx.store.create("w", _text_options(data=b"abc"))
    async with open_pair(ctx) as pair:
        for method, target, headers, body in (
                ("POST", S + "w", [TEXT], b"def"), ("GET", S + "w?offset=-1", [], b""),
                ("GET", "/health", [], b""), ("GET", S + "missing", [], b"")):
            await pair.send_raw(pair.request_bytes(method, target, headers, body))
            first = await pair.next_write()
            assert first.startswith(b"HTTP/1.1 ")
            assert b"\r\n\r\n" in first, f"{method} {target}: head split, first write {first!r}"
            head, _, rest = first.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            while len(rest) < (int(m.group(1)) if m else 0):  # drain the body
                rest += await pair.next_write()


async def test_an_sse_event_pair_goes_out_in_one_write(make_ctx, open_pair):
    """live.py: "each pair goes out in one write" -- the chunk framing included."""
    ctx = make_ctx()
    await ctx.store.create("sw", _text_options())
    async with open_pair(ctx) as pair:
        sse = await pair.open_sse(S + "sw?offset=-1&live=sse")
        await sse.next_events()  # the first control
        await ctx.store.append("sw", b"payload", AppendOptions(content_type="text/plain"))
        write = await pair.next_write()
        if write == b"\r\n":  # the end of the previous chunk, itself a separate write
            write = await pair.next_write()
        assert b"event: data" in write and b"event: control" in write and write.endswith(b"\r\n"), \
            f"an SSE chunk split over writes, first: {write!r}"


# ---- assorted protocol corners ---------------------------------------------------------------------------

async def test_connection_close_and_http10_are_honoured(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("GET", "/health", [("Connection", "close")]))
        r = await pair.read_response("GET")
        assert r.status == 200
        assert await pair.read_until_eof() == b""
        await pair.wait_server_done()
    async with open_pair(ctx) as pair:
        await pair.send_raw(b"GET /health HTTP/1.0\r\n\r\n")
        raw = await pair.read_until_eof()
        assert raw.startswith(b"HTTP/1.1 200") and b'"status": "ok"' in raw
        await pair.wait_server_done()


async def test_upgrade_request_is_answered_normally(make_ctx, open_pair):
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        r = await pair.request("GET", "/health", [("Connection", "Upgrade"),
                                                  ("Upgrade", "websocket")])
        assert r.status == 200
        assert (await pair.request("GET", "/health")).status == 200


async def test_garbage_after_a_good_request_on_the_same_write(make_ctx, open_pair):
    ctx = make_ctx()
    await ctx.store.create("g", _text_options())
    async with open_pair(ctx) as pair:
        await pair.send_raw(pair.request_bytes("POST", S + "g", [TEXT], b"ok")
                            + b"\x00\x00garbage\r\n\r\n")
        assert (await pair.read_response("POST")).status == 204
        assert (await pair.read_response("GET")).status == 400
        await pair.wait_server_done()
    assert await contents(ctx, "g") == b"ok"


def _text_options(data: bytes = b""):
    return CreateOptions(content_type="text/plain", data=data)


async def test_a_whole_body_is_sent_with_content_length_not_chunked(make_ctx, open_pair):
    """Clients (and proxies) learn a catch-up body's size up front."""
    ctx = make_ctx()
    async with open_pair(ctx) as pair:
        assert (await pair.request("PUT", S + "cl", [TEXT], b"twelve bytes")).status == 201
        r = await pair.request("GET", S + "cl?offset=-1")
        assert r.body == b"twelve bytes"
        assert r.headers.get("content-length") == "12"
        assert "transfer-encoding" not in r.headers
