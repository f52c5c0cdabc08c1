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
import array
import asyncio
import dataclasses
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import quote, urlsplit

from .engine import (KiB, MiB, _finite, _split, _unique, existing_dir, fmt_size,
                     parse_size, positive_float, positive_int)

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
SSE_WARMUP_MESSAGES = 3         # untimed messages before the measured ones
SSE_DRAIN = 5.0                 # seconds to wait for deliveries after the last POST
SSE_WRITER_CONNECTIONS = 32     # the open-loop SSE writer's connection pool
SSE_READY_TIMEOUT = 60.0        # seconds for every reader to connect and subscribe
CONNECT_PARALLEL = 50           # connections opened at once
GENERATOR_SHARE = 0.8           # flag a figure at >= 80% of the generator's ceiling
DISK_SWING = 5.0                # warn when the fsync probes differ by this factor
STATISTIC = "median"
STREAM_PREFIX = "/v1/stream/"
# where `npm install @durable-streams/server@0.3.7` puts it, run in the current directory
DEFAULT_REFERENCE_MODULE = os.path.join("node_modules", "@durable-streams", "server")
REFERENCE_ENV = "UNBROKEN_BENCH_REFERENCE"
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_server.mjs")
_T0 = time.perf_counter_ns()    # SSE timestamps are relative to this (small numbers)


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





def _choices(text: str, what: str, allowed: Sequence[str]) -> tuple[str, ...]:
    out = []
    for t in _split(text, what):
        if t.lower() not in allowed:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {t!r} (choose from {', '.join(allowed)})")
        out.append(t.lower())
    return _unique(out)


def workload_list(text: str) -> tuple[str, ...]:
    """``"append,sse"`` -> ``("append", "sse")``; names from WORKLOADS."""
    return _choices(text, "workload", WORKLOADS)


def type_list(text: str) -> tuple[str, ...]:
    """``"octet,json"``; names from TYPES."""
    return _choices(text, "type", TYPES)


def layout_list(text: str) -> tuple[str, ...]:
    """``"shared,own"``; names from LAYOUTS."""
    return _choices(text, "layout", LAYOUTS)


def _count_list(text: str, what: str, top: int) -> tuple[int, ...]:
    out = []
    for t in _split(text, what):
        if not t.isdigit() or not 1 <= int(t) <= top:
            raise argparse.ArgumentTypeError(
                f"{what}: {t!r} is not a whole number from 1 to {top}")
        out.append(int(t))
    return _unique(out)


