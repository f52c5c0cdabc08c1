"""Handlers called directly with Request values (no sockets): statuses and
headers per the rule book's PART B (B3 PUT, B4 POST, B5 GET, B6 HEAD, B7
DELETE), on both stores (``store`` is parametrized: memory and file).
"""
from __future__ import annotations

import gzip
import json
from urllib.parse import urlparse

import pytest

from unbroken_engine.protocol.offsets import format_offset, parse_offset

pytestmark = pytest.mark.anyio

S = "/v1/stream/"
TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def ctx(store, make_ctx):
    return make_ctx(store)


def off(resp) -> int:
    return parse_offset(resp.headers["stream-next-offset"])


def assert_b2(resp):
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["access-control-allow-origin"] == "*"
    assert resp.headers["cross-origin-resource-policy"] == "cross-origin"


# ---- B3: PUT --------------------------------------------------------------------------------

async def test_put_creates_with_201_location_type_and_offset(ctx, call):
    r = await call(ctx, "PUT", S + "a/b", {**TEXT, "host": "example.com:8080"})
    assert r.status == 201
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["stream-next-offset"] == format_offset(0)
    loc = r.headers["location"]
    assert loc == "http://example.com:8080/v1/stream/a/b"
    assert urlparse(loc).scheme == "http" and loc.endswith(S + "a/b")
    assert "stream-closed" not in r.headers
    for name in ("stream-forked-from", "stream-fork-offset", "stream-fork-sub-offset"):
        assert name not in r.headers
    assert r.body == b""
    assert_b2(r)


async def test_put_with_initial_body_reports_its_tail(ctx, call):
    r = await call(ctx, "PUT", S + "init", TEXT, b"hello")
    assert r.status == 201 and off(r) > 0
    g = await call(ctx, "GET", S + "init?offset=-1")
    assert g.body == b"hello" and g.headers["stream-next-offset"] == r.headers["stream-next-offset"]


async def test_put_keeps_the_content_type_verbatim(ctx, call):
    r = await call(ctx, "PUT", S + "ct", {"content-type": "application/json; charset=utf-8"})
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    r = await call(ctx, "PUT", S + "noct")
    assert r.status == 201 and r.headers["content-type"] == "application/octet-stream"


async def test_put_idempotent_200_and_mismatch_409(ctx, call):
    assert (await call(ctx, "PUT", S + "i", {**TEXT, "stream-ttl": "60"})).status == 201
    await call(ctx, "POST", S + "i", TEXT, b"data")
    again = await call(ctx, "PUT", S + "i", {"content-type": "TEXT/PLAIN", "stream-ttl": "60"})
    assert again.status == 200
    assert "location" not in again.headers
    assert again.headers["content-type"] == "text/plain"
    assert off(again) > 0  # the current tail
    assert_b2(again)
    for headers in ({"content-type": "application/json", "stream-ttl": "60"},
                    {**TEXT, "stream-ttl": "61"}, TEXT):
        r = await call(ctx, "PUT", S + "i", headers)
        assert r.status == 409, headers
        assert_b2(r)


async def test_put_closed_reports_stream_closed(ctx, call):
    r = await call(ctx, "PUT", S + "pc", {**TEXT, "stream-closed": "true"}, b"last")
    assert r.status == 201 and r.headers["stream-closed"] == "true"
    r = await call(ctx, "PUT", S + "pc", {**TEXT, "stream-closed": "true"}, b"last")
    assert r.status == 200 and r.headers["stream-closed"] == "true"


