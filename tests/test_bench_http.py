"""Tests of ``unbroken bench http`` itself (benches/http.py): option parsing,
the percentile and ratio maths on known inputs, the HTTP and SSE parsers of the
load generator, the targets, the text and JSON output, and real tiny runs
against ``unbroken serve`` (and the reference server when node and the package
are installed)."""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import pytest

from unbroken_benches import http as hb
from unbroken_benches.harness import machine, stats, workloads
from unbroken_benches.harness.client import ProtocolError, Response, ResponseParser, request_bytes
from unbroken_benches.harness.options import KiB
from unbroken_benches.harness.results import Run
from unbroken_benches.harness.sse import SSEParser
from unbroken_benches.harness.stats import Latency
from unbroken_benches.http import Result, Settings, Target
from unbroken_server import cli

NS = 1_000_000  # one millisecond in nanoseconds


def parse(*argv):
    return cli.build_parser().parse_args(["bench", "http", *argv])


def parse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def runs_at(*rates, seconds=1.0):
    """One Run per rate: ``rate`` ops in ``seconds``."""
    return tuple(Run(seconds, int(r * seconds), int(r * seconds) * 100) for r in rates)


def lat_runs(*samples_ms, missing=0):
    return (Run(1.0, len(samples_ms), 0, latencies_ns=[int(x * NS) for x in samples_ms],
                missing=missing),)


# ---- option parsing ---------------------------------------------------------------------

def test_defaults_and_quick():
    full = Settings.from_args(parse())
    assert full.sizes == (100, 1024) and full.types == ("octet", "json")
    assert full.connections == (1, 16, 64) and full.layouts == ("shared", "own")
    assert full.readers == (100, 1000) and full.read_mib == 100
    assert not full.comparing and full.url is None
    assert full.only == ("append", "read", "sse", "longpoll")  # long-poll is in the default set
    quick = Settings.from_args(parse("--quick"))
    assert quick.readers == (100,) and quick.read_mib == 20 and quick.layouts == ("shared",)
    assert quick.rounds >= 2  # still A B A B
    # an explicit option wins over --quick
    assert Settings.from_args(parse("--quick", "--readers", "7", "--rounds", "5")).readers == (7,)


def test_compare_options():
    s = Settings.from_args(parse("--compare", "http://127.0.0.1:8787/", "--url",
                                 "http://localhost:9999/v1/stream/"))
    assert s.compare == "http://127.0.0.1:8787" and s.url == "http://localhost:9999"
    assert s.comparing
    assert Settings.from_args(parse("--compare-reference")).comparing


def test_compare_and_compare_reference_are_exclusive(capsys):
    err = parse_error(capsys, "--compare", "http://h:1", "--compare-reference")
    assert "not allowed with argument" in err