def connections_list(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``; each 1 .. MAX_CONNECTIONS."""
    return _count_list(text, "connections", MAX_CONNECTIONS)


def readers_list(text: str) -> tuple[int, ...]:
    """``"100,1000"`` -> ``(100, 1000)``; each 1 .. MAX_READERS."""
    return _count_list(text, "readers", MAX_READERS)


def body_size_list(text: str) -> tuple[int, ...]:
    """``"100,1KiB"`` -> ``(100, 1024)``; each 16 B .. 16 MiB (a JSON body of
    that exact size needs at least 16 bytes)."""
    sizes = [parse_size(t) for t in _split(text, "sizes")]
    for s in sizes:
        if not 16 <= s <= 16 * MiB:
            raise argparse.ArgumentTypeError(f"body size {s} out of range 16..{16 * MiB}")
    return _unique(sizes)


def base_url(text: str) -> str:
    """``"http://h:1/"`` or ``"http://h:1/v1/stream/"`` -> ``"http://h:1"``."""
    parts = urlsplit(text.strip())
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// URL (https is not supported)")
    try:
        port = parts.port or 80
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a bad port") from None
    path = parts.path.rstrip("/")
    if path not in ("", STREAM_PREFIX.rstrip("/")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the server's root (http://HOST:PORT), not a path")
    host = parts.hostname
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def split_url(url: str) -> tuple[str, int]:
    """``"http://h:1"`` -> ``("h", 1)``."""
    parts = urlsplit(url)
    return parts.hostname, parts.port or 80


def non_negative_seconds(text: str) -> float:
    """A number of seconds >= 0 (a warm-up may be 0)."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (x >= 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return x


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
    add("--json", action="store_true", dest="as_json",
        help="print machine-readable JSON instead of the table")
    add("--dir", type=existing_dir, default=None, metavar="PATH",
        help="where to create the servers' data directories (default: the system temp dir)")
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

        def pick(value, default):
            return default if value is None else value

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

def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``: the smallest value
    with at least ``p`` % of the values at or below it. ``p`` = 100 is the max,
    0 the min. No interpolation, so every answer is an observed value.

    :raises ValueError: no values, or ``p`` outside 0..100
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    rank = math.ceil(p / 100 * n)
    return sorted_values[max(rank, 1) - 1]


def percentile_with_missing(sorted_values: Sequence[float], missing: int,
                            p: float) -> tuple[float, bool]:
    """:func:`percentile` of ``sorted_values`` plus ``missing`` samples that never
    arrived (counted as later than all of them). ``(value, lower_bound)``: when
    the rank falls among the missing ones the answer is only known to exceed
    the largest observed value, which is returned with ``lower_bound`` True.

    :raises ValueError: no observed values, or ``p`` outside 0..100
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    rank = max(math.ceil(p / 100 * (n + missing)), 1)
    if rank > n:
        return sorted_values[-1], True
    return sorted_values[rank - 1], False


STATS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


@dataclass(frozen=True)
class Latency:
    """Summary of latency samples, in milliseconds.

    :ivar missing: samples that never arrived; they count as slower than every
        observed one, so a percentile that falls among them is a lower bound
        (named in ``lower_bounds``)
    """

    count: int
    p50: float
    p99: float
    max: float
    missing: int = 0
    lower_bounds: frozenset = frozenset()
    p90: float = math.nan

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int], missing: int = 0) -> "Latency | None":
        """From samples in nanoseconds (any order); None when there are none."""
        if not len(samples_ns):
            return None
        xs = sorted(samples_ns)
        values, bounds = {}, set()
        for stat, p in STATS.items():
            v, bound = percentile_with_missing(xs, missing, p)
            values[stat] = v / 1e6
            if bound:
                bounds.add(stat)
        return cls(len(xs), values["p50"], values["p99"], values["max"], missing,
                   frozenset(bounds), p90=values["p90"])

    def get(self, stat: str) -> float:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max}[stat]

    def to_json(self) -> dict:
        return {"count": self.count, "missing": self.missing, "p50_ms": self.p50,
                "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max,
                "lower_bounds": sorted(self.lower_bounds)}


# ---- results (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One round of one workload against one server.

    :ivar ops: appends acknowledged, GETs of a read pass, or SSE deliveries
    :ivar nbytes: payload bytes (appended or read)
    :ivar latencies_ns: per-append round trips, or per-delivery SSE latencies
    :ivar missing: SSE deliveries that never arrived
    :ivar server_cpu: the server process's CPU time over ``seconds`` (1.0 = one
        core busy), None when it is not our child process
    :ivar client_cpu: the load generator's, likewise
    """

    seconds: float
    ops: int
    nbytes: int
    errors: int = 0
    latencies_ns: Sequence[int] = ()
    missing: int = 0
    server_cpu: float | None = None
    client_cpu: float | None = None
    note: str = ""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else math.inf

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else math.inf

    def to_json(self) -> dict:
        lat = Latency.of_ns(self.latencies_ns, self.missing)
        return {"seconds": self.seconds, "ops": self.ops, "bytes": self.nbytes,
                "ops_per_s": self.ops_per_s, "mb_per_s": self.mb_per_s,
                "errors": self.errors, "missing": self.missing,
                "latency": lat.to_json() if lat else None,
                "server_cpu": self.server_cpu, "client_cpu": self.client_cpu,
                "note": self.note}


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
        return safe_ratio(self.value("unbroken"), self.value("reference"))

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
        return safe_ratio(v, c) if self.higher_is_better else safe_ratio(c, v)

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
                "server_cpu": _median_or_none(r.server_cpu for r in runs),
                "client_cpu": _median_or_none(r.client_cpu for r in runs),
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


def _median_or_none(values) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(b) or not math.isfinite(a):
        return None
    return a / b


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


# ---- the HTTP/1.1 client (parsing is pure) --------------------------------------------------

class ProtocolError(Exception):
    """The server's bytes are not HTTP/1.1 as this client understands it."""


@dataclass
class Response:
    status: int
    headers: dict   # lower-cased name -> value (repeated headers joined by ", ")
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)
MAX_HEAD = 256 * KiB