async def test_put_compares_stream_closed_with_the_closure_status(ctx, call):
    """PROTOCOL.md §5.1 (MUST): the four cases of open/closed stream and
    ``Stream-Closed`` given or not; a 409 changes nothing."""
    closed = {**TEXT, "stream-closed": "true"}
    await call(ctx, "PUT", S + "open", TEXT, b"a")
    await call(ctx, "PUT", S + "shut", TEXT, b"a")
    await call(ctx, "POST", S + "shut", {"stream-closed": "true"})
    r = await call(ctx, "PUT", S + "open", TEXT)
    assert r.status == 200 and "stream-closed" not in r.headers
    r = await call(ctx, "PUT", S + "open", closed)
    assert r.status == 409 and b"closure" in r.body
    assert_b2(r)
    assert "stream-closed" not in (await call(ctx, "HEAD", S + "open")).headers
    r = await call(ctx, "PUT", S + "shut", closed)
    assert r.status == 200 and r.headers["stream-closed"] == "true"
    assert r.headers["stream-next-offset"] == (await call(ctx, "HEAD", S + "shut")).headers[
        "stream-next-offset"]
    r = await call(ctx, "PUT", S + "shut", TEXT)
    assert r.status == 409 and b"closure" in r.body
    assert (await call(ctx, "HEAD", S + "shut")).headers["stream-closed"] == "true"
    assert (await call(ctx, "POST", S + "open", TEXT, b"b")).status == 204


@pytest.mark.parametrize("headers", [
    {"stream-ttl": "10", "stream-expires-at": "2099-01-01T00:00:00Z"},
    {"stream-ttl": "-1"}, {"stream-ttl": "1.5"}, {"stream-ttl": "010"}, {"stream-ttl": ""},
    {"stream-expires-at": "tomorrow"}, {"stream-expires-at": "2099-01-01T00:00:00"},
    {"stream-closed": "maybe"},
    {"content-type": "notatype"},
    {"stream-fork-offset": format_offset(0)},
    {"stream-forked-from": S + "src", "stream-fork-sub-offset": "1"},
    {"stream-forked-from": S + "src", "stream-fork-offset": "garbage"},
])
async def test_put_bad_headers_400(ctx, call, headers):
    await call(ctx, "PUT", S + "src", TEXT, b"abc")
    r = await call(ctx, "PUT", S + "x", headers)
    assert r.status == 400, (headers, r.body)
    assert_b2(r)
    assert (await call(ctx, "HEAD", S + "x")).status == 404


async def test_put_json_with_invalid_initial_body_400(ctx, call):
    r = await call(ctx, "PUT", S + "j", JSON, b"{not json")
    assert r.status == 400


async def test_fork_from_url_path_or_bare_path(ctx, call):
    await call(ctx, "PUT", S + "src/x", JSON, b'[{"n":1},{"n":2}]')
    r = await call(ctx, "PUT", S + "f1", {"stream-forked-from": S + "src/x"})
    assert r.status == 201
    assert r.headers["content-type"] == "application/json"  # inherited
    assert "stream-forked-from" not in r.headers
    g = await call(ctx, "GET", S + "f1?offset=-1")
    assert json.loads(g.body) == [{"n": 1}, {"n": 2}]
    r = await call(ctx, "PUT", S + "f2", {"stream-forked-from": "src/x"})
    assert r.status == 201
    # a fork from a missing source is a 404; from a path outside /v1/stream/ a 400
    assert (await call(ctx, "PUT", S + "f3", {"stream-forked-from": S + "nope"})).status == 404
    assert (await call(ctx, "PUT", S + "f4", {"stream-forked-from": "/elsewhere/src/x"})).status == 400
    assert (await call(ctx, "PUT", S + "f5", {"stream-forked-from": S + "..%2Fx"})).status == 400


async def test_fork_at_an_offset(ctx, call):
    await call(ctx, "PUT", S + "s", TEXT)
    first = await call(ctx, "POST", S + "s", TEXT, b"one")
    await call(ctx, "POST", S + "s", TEXT, b"two")
    r = await call(ctx, "PUT", S + "fk", {"stream-forked-from": S + "s",
                                          "stream-fork-offset": first.headers["stream-next-offset"]})
    assert r.status == 201 and r.headers["stream-next-offset"] == first.headers["stream-next-offset"]
    assert (await call(ctx, "GET", S + "fk?offset=-1")).body == b"one"


