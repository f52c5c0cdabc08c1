"""Every read mode returns exactly what was appended, on every store.

A Hypothesis property over content types (binary, text, JSON) x arbitrary
payloads x read modes, against the memory, file, Redis and PostgreSQL stores
(the shared ones when REDIS_URL / DATABASE_URL reach a server). Each example
creates a stream, appends the payloads through the HTTP handlers, closes the
stream, and reads it back four ways, each through the same handlers a client
reaches:

* catch-up -- ``GET ?offset=`` chained until ``Stream-Up-To-Date``;
* long-poll -- ``live=long-poll`` chained until ``Stream-Closed``, started
  before or after the writer (so it reads at the tail, waiting, or catches up);
* SSE -- ``live=sse`` from ``-1`` until the response ends at the close;
  base64 data for binary streams.

Each mode must yield the appended sequence: the same bytes for binary and
text streams (over SSE, text line breaks may become LF, as SSE requires:
nothing else may change), the same values in the same order for JSON
streams. The payloads are chosen to trip a reader that guesses instead of
knowing: bytes that are exactly ``[]`` on a binary stream (the regression:
a live reader skipped them), JSON arrays that are empty after flattening
(``[[]]``), SSE-looking text (``data: x`` and ``event: control`` lines),
CR, LF and CRLF, NUL, U+2028/U+2029/U+0085, invalid UTF-8 on binary
streams, and 300 KB payloads, read with response chunks from one byte up.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import random
import re
import uuid

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.stores import close_test_store, open_test_store, skip_unless_runs_on
from unbroken_engine.log.segmented import LogConfig

TIMEOUT = 30.0  # liveness bound of one example, never a timing assertion

OCTET, TEXT, JSON = "application/octet-stream", "text/plain; charset=utf-8", "application/json"

TRICKY_TEXT = ["[]", "data: x\n\n", "event: control\ndata: {}\n\n", "\r", "\n", "\r\n",
               "a\rb\nc\r\nd", "\x00", "\u2028", "\u2029", "\u0085", ":\n", "id: 1\n"]
TRICKY_BYTES = [t.encode() for t in TRICKY_TEXT] + [
    b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc", b"[", b"]", b",", b"[1,2]"]


@functools.lru_cache(maxsize=None)
def _big(seed: int) -> bytes:
    """A 300 KB payload (Hypothesis cannot draw one this large directly)."""
    return random.Random(seed).randbytes(300_000)


@functools.lru_cache(maxsize=None)
def _big_text(seed: int) -> bytes:
    """300 KB of text in lines of up to 2 KB, ending in CR, LF or CRLF."""
    rnd = random.Random(seed)
    out, size = [], 0
    while size < 300_000:
        line = "".join(rnd.choice("ab \u2028{}[]") for _ in range(rnd.randrange(2048)))
        line += rnd.choice(["\r", "\n", "\r\n"])
        out.append(line)
        size += len(line)
    return "".join(out).encode()


_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)

BINARY_PAYLOADS = st.one_of(
    st.sampled_from(TRICKY_BYTES), st.binary(min_size=1, max_size=64),
    st.integers(0, 3).map(_big))
TEXT_PAYLOADS = st.one_of(
    st.sampled_from(TRICKY_TEXT).map(str.encode), _text.map(str.encode),
    st.integers(0, 3).map(_big_text))

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.sampled_from(TRICKY_TEXT), _text)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)), max_leaves=8)


def _json_text(value, layout: int) -> bytes:
    """``value`` as JSON text, compact, spaced or with CRLF line breaks
    between tokens (whitespace a line-based SSE reader must not trip on)."""
    if layout == 0:
        text = json.dumps(value, separators=(",", ":"))
    elif layout == 1:
        text = json.dumps(value)
    else:
        text = json.dumps(value, indent=1).replace("\n", "\r\n")
    return text.encode()


JSON_PAYLOADS = st.one_of(
    st.builds(_json_text, _values.filter(lambda v: v != []), st.integers(0, 2)),
    # arrays are flattened one level: these append messages that are empty arrays
    st.sampled_from([b"[[]]", b"[[], []]", b"[[],{}]", b'["[]"]', b"[{}]"]),
    # a top-level array of several values
    st.builds(_json_text, st.lists(_values, min_size=1, max_size=4), st.integers(0, 2)),
)


def _crlf_split(payloads) -> bool:
    """Whether a CR ends one payload and an LF starts the next (one line
    break or two, depending on how SSE groups them: not comparable)."""
    return any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in zip(payloads, payloads[1:]))


@st.composite
def scenarios(draw):
    content_type = draw(st.sampled_from([OCTET, TEXT, JSON]))
    payloads = {OCTET: BINARY_PAYLOADS, TEXT: TEXT_PAYLOADS, JSON: JSON_PAYLOADS}[content_type]
    appends = draw(st.lists(payloads, min_size=1, max_size=6).filter(
        lambda ps: content_type != TEXT or not _crlf_split(ps)))
    return {
        "content_type": content_type,
        "appends": appends,
        "read_chunk": draw(st.sampled_from([1, 7, 1 << 10, 1 << 20])),
        "readers_first": draw(st.booleans()),
    }


# ---- the stores --------------------------------------------------------------------------

STORE_KINDS = ["memory", "file", "redis", "postgres"]


@pytest.fixture(params=STORE_KINDS)
async def any_store(request, tmp_path, anyio_backend):
    """Each kind of store the server runs on (the file store in its default
    configuration); a shared backend's keys or schema are dropped afterwards."""
    skip_unless_runs_on(request.param, anyio_backend)
    store = await open_test_store(request.param, tmp_path, config=LogConfig())
    try:
        yield store
    finally:
        await close_test_store(store)