def parse_head(head: bytes) -> Response:
    """``HTTP/1.1 204 No Content\\r\\nA: b...`` (without the blank line) -> Response."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}") from None
    headers: dict = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        key = name.strip().lower().decode("latin-1")
        val = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return Response(status, headers)


class ResponseParser:
    """Incremental parser of HTTP/1.1 responses (Content-Length, chunked, or
    delimited by the connection's end).

    Set ``expect_body`` (False after a HEAD) and ``on_body`` before each
    request: with ``on_body`` the body is handed over piece by piece (as
    memoryviews or bytearrays, valid only during the call) and
    ``Response.body`` stays empty; without, the body is collected.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._resp: Response | None = None
        self._parts: list = []
        self.expect_body = True
        self.on_body: Callable | None = None

    @property
    def idle(self) -> bool:
        """Between responses with nothing buffered."""
        return self._state == _HEAD and not self._buf

    def _deliver(self, piece) -> None:
        if self.on_body is not None:
            self.on_body(piece)
        else:
            self._parts.append(bytes(piece))

    def _finish(self, out: list) -> None:
        resp = self._resp
        if self._parts:
            resp.body = b"".join(self._parts)
        self._resp, self._parts, self._state = None, [], _HEAD
        out.append(resp)

    def _start_body(self, resp: Response, out: list) -> None:
        self._resp = resp
        te = resp.headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            self._state = _CHUNK_SIZE
            return
        length = resp.headers.get("content-length")
        if length is None:
            self._state = _UNTIL_CLOSE
            return
        try:
            self._remaining = int(length)
        except ValueError:
            raise ProtocolError(f"bad Content-Length {length!r}") from None
        if self._remaining < 0:
            raise ProtocolError(f"bad Content-Length {length!r}")
        self._state = _LENGTH
        if self._remaining == 0:
            self._finish(out)

    def feed(self, data) -> list[Response]:
        """Consume ``data``; return the responses it completed, in order."""
        out: list[Response] = []
        buf = self._buf
        if not buf and self._state in (_LENGTH, _CHUNK_DATA) and len(data):
            # fast path for large bodies: hand the piece over without buffering it
            view = memoryview(data)
            n = min(len(view), self._remaining)
            self._deliver(view[:n])
            self._remaining -= n
            data = view[n:]
            if self._remaining == 0:
                if self._state == _LENGTH:
                    self._finish(out)
                else:
                    self._state = _CHUNK_END
        buf += data
        while True:
            st = self._state
            if st == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("response head too large")
                    break
                resp = parse_head(bytes(buf[:i]))
                del buf[:i + 4]
                if 100 <= resp.status < 200:
                    continue  # informational (100 Continue): the real one follows
                if not self.expect_body or resp.status in (204, 304):
                    self._resp = resp
                    self._finish(out)
                    continue
                self._start_body(resp, out)
            elif st == _LENGTH or st == _CHUNK_DATA:
                if not buf:
                    break
                n = min(len(buf), self._remaining)
                self._deliver(buf[:n])
                del buf[:n]
                self._remaining -= n
                if self._remaining == 0:
                    if st == _LENGTH:
                        self._finish(out)
                    else:
                        self._state = _CHUNK_END
            elif st == _CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                try:
                    size = int(bytes(buf[:i]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {bytes(buf[:i])[:40]!r}") from None
                del buf[:i + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining, self._state = size, _CHUNK_DATA
            elif st == _CHUNK_END:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif st == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                del buf[:i + 2]
                if i == 0:
                    self._finish(out)
            else:  # _UNTIL_CLOSE
                if buf:
                    self._deliver(buf)
                    buf.clear()
                break
        return out

    def eof(self) -> Response | None:
        """The connection ended: the response it completes, or None when idle.

        :raises ProtocolError: it ended in the middle of a response
        """
        if self._state == _UNTIL_CLOSE:
            out: list = []
            self._finish(out)
            return out[0]
        if self.idle:
            return None
        raise ProtocolError("connection closed in the middle of a response")


def request_bytes(method: str, target: str, host: str, headers=(), body: bytes = b"") -> bytes:
    """A complete HTTP/1.1 request (keep-alive, Content-Length when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class DeferredFeed:
    """Stamps each piece's arrival time, then parses every piece of one event-loop
    pass afterwards: with hundreds of readers woken at once, the readers served
    later in the pass are not charged for parsing the earlier ones."""

    def __init__(self) -> None:
        self._pending: list = []
        self._scheduled = False

    def add(self, conn: "HttpConnection", data: bytes) -> None:
        self._pending.append((conn, data, time.perf_counter_ns()))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending, self._scheduled = self._pending, [], False
        for conn, data, ts in pending:
            conn.received_ns = ts
            conn.feed(data)


RECV_BUFFER = 256 * KiB


class HttpConnection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection; one request at a time. Receives into
    one preallocated buffer (no allocation per read for large bodies)."""

    def __init__(self, host: str, port: int, deferred: DeferredFeed | None = None) -> None:
        self.host_header = f"{host}:{port}"
        self._rbuf = memoryview(bytearray(RECV_BUFFER if deferred is None else 16 * KiB))
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received_ns = 0
        self._waiter: asyncio.Future | None = None
        self._deferred = deferred

    @classmethod
    async def open(cls, host: str, port: int,
                   deferred: DeferredFeed | None = None) -> "HttpConnection":
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(host, port, deferred), host, port)
        return conn

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        if self._deferred is not None:
            self._deferred.add(self, bytes(self._rbuf[:nbytes]))
        else:
            self.received_ns = time.perf_counter_ns()
            self.feed(self._rbuf[:nbytes])

    def connection_lost(self, exc) -> None:
        if self._deferred is not None:
            self._deferred.flush()
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        try:
            resp = self.parser.eof()
        except ProtocolError as err:
            waiter.set_exception(ConnectionError(f"connection lost: {err}"))
            return
        if resp is None:
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))
        else:
            waiter.set_result(resp)

    def feed(self, data) -> None:
        try:
            done = self.parser.feed(data)
        except ProtocolError as err:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(err)
            self.close()
            return
        for resp in done:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(resp)

    # requests
    def send(self, raw: bytes, *, expect_body: bool = True,
             on_body: Callable | None = None) -> asyncio.Future:
        """Write a prepared request; the future resolves to its Response."""
        if self.closed:
            raise ConnectionError("connection closed")
        if self._waiter is not None:
            raise RuntimeError("one request at a time on a connection")
        self.parser.expect_body = expect_body
        self.parser.on_body = on_body
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    async def request(self, method: str, target: str, headers=(), body: bytes = b"", *,
                      on_body: Callable | None = None) -> Response:
        raw = request_bytes(method, target, self.host_header, headers, body)
        return await self.send(raw, expect_body=method != "HEAD", on_body=on_body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_connections(host: str, port: int, n: int,
                           deferred: DeferredFeed | None = None) -> list[HttpConnection]:
    """``n`` connections, at most CONNECT_PARALLEL connecting at once."""
    sem = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one():
        async with sem:
            return await HttpConnection.open(host, port, deferred)

    return list(await asyncio.gather(*(one() for _ in range(n))))


# ---- SSE parsing (pure) ---------------------------------------------------------------------

class SSEParser:
    """Splits a text/event-stream into ``(event type, data)`` pairs; comments
    and ids are dropped, several ``data:`` lines are joined with newlines."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data) -> list[tuple[bytes, bytes]]:
        self._buf += data
        buf = self._buf
        if b"\r" in buf:
            end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # CR LF may be split
            buf[:end] = buf[:end].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = []
        start = 0
        while True:
            i = buf.find(b"\n\n", start)
            if i < 0:
                break
            event = self._event(bytes(buf[start:i]))
            if event is not None:
                out.append(event)
            start = i + 2
        if start:
            del buf[:start]
        return out

    @staticmethod
    def _event(block: bytes) -> tuple[bytes, bytes] | None:
        kind, data, has_data = b"message", [], False
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"event":
                kind = value
            elif name == b"data":
                data.append(value)
                has_data = True
        if not has_data:
            return None
        return kind, b"\n".join(data)


_MSG_RE = re.compile(rb'"i":(-?\d+),"t":(\d+)')
_OFFSET_RE = re.compile(rb'"streamNextOffset":"([^"]*)"')


def sse_message(i: int, now_ns: int | None = None) -> bytes:
    """The SSE writer's JSON body: ``{"i":i,"t":ns since the bench started}``."""
    t = (time.perf_counter_ns() if now_ns is None else now_ns) - _T0
    return b'{"i":%d,"t":%d}' % (i, t)


def message_stamps(data: bytes) -> list[tuple[int, int]]:
    """``(i, t)`` of every writer message in an SSE data payload (a JSON
    object, or an array of them)."""
    return [(int(m[1]), int(m[2])) for m in _MSG_RE.finditer(data)]


# ---- servers -------------------------------------------------------------------------------

@dataclass
class Server:
    """A server to measure: a URL, and our child process when we started it."""

    name: str
    url: str
    description: str
    proc: subprocess.Popen | None = None
    log_path: str | None = None
    _drain: threading.Thread | None = None

    @property
    def host(self) -> str:
        return split_url(self.url)[0]

    @property
    def port(self) -> int:
        return split_url(self.url)[1]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of our child process so far (Linux), else None."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} server exited with status {self.proc.returncode}"
                               f"{_log_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _log_tail(path: str | None, lines: int = 15) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        tail = f.readlines()[-lines:]
    return "\n  ... last lines of its output (" + path + "):\n  " + "  ".join(tail)


def start_process(name: str, description: str, cmd: list[str], ready: re.Pattern,
                  log_path: str, timeout: float = 60.0, env: dict | None = None) -> Server:
    """Start ``cmd``; its stdout and stderr go to ``log_path``; returns once a
    stdout line matches ``ready`` (whose group 1 is the base URL)."""
    log = open(log_path, "w", buffering=1)
    # run beside its log, not in the caller's directory: "python -m" puts the
    # working directory first on sys.path, and a source checkout there would
    # shadow the installed (compiled) package
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1, env=env, start_new_session=True,
                            cwd=os.path.dirname(os.path.abspath(log_path)))
    found: queue.Queue = queue.Queue()

    def drain():
        matched = False
        for line in proc.stdout:
            log.write(line)
            if not matched:
                m = ready.search(line)
                if m:
                    matched = True
                    found.put(m.group(1))
        found.put(None)
        log.close()

    thread = threading.Thread(target=drain, name=f"{name}-stdout", daemon=True)
    thread.start()
    try:
        url = found.get(timeout=timeout)
    except queue.Empty:
        url = None
    if url is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        thread.join(5)
        raise RuntimeError(f"{name} server did not start (no ready line within {timeout:g} s)"
                           f"{_log_tail(log_path)}")
    return Server(name, base_url(url), description, proc, log_path, thread)


_UNBROKEN_READY = re.compile(r"serving (http://\S+?)/v1/stream/")
_REFERENCE_READY = re.compile(r"reference: ready (http://\S+)")
_SINK_READY = re.compile(r"sink: ready (http://\S+)")


def start_unbroken(data_dir: str, log_path: str) -> Server:
    cmd = [sys.executable, "-m", "unbroken_server", "serve", "--host", "127.0.0.1",
           "--port", "0", "--store", "file", "--data-dir", data_dir,
           "--durability", "always", "--log-level", "warning"]
    return start_process("unbroken", "unbroken serve (file store, --durability always)", cmd,
                         _UNBROKEN_READY, log_path)


def reference_entry(module: str | None) -> str:
    """The reference package's ESM entry file, from a package dir or a file path."""
    path = module or os.environ.get(REFERENCE_ENV) or DEFAULT_REFERENCE_MODULE
    if os.path.isdir(path):
        path = os.path.join(path, "dist", "index.js")
    if not os.path.isfile(path):
        raise RuntimeError(f"reference server package not found at {path}: install it with "
                           f"`npm install @durable-streams/server@0.3.7` in this directory, "
                           f"or give --reference-module or set ${REFERENCE_ENV}")
    return os.path.abspath(path)


def reference_version(entry: str) -> str | None:
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(entry)), "package.json")) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