# ---- B4: POST --------------------------------------------------------------------------------------

async def test_plain_append_204_with_next_offset(ctx, call):
    await call(ctx, "PUT", S + "p", TEXT)
    r1 = await call(ctx, "POST", S + "p", TEXT, b"a")
    r2 = await call(ctx, "POST", S + "p", {"content-type": "Text/Plain; charset=x"}, b"b")
    assert (r1.status, r2.status) == (204, 204)
    assert r1.body == r2.body == b""
    assert off(r2) > off(r1) > 0
    assert "stream-closed" not in r1.headers
    assert "producer-epoch" not in r1.headers
    assert_b2(r1)


@pytest.mark.parametrize("headers,body,status", [
    ({}, b"x", 400),                      # no content type with a body
    (TEXT, b"", 400),                     # empty body, no close
    (JSON, b"1", 409),                    # type mismatch
    ({**TEXT, "producer-id": "p"}, b"x", 400),  # partial producer headers
    ({**TEXT, "producer-id": "", "producer-epoch": "0", "producer-seq": "0"}, b"x", 400),
    ({**TEXT, "producer-id": "p", "producer-epoch": "-1", "producer-seq": "0"}, b"x", 400),
    ({**TEXT, "producer-id": "p", "producer-epoch": "0", "producer-seq": "1e3"}, b"x", 400),
    ({**TEXT, "producer-id": "p", "producer-epoch": "0",
      "producer-seq": "9007199254740992"}, b"x", 400),
    ({**TEXT, "stream-closed": "yes"}, b"x", 400),
])
async def test_append_errors(ctx, call, headers, body, status):
    await call(ctx, "PUT", S + "e", TEXT)
    r = await call(ctx, "POST", S + "e", headers, body)
    assert r.status == status, r.body
    assert_b2(r)
    assert (await call(ctx, "GET", S + "e?offset=-1")).body == b""


async def test_append_to_missing_stream_404(ctx, call):
    r = await call(ctx, "POST", S + "nope", TEXT, b"x")
    assert r.status == 404
    assert_b2(r)


async def test_json_append_errors(ctx, call):
    await call(ctx, "PUT", S + "js", JSON)
    assert (await call(ctx, "POST", S + "js", JSON, b"{bad")).status == 400
    assert (await call(ctx, "POST", S + "js", JSON, b"[]")).status == 400
    assert (await call(ctx, "POST", S + "js", JSON, b"[1,2]")).status == 204
    assert json.loads((await call(ctx, "GET", S + "js?offset=-1")).body) == [1, 2]


async def test_json_lone_surrogate_escape_accepted_invalid_utf8_bytes_400(ctx, call):
    """docs/protocol-choices.md: ``"\\ud800"`` (what JSON.stringify writes for a
    lone surrogate) is stored and served as sent; an encoded surrogate is not
    UTF-8 and gets 400, changing nothing."""
    await call(ctx, "PUT", S + "ls", JSON)
    r = await call(ctx, "POST", S + "ls", JSON, b'["\\udc00", "a\\ud800b"]')
    assert r.status == 204
    tail = r.headers["stream-next-offset"]
    bad = await call(ctx, "POST", S + "ls", JSON, b'"\xed\xa0\x80"')
    assert bad.status == 400 and b"invalid JSON" in bad.body
    g = await call(ctx, "GET", S + "ls?offset=-1")
    assert g.body == b'["\\udc00","a\\ud800b"]'
    assert g.headers["stream-next-offset"] == tail
    last = await call(ctx, "GET", S + "ls?last=true")
    assert last.status == 200 and last.body == b'["a\\ud800b"]'


async def test_stream_seq_must_increase(ctx, call):
    await call(ctx, "PUT", S + "sq", TEXT)
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "09"}, b"a")).status == 204
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "10"}, b"b")).status == 204
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "10"}, b"c")).status == 409
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "1"}, b"c")).status == 409
    # byte-wise order: "2" > "10"
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "2"}, b"d")).status == 204
    assert (await call(ctx, "POST", S + "sq", {**TEXT, "stream-seq": "10"}, b"e")).status == 409
    assert (await call(ctx, "GET", S + "sq?offset=-1")).body == b"abd"


