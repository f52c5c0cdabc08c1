"""Measure `unbroken serve` on each of its stores side by side, in one run: the
file store, Redis (one instance, and two instances sharing it) and PostgreSQL.

The benchmark starts the servers itself (subprocesses on free ports, started
once and kept for the whole run; REDIS_URL and DATABASE_URL are removed from
their environment, so each opens exactly the store it is given):
  file      one instance, --store file --durability always (an append is
            acknowledged once it is on disk), data in a temporary directory
  redis     one instance, --store REDIS_URL
  redis-2   two instances A and B on the same REDIS_URL and key prefix: they
            share the streams, and an append through A wakes live readers on B
            through Redis pub/sub
  postgres  one instance, --store DATABASE_URL
Each run uses a fresh, unique Redis key prefix (bench<hex>r1:, bench<hex>r2:)
and PostgreSQL schema (bench<hex>) and deletes them at the end. A store whose
backend cannot be reached (its server does not start) is reported as skipped,
with the server's own reason; the others are measured anyway. Progress goes to
stderr, the table (or --json) to stdout; the exit status is 0 whatever the
figures are.

Workloads (the same code for every store)
  append    closed-loop appends: C keep-alive connections (--connections,
            default 16) each POST a --size byte JSON object (default 100 B) to
            ONE shared stream, wait for the answer, POST the next. The first
            --warmup seconds are not counted, then --duration seconds are.
            redis-2: half the connections on each instance, so the two
            instances contend for one stream. Figure: acknowledged appends/s.
  sse       live=sse delivery latency: R readers (--readers, default 50)
            follow one JSON stream; one open-loop writer POSTs {"i":N,"t":T}
            at --sse-rate messages/s (default 20) for --sse-duration seconds
            (default 5), T taken just before the POST is written (the writer
            of `unbroken bench http`: a small pool of connections, it never
            waits for an answer before the next POST). A delivery's latency is
            its arrival at the reader minus T. redis-2: the readers follow the
            stream on instance B while the writer posts to instance A, so every
            delivery crosses instances (Redis pub/sub wake-up, then a read).
            Deliveries still missing 5 s after the last answered POST count as
            slower than all others (a percentile among them is a lower bound,
            shown with ">").

How figures are taken
  --rounds rounds (default 3); in each round every workload runs once per
  store, the stores interleaved (append: file, redis, redis-2, postgres; then
  sse: file, redis, redis-2, postgres; next round again), because a shared
  machine drifts: each store sees the same conditions as its neighbours. Idle
  servers get no requests. Every figure is the median over the rounds:
  appends/s of each round; SSE p50, p99 and max of each round (nearest-rank
  percentiles of that round's deliveries; when a round's percentile is only
  a lower bound and could move the median, the median gets a ">" too). Each
  figure is also given as a ratio to the file store's, measured in the same
  run ("0.42x": redis makes 0.42 times the file store's appends/s; for
  latencies, lower is better, so 3.00x means three times slower). The
  servers, Redis, PostgreSQL and this load generator (one asyncio process)
  share the machine's CPUs; server CPU shares cover the unbroken processes
  only, not Redis or PostgreSQL. Before each round the disk's write +
  fdatasync latency is probed (the file store waits on it). Lines other than
  the start and stop lines in a server's output (warnings, errors) are
  reported after the table.

Examples
  unbroken bench stores --quick                   all four stores, < 1 minute
  unbroken bench stores                           the full run (about 2 minutes)
  unbroken bench stores --stores file,redis-2 --readers 200 --json > stores.json
  unbroken bench stores --redis-url redis://cache:6379/3 \\
                        --database-url postgresql://bench@db/bench
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from .harness.client import HttpConnection, ProtocolError, open_connections, request_bytes
from .harness.machine import fsync_probe, load_average, platform_info
from .harness.options import (
    add_output_flags,
    body_size,
    choices,
    count,
    non_negative_seconds,
    or_default,
    positive_float,
    positive_int,
)
from .harness.process import (
    UNBROKEN_READY,
    CpuMeter,
    Server,
    child_env,
    serve_command,
    start_process,
)
from .harness.report import Progress, fmt_load, fmt_run, fmt_value, json_text
from .harness.report import render_table as render_columns
from .harness.report import render_warnings
from .harness.results import Run
from .harness.stats import Latency
from .harness.workloads import (
    SSE_DRAIN,
    closed_loop_appends,
    create_stream,
    json_body,
    sse_run,
    stream_name,
)
from .http import readers_list

# ---- constants -------------------------------------------------------------------------

STORES = ("file", "redis", "redis-2", "postgres")
BASE = "file"                    # the store every ratio is taken against
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/test"
DEFAULT_CONNECTIONS = 16
DEFAULT_SIZE = 100
DEFAULT_SSE_RATE = 20.0
MAX_CONNECTIONS = 1024
START_TIMEOUT = 30.0             # seconds for a server to print its ready line
ROUTINE_LOG = ("unbroken: serving ", "unbroken: stopped cleanly")
JSON_TYPE = "application/json"
# figure name -> (column heading, higher is better)
FIGURES = {
    "appends_per_s": ("appends/s", True),
    "sse_p50_ms": ("SSE p50 ms", False),
    "sse_p99_ms": ("SSE p99 ms", False),
    "sse_max_ms": ("SSE max ms", False),
}
_SSE_STATS = {"sse_p50_ms": "p50", "sse_p99_ms": "p99", "sse_max_ms": "max"}


@dataclass(frozen=True)
class Profile:
    """Defaults that --quick shrinks; any explicit option wins over them."""

    rounds: int
    duration: float
    warmup: float
    readers: int
    sse_duration: float


FULL = Profile(rounds=3, duration=2.0, warmup=0.5, readers=50, sse_duration=5.0)
QUICK = Profile(rounds=1, duration=1.0, warmup=0.25, readers=20, sse_duration=2.0)


# ---- options (pure) ----------------------------------------------------------------------

def store_list(text: str) -> tuple[str, ...]:
    """``"file,redis-2"`` -> ``("file", "redis-2")``; names from STORES, in
    the order given (which is the order they are measured in each round)."""
    return choices(text, "store", STORES, listed="stores")


def connection_count(text: str) -> int:
    """A number of append connections, 1 .. MAX_CONNECTIONS."""
    return count(text, "connections", MAX_CONNECTIONS)


def reader_count(text: str) -> int:
    """A number of SSE readers (the limits of ``unbroken bench http``)."""
    values = readers_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"readers: one number, not {text!r}")
    return values[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``unbroken bench stores`` to ``parser``."""
    add = parser.add_argument
    add("--stores", type=store_list, default=STORES, metavar="LIST",
        help=f"which stores to measure, in this order: {','.join(STORES)} (default: all)")
    add("--redis-url", default=None, metavar="URL",
        help=f"the Redis of the redis and redis-2 stores (default: $REDIS_URL, else "
             f"{DEFAULT_REDIS_URL})")
    add("--database-url", default=None, metavar="URL",
        help=f"the PostgreSQL of the postgres store (default: $DATABASE_URL, else "
             f"{DEFAULT_DATABASE_URL})")
    add("--quick", action="store_true",
        help=f"short run (well under a minute): {QUICK.rounds} round, {QUICK.duration:g} s "
             f"appends, {QUICK.readers} SSE readers for {QUICK.sse_duration:g} s")
    add("--rounds", type=positive_int, default=None, metavar="N",
        help=f"rounds, stores interleaved in each (default: {FULL.rounds}, quick "
             f"{QUICK.rounds})")
    add("--connections", type=connection_count, default=DEFAULT_CONNECTIONS, metavar="C",
        help="keep-alive connections appending to the one stream; redis-2 puts half on "
             "each instance (default: %(default)s)")
    add("--size", type=body_size, default=DEFAULT_SIZE, metavar="BYTES",
        help="size of each appended JSON object (default: %(default)s)")
    add("--duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"timed part of one append measurement (default: {FULL.duration:g}, "
             f"quick {QUICK.duration:g})")
    add("--warmup", type=non_negative_seconds, default=None, metavar="SECONDS",
        help=f"untimed start of one append measurement (default: {FULL.warmup:g}, "
             f"quick {QUICK.warmup:g})")
    add("--readers", type=reader_count, default=None, metavar="R",
        help=f"SSE readers; redis-2 puts them all on instance B (default: {FULL.readers}, "
             f"quick {QUICK.readers})")
    add("--sse-rate", type=positive_float, default=DEFAULT_SSE_RATE, metavar="PER_S",
        help="messages per second of the SSE writer (default: %(default)g)")
    add("--sse-duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"how long the SSE writer writes in one measurement (default: "
             f"{FULL.sse_duration:g}, quick {QUICK.sse_duration:g})")
    add_output_flags(parser, "where to create the servers' data directories and logs "
                             "(default: the system temp dir; removed at the end)")


@dataclass(frozen=True)
class Settings:
    """The options of one run, --quick and environment defaults resolved."""

    stores: tuple[str, ...] = STORES
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    rounds: int = FULL.rounds
    connections: int = DEFAULT_CONNECTIONS
    size: int = DEFAULT_SIZE
    duration: float = FULL.duration
    warmup: float = FULL.warmup
    readers: int = FULL.readers
    sse_rate: float = DEFAULT_SSE_RATE
    sse_duration: float = FULL.sse_duration
    quick: bool = False
    as_json: bool = False
    directory: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ=os.environ) -> "Settings":
        """From parsed options; URLs default to $REDIS_URL / $DATABASE_URL."""
        profile = QUICK if args.quick else FULL

        pick = or_default
        return cls(
            stores=tuple(args.stores),
            redis_url=args.redis_url or environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            database_url=(args.database_url or environ.get("DATABASE_URL")
                          or DEFAULT_DATABASE_URL),
            rounds=pick(args.rounds, profile.rounds), connections=args.connections,
            size=args.size, duration=pick(args.duration, profile.duration),
            warmup=pick(args.warmup, profile.warmup),
            readers=pick(args.readers, profile.readers), sse_rate=args.sse_rate,
            sse_duration=pick(args.sse_duration, profile.sse_duration), quick=args.quick,
            as_json=args.as_json, directory=args.dir)

    def to_json(self) -> dict:
        """The settings as JSON (passwords in the URLs hidden)."""
        d = dataclasses.asdict(self)
        d["redis_url"], d["database_url"] = redact(self.redis_url), redact(self.database_url)
        return d


# ---- small pure helpers ----------------------------------------------------------------------

def redact(url: str) -> str:
    """``url`` with the password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def split_connections(total: int, parts: int) -> tuple[int, ...]:
    """``total`` connections spread over ``parts`` instances as evenly as
    possible, the first ones getting the remainder: ``(16, 2)`` -> ``(8, 8)``,
    ``(5, 2)`` -> ``(3, 2)``. An instance may get 0 when ``total < parts``."""
    if parts < 1:
        raise ValueError("at least one instance")
    q, r = divmod(total, parts)
    return tuple(q + (i < r) for i in range(parts))


def store_prefix(store: str, token: str) -> str | None:
    """The Redis key prefix or PostgreSQL schema of ``store`` in the run
    ``token`` (lower-case hex): ``bench<token>r1:``, ``bench<token>r2:``,
    ``bench<token>``; None for the file store."""
    if store == "redis":
        return f"bench{token}r1:"
    if store == "redis-2":
        return f"bench{token}r2:"
    if store == "postgres":
        return f"bench{token}"
    return None


def backend_of(store: str) -> str | None:
    """``"redis"``, ``"postgres"`` or None (the file store has no backend)."""
    return {"redis": "redis", "redis-2": "redis", "postgres": "postgres"}.get(store)


def instances_of(store: str) -> int:
    """How many ``unbroken serve`` processes a store runs."""
    return 2 if store == "redis-2" else 1


def start_failure(log_text: str, exc: BaseException | None = None) -> str:
    """Why a server did not start, from its output: its "cannot open the
    store" line when there is one, else its last line, else ``exc``."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in lines:
        if "cannot open the store" in ln or "cannot listen" in ln:
            return ln.removeprefix("unbroken: ")
    if lines:
        return lines[-1].removeprefix("unbroken: ")
    return str(exc).splitlines()[0] if exc is not None else "did not start"


def unusual_lines(log_text: str) -> list[str]:
    """The lines of a server's output other than its start and stop lines."""
    return [ln.rstrip() for ln in log_text.splitlines()
            if ln.strip() and not ln.startswith(ROUTINE_LOG)]


def summarise_lines(lines: Sequence[str], limit: int = 5) -> str:
    """Distinct lines in order of first appearance, each with its count when
    repeated, at most ``limit`` of them: ``"3 x boom; bang (and 2 more)"``."""
    counts = collections.Counter(lines)
    distinct = list(counts)
    shown = "; ".join(f"{counts[ln]} x {ln}" if counts[ln] > 1 else ln
                      for ln in distinct[:limit])
    rest = len(distinct) - limit
    return shown + (f" (and {rest} other lines)" if rest > 0 else "")


def median_figure(values: Sequence[tuple[float, bool]]) -> tuple[float | None, bool]:
    """The median of per-round ``(value, lower_bound)`` pairs, and whether it
    is only a lower bound: a round's value that is a lower bound may really be
    any larger value, and the median is exact only when it stays the same with
    such rounds taken as infinitely large. ``(None, False)`` without values."""
    if not values:
        return None, False
    low = statistics.median(v for v, _ in values)
    high = statistics.median(math.inf if b else v for v, b in values)
    return low, high != low


def ratio_to(value: float | None, bound: bool, base: float | None,
             base_bound: bool) -> tuple[float | None, str]:
    """``value / base`` and what is known of it: ``""`` exact, ``">"`` a lower
    bound (``value`` is one), ``"<"`` an upper bound (``base`` is one), ``"?"``
    when both are bounds (no direction known). None without a usable base."""
    if value is None or base is None or not math.isfinite(value) or not base > 0 \
            or not math.isfinite(base):
        return None, ""
    mark = {(False, False): "", (True, False): ">", (False, True): "<",
            (True, True): "?"}[(bound, base_bound)]
    return value / base, mark


def fmt_ratio(ratio: float | None, mark: str = "") -> str:
    """``0.4213`` -> ``"0.42x"``; None -> ``"-"``."""
    if ratio is None:
        return "-"
    return f"{mark}{ratio:.2f}x"


def fmt_figure(name: str, value: float | None, bound: bool = False) -> str:
    """A figure for the table: appends/s without decimals, milliseconds with two."""
    if value is None:
        return "-"
    return (">" if bound else "") + fmt_value("appends/s" if name == "appends_per_s" else "ms",
                                               value)


def round_figures(appends: Sequence[Run], sse: Sequence[Run]) -> dict:
    """Per figure name, its per-round ``(value, lower_bound)`` pairs (an SSE
    round without a single delivery has no latency and is left out)."""
    out: dict = {"appends_per_s": [(r.ops_per_s, False) for r in appends]}
    for name in _SSE_STATS:
        out[name] = []
    for r in sse:
        lat = Latency.of_ns(r.latencies_ns, r.missing)
        if lat is None:
            continue
        for name, stat in _SSE_STATS.items():
            out[name].append((lat.get(stat), stat in lat.lower_bounds))
    return out


@dataclass(frozen=True)
class Row:
    """One store's line of the report.

    :ivar figures: figure name -> ``(median value or None, lower bound)``
    :ivar ratios: figure name -> ``(ratio to the file store or None, mark)``
    :ivar skipped: why the store was not measured (its figures are empty)
    :ivar failed: why it stopped during the run (figures of the rounds before)
    """

    store: str
    instances: int
    description: str
    figures: dict
    ratios: dict = field(default_factory=dict)
    skipped: str | None = None
    failed: str | None = None
    errors: int = 0
    missing: int = 0
    servers: tuple = ()
    appends: tuple = ()
    sse: tuple = ()

    def to_json(self) -> dict:
        """The row as JSON: figures with ratios, and every round's details."""
        figs = {}
        for name, (value, bound) in self.figures.items():
            ratio, mark = self.ratios.get(name, (None, ""))
            figs[name] = {"value": value, "lower_bound": bound, "vs_file": ratio,
                          "vs_file_bound": mark, "higher_is_better": FIGURES[name][1]}
        return {"store": self.store, "instances": self.instances,
                "what": self.description, "servers": list(self.servers),
                "skipped": self.skipped, "failed": self.failed,
                "errors": self.errors, "missing": self.missing, "figures": figs,
                "rounds": {"append": [r.to_json() for r in self.appends],
                           "sse": [r.to_json() for r in self.sse]}}


def build_rows(stores: Sequence["Store"]) -> list[Row]:
    """The report's rows: medians over the rounds, and ratios to the file
    store's figures (none when the file store was not measured)."""
    rows = []
    for s in stores:
        per_round = round_figures(s.appends, s.sse)
        figures = {name: median_figure(per_round[name]) for name in FIGURES}
        rows.append(Row(s.name, s.instances, s.description, figures, skipped=s.skipped,
                        failed=s.failed,
                        errors=sum(r.errors for r in (*s.appends, *s.sse)),
                        missing=sum(r.missing for r in s.sse),
                        servers=tuple(srv.url for srv in s.servers),
                        appends=tuple(s.appends), sse=tuple(s.sse)))
    base = next((r for r in rows if r.store == BASE and r.skipped is None), None)
    out = []
    for r in rows:
        ratios = {}
        if base is not None and r.skipped is None:
            for name in FIGURES:
                ratios[name] = ratio_to(*r.figures[name], *base.figures[name])
        out.append(dataclasses.replace(r, ratios=ratios))
    return out


# ---- workloads over one or two instances --------------------------------------------------

async def spread_append_run(servers: Sequence[Server], body: bytes, connections: int,
                            warmup: float, duration: float) -> Run:
    """Closed-loop JSON appends to ONE stream over ``connections`` keep-alive
    connections spread evenly over ``servers`` (which share a store), for
    ``warmup`` + ``duration`` seconds; counts the answers of the timed part.
    The loop of :func:`unbroken_benches.harness.workloads.closed_loop_appends`."""
    conns: list[HttpConnection] = []
    try:
        for srv, n in zip(servers, split_connections(connections, len(servers))):
            if n:
                conns += await open_connections(srv.host, srv.port, n)
        path = stream_name("append")
        await create_stream(conns[0], path, JSON_TYPE)
        raws = [request_bytes("POST", path, c.host_header, [("Content-Type", JSON_TYPE)], body)
                for c in conns]
        return await closed_loop_appends(conns, raws, len(body), lambda: CpuMeter(*servers),
                                         warmup, duration)
    finally:
        for c in conns:
            c.close()


async def cross_sse_run(reader_server: Server, writer_server: Server, readers: int,
                        rate: float, duration: float) -> Run:
    """``readers`` live=sse readers on ``reader_server``, one open-loop writer
    posting to ``writer_server`` (the same server, or another instance of the
    same store) at ``rate`` messages/s for ``duration`` s: the procedure of
    :func:`unbroken_benches.harness.workloads.sse_run`, both servers' CPU metered."""
    return await sse_run(reader_server, readers, rate, duration, writer_server=writer_server,
                         meter=lambda: CpuMeter(writer_server, reader_server))


# ---- the stores under test ------------------------------------------------------------------

@dataclass
class Store:
    """One store under test: its servers (instance A, and B for redis-2), its
    backend prefix, and the runs measured on it."""

    name: str
    url: str | None          # the backend's URL (None: the file store)
    prefix: str | None       # Redis key prefix / PostgreSQL schema
    servers: list = field(default_factory=list)
    skipped: str | None = None
    failed: str | None = None
    appends: list = field(default_factory=list)
    sse: list = field(default_factory=list)
    log_paths: list = field(default_factory=list)

    @property
    def instances(self) -> int:
        """How many ``unbroken serve`` processes it runs."""
        return instances_of(self.name)

    @property
    def description(self) -> str:
        """What the store is, for the report."""
        if self.url is None:
            return "file store, --durability always"
        if backend_of(self.name) == "redis":
            where = f"{redact(self.url)} (keys {self.prefix}*)"
        else:
            where = f"{redact(self.url)} (schema {self.prefix})"
        if self.instances > 1:
            return (f"{self.instances} instances sharing {where}; appends split between "
                    f"them, SSE readers on B, writer on A")
        return f"1 instance on {where}"

    @property
    def active(self) -> bool:
        """Still being measured."""
        return self.skipped is None and self.failed is None

    @property
    def writer(self) -> Server:
        """Instance A: where SSE messages are posted."""
        return self.servers[0]

    @property
    def reader(self) -> Server:
        """The last instance (B for redis-2): where SSE readers listen."""
        return self.servers[-1]

    def start(self, root: str, progress: Progress, env: dict) -> None:
        """Start the store's servers; on failure mark it skipped (with the
        server's reason) and stop any instance already started."""
        for i in range(self.instances):
            label = self.name if self.instances == 1 else f"{self.name}/{'AB'[i]}"
            safe = label.replace("/", "-")
            data_dir = os.path.join(root, safe)
            os.makedirs(data_dir, exist_ok=True)
            log_path = os.path.join(root, f"{safe}.log")
            self.log_paths.append(log_path)
            cmd = serve_command(self.url or "file", self.prefix, data_dir)
            try:
                srv = start_process(label, self.description, cmd, UNBROKEN_READY, log_path,
                                    timeout=START_TIMEOUT, env=env)
            except RuntimeError as exc:
                self.skipped = start_failure(_read(log_path), exc)
                progress.say(f"{self.name}: skipped: {self.skipped}")
                self.stop()
                return
            self.servers.append(srv)
            progress.say(f"started {label} at {srv.url} (pid {srv.pid})")

    def stop(self) -> list[str]:
        """SIGTERM every instance; returns what was unusual in their output
        (warnings, errors, a non-zero exit status)."""
        notes = []
        for srv in self.servers:
            srv.stop()
            if srv.proc is not None and srv.proc.returncode not in (0, None):
                notes.append(f"{srv.name}: exited with status {srv.proc.returncode}")
        for path in self.log_paths:
            lines = unusual_lines(_read(path))
            if lines and self.skipped is None:
                name = os.path.basename(path).removesuffix(".log")
                notes.append(f"{name}: {len(lines)} lines in its output: "
                             f"{summarise_lines(lines)}")
        return notes


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


async def drop_prefix(store: str, url: str, prefix: str) -> None:
    """Delete everything under a run's Redis key prefix or PostgreSQL schema."""
    if backend_of(store) == "redis":
        from unbroken_engine.stores.shared.redis import RedisBackend
        backend = RedisBackend(url, prefix=prefix)
    else:
        from unbroken_engine.stores.shared.postgres import PostgresBackend
        backend = PostgresBackend(url, schema=prefix)
    try:
        await backend.drop_everything()
    finally:
        await backend.close()


_FAILURES = (RuntimeError, OSError, ConnectionError, ProtocolError, asyncio.TimeoutError)


class Bench:
    """Runs the workloads on the stores, interleaved within each round."""

    def __init__(self, settings: Settings, stores: Sequence[Store], progress: Progress,
                 probe_dir: str):
        self.s = settings
        self.stores = stores
        self.progress = progress
        self.probe_dir = probe_dir
        self.fsync_ms: list[float] = []

    async def _measure(self, store: Store, workload: str, rnd: int) -> None:
        s = self.s
        try:
            for srv in store.servers:
                srv.check_alive()
            if workload == "append":
                run = await spread_append_run(store.servers, json_body(s.size), s.connections,
                                              s.warmup, s.duration)
                store.appends.append(run)
                metric = "appends/s"
            else:
                run = await cross_sse_run(store.reader, store.writer, s.readers, s.sse_rate,
                                          s.sse_duration)
                store.sse.append(run)
                metric = "p99"
        except _FAILURES as exc:
            store.failed = f"round {rnd}, {workload}: {type(exc).__name__}: {exc}"
            self.progress.say(f"    {store.name}: FAILED ({store.failed}); not measured further")
            return
        self.progress.say(f"    round {rnd}/{s.rounds} {workload:<6} {store.name:<8} "
                          f"{fmt_run(metric, run)}")

    async def run(self) -> None:
        """Every round: the append workload on each store, then SSE on each."""
        s = self.s
        for rnd in range(1, s.rounds + 1):
            self.fsync_ms.append(fsync_probe(self.probe_dir))
            self.progress.say(f"round {rnd}/{s.rounds} (disk fsync {self.fsync_ms[-1]:.2f} ms)")
            for workload in ("append", "sse"):
                for store in self.stores:
                    if store.active:
                        await self._measure(store, workload, rnd)


# ---- output ---------------------------------------------------------------------------------

TABLE_HEADER = ["store", "inst", "appends/s", "x file", "SSE p50 ms", "x file",
                "SSE p99 ms", "x file", "SSE max ms", "x file", "errors", "missing"]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """The table's cells, one list per measured store (skipped ones left out)."""
    out = []
    for r in rows:
        if r.skipped is not None:
            continue
        cells = [r.store + (" (!)" if r.failed else ""), str(r.instances)]
        for name in FIGURES:
            cells.append(fmt_figure(name, *r.figures[name]))
            cells.append(fmt_ratio(*r.ratios.get(name, (None, ""))))
        cells += [str(r.errors), str(r.missing)]
        out.append(cells)
    return out


def render_table(rows: Sequence[Row]) -> str:
    """The aligned table (numbers right-aligned)."""
    return render_columns(TABLE_HEADER, table_rows(rows))


def warnings_for(rows: Sequence[Row], fsync_ms: Sequence[float],
                 server_notes: Sequence[str]) -> list[str]:
    """What the reader of the table should know: failures, errors, missing
    deliveries, a swinging disk, and unusual server output."""
    out = []
    for r in rows:
        if r.failed:
            out.append(f"{r.store}: stopped during the run ({r.failed}); its figures cover "
                       f"the rounds before")
        if r.errors or r.missing:
            notes = "; ".join(sorted({x.note for x in (*r.appends, *r.sse)
                                      if x.note and x.errors}))
            out.append(f"{r.store}: {r.errors} errors, {r.missing} missing SSE deliveries"
                       f"{' (' + notes + ')' if notes else ''}")
        if r.skipped is None and r.sse and r.figures["sse_p50_ms"][0] is None:
            out.append(f"{r.store}: no SSE delivery arrived at all")
    if fsync_ms and min(fsync_ms) > 0 and max(fsync_ms) / min(fsync_ms) >= 5:
        out.append(f"the disk's fsync latency ranged from {min(fsync_ms):.2f} to "
                   f"{max(fsync_ms):.2f} ms during the run (other processes?): the file "
                   f"store's rounds differ")
    out += [f"server output: {n}" for n in server_notes]
    return out


def machine_info(rows: Sequence[Row], load_before, fsync_ms: Sequence[float]) -> dict:
    """The machine, the load around the run, the disk, and the servers."""
    return {
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **platform_info(),
        "fsync_ms": list(fsync_ms),
        "stores": {r.store: {"what": r.description, "servers": list(r.servers)} for r in rows},
    }


def render_text(rows: Sequence[Row], settings: Settings, machine: dict,
                warnings: Sequence[str]) -> str:
    """The report: what was measured and how, the table, skips, warnings."""
    s = settings
    split = "/".join(map(str, split_connections(s.connections, 2)))
    fs = machine["fsync_ms"]
    disk = (f"; disk write+fdatasync {statistics.median(fs):.2f} ms (median of "
            f"{len(fs)} probes, {min(fs):.2f}..{max(fs):.2f})" if fs else "")
    stores = "\n".join(f"  {r.store:<8} {r.description}" for r in rows)
    head = (
        f"Unbroken stores benchmark{' (--quick)' if s.quick else ''}: Python "
        f"{machine['python']}, {machine['cpu_count']} CPUs shared by the servers, Redis, "
        f"PostgreSQL and the load generator; load average (1/5/15 min) before "
        f"{fmt_load(machine['load_average_before'])}, after "
        f"{fmt_load(machine['load_average_after'])}{disk}\n"
        f"stores (unbroken serve subprocesses):\n{stores}\n"
        f"appends/s: {s.connections} keep-alive connections (redis-2: {split} on A/B) "
        f"POSTing {s.size} B JSON objects to one stream, closed loop, {s.warmup:g} s "
        f"warm-up + {s.duration:g} s timed\n"
        f"SSE: {s.readers} live=sse readers, one open-loop writer at {s.sse_rate:g} msg/s "
        f"for {s.sse_duration:g} s (redis-2: readers on B, writer on A); latency = POST "
        f"sent -> event received\n"
        f"figures: median of {s.rounds} round{'s' if s.rounds != 1 else ''} (stores "
        f"interleaved in each round; SSE p50/p99/max: each round's percentile of its "
        f"deliveries); x file = figure / the file store's in this run (appends/s: higher "
        f"is better; latencies: lower is better); \">\" = lower bound (deliveries missing "
        f"after {SSE_DRAIN:g} s); (!) = stopped during the run")
    parts = [head, render_table(rows)]
    skipped = [f"  {r.store}: {r.skipped}" for r in rows if r.skipped is not None]
    if skipped:
        parts.append("skipped (not measured)\n" + "\n".join(skipped))
    return "\n\n".join(parts + render_warnings(warnings))


def render_json(rows: Sequence[Row], settings: Settings, machine: dict,
                warnings: Sequence[str]) -> str:
    """The report as JSON (no NaN or infinity)."""
    doc = {
        "machine": machine,
        "settings": settings.to_json(),
        "method": "stores measured one at a time, interleaved within each round; every "
                  "figure is the median over the rounds (SSE: of each round's nearest-rank "
                  "percentile); vs_file = figure / the file store's in the same run",
        "base": BASE,
        "rows": [r.to_json() for r in rows],
        "warnings": list(warnings),
    }
    return json_text(doc)


# ---- entry point ----------------------------------------------------------------------------

def make_stores(settings: Settings, token: str) -> list[Store]:
    """The stores of ``settings``, each with its backend URL and run prefix."""
    urls = {"redis": settings.redis_url, "postgres": settings.database_url}
    return [Store(name, urls.get(backend_of(name)), store_prefix(name, token))
            for name in settings.stores]


def run(args: argparse.Namespace) -> int:
    """Run ``unbroken bench stores``; returns the exit status (0 whatever the
    figures; 1 when nothing could be measured at all)."""
    settings = Settings.from_args(args)
    progress = Progress()
    load_before = load_average()
    token = uuid.uuid4().hex[:10]
    stores = make_stores(settings, token)
    bench = None
    notes: list[str] = []
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="unbroken-bench-stores-",
                                     dir=settings.directory) as root:
        try:
            for store in stores:
                store.start(root, progress, env)
            if not any(st.active for st in stores):
                print("unbroken bench stores: no store could be started", file=sys.stderr)
                for st in stores:
                    print(f"  {st.name}: {st.skipped}", file=sys.stderr)
                return 1
            bench = Bench(settings, stores, progress, root)
            asyncio.run(bench.run())
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            for store in stores:
                notes += store.stop()
            _drop_all(stores, progress)
    rows = build_rows(stores)
    fsync = bench.fsync_ms if bench else []
    warnings = warnings_for(rows, fsync, notes)
    for w in warnings:
        progress.say(f"warning: {w}")
    render = render_json if settings.as_json else render_text
    print(render(rows, settings, machine_info(rows, load_before, fsync), warnings))
    return 0


def _drop_all(stores: Sequence[Store], progress: Progress) -> None:
    """Delete the run's Redis keys and PostgreSQL schema (of every store whose
    server started: it may have written there)."""
    for store in stores:
        if store.prefix is None or not store.servers:
            continue
        try:
            asyncio.run(drop_prefix(store.name, store.url, store.prefix))
        except Exception as exc:  # noqa: BLE001 - report, the figures still stand
            progress.say(f"warning: could not delete {store.name}'s {store.prefix!r} at "
                         f"{redact(store.url)}: {exc}")