def start_reference(settings: Settings, data_dir: str, log_path: str) -> Server:
    if shutil.which(settings.node) is None:
        raise RuntimeError(f"--compare-reference needs node ({settings.node!r} is not on PATH)")
    entry = reference_entry(settings.reference_module)
    version = reference_version(entry) or "?"
    cmd = [settings.node, LAUNCHER, "0", data_dir, entry]
    return start_process("reference", f"@durable-streams/server {version} (file-backed, "
                         f"fsync per append)", cmd, _REFERENCE_READY, log_path)


def start_sink(log_path: str) -> Server:
    cmd = [sys.executable, "-m", "unbroken_benches.http", "sink", "0"]
    return start_process("ceiling", "trivial server (answers at once)", cmd, _SINK_READY,
                         log_path)


# ---- workloads: each returns one Run ----------------------------------------------------------

def stream_name(kind: str) -> str:
    return f"{STREAM_PREFIX}bench-{kind}-{uuid.uuid4().hex[:12]}"


def json_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 10)."""
    return b'{"pad":"' + b"x" * (size - 10) + b'"}'


def body_for(kind: str, size: int) -> bytes:
    return json_body(size) if kind == "json" else os.urandom(size)


async def create_stream(conn: HttpConnection, path: str, content_type: str) -> str:
    """PUT ``path``; returns its tail offset."""
    resp = await conn.request("PUT", path, [("Content-Type", content_type)])
    if resp.status not in (200, 201):
        raise RuntimeError(f"PUT {path}: {resp.status} {resp.body[:200]!r}")
    return resp.header("stream-next-offset") or "-1"


class CpuMeter:
    """CPU use of the server process and of this process over a window."""

    def __init__(self, server: Server):
        self.server = server
        self.wall = time.perf_counter()
        self.client = time.process_time()
        self.srv = server.cpu_seconds()

    def stop(self) -> tuple[float, float | None, float]:
        """``(seconds, server cpu share, client cpu share)`` since construction."""
        seconds = time.perf_counter() - self.wall
        client = (time.process_time() - self.client) / seconds if seconds > 0 else None
        srv_now = self.server.cpu_seconds()
        srv = None
        if srv_now is not None and self.srv is not None and seconds > 0:
            srv = (srv_now - self.srv) / seconds
        return seconds, srv, client


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


async def closed_loop_appends(conns: Sequence[HttpConnection], raws: Sequence[bytes],
                              body_bytes: int, meter, warmup: float, duration: float) -> Run:
    """Each connection sends its raw POST, waits for the answer and sends it
    again, for ``warmup`` + ``duration`` seconds; the answers of the timed
    part are counted. ``meter()`` starts a CPU meter (stopped with
    ``.stop()`` -> seconds, server CPU, client CPU) when timing starts."""
    timing = False
    stopping = False
    ops = errors = 0
    first_error = ""
    lat = array.array("q")

    async def worker(conn: HttpConnection, raw: bytes) -> None:
        """POST, wait for the answer, POST again, until stopped."""
        nonlocal ops, errors, first_error
        clock = time.perf_counter_ns
        while not stopping:
            t = clock()
            resp = await conn.send(raw)
            ok = resp.status in (200, 204)
            if timing:
                if ok:
                    ops += 1
                    lat.append(clock() - t)
                else:
                    errors += 1
            if not ok and not first_error:
                first_error = f"{resp.status} {resp.body[:120]!r}"

    tasks = [asyncio.ensure_future(worker(c, r)) for c, r in zip(conns, raws)]
    try:
        await _sleep_or_fail(tasks, warmup)
        timing = True
        running = meter()
        await _sleep_or_fail(tasks, duration)
        timing = False
        seconds, srv_cpu, cli_cpu = running.stop()
        stopping = True
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        if pending:
            raise RuntimeError(f"{len(pending)} appends still unanswered 30 s after the end")
    finally:
        stopping = True
        for t in tasks:
            t.cancel()
    return Run(seconds, ops, ops * body_bytes, errors, lat, server_cpu=srv_cpu,
               client_cpu=cli_cpu, note=f"first error: {first_error}" if first_error else "")


async def _sleep_or_fail(tasks, seconds: float) -> None:
    """Sleep, but raise at once if a worker task died."""
    if seconds <= 0:
        return
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception() is not None:
            raise t.exception()


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


class _LiveReader:
    """What the SSE and long-poll readers share: their counters, a loop that
    reconnects after a dropped connection (and gives up, failing ``ready``,
    when the first attempt fails or the server answers wrongly), and stop()."""

    KIND = ""
    RESUBSCRIBED = ""

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        self.server, self.path, self.deferred, self.sink = server, path, deferred, sink
        self.offset = "-1"
        self.ready = asyncio.get_running_loop().create_future()
        self.conn: HttpConnection | None = None
        self.received = 0
        self.errors = 0
        self.resubscribes = 0
        self.stopping = False

    async def _once(self) -> None:
        """One request on ``self.conn``; raise RuntimeError for a wrong answer."""
        raise NotImplementedError

    async def run(self, conn: HttpConnection) -> None:
        self.conn = conn
        while not self.stopping:
            try:
                if self.conn.closed:
                    self.conn = await HttpConnection.open(self.server.host, self.server.port,
                                                          self.deferred)
                await self._once()
            except (ConnectionError, OSError, ProtocolError) as exc:
                if self.stopping:
                    return
                self.errors += 1
                if not self.ready.done():
                    self.ready.set_exception(exc)
                    return
                await asyncio.sleep(0.05)
            except RuntimeError as exc:
                if not self.ready.done():
                    self.ready.set_exception(exc)
                self.errors += 1
                return

    def stop(self) -> None:
        self.stopping = True
        if self.conn is not None:
            self.conn.close()


class SseReader(_LiveReader):
    """One live=sse reader: records each measured message's delivery latency,
    and re-subscribes from the last ``streamNextOffset`` if the server ends
    the response."""

    KIND = "sse"
    RESUBSCRIBED = "re-subscriptions"

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        super().__init__(server, path, deferred, sink)
        self.parser = SSEParser()

    def on_body(self, piece) -> None:
        now = self.conn.received_ns - _T0
        for kind, data in self.parser.feed(piece):
            if kind == b"data":
                for m in _MSG_RE.finditer(data):
                    if int(m[1]) >= 0:
                        self.sink.append(now - int(m[2]))
                        self.received += 1
            elif kind == b"control":
                m = _OFFSET_RE.search(data)
                if m:
                    self.offset = m[1].decode()
                if not self.ready.done():
                    self.ready.set_result(None)

    async def _once(self) -> None:
        self.parser = SSEParser()
        resp = await self.conn.request(
            "GET", f"{self.path}?offset={quote(self.offset, safe='-_')}&live=sse",
            [("Accept", "text/event-stream")], on_body=self.on_body)
        if resp.status != 200:
            raise RuntimeError(f"SSE GET {self.path}: {resp.status} {resp.body[:200]!r}")
        self.resubscribes += 1  # the server ended the response


class SseWriter:
    """The single logical writer of the SSE workload, open loop: a POST goes
    out on schedule on an idle connection of a small pool, whether or not the
    earlier ones have been answered (a slow server must not slow the writer
    down and so hide its own latency). Only when all SSE_WRITER_CONNECTIONS
    are busy does a POST wait; that lag is reported."""

    def __init__(self, server: Server, path: str):
        self.server, self.path = server, path
        self.idle: asyncio.Queue = asyncio.Queue()
        self.conns: list[HttpConnection] = []
        self.tasks: list = []
        self.errors = 0
        self.first_error = ""
        self.acks = array.array("q")
        self.max_lag = 0.0

    async def _conn(self) -> HttpConnection:
        if self.idle.empty() and len(self.conns) < SSE_WRITER_CONNECTIONS:
            conn = await HttpConnection.open(self.server.host, self.server.port)
            self.conns.append(conn)
            return conn
        return await self.idle.get()

    async def _post(self, conn: HttpConnection, i: int) -> None:
        t = time.perf_counter_ns()
        try:
            resp = await conn.request("POST", self.path, [("Content-Type", "application/json")],
                                      sse_message(i, t))
        except (ConnectionError, OSError, ProtocolError) as exc:
            self.errors += 1
            self.first_error = self.first_error or f"POST: {exc}"
            return
        if i >= 0:
            self.acks.append(time.perf_counter_ns() - t)
        if resp.status not in (200, 204):
            self.errors += 1
            self.first_error = self.first_error or f"POST: {resp.status} {resp.body[:120]!r}"
        self.idle.put_nowait(conn)

    async def write(self, first: int, count: int, rate: float) -> None:
        """POST messages ``first`` .. ``count - 1`` at ``rate`` per second."""
        period = 1.0 / rate
        start = time.perf_counter()
        for n, i in enumerate(range(first, count)):
            due = start + n * period
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await self._conn()
            self.max_lag = max(self.max_lag, time.perf_counter() - due)
            self.tasks.append(asyncio.ensure_future(self._post(conn, i)))

    async def finish(self, timeout: float) -> int:
        """Wait for every POST's answer; returns how many are still unanswered."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(self.tasks, timeout=timeout)
        return len(pending)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for c in self.conns:
            c.close()