# ---- the read modes, through the handlers ---------------------------------------------------------

def _q(offset: str) -> str:
    return offset.replace("_", "%5F")  # offsets are opaque: quote what a client would


async def catch_up(call, ctx, path: str) -> list[bytes]:
    bodies, offset = [], "-1"
    while True:
        r = await call(ctx, "GET", f"{path}?offset={_q(offset)}")
        assert r.status == 200, (r.status, r.body)
        bodies.append(r.body)
        offset = r.headers["stream-next-offset"]
        if r.headers.get("stream-up-to-date") == "true":
            return bodies


async def long_poll(call, ctx, path: str) -> list[bytes]:
    bodies, offset, cursor = [], "-1", ""
    while True:
        target = f"{path}?offset={_q(offset)}&live=long-poll" + (
            f"&cursor={cursor}" if cursor else "")
        r = await call(ctx, "GET", target)
        assert r.status in (200, 204), (r.status, r.body)
        if r.status == 200:
            bodies.append(r.body)
        offset = r.headers["stream-next-offset"]
        cursor = r.headers.get("stream-cursor", "")
        if r.headers.get("stream-closed") == "true":
            return bodies


async def sse(call, sse_parse, ctx, path: str, binary: bool) -> list[bytes]:
    r = await call(ctx, "GET", f"{path}?offset=-1&live=sse")
    assert r.status == 200, (r.status, r.body)
    assert (r.headers.get("stream-sse-data-encoding") == "base64") == binary
    raw = b"".join([bytes(chunk) async for chunk in r.chunks])  # ends after streamClosed
    events = sse_parse(raw)
    assert events[-1].event == "control" and events[-1].json().get("streamClosed") is True
    datas = [ev.data for ev in events if ev.event == "data"]
    if binary:
        return [base64.b64decode(d, validate=True) for d in datas]
    return [d.encode() for d in datas]


# ---- what each mode must give back ------------------------------------------------------------

def _values_of(bodies) -> list[str]:
    """The JSON values of a sequence of read bodies (each one JSON array), in
    a form that keeps their types apart (``1``, ``1.0`` and ``true`` differ)."""
    return [json.dumps(v) for body in bodies for v in json.loads(body)]