def producer(pid="p1", epoch=0, seq=0, **extra):
    return {**TEXT, "producer-id": pid, "producer-epoch": str(epoch), "producer-seq": str(seq),
            **extra}


async def test_producer_statuses_and_headers(ctx, call):
    await call(ctx, "PUT", S + "pr", TEXT)
    r = await call(ctx, "POST", S + "pr", producer(seq=0), b"m0")
    assert r.status == 200
    assert (r.headers["producer-epoch"], r.headers["producer-seq"]) == ("0", "0")
    assert off(r) > 0
    r = await call(ctx, "POST", S + "pr", producer(seq=1), b"m1")
    assert r.status == 200 and r.headers["producer-seq"] == "1"
    tail = r.headers["stream-next-offset"]
    # a duplicate: 204, the highest accepted seq, nothing appended
    dup = await call(ctx, "POST", S + "pr", producer(seq=0), b"m0")
    assert dup.status == 204
    assert (dup.headers["producer-seq"], dup.headers["producer-epoch"]) == ("1", "0")
    assert dup.headers["stream-next-offset"] == tail
    # a gap: 409 with expected / received
    gap = await call(ctx, "POST", S + "pr", producer(seq=3), b"m3")
    assert gap.status == 409
    assert (gap.headers["producer-expected-seq"], gap.headers["producer-received-seq"]) == ("2", "3")
    # an epoch bump must start at seq 0
    assert (await call(ctx, "POST", S + "pr", producer(epoch=1, seq=5), b"x")).status == 400
    bump = await call(ctx, "POST", S + "pr", producer(epoch=1, seq=0), b"e1")
    assert bump.status == 200 and bump.headers["producer-epoch"] == "1"
    # a stale epoch: 403 with the current epoch
    stale = await call(ctx, "POST", S + "pr", producer(epoch=0, seq=2), b"old")
    assert stale.status == 403 and stale.headers["producer-epoch"] == "1"
    for resp in (r, dup, gap, stale):
        assert_b2(resp)
    assert (await call(ctx, "GET", S + "pr?offset=-1")).body == b"m0m1e1"


async def test_close_only_and_appends_to_a_closed_stream(ctx, call):
    await call(ctx, "PUT", S + "cl", TEXT)
    await call(ctx, "POST", S + "cl", TEXT, b"data")
    # close-only needs no Content-Type and tolerates a mismatching one
    r = await call(ctx, "POST", S + "cl", {"stream-closed": "true"})
    assert r.status == 204 and r.headers["stream-closed"] == "true"
    final = r.headers["stream-next-offset"]
    again = await call(ctx, "POST", S + "cl", {**JSON, "stream-closed": "true"})
    assert again.status == 204 and again.headers["stream-closed"] == "true"
    assert again.headers["stream-next-offset"] == final
    refused = await call(ctx, "POST", S + "cl", TEXT, b"more")
    assert refused.status == 409
    assert refused.headers["stream-closed"] == "true"
    assert refused.headers["stream-next-offset"] == final
    assert_b2(refused)
    refused = await call(ctx, "POST", S + "cl", {**TEXT, "stream-closed": "true"}, b"more")
    assert refused.status == 409 and refused.headers["stream-next-offset"] == final
    g = await call(ctx, "GET", S + "cl?offset=-1")
    assert g.body == b"data" and g.headers["stream-closed"] == "true"


async def test_append_and_close_in_one_request(ctx, call):
    await call(ctx, "PUT", S + "ac", TEXT)
    r = await call(ctx, "POST", S + "ac", {**TEXT, "stream-closed": "true"}, b"bye")
    assert r.status == 204 and r.headers["stream-closed"] == "true"
    h = await call(ctx, "HEAD", S + "ac")
    assert h.headers["stream-closed"] == "true"
    assert h.headers["stream-next-offset"] == r.headers["stream-next-offset"]