class LongPollReader(_LiveReader):
    """One live=long-poll reader: after one catch-up GET from offset -1, loops
    GET ?offset=<Stream-Next-Offset>&live=long-poll&cursor=<Stream-Cursor> on
    its keep-alive connection and records each measured message's delivery
    latency (the response's arrival minus the message's stamp)."""

    KIND = "longpoll"
    RESUBSCRIBED = "long-polls timed out (204)"

    def __init__(self, server: Server, path: str, deferred: DeferredFeed, sink: array.array):
        super().__init__(server, path, deferred, sink)
        self.cursor: str | None = None

    def target(self) -> str:
        t = f"{self.path}?offset={quote(self.offset, safe='-_')}"
        if self.ready.done():
            t += "&live=long-poll"
            if self.cursor is not None:
                t += f"&cursor={quote(self.cursor, safe='-_')}"
        return t

    async def _once(self) -> None:
        live = self.ready.done()
        resp = await self.conn.request("GET", self.target())
        now = self.conn.received_ns - _T0
        if resp.status == 200:
            for m in _MSG_RE.finditer(resp.body):
                if int(m[1]) >= 0:
                    self.sink.append(now - int(m[2]))
                    self.received += 1
        elif resp.status == 204:
            self.resubscribes += live
        else:
            raise RuntimeError(f"long-poll GET {self.path}: {resp.status} "
                               f"{resp.body[:200]!r}")
        self.offset = resp.header("stream-next-offset") or self.offset
        self.cursor = resp.header("stream-cursor") or self.cursor
        if not self.ready.done():
            self.ready.set_result(None)


