"""Measure the Unbroken HTTP server end to end, optionally beside another
Durable Streams server, with a load generator that measures its own ceiling.

With no --url the benchmark starts `unbroken serve` itself (a subprocess on a
free port, file store in a temporary directory, --durability always: an append
is acknowledged once it is on disk). --compare-reference also starts the public
reference server (@durable-streams/server, file-backed: it fsyncs every append)
through benches/reference_server.mjs; --compare URL measures an already running
server instead. Progress goes to stderr; a table and the issue's targets
(PASS/MISS) go to stdout. It only reports: the exit status is 0 even on MISS.

Workloads
  append    closed-loop appends over C keep-alive connections (each sends a POST,
            waits for its answer, sends the next), for each body size, content
            type (octet: application/octet-stream, json: application/json, one
            JSON object per POST) and C in --connections; "shared": every
            connection appends to one stream (group commit), "own": one stream
            per connection. Figure: acknowledged appends/s.
  read      catch-up read of a --read-mib MiB stream from offset -1, following
            Stream-Next-Offset until Stream-Up-To-Date (one GET per chunk the
            server chooses), on one connection, whole passes repeated for at
            least --duration per round; octet (filled with 64 KiB POSTs) and
            JSON (1 KiB objects, filled with POSTs of 256 KiB JSON arrays).
            Figure: MB/s of stream payload (1 MB = 10^6 bytes).
  sse       live=sse delivery latency: R readers follow one JSON stream; one
            writer POSTs {"i":N,"t":T} at --sse-rate messages/s (default 2),
            T taken just before the POST is written. The writer is open loop:
            it does not wait for an answer before the next POST (a small pool
            of connections), so a slow server cannot slow it down and hide its
            own latency. A reader's latency is its arrival time (stamped when
            the bytes come off the socket) minus T. p50, p90, p99 and max over every
            delivery of every round, from the exact sorted samples. Deliveries
            still missing 5 s after the last answered POST count as slower than
            all others: a percentile that falls among them is shown as a lower
            bound (">"), and so is a ratio built on it.
  longpoll  live=long-poll delivery latency, the same as sse (same --readers,
            --sse-rate, --sse-duration, writer, percentiles and missing
            deliveries) but each reader loops, on its keep-alive connection,
            GET ?offset=O&live=long-poll&cursor=C with O its last
            Stream-Next-Offset and C its last Stream-Cursor (a 204 at the
            server's timeout just repeats it); it first catches up once with a
            plain GET from offset -1. Latency: the arrival of the response
            carrying a message minus the message's T. No target (the issue sets
            none for long-poll).

How figures are taken
  Servers are measured one at a time: in each round every workload runs against
  Unbroken, then against the reference (A B A B ..., --rounds rounds), so slow
  drift of the machine hits both alike; the idle server gets no requests.
  The load generator (one asyncio process, a small HTTP/1.1 client over raw
  keep-alive sockets) and the server under test share this machine's CPUs.
  Throughputs are the median of the rounds; each append round has a --warmup
  that is not counted, and each server gets one untimed read pass first.
  Before each round the disk's write + fdatasync latency is probed (column
  "fsync ms"): on a shared machine it can swing by 100x within minutes, and
  every durable append waits on it; a swing during the run is warned.

The load generator's ceiling
  The same workloads run against a trivial server (a subprocess that answers
  at once: 204 to a POST, a preallocated body to a GET, SSE fan-out to every
  reader, the next POST to a waiting long-poll): column "ceiling". A figure within 20% of it (>= 80% of the
  ceiling's throughput, or a latency <= 1.25x the ceiling's) may be the
  generator's limit rather than the server's: it is flagged "gen" and warned.

Targets (from the issue; n/a without a comparison server)
  appends/s at equal durability               >= 4 x the reference (each row)
  catch-up read, octet                        >= 2 x the reference
  catch-up read, JSON                         >= 4 x the reference
  SSE p99 at 1,000 readers                    <= 1/10 of the reference's
  (--quick runs 100 readers only; the SSE target then uses them and says so)

Examples
  unbroken bench http --quick                       Unbroken alone, < 1 minute
  unbroken bench http --compare-reference           full run with the reference
  unbroken bench http --quick --compare-reference --json > http.json
  unbroken bench http --url http://127.0.0.1:9999   an already running server
  unbroken bench http --only append --sizes 1KiB --types octet --connections 64
  unbroken bench http --quick --plot http.png       (pip install 'unbroken[plot]')
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote

from .harness.client import HttpConnection, open_connections, request_bytes
from .harness.machine import fsync_probe, load_average, platform_info
from .harness.options import (
    STREAM_PREFIX,
    KiB,
    MiB,
    add_output_flags,
    base_url,
    choices,
    count_list,
    fmt_size,
    non_negative_seconds,
    or_default,
    parse_size,
    positive_float,
    positive_int,
    split_list,
    unique,
)
from .harness.process import (
    DEFAULT_REFERENCE_MODULE,
    REFERENCE_ENV,
    UNBROKEN_READY,
    CpuMeter,
    Server,
    serve_command,
    start_process,
    start_reference,
    start_sink,
)
from .harness.report import Progress, fmt_load, fmt_run, fmt_value, json_text
from .harness.report import render_table as render_columns
from .harness.report import render_targets as render_target_lines
from .harness.report import render_warnings
from .harness.results import Run
from .harness.stats import Latency, median_or_none, ratio
from .harness.workloads import (
    SSE_DRAIN,
    LongPollReader,
    SseReader,
    closed_loop_appends,
    create_stream,
    json_body,
    sse_run,
    stream_name,
)

# ---- constants ---------------------------------------------------------------------

WORKLOADS = ("append", "read", "sse", "longpoll")
TYPES = ("octet", "json")
LAYOUTS = ("shared", "own")
CONTENT_TYPES = {"octet": "application/octet-stream", "json": "application/json"}
DEFAULT_SIZES = (100, 1 * KiB)
DEFAULT_CONNECTIONS = (1, 16, 64)
DEFAULT_READERS = (100, 1000)
MAX_CONNECTIONS = 1024
MAX_READERS = 10_000
READ_OCTET_MESSAGE = 64 * KiB   # one octet POST (= one message) of the read stream
READ_JSON_MESSAGE = 1 * KiB     # one JSON object of the read stream
READ_JSON_POST = 256 * KiB      # JSON objects per fill POST: as many as fit here
FILL_CONNECTIONS = 4            # concurrent POSTs while filling a read stream
MAX_READ_PASSES = 100           # whole-stream reads in one read round
GENERATOR_SHARE = 0.8           # flag a figure at >= 80% of the generator's ceiling
DISK_SWING = 5.0                # warn when the fsync probes differ by this factor
STATISTIC = "median"


@dataclass(frozen=True)
class Profile:
    """Defaults that --quick shrinks; any explicit option wins over them."""

    rounds: int
    duration: float
    warmup: float
    read_mib: int
    readers: tuple[int, ...]
    sse_duration: float
    layouts: tuple[str, ...]


FULL = Profile(rounds=3, duration=2.0, warmup=0.5, read_mib=100, readers=DEFAULT_READERS,
               sse_duration=10.0, layouts=LAYOUTS)
QUICK = Profile(rounds=2, duration=0.3, warmup=0.1, read_mib=20, readers=(100,),
                sse_duration=3.0, layouts=("shared",))
DEFAULT_SSE_RATE = 2.0


# ---- parsing options (pure) ------------------------------------------------------------


def workload_list(text: str) -> tuple[str, ...]:
    """``"append,sse"`` -> ``("append", "sse")``; names from WORKLOADS."""
    return choices(text, "workload", WORKLOADS)


def type_list(text: str) -> tuple[str, ...]:
    """``"octet,json"``; names from TYPES."""
    return choices(text, "type", TYPES)


def layout_list(text: str) -> tuple[str, ...]:
    """``"shared,own"``; names from LAYOUTS."""
    return choices(text, "layout", LAYOUTS)


def connections_list(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``; each 1 .. MAX_CONNECTIONS."""
    return count_list(text, "connections", MAX_CONNECTIONS)