async def test_producer_close(ctx, call):
    await call(ctx, "PUT", S + "pcl", TEXT)
    r = await call(ctx, "POST", S + "pcl", producer(seq=0, **{"stream-closed": "true"}), b"fin")
    assert r.status == 200 and r.headers["stream-closed"] == "true"
    assert (r.headers["producer-epoch"], r.headers["producer-seq"]) == ("0", "0")
    dup = await call(ctx, "POST", S + "pcl", producer(seq=0, **{"stream-closed": "true"}), b"fin")
    assert dup.status == 204 and dup.headers["stream-closed"] == "true"
    new = await call(ctx, "POST", S + "pcl", producer(seq=1), b"late")
    assert new.status == 409 and new.headers["stream-closed"] == "true"
    await call(ctx, "PUT", S + "pcl2", TEXT)
    only = await call(ctx, "POST", S + "pcl2", {"producer-id": "q", "producer-epoch": "0",
                                                "producer-seq": "0", "stream-closed": "true"})
    assert only.status == 204 and only.headers["stream-closed"] == "true"
    assert only.headers["producer-seq"] == "0" and "stream-next-offset" in only.headers


# ---- B5: GET ----------------------------------------------------------------------------------------

async def test_get_headers_etag_and_304(ctx, call):
    await call(ctx, "PUT", S + "g", TEXT)
    await call(ctx, "POST", S + "g", TEXT, b"abc")
    r = await call(ctx, "GET", S + "g?offset=-1")
    assert r.status == 200 and r.body == b"abc"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["stream-up-to-date"] == "true"
    assert "stream-closed" not in r.headers
    etag = r.headers["etag"]
    assert etag
    assert_b2(r)
    again = await call(ctx, "GET", S + "g?offset=-1")
    assert again.headers["etag"] == etag
    nm = await call(ctx, "GET", S + "g?offset=-1", {"if-none-match": etag})
    assert nm.status == 304 and nm.body == b"" and nm.headers["etag"] == etag
    assert_b2(nm)
    wrong = await call(ctx, "GET", S + "g?offset=-1", {"if-none-match": '"wrong-etag"'})
    assert wrong.status == 200 and wrong.body == b"abc"
    await call(ctx, "POST", S + "g", TEXT, b"d")
    changed = await call(ctx, "GET", S + "g?offset=-1", {"if-none-match": etag})
    assert changed.status == 200 and changed.body == b"abcd" and changed.headers["etag"] != etag


async def test_get_without_offset_reads_from_the_start(ctx, call):
    await call(ctx, "PUT", S + "nooff", TEXT, b"xyz")
    r = await call(ctx, "GET", S + "nooff")
    assert r.status == 200 and r.body == b"xyz"


async def test_get_offset_now_is_no_store_and_empty(ctx, call):
    await call(ctx, "PUT", S + "now", TEXT, b"old")
    r = await call(ctx, "GET", S + "now?offset=now")
    assert r.status == 200 and r.body == b""
    assert "no-store" in r.headers["cache-control"]
    assert r.headers["stream-up-to-date"] == "true"
    tail = (await call(ctx, "HEAD", S + "now")).headers["stream-next-offset"]
    assert r.headers["stream-next-offset"] == tail
    await call(ctx, "PUT", S + "nowj", JSON, b"[1]")
    r = await call(ctx, "GET", S + "nowj?offset=now")
    assert r.body == b"[]"


async def test_get_from_a_returned_offset_and_not_up_to_date_mid_stream(ctx, call, make_ctx):
    small = make_ctx(ctx.store, read_chunk=4)
    await call(small, "PUT", S + "mid", TEXT)
    first = await call(small, "POST", S + "mid", TEXT, b"1111")
    await call(small, "POST", S + "mid", TEXT, b"2222")
    r = await call(small, "GET", S + "mid?offset=-1")
    assert r.body == b"1111" and "stream-up-to-date" not in r.headers
    assert r.headers["stream-next-offset"] == first.headers["stream-next-offset"]
    r2 = await call(small, "GET", S + "mid?offset=" + r.headers["stream-next-offset"])
    assert r2.body == b"2222" and r2.headers["stream-up-to-date"] == "true"