async def sse_run(server: Server, readers: int, rate: float, duration: float,
                  reader_cls=None, *, writer_server: Server | None = None, meter=None) -> Run:
    """``readers`` SSE readers (or ``reader_cls`` ones: LongPollReader) on
    ``server``, one writer at ``rate`` messages/s for ``duration`` s, posting
    to ``writer_server`` (default: the same server; another instance of a
    shared store makes every delivery cross instances). ``meter()`` starts
    the CPU meter of the timed part (default: ``CpuMeter(server)``)."""
    reader_cls = reader_cls or SseReader
    writer_server = writer_server or server
    host, port = server.host, server.port
    path = stream_name(reader_cls.KIND)
    deferred = DeferredFeed()
    sink = array.array("q")
    subs: list = []
    tasks: list = []
    writer = SseWriter(writer_server, path)
    try:
        setup = await HttpConnection.open(writer_server.host, writer_server.port)
        try:
            await create_stream(setup, path, "application/json")
        finally:
            setup.close()
        conns = await open_connections(host, port, readers, deferred)
        subs = [reader_cls(server, path, deferred, sink) for _ in conns]
        tasks = [asyncio.ensure_future(r.run(c)) for r, c in zip(subs, conns)]
        await asyncio.wait_for(asyncio.gather(*(r.ready for r in subs)), SSE_READY_TIMEOUT)
        await writer.write(-SSE_WARMUP_MESSAGES, 0, rate)   # warm-up: never counted
        await writer.finish(SSE_DRAIN)
        count = max(1, round(duration * rate))
        running = meter() if meter is not None else CpuMeter(server)
        t0 = time.perf_counter()
        await writer.write(0, count, rate)
        written = time.perf_counter() - t0
        unanswered = await writer.finish(SSE_DRAIN)
        expected = count * readers
        deadline = time.perf_counter() + SSE_DRAIN
        while sum(r.received for r in subs) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        seconds, srv_cpu, cli_cpu = running.stop()
        received = sum(r.received for r in subs)
        errors = writer.errors + sum(r.errors for r in subs)
        resub = sum(r.resubscribes for r in subs)
        acks = Latency.of_ns(writer.acks)
        note = (f"{count} messages x {readers} readers, written at "
                f"{(count - 1) / written if written > 0 and count > 1 else rate:.1f}/s "
                f"(writer lag max {writer.max_lag * 1e3:.0f} ms, "
                f"{len(writer.conns)} writer connections)")
        if acks:
            note += f"; POST answered p50 {acks.p50:.1f} ms, p99 {acks.p99:.1f} ms"
        if unanswered:
            note += f"; {unanswered} POSTs unanswered"
        if resub:
            note += f"; {resub} {reader_cls.RESUBSCRIBED}"
        if writer.first_error:
            note += f"; first error: {writer.first_error}"
        return Run(seconds, received, 0, errors, array.array("q", sink),
                   missing=max(0, expected - received), server_cpu=srv_cpu,
                   client_cpu=cli_cpu, note=note)
    finally:
        for r in subs:
            r.stop()
        writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()