def _appended_values(appends) -> list[str]:
    out = []
    for body in appends:
        value = json.loads(body)
        out += [json.dumps(v) for v in value] if isinstance(value, list) else [json.dumps(value)]
    return out


def _lf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\n", data)


def check(mode: str, content_type: str, appends, bodies) -> None:
    if content_type == JSON:
        assert _values_of(bodies) == _appended_values(appends), mode
    elif content_type == TEXT and mode == "sse":
        assert b"".join(bodies) == b"".join(_lf(p) for p in appends), mode
    else:
        assert b"".join(bodies) == b"".join(appends), mode


# ---- the property ---------------------------------------------------------------------------------

@settings(max_examples=int(os.environ.get("UNBROKEN_READ_MODES_EXAMPLES", "60")),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(scenario=scenarios())
async def test_every_read_mode_returns_what_was_appended(any_store, make_ctx, call, sse_parse,
                                                         scenario):
    content_type, appends = scenario["content_type"], scenario["appends"]
    ctx = make_ctx(any_store, read_chunk=scenario["read_chunk"], long_poll_timeout=0.2)
    path = f"/v1/stream/modes/{uuid.uuid4().hex}"
    r = await call(ctx, "PUT", path, {"content-type": content_type})
    assert r.status == 201
    results: dict[str, list[bytes]] = {}

    async def write():
        for body in appends:
            w = await call(ctx, "POST", path, {"content-type": content_type}, body)
            assert w.status == 204, (w.status, w.body)
        w = await call(ctx, "POST", path, {"stream-closed": "true"})
        assert w.status == 204, (w.status, w.body)

    async def read(mode, reader):
        results[mode] = await reader()

    readers = {
        "long-poll": lambda: long_poll(call, ctx, path),
        "sse": lambda: sse(call, sse_parse, ctx, path, content_type == OCTET),
    }
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            if not scenario["readers_first"]:
                await write()
            for mode, reader in readers.items():
                tg.start_soon(read, mode, reader)
            if scenario["readers_first"]:
                await anyio.sleep(0)  # let them start: they wait at the tail (or race the writer)
                await write()
        results["catch-up"] = await catch_up(call, ctx, path)
    for mode, bodies in results.items():
        check(mode, content_type, appends, bodies)


# ---- the regression, deterministic -----------------------------------------------------------------

@pytest.mark.parametrize("content_type", [OCTET, TEXT])
async def test_a_parked_live_reader_gets_a_message_whose_bytes_are_an_empty_json_array(
        any_store, make_ctx, call, sse_parse, content_type):
    """A long-poll parked at the tail and an SSE reader following from the
    start both deliver ``[]`` on a non-JSON stream (they once skipped it: the
    long-poll answered 204 past it, the SSE control event moved past it)."""
    ctx = make_ctx(any_store, long_poll_timeout=TIMEOUT / 3)
    path = "/v1/stream/regression/empty-array-bytes"
    assert (await call(ctx, "PUT", path, {"content-type": content_type})).status == 201
    tail = (await call(ctx, "HEAD", path)).headers["stream-next-offset"]
    answers = {}

    async def poll():
        answers["long-poll"] = await call(ctx, "GET", f"{path}?offset={_q(tail)}&live=long-poll")

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            while ctx.live_readers < 1:  # it took its slot...
                await anyio.sleep(0.001)
            await anyio.wait_all_tasks_blocked()  # ...and waits (in-process stores: parked)
            w = await call(ctx, "POST", path, {"content-type": content_type}, b"[]")
            assert w.status == 204
        await call(ctx, "POST", path, {"stream-closed": "true"})
        got = await sse(call, sse_parse, ctx, path, content_type == OCTET)
    lp = answers["long-poll"]
    assert (lp.status, lp.body) == (200, b"[]")
    assert got == [b"[]"]