@pytest.mark.parametrize("text, expected", [
    ("http://127.0.0.1:9999", "http://127.0.0.1:9999"),
    ("http://127.0.0.1:9999/", "http://127.0.0.1:9999"),
    ("http://localhost:1/v1/stream/", "http://localhost:1"),
    ("http://example.com", "http://example.com:80"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_base_url(text, expected):
    assert hb.base_url(text) == expected


@pytest.mark.parametrize("text", ["https://h:1", "h:1", "http://h:1/other", "http://h:x"])
def test_base_url_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        hb.base_url(text)


def test_lists():
    assert hb.connections_list("1,16,64,16") == (1, 16, 64)
    assert hb.readers_list("100,1000") == (100, 1000)
    assert hb.type_list("JSON,octet") == ("json", "octet")
    assert hb.layout_list("own") == ("own",)
    assert hb.workload_list("sse,append") == ("sse", "append")
    assert hb.workload_list("append,read,sse,LongPoll") == ("append", "read", "sse", "longpoll")
    assert hb.body_size_list("100,1KiB") == (100, 1024)


@pytest.mark.parametrize("fn, text, message", [
    (hb.connections_list, "0", "not a whole number from 1"),
    (hb.connections_list, "1,,2", "comma-separated list"),
    (hb.readers_list, "x", "not a whole number"),
    (hb.type_list, "octet,xml", "unknown type 'xml'"),
    (hb.layout_list, "mine", "unknown layout"),
    (hb.workload_list, "append,write", "unknown workload 'write'"),
    (hb.body_size_list, "8", "out of range"),
])
def test_lists_reject(fn, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        fn(text)


def test_bad_option_is_an_argparse_error(capsys):
    err = parse_error(capsys, "--types", "octet,xml")
    assert err.startswith("usage: unbroken bench http")
    assert "unknown type 'xml'" in err


# ---- percentiles -----------------------------------------------------------------------

def test_percentile_nearest_rank():
    xs = list(range(1, 101))  # 1..100
    assert stats.percentile(xs, 50) == 50
    assert stats.percentile(xs, 99) == 99
    assert stats.percentile(xs, 99.5) == 100
    assert stats.percentile(xs, 100) == 100
    assert stats.percentile(xs, 0) == 1
    assert stats.percentile([7], 50) == stats.percentile([7], 99) == 7
    # never interpolates: every answer is an observed value
    assert stats.percentile([1, 10], 50) == 1
    assert stats.percentile([1, 10], 51) == 10
    ten = [10, 20, 30, 40, 50, 60, 70, 80, 90, 1000]
    assert stats.percentile(ten, 90) == 90 and stats.percentile(ten, 99) == 1000


@pytest.mark.parametrize("values, p", [([], 50), ([1], -1), ([1], 101)])
def test_percentile_rejects(values, p):
    with pytest.raises(ValueError):
        stats.percentile(values, p)


def test_percentile_with_missing():
    xs = list(range(1, 100))  # 99 observed values, one never arrived
    assert stats.percentile_with_missing(xs, 1, 50) == (50, False)
    assert stats.percentile_with_missing(xs, 1, 99) == (99, False)
    assert stats.percentile_with_missing(xs, 1, 100) == (99, True)  # the max is unknown
    # half missing: the p99 is only known to exceed the largest observed value
    assert stats.percentile_with_missing([1, 2], 2, 99) == (2, True)
    assert stats.percentile_with_missing([1, 2], 2, 50) == (2, False)
    assert stats.percentile_with_missing([1, 2], 0, 99) == (2, False)


def test_latency_summary_in_ms():
    samples = [i * NS for i in range(100, 0, -1)]  # 1..100 ms, in any order
    lat = Latency.of_ns(samples)
    assert (lat.count, lat.p50, lat.p99, lat.max) == (100, 50.0, 99.0, 100.0)
    assert lat.p90 == 90.0 and lat.get("p90") == 90.0 and lat.to_json()["p90_ms"] == 90.0
    assert lat.lower_bounds == frozenset()
    assert Latency.of_ns([]) is None
    lat = Latency.of_ns(samples, missing=50)
    assert lat.p50 == 75.0 and lat.lower_bounds == {"p90", "p99", "max"}
    assert lat.to_json()["lower_bounds"] == ["max", "p90", "p99"]


# ---- results, ratios, targets -------------------------------------------------------------

def test_throughput_is_the_median_of_rounds():
    r = Result("append", "100B octet c=1", {"connections": 1}, "appends/s",
               {"unbroken": runs_at(1000, 5000, 3000), "reference": runs_at(500, 700, 800)},
               runs_at(50_000))
    assert r.value("unbroken") == 3000 and r.value("reference") == 700
    assert r.ratio == pytest.approx(3000 / 700)
    assert r.ceiling_value == 50_000
    assert r.generator_share("unbroken") == pytest.approx(0.06)
    assert not r.generator_bound("unbroken")
    assert Result("read", "x", {}, "MB/s", {"unbroken": runs_at(10)}).value("unbroken") == \
        pytest.approx(10 * 100 / 1e6)


def test_generator_bound_flags_within_20_percent_of_the_ceiling():
    r = Result("append", "x", {}, "appends/s", {"unbroken": runs_at(8500)}, runs_at(10_000))
    assert r.generator_bound("unbroken")
    # for a latency, a figure near the ceiling's (lowest possible) latency is suspect
    r = Result("sse", "x", {}, "p99", {"unbroken": lat_runs(10, 11, 12)}, lat_runs(10))
    assert r.generator_share("unbroken") == pytest.approx(10 / 12)
    assert r.generator_bound("unbroken")
    r = Result("sse", "x", {}, "p99", {"unbroken": lat_runs(40, 50)}, lat_runs(10))
    assert not r.generator_bound("unbroken")


def test_latency_rows_pool_every_round():
    runs = (Run(1, 2, 0, latencies_ns=[1 * NS, 2 * NS]),
            Run(1, 2, 0, latencies_ns=[3 * NS, 100 * NS]))
    r = Result("sse", "x", {"readers": 2}, "max", {"unbroken": runs, "reference": lat_runs(1000)})
    assert r.value("unbroken") == 100.0
    assert r.ratio == pytest.approx(0.1)
    assert r.unit == "ms max" and not r.higher_is_better


def test_missing_deliveries_make_a_bound():
    r = Result("sse", "x", {"readers": 1000}, "p99",
               {"unbroken": lat_runs(10, 20), "reference": lat_runs(500, 900, missing=8)})
    assert r.lower_bound("reference") and not r.lower_bound("unbroken")
    assert r.value("reference") == 900.0
    assert r.ratio == pytest.approx(20 / 900) and r.ratio_bound == "<"


@pytest.mark.parametrize("value, bound, at_most, status", [
    (5.0, "", False, "PASS"), (3.0, "", False, "MISS"),
    (0.05, "", True, "PASS"), (0.2, "", True, "MISS"),
    (0.05, "<", True, "PASS"),   # true ratio <= 0.05 <= 0.1: proven
    (0.2, "<", True, "MISS"),    # true ratio <= 0.2: open, so not a pass
    (0.05, ">", True, "MISS"),   # true ratio >= 0.05: open
    (5.0, ">", False, "PASS"), (5.0, "<", False, "MISS"),
    (None, "", False, "n/a"),
])
def test_target_status(value, bound, at_most, status):
    threshold = 0.1 if at_most else 4.0
    assert Target("t", value, threshold, at_most, bound=bound).status == status


def _results():
    def row(workload, label, params, metric, u, r, ceiling=()):
        return Result(workload, label, params, metric, {"unbroken": u, "reference": r}, ceiling)
    return [
        row("append", "100B octet c=16 shared", {"size": 100, "type": "octet",
                                                 "connections": 16, "layout": "shared"},
            "appends/s", runs_at(5000), runs_at(1000), runs_at(40_000)),
        row("append", "100B json c=1 one stream", {"size": 100, "type": "json",
                                                   "connections": 1, "layout": "shared"},
            "appends/s", runs_at(900), runs_at(300)),
        row("read", "octet", {"mode": "octet"}, "MB/s", runs_at(10_000), runs_at(4_000)),
        row("read", "json", {"mode": "json"}, "MB/s", runs_at(10_000), runs_at(4_000)),
        row("sse", "1000 readers", {"readers": 1000}, "p99", lat_runs(10, 20), lat_runs(300)),
        row("sse", "100 readers", {"readers": 100}, "p99", lat_runs(5), lat_runs(6)),
    ]


def test_evaluate_targets():
    settings = Settings(compare_reference=True)
    targets = {t.label: t for t in hb.evaluate_targets(_results(), settings)}
    assert targets["appends/s 100B octet c=16 shared: unbroken / reference"].status == "PASS"
    assert targets["appends/s 100B json c=1 one stream: unbroken / reference"].status == "MISS"
    assert targets["catch-up read octet MB/s: unbroken / reference"].status == "PASS"   # 2.5 >= 2
    assert targets["catch-up read json MB/s: unbroken / reference"].status == "MISS"    # 2.5 < 4
    sse = targets["SSE p99 at 1,000 readers: unbroken / reference"]  # the most readers
    assert sse.value == pytest.approx(20 / 300) and sse.status == "PASS" and sse.at_most
    # without a comparison every target is n/a
    alone = hb.evaluate_targets(_results(), Settings())
    assert {t.status for t in alone} == {"n/a"}
    # only the workloads of the run
    only = hb.evaluate_targets(_results(), Settings(compare_reference=True, only=("read",)))
    assert [t.label.split(" ")[0] for t in only] == ["catch-up", "catch-up"]


def test_sse_target_at_fewer_readers_says_so():
    rows = [r for r in _results() if r.params.get("readers") == 100]
    [t] = hb.evaluate_targets(rows, Settings(compare_reference=True, only=("sse",), quick=True))
    assert t.label == "SSE p99 at 100 readers: unbroken / reference"
    assert "--quick: measured at 100 readers, not 1,000" in t.note


def test_render_text_and_json():
    results = _results()
    settings = Settings(compare_reference=True)
    targets = hb.evaluate_targets(results, settings)
    machine = {"python": "3.x", "cpu_count": 2, "load_average_before": [0.1, 0.2, 0.3],
               "load_average_after": None,
               "servers": {"unbroken": {"url": "http://h:1", "what": "u"}}}
    text = hb.render_text(results, targets, settings, machine, ["a warning"])
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("workload"))
    assert header.split() == " ".join(hb.TABLE_HEADER).split()
    assert any(re.match(r"append\s+100B octet c=16 shared\s+appends/s\s+5,000\s+1,000\s+5\.00\s+"
                        r"40,000", ln) for ln in lines)
    assert re.search(r"PASS\s+appends/s 100B octet c=16 shared: unbroken / reference\s+"
                     r"5\.00 >= 4", text)
    assert "MISS" in text and "a warning" in text and "one at a time" in text
    doc = json.loads(hb.render_json(results, targets, settings, machine, []))
    assert set(doc) == {"machine", "statistic", "method", "settings", "results", "targets",
                        "warnings"}
    first = doc["results"][0]
    assert first["unbroken"]["value"] == 5000 and first["reference"]["value"] == 1000
    assert first["ratio"] == 5.0 and first["ceiling"] == 40_000
    assert {t["status"] for t in doc["targets"]} == {"PASS", "MISS"}


def test_fsync_probe(tmp_path):
    ms = machine.fsync_probe(str(tmp_path), count=3)
    assert 0 < ms < 10_000
    assert list(tmp_path.iterdir()) == []


def test_disk_swing_is_warned_and_shown():
    def row(*probes):
        return Result("append", "x", {}, "appends/s", {"unbroken": runs_at(100)},
                      fsync_ms=probes)
    assert hb.warnings_for([row(0.1, 0.12), row(0.11)]) == []
    [w] = hb.warnings_for([row(0.1, 0.12), row(2.5)])
    assert "ranged from 0.10 to 2.50 ms" in w
    assert hb.table_rows([row(0.1, 0.3, 0.2)])[0][7] == "0.20"
    assert json.loads(hb.render_json([row(0.5)], [], Settings(), {}, []))[
        "results"][0]["fsync_ms"] == [0.5]


def test_json_has_no_nan_or_infinity():
    r = Result("append", "x", {}, "appends/s", {"unbroken": (Run(0.0, 5, 500),)})
    doc = json.loads(hb.render_json([r], [], Settings(), {"servers": {}}, []))
    assert doc["results"][0]["unbroken"]["value"] is None


# ---- the HTTP client's parser ------------------------------------------------------------------

HEAD_204 = b"HTTP/1.1 204 No Content\r\nStream-Next-Offset: 0_5\r\n\r\n"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
           b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: t\r\n\r\n")
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nStream-Up-To-Date: true\r\n\r\nhello world"


def feed_all(parser, data, step):
    out = []
    for i in range(0, len(data), step):
        out += parser.feed(data[i:i + step])
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_parser_split_anywhere(step):
    data = HEAD_204 + CHUNKED + LENGTH
    out = feed_all(ResponseParser(), data, step)
    assert [r.status for r in out] == [204, 200, 200]
    assert out[0].body == b"" and out[0].header("stream-next-offset") == "0_5"
    assert out[1].body == b"hello, world" and out[1].header("x-a") == "1, 2"
    assert out[2].body == b"hello world" and out[2].header("stream-up-to-date") == "true"


def test_parser_streams_bodies_to_on_body():
    p = ResponseParser()
    pieces = []
    p.on_body = lambda piece: pieces.append(bytes(piece))
    [resp] = feed_all(p, LENGTH, 4)
    assert resp.body == b"" and b"".join(pieces) == b"hello world"
    pieces.clear()
    [resp] = p.feed(CHUNKED)
    assert b"".join(pieces) == b"hello, world"


def test_parser_large_body_fast_path():
    body = os.urandom(300 * KiB)
    p = ResponseParser()
    seen = []
    p.on_body = lambda piece: seen.append(len(piece))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    out = p.feed(head + body[:10])
    out += feed_all(p, body[10:], 64 * KiB)
    assert len(out) == 1 and sum(seen) == len(body) and p.idle


def test_parser_head_informational_and_until_close():
    p = ResponseParser()
    p.expect_body = False  # after a HEAD: Content-Length describes a body never sent
    [resp] = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert resp.status == 200 and resp.body == b""
    p = ResponseParser()
    [resp] = p.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_204)
    assert resp.status == 204
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end") == []
    resp = p.eof()
    assert resp.body == b"until the end"
    assert ResponseParser().eof() is None


@pytest.mark.parametrize("data", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
])
def test_parser_rejects(data):
    with pytest.raises(ProtocolError):
        ResponseParser().feed(data)


def test_parser_eof_mid_response():
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError):
        p.eof()