# ---- the trivial server (the generator's ceiling), run as a subprocess --------------------------

_SINK_PIECE = b"x" * (1 * MiB)


class _SinkProtocol(asyncio.Protocol):
    """Answers at once: PUT 201, POST 204 (and fans an SSE event out to every
    subscriber of the path), GET ?live=sse subscribes, other GETs return the
    next 1 MiB of a stream of read-<total> bytes, except on a *-longpoll-*
    stream: its POST bodies from the offset as a JSON array (a live=long-poll
    GET with none waits for the next POST)."""

    subscribers: dict = {}
    streams: dict = {}   # *-longpoll-* path -> its POST bodies (offset = their count)
    waiters: dict = {}   # path -> protocols whose long-poll waits for the next POST

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.sse_path: str | None = None

    def connection_lost(self, exc) -> None:
        if self.sse_path is not None:
            self.subscribers.get(self.sse_path, set()).discard(self.transport)
        for waiting in self.waiters.values():
            if self in waiting:
                waiting.remove(self)

    def messages(self, path: bytes, offset: int) -> None:
        msgs = self.streams[path]
        body = b"[" + b",".join(msgs[offset:]) + b"]"
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Stream-Next-Offset: %d\r\nStream-Cursor: 1\r\n"
                             b"Stream-Up-To-Date: true\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(msgs), len(body), body))

    def data_received(self, data: bytes) -> None:
        if self.sse_path is not None:
            return
        buf = self.buf
        buf += data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            n = int(m[1]) if m else 0
            if len(buf) < i + 4 + n:
                return
            body = bytes(buf[i + 4:i + 4 + n])
            del buf[:i + 4 + n]
            self.handle(head, body)
            if self.sse_path is not None:
                return

    def handle(self, head: bytes, body: bytes) -> None:
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        path, _, query = target.partition(b"?")
        w = self.transport.write
        if method == b"PUT":
            if b"-longpoll-" in path:
                self.streams[path] = []
            w(b"HTTP/1.1 201 Created\r\nStream-Next-Offset: 0\r\nContent-Length: 0\r\n\r\n")
        elif method == b"POST":
            if path in self.streams:
                self.streams[path].append(body)
                for proto in self.waiters.pop(path, []):
                    proto.messages(path, len(self.streams[path]) - 1)
            subs = self.subscribers.get(path)
            if subs:
                event = (b"event: data\ndata:" + body + b"\n\nevent: control\n"
                         b'data:{"streamNextOffset":"1"}\n\n')
                chunk = b"%x\r\n%s\r\n" % (len(event), event)
                for t in list(subs):
                    t.write(chunk)
            w(b"HTTP/1.1 204 No Content\r\nStream-Next-Offset: 1\r\n\r\n")
        elif method == b"GET" and b"live=sse" in query:
            self.sse_path = path
            self.subscribers.setdefault(path, set()).add(self.transport)
            event = b'event: control\ndata:{"streamNextOffset":"0","upToDate":true}\n\n'
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event))
        elif method == b"GET" and path in self.streams:
            m = re.search(rb"offset=(\d+)", query)
            offset = int(m[1]) if m else 0
            if offset < len(self.streams[path]) or b"live=long-poll" not in query:
                self.messages(path, offset)
            else:
                self.waiters.setdefault(path, []).append(self)
        elif method == b"GET":
            m = re.search(rb"read-(?:\w+-)?(\d+)", path)
            total = int(m[1]) if m else len(_SINK_PIECE)
            m = re.search(rb"offset=(-1|\d+)", query)
            pos = 0 if not m or m[1] == b"-1" else int(m[1])
            n = max(0, min(len(_SINK_PIECE), total - pos))
            done = b"Stream-Up-To-Date: true\r\n" if pos + n >= total else b""
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Stream-Next-Offset: %d\r\n%sContent-Length: %d\r\n\r\n" % (pos + n, done, n))
            w(memoryview(_SINK_PIECE)[:n])
        else:
            w(b"HTTP/1.1 204 No Content\r\n\r\n")