def readers_list(text: str) -> tuple[int, ...]:
    """``"100,1000"`` -> ``(100, 1000)``; each 1 .. MAX_READERS."""
    return count_list(text, "readers", MAX_READERS)


def body_size_list(text: str) -> tuple[int, ...]:
    """``"100,1KiB"`` -> ``(100, 1024)``; each 16 B .. 16 MiB (a JSON body of
    that exact size needs at least 16 bytes)."""
    sizes = [parse_size(t) for t in split_list(text, "sizes")]
    for s in sizes:
        if not 16 <= s <= 16 * MiB:
            raise argparse.ArgumentTypeError(f"body size {s} out of range 16..{16 * MiB}")
    return unique(sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``unbroken bench http`` to ``parser``."""
    add = parser.add_argument
    add("--url", type=base_url, default=None,
        help="measure the Unbroken server at this URL (http://HOST:PORT) instead of "
             "starting one (default: start `unbroken serve` with a file store in a "
             "temporary directory, --durability always)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--compare", type=base_url, default=None, metavar="URL",
                       help="also measure the server at URL (the \"reference\" column)")
    which.add_argument("--compare-reference", action="store_true",
                       help="also start and measure the public reference server "
                            "(@durable-streams/server, file-backed) with node")
    add("--reference-module", default=None, metavar="PATH",
        help=f"the @durable-streams/server package directory (or its dist/index.js) "
             f"(default: ${REFERENCE_ENV}, else {DEFAULT_REFERENCE_MODULE})")
    add("--node", default="node", metavar="PATH", help="the node executable (default: node)")
    add("--quick", action="store_true",
        help=f"small run (under a minute): {QUICK.rounds} rounds, {QUICK.duration:g} s "
             f"appends, shared streams only, {QUICK.read_mib} MiB reads, "
             f"{','.join(map(str, QUICK.readers))} SSE and long-poll readers")
    add("--only", type=workload_list, default=WORKLOADS, metavar="LIST",
        help="run only these workloads: append,read,sse,longpoll (default: all)")
    add("--sizes", type=body_size_list, default=DEFAULT_SIZES, metavar="LIST",
        help="append body sizes, K/KiB suffixes allowed (default: 100,1KiB)")
    add("--types", type=type_list, default=TYPES, metavar="LIST",
        help="stream content types for appends and reads: octet,json (default: both)")
    add("--connections", type=connections_list, default=DEFAULT_CONNECTIONS, metavar="LIST",
        help="keep-alive connections appending at once (default: 1,16,64)")
    add("--layouts", type=layout_list, default=None, metavar="LIST",
        help="shared: all connections append to one stream; own: one stream each "
             "(default: shared,own; quick: shared)")
    add("--readers", type=readers_list, default=None, metavar="LIST",
        help=f"SSE and long-poll readers (default: {','.join(map(str, FULL.readers))}; quick: "
             f"{','.join(map(str, QUICK.readers))})")
    add("--rounds", type=positive_int, default=None, metavar="N",
        help=f"rounds per workload and server, alternating servers (default: {FULL.rounds}, "
             f"quick {QUICK.rounds})")
    add("--duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"timed part of one append round (default: {FULL.duration:g}, "
             f"quick {QUICK.duration:g})")
    add("--warmup", type=non_negative_seconds, default=None, metavar="SECONDS",
        help=f"untimed start of each append round (default: {FULL.warmup:g}, "
             f"quick {QUICK.warmup:g})")
    add("--read-mib", type=positive_int, default=None, metavar="MIB",
        help=f"size of each catch-up read stream (default: {FULL.read_mib}, "
             f"quick {QUICK.read_mib})")
    add("--sse-duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"how long the SSE writer writes in one round (default: {FULL.sse_duration:g}, "
             f"quick {QUICK.sse_duration:g})")
    add("--sse-rate", type=positive_float, default=DEFAULT_SSE_RATE, metavar="PER_S",
        help="messages per second of the SSE writer (default: %(default)g)")
    add("--no-ceiling", dest="ceiling", action="store_false",
        help="skip measuring the load generator's ceiling")
    add_output_flags(parser, "where to create the servers' data directories (default: the "
                             "system temp dir)")
    from . import plot
    plot.add_argument(parser)


@dataclass(frozen=True)
class Settings:
    """The options of one run, --quick defaults resolved."""

    url: str | None = None
    compare: str | None = None
    compare_reference: bool = False
    reference_module: str | None = None
    node: str = "node"
    only: tuple[str, ...] = WORKLOADS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    types: tuple[str, ...] = TYPES
    connections: tuple[int, ...] = DEFAULT_CONNECTIONS
    layouts: tuple[str, ...] = FULL.layouts
    readers: tuple[int, ...] = FULL.readers
    rounds: int = FULL.rounds
    duration: float = FULL.duration
    warmup: float = FULL.warmup
    read_mib: int = FULL.read_mib
    sse_duration: float = FULL.sse_duration
    sse_rate: float = DEFAULT_SSE_RATE
    ceiling: bool = True
    quick: bool = False
    as_json: bool = False
    directory: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        profile = QUICK if args.quick else FULL

        pick = or_default
        return cls(
            url=args.url, compare=args.compare, compare_reference=args.compare_reference,
            reference_module=args.reference_module, node=args.node, only=tuple(args.only),
            sizes=tuple(args.sizes), types=tuple(args.types),
            connections=tuple(args.connections),
            layouts=tuple(pick(args.layouts, profile.layouts)),
            readers=tuple(pick(args.readers, profile.readers)),
            rounds=pick(args.rounds, profile.rounds),
            duration=pick(args.duration, profile.duration),
            warmup=pick(args.warmup, profile.warmup),
            read_mib=pick(args.read_mib, profile.read_mib),
            sse_duration=pick(args.sse_duration, profile.sse_duration), sse_rate=args.sse_rate,
            ceiling=args.ceiling, quick=args.quick, as_json=args.as_json, directory=args.dir)

    @property
    def comparing(self) -> bool:
        return self.compare is not None or self.compare_reference

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ---- latency maths (pure) ----------------------------------------------------------------


# ---- results (pure) ------------------------------------------------------------------------


METRICS = {
    # metric -> (unit shown, higher is better)
    "appends/s": ("appends/s", True),
    "MB/s": ("MB/s", True),
    "p50": ("ms p50", False),
    "p90": ("ms p90", False),
    "p99": ("ms p99", False),
    "max": ("ms max", False),
}


def pooled_latency(runs: Sequence[Run]) -> Latency | None:
    """Every round's samples (and missing ones) together."""
    return Latency.of_ns([x for r in runs for x in r.latencies_ns],
                         sum(r.missing for r in runs))


def figure(metric: str, runs: Sequence[Run]) -> tuple[float | None, bool]:
    """A figure over the rounds, and whether it is only a lower bound: the
    median of per-round throughputs, or a latency percentile of every round's
    samples pooled (missing deliveries counting as slower than all)."""
    if not runs:
        return None, False
    if metric == "appends/s":
        return statistics.median(r.ops_per_s for r in runs), False
    if metric == "MB/s":
        return statistics.median(r.mb_per_s for r in runs), False
    lat = pooled_latency(runs)
    if lat is None:
        return None, False
    return lat.get(metric), metric in lat.lower_bounds


def metric_value(metric: str, runs: Sequence[Run]) -> float | None:
    return figure(metric, runs)[0]


@dataclass(frozen=True)
class Result:
    """One row: a workload's figure for each server, and the generator's ceiling."""

    workload: str
    label: str
    params: dict
    metric: str
    runs: dict          # side name -> tuple of Run (one per round)
    ceiling: tuple = ()  # Runs against the trivial server
    fsync_ms: tuple = ()  # the disk's write + fdatasync latency before each round

    @property
    def unit(self) -> str:
        return METRICS[self.metric][0]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def value(self, side: str) -> float | None:
        return metric_value(self.metric, self.runs.get(side, ()))

    def lower_bound(self, side: str) -> bool:
        """The figure is only a lower bound (deliveries went missing)."""
        return figure(self.metric, self.runs.get(side, ()))[1]

    @property
    def ceiling_value(self) -> float | None:
        return metric_value(self.metric, self.ceiling)

    @property
    def ratio(self) -> float | None:
        """Unbroken / reference, in the row's unit (lower is better for latencies);
        None when both are only lower bounds."""
        if self.lower_bound("unbroken") and self.lower_bound("reference"):
            return None
        return ratio(self.value("unbroken"), self.value("reference"))

    @property
    def ratio_bound(self) -> str:
        """"<": the true ratio is at most ``ratio`` (the reference's figure is a
        lower bound); ">": at least; "": exact."""
        if self.lower_bound("reference"):
            return "<"
        return ">" if self.lower_bound("unbroken") else ""

    def generator_share(self, side: str) -> float | None:
        """How close ``side``'s figure is to the generator's ceiling (1.0 = at it)."""
        v, c = self.value(side), self.ceiling_value
        return ratio(v, c) if self.higher_is_better else ratio(c, v)

    def generator_bound(self, side: str) -> bool:
        share = self.generator_share(side)
        return share is not None and share >= GENERATOR_SHARE

    def to_json(self) -> dict:
        sides = {}
        for side, runs in self.runs.items():
            lat = pooled_latency(runs)
            sides[side] = {
                "value": self.value(side), "lower_bound": self.lower_bound(side),
                "rounds": [r.to_json() for r in runs],
                "errors": sum(r.errors for r in runs), "missing": sum(r.missing for r in runs),
                "latency": lat.to_json() if lat else None,
                "server_cpu": median_or_none(r.server_cpu for r in runs),
                "client_cpu": median_or_none(r.client_cpu for r in runs),
                "generator_share": self.generator_share(side),
                "generator_bound": self.generator_bound(side),
            }
        return {"name": f"{self.workload} {self.label} {self.unit}", "workload": self.workload,
                "label": self.label, "params": self.params, "metric": self.metric,
                "unit": self.unit, "higher_is_better": self.higher_is_better,
                "unbroken": sides.get("unbroken"), "reference": sides.get("reference"),
                "ratio": self.ratio, "ratio_bound": self.ratio_bound,
                "fsync_ms": list(self.fsync_ms), "ceiling": self.ceiling_value,
                "ceiling_rounds": [r.to_json() for r in self.ceiling]}


def find(results: Sequence[Result], workload: str, metric: str | None = None,
         **params) -> list[Result]:
    """Every result of ``workload`` (and ``metric``) whose params include ``params``."""
    return [r for r in results if r.workload == workload
            and (metric is None or r.metric == metric)
            and all(r.params.get(k) == v for k, v in params.items())]


# ---- targets (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One line of the targets section: ``value`` (a ratio) against ``threshold``."""

    label: str
    value: float | None
    threshold: float
    at_most: bool = False   # the target is value <= threshold (else >=)
    note: str = ""
    bound: str = ""         # "<": the true value is at most ``value``; ">": at least

    @property
    def status(self) -> str:
        """PASS only when proven: a bound that leaves the outcome open is a MISS."""
        if self.value is None:
            return "n/a"
        ok = self.value <= self.threshold if self.at_most else self.value >= self.threshold
        # with a bound, the true value lies beyond ``value`` on the bound's side:
        # a passing value stays passing only if that side is the passing one
        favourable = (self.bound == "<") == self.at_most
        return "PASS" if ok and (not self.bound or favourable) else "MISS"

    def to_json(self) -> dict:
        return {"label": self.label, "value": self.value, "bound": self.bound,
                "threshold": self.threshold, "comparison": "<=" if self.at_most else ">=",
                "status": self.status, "note": self.note}


def _row_target(label: str, row: Result | None, threshold: float, at_most: bool = False,
                note: str = "") -> Target:
    if row is None:
        return Target(label, None, threshold, at_most, note)
    notes = [note] if note else []
    if row.ratio_bound:
        side = "reference" if row.ratio_bound == "<" else "unbroken"
        missing = sum(r.missing for r in row.runs.get(side, ()))
        notes.append(f"{side}'s figure is a lower bound ({missing:,} deliveries never "
                     f"arrived): the true ratio is {row.ratio_bound}= this")
    return Target(label, row.ratio, threshold, at_most, "; ".join(notes), row.ratio_bound)


def evaluate_targets(results: Sequence[Result], settings: Settings) -> list[Target]:
    """The issue's targets, each a ratio Unbroken / reference, for the
    workloads of this run."""
    targets = []
    if "append" in settings.only:
        rows = find(results, "append")
        targets += [_row_target(f"appends/s {r.label}: unbroken / reference", r, 4.0)
                    for r in rows]
        if not rows:
            targets.append(Target("appends/s: unbroken / reference", None, 4.0))
    if "read" in settings.only:
        for mode, need in (("octet", 2.0), ("json", 4.0)):
            rows = find(results, "read", mode=mode)
            targets.append(_row_target(f"catch-up read {mode} MB/s: unbroken / reference",
                                       rows[0] if rows else None, need))
    if "sse" in settings.only:
        rows = find(results, "sse", "p99")
        row = max(rows, key=lambda r: r.params["readers"]) if rows else None
        readers = row.params["readers"] if row else 1000
        note = ""
        if row is not None and readers != 1000:
            note = (f"{'--quick: ' if settings.quick else ''}measured at {readers:,} readers, "
                    f"not 1,000")
        targets.append(_row_target(f"SSE p99 at {readers:,} readers: unbroken / reference",
                                   row, 0.1, at_most=True, note=note))
    if not settings.comparing:
        targets = [dataclasses.replace(t, value=None, bound="",
                                       note="no --compare/--compare-reference")
                   for t in targets]
    return targets


# ---- the servers -----------------------------------------------------------------------------

def start_unbroken(data_dir: str, log_path: str, durability: str = "always") -> Server:
    """Start the Unbroken server under test: ``unbroken serve`` on the file
    store in ``data_dir``, a free port, ``--durability`` ``durability``."""
    cmd = serve_command("file", None, data_dir, durability=durability)
    return start_process("unbroken", f"unbroken serve (file store, --durability {durability})",
                         cmd, UNBROKEN_READY, log_path)


# ---- workloads: each returns one Run ----------------------------------------------------------


def body_for(kind: str, size: int) -> bytes:
    return json_body(size) if kind == "json" else os.urandom(size)


async def append_run(server: Server, body: bytes, content_type: str, connections: int,
                     layout: str, warmup: float, duration: float) -> Run:
    """Closed-loop appends on ``connections`` connections for ``warmup`` +
    ``duration`` seconds; counts the answers that arrive in the timed part."""
    conns = await open_connections(server.host, server.port, connections)
    try:
        paths = [stream_name("append")] * connections if layout == "shared" else \
            [stream_name("append") for _ in range(connections)]
        for p in dict.fromkeys(paths):
            await create_stream(conns[0], p, content_type)
        raws = [request_bytes("POST", p, c.host_header, [("Content-Type", content_type)], body)
                for c, p in zip(conns, paths)]
        return await closed_loop_appends(conns, raws, len(body), lambda: CpuMeter(server),
                                         warmup, duration)
    finally:
        for c in conns:
            c.close()


def read_fill_posts(kind: str, total: int) -> tuple[list[bytes], int]:
    """The POST bodies that fill a read stream of ``total`` payload bytes, and
    the payload bytes they hold (octet: 64 KiB messages; JSON: arrays of
    1 KiB objects, payload counted as the objects' bytes)."""
    if kind == "octet":
        piece = os.urandom(READ_OCTET_MESSAGE)
        n = max(1, total // READ_OCTET_MESSAGE)
        return [piece] * n, n * READ_OCTET_MESSAGE
    obj = json_body(READ_JSON_MESSAGE)
    per_post = max(1, READ_JSON_POST // (READ_JSON_MESSAGE + 1))
    count = max(1, total // READ_JSON_MESSAGE)
    posts = []
    full = b"[" + b",".join([obj] * per_post) + b"]"
    while count > 0:
        n = min(per_post, count)
        posts.append(full if n == per_post else b"[" + b",".join([obj] * n) + b"]")
        count -= n
    return posts, max(1, total // READ_JSON_MESSAGE) * READ_JSON_MESSAGE


async def fill_stream(server: Server, kind: str, total: int) -> tuple[str, int]:
    """Create a stream and append ``total`` payload bytes; ``(path, payload bytes)``."""
    path = stream_name(f"read-{kind}")
    posts, payload = read_fill_posts(kind, total)
    ctype = CONTENT_TYPES[kind]
    conns = await open_connections(server.host, server.port, FILL_CONNECTIONS)
    try:
        await create_stream(conns[0], path, ctype)
        it = iter(posts)

        async def worker(conn):
            for body in it:
                resp = await conn.request("POST", path, [("Content-Type", ctype)], body)
                if resp.status not in (200, 204):
                    raise RuntimeError(f"filling {path}: {resp.status} {resp.body[:200]!r}")

        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return path, payload


async def read_run(server: Server, path: str, payload: int, min_seconds: float = 0.0) -> Run:
    """Catch-up reads of ``path`` from -1, following Stream-Next-Offset until
    Stream-Up-To-Date; whole passes, repeated until ``min_seconds`` have passed
    (at most MAX_READ_PASSES)."""
    conn = await HttpConnection.open(server.host, server.port)
    received = 0

    def count(piece) -> None:
        nonlocal received
        received += len(piece)

    try:
        gets = passes = 0
        meter = CpuMeter(server)
        t0 = time.perf_counter()
        while True:
            offset, before = "-1", received
            while True:
                resp = await conn.request("GET", f"{path}?offset={quote(offset, safe='-_')}",
                                          on_body=count)
                gets += 1
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}?offset={offset}: {resp.status}")
                nxt = resp.header("stream-next-offset")
                if resp.header("stream-up-to-date") is not None:
                    break
                if not nxt or nxt == offset:
                    raise RuntimeError(f"GET {path}: no progress past offset {offset}")
                offset = nxt
            passes += 1
            if received - before < payload:
                raise RuntimeError(f"read {received - before} bytes of {path}, "
                                   f"expected {payload}")
            if time.perf_counter() - t0 >= min_seconds or passes >= MAX_READ_PASSES:
                break
        seconds, srv_cpu, cli_cpu = meter.stop()
    finally:
        conn.close()
    return Run(seconds, gets, passes * payload, server_cpu=srv_cpu, client_cpu=cli_cpu,
               note=f"{passes} passes, {received} body bytes in {gets} GETs")


# ---- the trivial server (the generator's ceiling), run as a subprocess --------------------------


# ---- the plan and the runner -----------------------------------------------------------------


class Bench:
    """Runs the workloads against the servers, alternating them round by round."""

    def __init__(self, settings: Settings, sides: list[Server], sink: Server | None,
                 progress: Progress, probe_dir: str):
        self.s = settings
        self.sides = sides
        self.sink = sink
        self.progress = progress
        self.probe_dir = probe_dir
        self.probes: list[float] = []

    async def _rounds(self, label: str, metric: str, measure) -> dict:
        """``measure(server)`` for every round and server (A B A B ...); the
        disk's fsync latency is probed before each round (into ``self.probes``)."""
        runs = {srv.name: [] for srv in self.sides}
        self.probes = []
        for rnd in range(1, self.s.rounds + 1):
            self.probes.append(fsync_probe(self.probe_dir))
            for srv in self.sides:
                srv.check_alive()
                run = await measure(srv)
                runs[srv.name].append(run)
                self.progress.say(f"    round {rnd}/{self.s.rounds} {srv.name:<9} "
                                  f"{fmt_run(metric, run)}")
        return {k: tuple(v) for k, v in runs.items()}

    async def _ceiling(self, label: str, metric: str, measure) -> tuple:
        if self.sink is None:
            return ()
        self.sink.check_alive()
        run = await measure(self.sink)
        self.progress.say(f"    ceiling (trivial server)  {fmt_run(metric, run)}")
        return (run,)

    async def appends(self) -> list[Result]:
        s = self.s
        ceilings = {}
        biggest = max(s.sizes)
        for c in s.connections:
            self.progress.say(f"[append] load generator ceiling, {fmt_size(biggest)} octet, "
                              f"c={c}")
            body = body_for("octet", biggest)
            ceilings[c] = await self._ceiling(
                "ceiling", "appends/s",
                lambda srv, c=c, body=body: append_run(srv, body, CONTENT_TYPES["octet"], c,
                                                       "shared", s.warmup, s.duration))
        configs = [(size, kind, c, layout) for size in s.sizes for kind in s.types
                   for c in s.connections for layout in s.layouts
                   if not (layout == "own" and c == 1 and "shared" in s.layouts)]
        results = []
        for n, (size, kind, c, layout) in enumerate(configs, 1):
            label = f"{fmt_size(size)} {kind} c={c} {layout if c > 1 else 'one stream'}"
            self.progress.say(f"[append {n}/{len(configs)}] {label}")
            body = body_for(kind, size)
            runs = await self._rounds(
                label, "appends/s",
                lambda srv, body=body, kind=kind, c=c, layout=layout: append_run(
                    srv, body, CONTENT_TYPES[kind], c, layout, s.warmup, s.duration))
            params = {"size": size, "type": kind, "connections": c,
                      "layout": layout if c > 1 else "shared"}
            results.append(Result("append", label, params, "appends/s", runs, ceilings[c],
                                  tuple(self.probes)))
        return results

    async def reads(self) -> list[Result]:
        s = self.s
        total = s.read_mib * MiB
        results = []
        ceiling: tuple = ()
        if self.sink is not None:
            self.progress.say(f"[read] load generator ceiling, {s.read_mib} MiB in 1 MiB GETs")
            path = f"{STREAM_PREFIX}read-{total}"
            ceiling = await self._ceiling("ceiling", "MB/s",
                                          lambda srv: read_run(srv, path, total, s.duration))
        for kind in s.types:
            streams = {}
            for srv in self.sides:
                t = time.perf_counter()
                streams[srv.name] = await fill_stream(srv, kind, total)
                self.progress.say(f"[read {kind}] filled {s.read_mib} MiB on {srv.name} in "
                                  f"{time.perf_counter() - t:.1f} s; one untimed pass")
                await read_run(srv, *streams[srv.name])
            label = f"{kind} {s.read_mib}MiB from -1" + (
                f", {fmt_size(READ_JSON_MESSAGE)} messages" if kind == "json" else
                f", {fmt_size(READ_OCTET_MESSAGE)} messages")
            self.progress.say(f"[read] {label}")
            runs = await self._rounds(label, "MB/s",
                                      lambda srv: read_run(srv, *streams[srv.name],
                                                           s.duration))
            params = {"mode": kind, "mib": s.read_mib,
                      "message_size": READ_JSON_MESSAGE if kind == "json" else READ_OCTET_MESSAGE}
            results.append(Result("read", label, params, "MB/s", runs, ceiling,
                                  tuple(self.probes)))
        return results

    async def sse(self, reader_cls=None) -> list[Result]:
        s = self.s
        reader_cls = reader_cls or SseReader
        workload = reader_cls.KIND
        results = []
        for readers in s.readers:
            label = f"{readers} readers, {s.sse_rate:g} msg/s"
            self.progress.say(f"[{workload}] {label}, {s.sse_duration:g} s per round")

            def measure(srv, readers=readers):
                return sse_run(srv, readers, s.sse_rate, s.sse_duration, reader_cls)

            ceiling = await self._ceiling(label, "p99", measure)
            runs = await self._rounds(label, "p99", measure)
            params = {"readers": readers, "rate": s.sse_rate, "duration": s.sse_duration}
            for stat in ("p50", "p90", "p99", "max"):
                results.append(Result(workload, label, params, stat, runs, ceiling,
                                      tuple(self.probes)))
        return results

    async def run(self) -> list[Result]:
        results = []
        if "append" in self.s.only:
            results += await self.appends()
        if "read" in self.s.only:
            results += await self.reads()
        if "sse" in self.s.only:
            results += await self.sse()
        if "longpoll" in self.s.only:
            results += await self.sse(LongPollReader)
        return results


# ---- output --------------------------------------------------------------------------------


def machine_info(sides: Sequence[Server], settings: Settings,
                 load_before: list[float] | None = None) -> dict:
    info = {
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **platform_info(),
        "servers": {s.name: {"url": s.url, "what": s.description} for s in sides},
    }
    if settings.compare_reference:
        try:
            info["node"] = subprocess.run([settings.node, "--version"], capture_output=True,
                                          text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["node"] = None
    return info


TABLE_HEADER = ["workload", "params", "unit", "unbroken", "reference", "ratio", "ceiling",
                "fsync ms", "flags"]
_RIGHT = {3, 4, 5, 6, 7}


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        flags = []
        for side, letter in (("unbroken", "U"), ("reference", "R")):
            runs = r.runs.get(side, ())
            if r.generator_bound(side):
                flags.append(f"gen:{letter}")
            if any(x.errors for x in runs):
                flags.append(f"err:{letter}")
            if any(x.missing for x in runs):
                flags.append(f"miss:{letter}")
        ratio = r.ratio
        cells = []
        for side in ("unbroken", "reference"):
            bound = ">" if r.lower_bound(side) else ""
            cells.append(bound + fmt_value(r.metric, r.value(side)))
        fsync = f"{statistics.median(r.fsync_ms):.2f}" if r.fsync_ms else "-"
        rows.append([r.workload, r.label, r.unit, *cells,
                     f"{r.ratio_bound}{ratio:.2f}" if ratio is not None else "-",
                     fmt_value(r.metric, r.ceiling_value), fsync, " ".join(flags)])
    return rows


def render_table(results: Sequence[Result]) -> str:
    """The results as an aligned table (figures right-aligned)."""
    return render_columns(TABLE_HEADER, table_rows(results), _RIGHT)


def _target_value(t: Target) -> str:
    if t.value is None:
        return "not measured"
    return f"{t.bound}{t.value:.2f} {'<=' if t.at_most else '>='} {t.threshold:g}"


def render_targets(targets: Sequence[Target]) -> str:
    """The targets section."""
    return render_target_lines(targets, _target_value)


def warnings_for(results: Sequence[Result]) -> list[str]:
    out = []
    probes = [x for r in results for x in r.fsync_ms]
    if probes and min(probes) > 0 and max(probes) / min(probes) >= DISK_SWING:
        out.append(f"the disk's fsync latency ranged from {min(probes):.2f} to "
                   f"{max(probes):.2f} ms during the run (other processes?): rows measured "
                   f"at different times are not comparable with each other; within a row "
                   f"the servers alternated under the same conditions")
    seen = set()
    for r in results:
        for side in r.runs:
            share = r.generator_share(side)
            key = (r.workload, r.label, side)
            if r.generator_bound(side) and key not in seen:
                seen.add(key)
                out.append(f"{r.workload} {r.label}: {side} {r.unit} "
                           f"{fmt_value(r.metric, r.value(side))} is {share:.0%} of the load "
                           f"generator's ceiling ({fmt_value(r.metric, r.ceiling_value)}): "
                           f"it may be measuring the generator")
            runs = r.runs[side]
            errors = sum(x.errors for x in runs)
            missing = sum(x.missing for x in runs)
            if (errors or missing) and ("e",) + key not in seen:
                seen.add(("e",) + key)
                notes = "; ".join(sorted({x.note for x in runs if x.note and x.errors}))
                out.append(f"{r.workload} {r.label}: {side}: {errors} errors, "
                           f"{missing} missing deliveries{' (' + notes + ')' if notes else ''}")
    return out


def render_text(results: Sequence[Result], targets: Sequence[Target], settings: Settings,
                machine: dict, warnings: Sequence[str]) -> str:
    servers = "; ".join(f"{name}: {v['what']} at {v['url']}"
                        for name, v in machine["servers"].items())
    head = (
        f"Unbroken HTTP benchmark{' (--quick)' if settings.quick else ''}: Python "
        f"{machine['python']}, {machine['cpu_count']} CPUs"
        f"{', node ' + machine['node'] if machine.get('node') else ''}; load average "
        f"(1/5/15 min) before {fmt_load(machine['load_average_before'])}, after "
        f"{fmt_load(machine['load_average_after'])} (other processes compete for the CPUs "
        f"and the disk when these are well above 0)\n"
        f"servers: {servers}\n"
        f"servers measured one at a time (rounds alternate unbroken, reference, ...; the idle "
        f"one gets no requests); each shares the {machine['cpu_count']} CPUs with the load "
        f"generator\n"
        f"figures: throughput = {STATISTIC} of {settings.rounds} rounds (appends: "
        f"{settings.warmup:g} s warm-up + {settings.duration:g} s timed); SSE and long-poll "
        f"latency = percentile of all deliveries of all rounds, POST sent -> event (or "
        f"long-poll response) received; "
        f"MB = 10^6 payload bytes\n"
        f"ratio = unbroken / reference (for latencies lower is better); ceiling = the same "
        f"load against a trivial server (the load generator's limit); flags: gen = within "
        f"20% of that ceiling, err = errors, miss = undelivered SSE/long-poll messages (U unbroken, "
        f"R reference); \">\" = a lower bound (deliveries missing after "
        f"{SSE_DRAIN:g} s count as slower than all); fsync ms = median write + fdatasync "
        f"latency of this disk, probed before each round")
    parts = [head, render_table(results), render_targets(targets)]
    return "\n\n".join(parts + render_warnings(warnings))


def render_json(results: Sequence[Result], targets: Sequence[Target], settings: Settings,
                machine: dict, warnings: Sequence[str]) -> str:
    doc = {
        "machine": machine,
        "statistic": STATISTIC,
        "method": "servers measured one at a time, rounds alternating; throughput is the "
                  "median of rounds; SSE and long-poll latencies are nearest-rank percentiles of every "
                  "delivery of every round",
        "settings": settings.to_json(),
        "results": [r.to_json() for r in results],
        "targets": [t.to_json() for t in targets],
        "warnings": list(warnings),
    }
    return json_text(doc)


# ---- entry point ----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Run ``unbroken bench http``; returns the exit status (0 even on MISS;
    2 when --plot is given and matplotlib is missing, before any server starts)."""
    from . import plot
    status = plot.check(args, "http")
    if status is not None:
        return status
    settings = Settings.from_args(args)
    progress = Progress()
    load_before = load_average()
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="unbroken-bench-http-",
                                     dir=settings.directory) as root:
        try:
            sides, sink = _start_servers(settings, root, started, progress)
            results = asyncio.run(Bench(settings, sides, sink, progress, root).run())
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (RuntimeError, OSError) as exc:
            print(f"unbroken bench http: {exc}", file=sys.stderr)
            return 1
        finally:
            for srv in reversed(started):
                srv.stop()
    targets = evaluate_targets(results, settings)
    warnings = warnings_for(results)
    for w in warnings:
        progress.say(f"warning: {w}")
    render = render_json if settings.as_json else render_text
    print(render(results, targets, settings, machine_info(sides, settings, load_before),
                 warnings))
    path = getattr(args, "plot", None)
    if path:
        plot.plot_http(results, path)
        progress.say(f"plot written to {path}")
    return 0


def _start_servers(settings: Settings, root: str, started: list, progress: Progress):
    sides = []
    if settings.url:
        sides.append(Server("unbroken", settings.url, "given by --url"))
    else:
        d = os.path.join(root, "unbroken")
        os.mkdir(d)
        srv = start_unbroken(d, os.path.join(root, "unbroken.log"))
        started.append(srv)
        sides.append(srv)
        progress.say(f"started {srv.description} at {srv.url} (pid {srv.pid})")
    if settings.compare:
        sides.append(Server("reference", settings.compare, "given by --compare"))
    elif settings.compare_reference:
        d = os.path.join(root, "reference")
        os.mkdir(d)
        srv = start_reference(settings.node, settings.reference_module, d,
                              os.path.join(root, "reference.log"))
        started.append(srv)
        sides.append(srv)
        progress.say(f"started {srv.description} at {srv.url} (pid {srv.pid})")
    sink = None
    if settings.ceiling:
        sink = start_sink(os.path.join(root, "sink.log"))
        started.append(sink)
    return sides, sink