def test_request_bytes():
    raw = request_bytes("POST", "/v1/stream/a", "h:1", [("Content-Type", "text/plain")], b"hi")
    assert raw == (b"POST /v1/stream/a HTTP/1.1\r\nHost: h:1\r\nContent-Type: text/plain\r\n"
                   b"Content-Length: 2\r\n\r\nhi")
    assert request_bytes("GET", "/x", "h:1") == b"GET /x HTTP/1.1\r\nHost: h:1\r\n\r\n"


# ---- SSE -----------------------------------------------------------------------------------

SSE = (b'event: data\ndata:[{"i":0,"t":5},\ndata:{"i":1,"t":6}]\n\n'
       b': keep-alive comment\n\n'
       b'event: control\ndata: {"streamNextOffset":"0000_0042","upToDate":true}\n\n')


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_sse_parser(step):
    p = SSEParser()
    events = feed_all(p, SSE, step)
    assert events == [(b"data", b'[{"i":0,"t":5},\n{"i":1,"t":6}]'),
                      (b"control", b'{"streamNextOffset":"0000_0042","upToDate":true}')]
    assert workloads.message_stamps(events[0][1]) == [(0, 5), (1, 6)]
    assert workloads._OFFSET_RE.search(events[1][1])[1] == b"0000_0042"