async def _sink_main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink: ready http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


# ---- the plan and the runner -----------------------------------------------------------------

FSYNC_PROBES = 10


def fsync_probe(directory: str, count: int = FSYNC_PROBES, size: int = 4 * KiB) -> float:
    """The disk's state now: median milliseconds of appending ``size`` bytes to
    a file in ``directory`` and fdatasync'ing it, ``count`` times. Both servers
    wait on this; on a shared machine it can swing by 100x within minutes."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
    try:
        buf = os.urandom(size)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1e3

@dataclass
class Progress:
    """Progress lines on stderr, each with the seconds since the start."""

    stream: object = None
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        stream.flush()


def _fmt_value(metric: str, v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if metric == "appends/s":
        return f"{v:,.0f}"
    if metric == "MB/s":
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def _fmt_run(metric: str, run: Run) -> str:
    if metric == "appends/s":
        text = f"{run.ops_per_s:,.0f} appends/s"
    elif metric == "MB/s":
        text = f"{run.mb_per_s:,.1f} MB/s"
    else:
        lat = Latency.of_ns(run.latencies_ns, run.missing)

        def ms(stat):
            return f"{'>' if stat in lat.lower_bounds else ''}{lat.get(stat):.2f} ms"

        text = (f"p50 {ms('p50')}, p90 {ms('p90')}, p99 {ms('p99')}, max {ms('max')}" if lat
                else "no deliveries")
    cpu = []
    if run.server_cpu is not None:
        cpu.append(f"server {run.server_cpu:.0%}")
    if run.client_cpu is not None:
        cpu.append(f"generator {run.client_cpu:.0%}")
    if cpu:
        text += f"  (cpu: {', '.join(cpu)})"
    if run.errors:
        text += f"  [{run.errors} errors{'; ' + run.note if run.note else ''}]"
    if run.missing:
        text += f"  [{run.missing} deliveries missing]"
    if run.note and metric not in ("appends/s", "MB/s"):
        text += f"\n        {run.note}"
    return text


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
                                  f"{_fmt_run(metric, run)}")
        return {k: tuple(v) for k, v in runs.items()}

    async def _ceiling(self, label: str, metric: str, measure) -> tuple:
        if self.sink is None:
            return ()
        self.sink.check_alive()
        run = await measure(self.sink)
        self.progress.say(f"    ceiling (trivial server)  {_fmt_run(metric, run)}")
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

def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(sides: Sequence[Server], settings: Settings,
                 load_before: list[float] | None = None) -> dict:
    info = {
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
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
            cells.append(bound + _fmt_value(r.metric, r.value(side)))
        fsync = f"{statistics.median(r.fsync_ms):.2f}" if r.fsync_ms else "-"
        rows.append([r.workload, r.label, r.unit, *cells,
                     f"{r.ratio_bound}{ratio:.2f}" if ratio is not None else "-",
                     _fmt_value(r.metric, r.ceiling_value), fsync, " ".join(flags)])
    return rows


def render_table(results: Sequence[Result]) -> str:
    rows = [TABLE_HEADER] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]

    def line(row):
        return "  ".join(c.rjust(w) if i in _RIGHT else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def render_targets(targets: Sequence[Target]) -> str:
    if not targets:
        return "targets: none for these workloads"
    width = max(len(t.label) for t in targets)
    lines = ["targets (reporting only: the exit status is 0 either way)"]
    for t in targets:
        op = "<=" if t.at_most else ">="
        value = ("not measured" if t.value is None
                 else f"{t.bound}{t.value:.2f} {op} {t.threshold:g}")
        line = f"  {t.status:<4}  {t.label.ljust(width)}  {value}"
        lines.append(line + (f"  [{t.note}]" if t.note else ""))
    return "\n".join(lines)


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
                           f"{_fmt_value(r.metric, r.value(side))} is {share:.0%} of the load "
                           f"generator's ceiling ({_fmt_value(r.metric, r.ceiling_value)}): "
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
        f"(1/5/15 min) before {_load(machine['load_average_before'])}, after "
        f"{_load(machine['load_average_after'])} (other processes compete for the CPUs "
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
    if warnings:
        parts.append("warnings\n" + "\n".join(f"  {w}" for w in warnings))
    return "\n\n".join(parts)


def _load(values) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "?"


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
    return json.dumps(_finite(doc), indent=2, allow_nan=False)


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
        srv = start_reference(settings, d, os.path.join(root, "reference.log"))
        started.append(srv)
        sides.append(srv)
        progress.say(f"started {srv.description} at {srv.url} (pid {srv.pid})")
    sink = None
    if settings.ceiling:
        sink = start_sink(os.path.join(root, "sink.log"))
        started.append(sink)
    return sides, sink


def _sink_cli(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "sink" or not argv[1].isdigit():
        print("usage: python -m unbroken_benches.http sink PORT", file=sys.stderr)
        return 2
    try:
        asyncio.run(_sink_main(int(argv[1])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(_sink_cli(sys.argv[1:]))