async def test_gzip_for_large_bodies_only(ctx, call):
    await call(ctx, "PUT", S + "z", TEXT)
    big = (b"the quick brown fox " * 100)[:2000]
    await call(ctx, "POST", S + "z", TEXT, big)
    r = await call(ctx, "GET", S + "z?offset=-1", {"accept-encoding": "gzip, deflate, br"})
    assert r.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in r.headers["vary"].lower()
    assert gzip.decompress(r.body) == big
    plain = await call(ctx, "GET", S + "z?offset=-1")
    assert "content-encoding" not in plain.headers and plain.body == big
    await call(ctx, "PUT", S + "zs", TEXT, b"s" * 1023)
    small = await call(ctx, "GET", S + "zs?offset=-1", {"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers and small.body == b"s" * 1023
    await call(ctx, "PUT", S + "zk", TEXT, b"k" * 1024)
    edge = await call(ctx, "GET", S + "zk?offset=-1", {"accept-encoding": "gzip"})
    assert edge.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(edge.body) == b"k" * 1024


@pytest.mark.parametrize("query", ["offset=0,1", "offset=", "offset=-1&offset=-1",
                                   "offset=-1%0A", "offset=-2", "offset=1_2",
                                   "offset=0000000000000000_000000000000001",
                                   "offset=0000000000000001_0000000000000000",
                                   "offset=NOW", "offset=%20-1", "offset=-1&live=sse&offset=now",
                                   "live=sse", "live=long-poll"])
async def test_malformed_offsets_400_but_404_first_for_missing_streams(ctx, call, query):
    await call(ctx, "PUT", S + "o", TEXT, b"data")
    r = await call(ctx, "GET", S + "o?" + query)
    assert r.status == 400, (query, r.status)
    assert_b2(r)
    missing = await call(ctx, "GET", S + "missing?" + query)
    assert missing.status == 404, (query, missing.status)


async def test_offset_beyond_the_tail_400(ctx, call):
    await call(ctx, "PUT", S + "beyond", TEXT, b"data")
    r = await call(ctx, "GET", S + "beyond?offset=" + format_offset(10**9))
    assert r.status == 400


async def test_unknown_query_parameters_are_ignored(ctx, call):
    await call(ctx, "PUT", S + "q", TEXT, b"data")
    r = await call(ctx, "GET", S + "q?offset=-1&foo=bar&x")
    assert r.status == 200 and r.body == b"data"


# ---- extension: GET ?last=true (docs/protocol-choices.md) ---------------------------------------------

def assert_last(resp, tail):
    """The headers every ``last=true`` answer carries."""
    assert resp.status == 200, resp.body
    assert resp.headers["stream-read"] == "last"
    assert resp.headers["stream-up-to-date"] == "true"
    assert resp.headers["stream-next-offset"] == tail
    assert resp.headers["cache-control"] == "no-store"
    assert "stream-read" in resp.headers["access-control-expose-headers"].lower()
    assert "stream-last-offset" in resp.headers["access-control-expose-headers"].lower()
    assert "etag" not in resp.headers and "content-encoding" not in resp.headers
    assert_b2(resp)


async def test_get_last_of_a_bytes_stream(ctx, call):
    await call(ctx, "PUT", S + "lb", TEXT)
    r = await call(ctx, "GET", S + "lb?last=true")
    assert_last(r, format_offset(0))
    assert r.body == b"" and "stream-last-offset" not in r.headers
    assert r.headers["content-type"] == "text/plain"
    first = await call(ctx, "POST", S + "lb", TEXT, b"one")
    second = await call(ctx, "POST", S + "lb", TEXT, b"two" * 400)  # not gzipped either
    for query in ("last=true", "offset=-1&last=true", "last=true&offset=-1"):
        r = await call(ctx, "GET", S + "lb?" + query, {"accept-encoding": "gzip"})
        assert_last(r, second.headers["stream-next-offset"])
        assert r.body == b"two" * 400
        assert r.headers["stream-last-offset"] == first.headers["stream-next-offset"]
        assert "stream-closed" not in r.headers
    # the offset it names is where that append can be read from
    g = await call(ctx, "GET", S + "lb?offset=" + r.headers["stream-last-offset"])
    assert g.body == b"two" * 400


async def test_get_last_of_a_json_stream_is_one_value(ctx, call):
    await call(ctx, "PUT", S + "lj", JSON)
    r = await call(ctx, "GET", S + "lj?last=true")
    assert_last(r, format_offset(0))
    assert r.body == b"[]" and "stream-last-offset" not in r.headers
    assert r.headers["content-type"] == "application/json"
    before = await call(ctx, "POST", S + "lj", JSON, b'[{"n": 1}, {"n": 2}]')
    after = await call(ctx, "POST", S + "lj", JSON, b'[{"n": 3}, {"n": 4}, {"n": 5}]')
    r = await call(ctx, "GET", S + "lj?last=true")
    assert_last(r, after.headers["stream-next-offset"])
    assert r.body == b'[{"n": 5}]' and r.json() == [{"n": 5}]
    assert r.headers["stream-last-offset"] == before.headers["stream-next-offset"]


async def test_get_last_of_a_closed_stream_and_of_a_fork(ctx, call):
    await call(ctx, "PUT", S + "lc", TEXT, b"only")
    closed = await call(ctx, "POST", S + "lc", {"stream-closed": "true"})
    r = await call(ctx, "GET", S + "lc?last=true")
    assert_last(r, closed.headers["stream-next-offset"])
    assert r.body == b"only" and r.headers["stream-closed"] == "true"
    assert r.headers["stream-last-offset"] == format_offset(0)
    await call(ctx, "PUT", S + "lf", {"stream-forked-from": S + "lc"})
    r = await call(ctx, "GET", S + "lf?last=true")
    assert_last(r, closed.headers["stream-next-offset"])
    assert r.body == b"only" and r.headers["stream-last-offset"] == format_offset(0)


@pytest.mark.parametrize("query", [
    "last=false", "last=TRUE", "last=1", "last=", "last", "last=true&last=true",
    "last=true&live=sse", "last=true&live=long-poll", "last=true&live=",
    "last=true&offset=now", "last=true&offset=" + format_offset(0), "last=true&offset=",
    "last=true&offset=garbage", "last=true&offset=-1&offset=-1"])
async def test_get_last_bad_queries_400_but_404_first(ctx, call, query):
    await call(ctx, "PUT", S + "lq", TEXT, b"data")
    r = await call(ctx, "GET", S + "lq?" + query)
    assert r.status == 400, (query, r.status, r.body)
    assert b"last" in r.body or b"offset" in r.body, r.body
    assert "stream-read" not in r.headers
    assert_b2(r)
    assert (await call(ctx, "GET", S + "missing?" + query)).status == 404


async def test_get_last_of_missing_and_soft_deleted_streams(ctx, call):
    r = await call(ctx, "GET", S + "nothing?last=true")
    assert r.status == 404 and "stream-read" not in r.headers
    await call(ctx, "PUT", S + "lsrc", TEXT, b"x")
    await call(ctx, "PUT", S + "lchild", {"stream-forked-from": S + "lsrc"})
    await call(ctx, "DELETE", S + "lsrc")
    assert (await call(ctx, "GET", S + "lsrc?last=true")).status == 410


async def test_get_without_last_is_unchanged(ctx, call):
    """No ``last`` parameter: an ordinary read from the start, no marker.
    Look-alike parameters are unknown parameters, ignored as before."""
    await call(ctx, "PUT", S + "ln", TEXT, b"one")
    await call(ctx, "POST", S + "ln", TEXT, b"two")
    plain = await call(ctx, "GET", S + "ln?offset=-1")
    for query in ("offset=-1", "offset=-1&Last=true", "offset=-1&lastx=true"):
        r = await call(ctx, "GET", S + "ln?" + query)
        assert r.status == 200 and r.body == b"onetwo", query
        assert "stream-read" not in r.headers and "stream-last-offset" not in r.headers
        assert r.header_list == plain.header_list, query


# ---- B6: HEAD, B7: DELETE ------------------------------------------------------------------------------

async def test_head_reports_metadata_and_ttl(ctx, call):
    await call(ctx, "PUT", S + "hd", {**TEXT, "stream-ttl": "3600"}, b"abc")
    r = await call(ctx, "HEAD", S + "hd")
    assert r.status == 200 and r.body == b""
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["stream-ttl"] == "3600"
    assert "no-store" in r.headers["cache-control"]
    assert "stream-closed" not in r.headers
    assert off(r) > 0
    assert_b2(r)
    await call(ctx, "PUT", S + "hx", {**TEXT, "stream-expires-at": "2099-01-02T03:04:05.678Z"})
    r = await call(ctx, "HEAD", S + "hx")
    assert r.headers["stream-expires-at"].startswith("2099-01-02T03:04:05")
    assert "stream-ttl" not in r.headers
    assert (await call(ctx, "HEAD", S + "nope")).status == 404


async def test_delete_then_404_and_soft_delete_410(ctx, call):
    await call(ctx, "PUT", S + "d", TEXT, b"x")
    r = await call(ctx, "DELETE", S + "d")
    assert r.status == 204 and r.body == b""
    assert_b2(r)
    assert (await call(ctx, "DELETE", S + "d")).status == 404
    assert (await call(ctx, "GET", S + "d?offset=-1")).status == 404
    # a stream with a live fork is soft-deleted: 410 afterwards, 409 on re-create
    await call(ctx, "PUT", S + "src", TEXT, b"x")
    await call(ctx, "PUT", S + "child", {"stream-forked-from": S + "src"})
    assert (await call(ctx, "DELETE", S + "src")).status == 204
    for method in ("GET", "HEAD", "DELETE"):
        assert (await call(ctx, method, S + "src")).status == 410, method
    assert (await call(ctx, "POST", S + "src", TEXT, b"y")).status == 410
    assert (await call(ctx, "PUT", S + "src", TEXT)).status == 409
    assert (await call(ctx, "GET", S + "child?offset=-1")).body == b"x"


# ---- /health, routing -------------------------------------------------------------------------------------

async def test_health_json(ctx, call, store):
    r = await call(ctx, "GET", "/health")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    body = json.loads(r.body)
    assert body["status"] == "ok"
    assert body["store"] == store.kind in ("memory", "file")
    assert isinstance(body["uptime"], (int, float)) and body["uptime"] >= 0
    assert isinstance(body["version"], str) and body["version"]
    assert (body["live_readers"], body["parked_readers"]) == (0, 0)
    h = await call(ctx, "HEAD", "/health")
    assert h.status == 200 and h.body == b""
    ctx.shutdown()
    assert json.loads((await call(ctx, "GET", "/health")).body)["status"] != "ok"


async def test_options_never_looks_at_the_store(ctx, call):
    r = await call(ctx, "OPTIONS", S + "does/not/exist")
    assert r.status == 204 and r.body == b""
    assert "if-none-match" in r.headers["access-control-allow-headers"].lower()
    assert r.headers.get("access-control-max-age")


async def test_duplicate_request_headers_are_refused(ctx, call):
    await call(ctx, "PUT", S + "dup", TEXT)
    r = await call(ctx, "POST", S + "dup", [("content-type", "text/plain"),
                                            ("stream-seq", "1"), ("stream-seq", "2")], b"x")
    assert r.status == 400
    assert (await call(ctx, "GET", S + "dup?offset=-1")).body == b""