def test_sse_parser_crlf_split_between_pieces():
    p = SSEParser()
    data = SSE.replace(b"\n", b"\r\n")
    events = feed_all(p, data, 1)
    assert [k for k, _ in events] == [b"data", b"control"]


def test_sse_message_round_trip():
    body = workloads.sse_message(7, workloads._T0 + 1234)
    assert json.loads(body) == {"i": 7, "t": 1234}
    assert workloads.message_stamps(body) == [(7, 1234)]
    assert workloads.message_stamps(b'{"i":-2,"t":99}') == [(-2, 99)]


# ---- workload helpers ------------------------------------------------------------------------

def test_bodies_have_exact_sizes():
    for size in (16, 100, 1024):
        assert len(workloads.json_body(size)) == size
        json.loads(workloads.json_body(size))
        assert len(hb.body_for("octet", size)) == size


def test_read_fill_posts():
    posts, payload = hb.read_fill_posts("octet", 1 << 20)
    assert payload == 1 << 20 and len(posts) == 16 and all(len(p) == 64 * KiB for p in posts)
    posts, payload = hb.read_fill_posts("json", 1 << 20)
    objects = sum(len(json.loads(p)) for p in posts)
    assert objects == 1024 and payload == 1024 * KiB
    assert all(len(p) <= hb.READ_JSON_POST + 2 for p in posts)


# ---- real tiny runs ----------------------------------------------------------------------------

TINY = ["--quick", "--json", "--rounds", "1", "--sizes", "100", "--types", "octet,json",
        "--connections", "2", "--read-mib", "1", "--readers", "3", "--sse-duration", "0.5",
        "--sse-rate", "10", "--duration", "0.1", "--warmup", "0"]


@pytest.fixture
def memory_server(tmp_path):
    """``unbroken serve --store memory`` on a free port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "unbroken_server", "serve", "--port", "0",
                             "--store", "memory", "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+?)/v1/stream/", line)
        assert m, f"unexpected first line {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


def check_document(doc, sides=("unbroken",)):
    assert set(doc) == {"machine", "statistic", "method", "settings", "results", "targets",
                        "warnings"}
    workloads = {r["workload"] for r in doc["results"]}
    assert workloads == {"append", "read", "sse", "longpoll"}
    for r in doc["results"]:
        assert {"name", "workload", "label", "params", "metric", "unit", "unbroken",
                "reference", "ratio", "ceiling"} <= set(r)
        for side in sides:
            s = r[side]
            assert {"value", "rounds", "errors", "missing", "server_cpu", "client_cpu",
                    "generator_share", "generator_bound", "lower_bound"} <= set(s)
            assert s["value"] is not None and s["value"] > 0, r["name"]
            assert s["errors"] == 0 and s["missing"] == 0, r
        assert r["ceiling"] is not None and r["ceiling"] > 0
    appends = [r for r in doc["results"] if r["workload"] == "append"]
    assert {(r["params"]["type"], r["params"]["layout"]) for r in appends} == {
        ("octet", "shared"), ("json", "shared")}
    assert {r["metric"] for r in doc["results"] if r["workload"] == "sse"} == {
        "p50", "p90", "p99", "max"}
    longpoll = [r for r in doc["results"] if r["workload"] == "longpoll"]
    assert [(r["metric"], r["unit"]) for r in longpoll] == [
        ("p50", "ms p50"), ("p90", "ms p90"), ("p99", "ms p99"), ("max", "ms max")]
    for r in longpoll:
        assert r["params"] == {"readers": 3, "rate": 10.0, "duration": 0.5}
        assert r["name"] == f"longpoll 3 readers, 10 msg/s {r['unit']}"
        for side in sides:
            lat = r[side]["latency"]
            assert set(lat) == {"count", "missing", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                                "lower_bounds"}
            assert lat["count"] == 5 * 3 and lat["missing"] == 0 and lat["lower_bounds"] == []
            assert r[side]["value"] == lat[f"{r['metric']}_ms"]
            assert r[side]["rounds"][0]["latency"]["count"] == 5 * 3
    reads = {r["params"]["mode"] for r in doc["results"] if r["workload"] == "read"}
    assert reads == {"octet", "json"}


def test_tiny_run_against_a_memory_server(memory_server, capsys):
    assert cli.main(["bench", "http", "--url", memory_server, *TINY]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    check_document(doc)
    assert doc["machine"]["servers"]["unbroken"]["url"] == memory_server
    assert {t["status"] for t in doc["targets"]} == {"n/a"}
    assert "round 1/1 unbroken" in out.err


def test_tiny_run_compares_two_servers_as_text(memory_server, capsys):
    """--compare with a second URL (here the same server) fills both columns."""
    argv = ["bench", "http", "--url", memory_server, "--compare", memory_server,
            *[a for a in TINY if a != "--json"], "--only", "append", "--no-ceiling"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert re.search(r"append\s+100B octet c=2 shared\s+appends/s\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d",
                     text)
    assert re.search(r"(PASS|MISS)\s+appends/s 100B octet c=2 shared", text)


def test_tiny_longpoll_only_run_as_text(memory_server, capsys):
    """--only longpoll: its four latency rows, and no targets (the issue sets none)."""
    argv = ["bench", "http", "--url", memory_server,
            *[a for a in TINY if a != "--json"], "--only", "longpoll"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    for stat in ("p50", "p90", "p99", "max"):
        assert re.search(rf"longpoll\s+3 readers, 10 msg/s\s+ms {stat}\s+\d+\.\d\d", text)
    assert "targets: none for these workloads" in text


def test_unreachable_url_is_an_error_not_a_traceback(capsys):
    argv = ["bench", "http", "--url", "http://127.0.0.1:9", *TINY, "--no-ceiling"]
    assert cli.main(argv) == 1
    assert "unbroken bench http:" in capsys.readouterr().err


def test_bench_starts_its_own_file_server(tmp_path, capsys):
    argv = ["bench", "http", *TINY, "--only", "append", "--types", "octet", "--no-ceiling",
            "--dir", str(tmp_path)]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "--durability always" in doc["machine"]["servers"]["unbroken"]["what"]
    assert doc["results"][0]["unbroken"]["value"] > 0
    assert os.listdir(tmp_path) == []  # its data directory is removed


#: the reference server pinned in the node tests' npm project (tests/conftest.py)
PINNED_REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance",
                                "node_modules", "@durable-streams", "server")


def test_tiny_run_against_the_reference(tmp_path, capsys, node_toolchain):
    argv = ["bench", "http", "--compare-reference", "--reference-module", PINNED_REFERENCE,
            *TINY, "--dir", str(tmp_path)]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    check_document(doc, sides=("unbroken", "reference"))
    assert "durable-streams/server" in doc["machine"]["servers"]["reference"]["what"]
    assert all(t["status"] in ("PASS", "MISS") for t in doc["targets"])
    assert all(r["ratio"] is not None for r in doc["results"])


def test_sink_cli_usage(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unbroken_benches.harness.sink", "nonsense"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_response_repr_roundtrip():
    r = Response(204, {"stream-next-offset": "1"})
    assert r.header("stream-next-offset") == "1" and r.header("missing") is None
    assert math.isfinite(Run(1.0, 10, 0).ops_per_s)
