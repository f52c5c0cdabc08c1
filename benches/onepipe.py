"""Measure OnePipe's application layer (unbroken_server.onepipe: Flow and
Signal) in each of connect()'s three modes, every figure set beside a
baseline measured in the same run: what the layer costs, and what it buys.

The modes (each opened once, at the start, and kept for the whole run; every
one writes to the file store in a temporary directory with durability
"always": an append is acknowledged once it is on disk)
  inprocess  connect("inprocess") on a FileBackedStreamStore: the store is
             called in this process, no HTTP
  embedded   connect("embedded", port=0): `unbroken serve` in a background
             thread of this process, reached over HTTP (httpx)
  remote     connect("remote") to an `unbroken serve` subprocess on a free port
             (REDIS_URL and DATABASE_URL removed from its environment, so it
             opens the file store it is given)

Workloads (the same code in every mode)
  append         C tasks (--tasks, default 8, and 1) each await
                 flow.append(event) of a --size byte JSON object (default
                 100 B) in a closed loop: the next as soon as the last one is
                 acknowledged. Baseline ("raw"): the same loop, tasks and bytes
                 without the Flow layer -- store.append(path, body,
                 AppendOptions(content_type="application/json")) in-process, an
                 httpx POST through the runtime's own client to the same server
                 otherwise. Figure: appends/s; flow/raw is the layer's cost
                 (schema check, encoding, idempotent-producer headers and
                 bookkeeping, retries). A Flow keeps at most 8 appends in
                 flight (its writer's producers), so with --tasks above 8 the
                 others wait; raw has no such limit.
  append_many    the same C tasks, each appending batches of --batch events
                 (default 100) with flow.append_many (one request per batch).
                 Figure: events/s; "x append" = / flow.append's appends/s with
                 the same tasks (what batching buys).
  signal_get     latency of Signal.get(), one call after another, on a signal
                 whose history holds 10 values and on one holding --history
                 values (default 10,000), written beforehand in the records
                 Signal writes: the last 10 one per append, as Signal.update
                 writes them, those before 1,000 per append. get() reads the
                 latest append only (Unbroken's ?last=true read,
                 store.read_last in-process). Baseline ("scan"): the same
                 get() through a transport that reads the whole history
                 instead (onepipe.transport.scan_last: what a client does
                 against a server without the extension). Figures: p50 and
                 p99 (ms); long/short = the long history's over the short
                 one's (get() should stay flat, scan does not), get/scan =
                 the extension's over the fallback's.
  signal_update  U tasks (--updaters, default 8, and 1) each await
                 sig.update(lambda n: n + 1) on one fresh signal in a closed
                 loop. Each update reads the latest value and appends the next
                 with Stream-Seq; of two that read the same version one gets a
                 conflict (SeqConflict), re-reads and retries. Figures:
                 updates/s, retries per update (the conflicts counted by
                 wrapping the signal's transport, over the updates of the timed
                 part), and "x 1 updater" = / the updates/s of one updater. The
                 signal's final value is checked against the number of updates.

How figures are taken
  A throughput is the work completed within the timed window (--duration
  seconds after --warmup seconds) over its length; a latency is a
  nearest-rank percentile of the calls completed within it. --rounds rounds
  (default 3): in each round every workload runs once per mode, the modes
  interleaved (append flow and raw with 1 task in inprocess, embedded,
  remote; then with C tasks in each; ...; next round again), a figure and its
  baseline back to back, their order swapped every other round: a shared
  machine drifts, and each measurement sees the same conditions as its
  neighbours. Every figure is the median over the rounds, and each ratio is
  taken between medians of the same mode and run. Everything but the remote
  server (this load generator, the in-process store, the embedded server)
  shares one Python process and its GIL; CPU shares are given per round in
  --json. Before each round the disk's write + fdatasync latency is probed
  (every append waits on it).

Examples
  unbroken bench onepipe --quick                    all modes, < 1 minute
  unbroken bench onepipe                            the full run (about 3 minutes)
  unbroken bench onepipe --modes inprocess,remote --tasks 32 --json > onepipe.json
  unbroken bench onepipe --only signal_get --history 100000
"""
from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import anyio

from .harness.machine import engine_info, fsync_probe, load_average, platform_info
from .harness.options import (
    add_output_flags,
    body_size,
    bounded_int,
    choices,
    non_negative_seconds,
    positive_float,
    positive_int,
)
from .harness.process import CpuMeter, Server, child_env
from .harness.report import Progress, fmt_load, fmt_value, json_text, render_table, render_warnings
from .harness.results import Run
from .harness.stats import Latency, median_or_none, ratio
from .harness.workloads import json_body
from .stores import DEFAULT_SIZE, Store

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

# ---- constants -------------------------------------------------------------------------

MODES = ("inprocess", "embedded", "remote")
WORKLOADS = ("append", "append_many", "signal_get", "signal_update")
DEFAULT_TASKS = 8
DEFAULT_BATCH = 100
DEFAULT_HISTORY = 10_000
SHORT_HISTORY = 10               # the short signal history of signal_get
DEFAULT_UPDATERS = 8
MAX_TASKS = 1024
MAX_BATCH = 100_000
MAX_HISTORY = 10_000_000
FILL_BATCH = 1000                # signal records per append while writing a history
STOP_TIMEOUT = 30.0              # seconds for calls in flight to end after the window
JSON_TYPE = "application/json"
HTTP_OK = (200, 204)


@dataclass(frozen=True)
class Profile:
    """Defaults that --quick shrinks; any explicit option wins over them."""

    rounds: int
    duration: float
    warmup: float


FULL = Profile(rounds=3, duration=1.5, warmup=0.3)
QUICK = Profile(rounds=1, duration=0.4, warmup=0.1)


# ---- options (pure) ----------------------------------------------------------------------

def mode_list(text: str) -> tuple[str, ...]:
    """``"remote,inprocess"`` -> ``("remote", "inprocess")``; names from
    MODES, in the order given (the order they are measured in each round)."""
    return choices(text, "mode", MODES)


def workload_list(text: str) -> tuple[str, ...]:
    """``"append,signal_get"``; names from WORKLOADS (always run in
    WORKLOADS' order)."""
    chosen = choices(text, "workload", WORKLOADS)
    return tuple(w for w in WORKLOADS if w in chosen)


task_count = bounded_int("tasks", 1, MAX_TASKS)
batch_size = bounded_int("batch", 1, MAX_BATCH)
history_length = bounded_int("history", SHORT_HISTORY + 1, MAX_HISTORY)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``unbroken bench onepipe`` to ``parser``."""
    add = parser.add_argument
    add("--modes", type=mode_list, default=MODES, metavar="LIST",
        help=f"which modes of connect() to measure, in this order: {','.join(MODES)} "
             f"(default: all)")
    add("--only", type=workload_list, default=WORKLOADS, metavar="LIST",
        help=f"run only these workloads: {','.join(WORKLOADS)} (default: all)")
    add("--quick", action="store_true",
        help=f"short run (well under a minute): {QUICK.rounds} round, {QUICK.duration:g} s "
             f"timed after {QUICK.warmup:g} s of warm-up")
    add("--rounds", type=positive_int, default=None, metavar="N",
        help=f"rounds, modes interleaved in each (default: {FULL.rounds}, quick "
             f"{QUICK.rounds})")
    add("--duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"timed part of one measurement (default: {FULL.duration:g}, "
             f"quick {QUICK.duration:g})")
    add("--warmup", type=non_negative_seconds, default=None, metavar="SECONDS",
        help=f"untimed start of one measurement (default: {FULL.warmup:g}, "
             f"quick {QUICK.warmup:g})")
    add("--tasks", type=task_count, default=DEFAULT_TASKS, metavar="C",
        help="concurrent appending tasks of append and append_many; append is also "
             "measured with 1 (default: %(default)s)")
    add("--batch", type=batch_size, default=DEFAULT_BATCH, metavar="N",
        help="events per append_many call (default: %(default)s)")
    add("--size", type=body_size, default=DEFAULT_SIZE, metavar="BYTES",
        help="size of each event, a JSON object (default: %(default)s)")
    add("--history", type=history_length, default=DEFAULT_HISTORY, metavar="N",
        help=f"values in the long signal history of signal_get (the short one has "
             f"{SHORT_HISTORY}) (default: %(default)s)")
    add("--updaters", type=task_count, default=DEFAULT_UPDATERS, metavar="U",
        help="concurrent tasks updating one signal; also measured with 1 "
             "(default: %(default)s)")
    add_output_flags(parser, "where to create the data directories and the server's log "
                             "(default: the system temp dir; removed at the end)",
                     tables="the tables")


@dataclass(frozen=True)
class Settings:
    """The options of one run, --quick resolved."""

    modes: tuple[str, ...] = MODES
    workloads: tuple[str, ...] = WORKLOADS
    rounds: int = FULL.rounds
    duration: float = FULL.duration
    warmup: float = FULL.warmup
    tasks: int = DEFAULT_TASKS
    batch: int = DEFAULT_BATCH
    size: int = DEFAULT_SIZE
    history: int = DEFAULT_HISTORY
    updaters: int = DEFAULT_UPDATERS
    quick: bool = False
    as_json: bool = False
    directory: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        """From parsed options; rounds, duration and warm-up not given come
        from the profile (--quick or not)."""
        profile = dataclasses.asdict(QUICK if args.quick else FULL)
        given = {k: getattr(args, k) for k in profile if getattr(args, k) is not None}
        return cls(modes=tuple(args.modes), workloads=tuple(args.only), tasks=args.tasks,
                   batch=args.batch, size=args.size, history=args.history,
                   updaters=args.updaters, quick=args.quick, as_json=args.as_json,
                   directory=args.dir, **{**profile, **given})

    def to_json(self) -> dict:
        """The settings as JSON."""
        return dataclasses.asdict(self)


# ---- what is measured (pure) --------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One measurement of a workload, made in every mode.

    :ivar variant: append: "flow" or "raw"; append_many: "flow";
        signal_get: "get" or "scan"; signal_update: "update"
    :ivar n: tasks (append, append_many), values in the signal's history
        (signal_get) or updating tasks (signal_update)
    """

    workload: str
    variant: str
    n: int

    @property
    def label(self) -> str:
        """``"append flow, 8 tasks"``, ``"signal_get scan, 10,000 values"``."""
        unit = {"signal_get": "value", "signal_update": "updater"}.get(self.workload, "task")
        return f"{self.workload} {self.variant}, {self.n:,} {unit}{'s' if self.n != 1 else ''}"

    def to_json(self) -> dict:
        """The case as JSON."""
        return {"workload": self.workload, "variant": self.variant, "n": self.n,
                "label": self.label}


def counts(*values: int) -> tuple[int, ...]:
    """The distinct values, ascending: ``counts(1, 8)`` -> ``(1, 8)``,
    ``counts(1, 1)`` -> ``(1,)``."""
    return tuple(sorted(set(values)))


def plan(settings: Settings) -> list[tuple[Case, ...]]:
    """The steps of one round, in order; a step's cases (a figure and its
    baseline) run back to back in each mode before the next mode."""
    s = settings
    steps: list[tuple[Case, ...]] = []
    if "append" in s.workloads:
        steps += [(Case("append", "flow", t), Case("append", "raw", t))
                  for t in counts(1, s.tasks)]
    if "append_many" in s.workloads:
        steps.append((Case("append_many", "flow", s.tasks),))
    if "signal_get" in s.workloads:
        steps += [(Case("signal_get", "get", h), Case("signal_get", "scan", h))
                  for h in (SHORT_HISTORY, s.history)]
    if "signal_update" in s.workloads:
        steps += [(Case("signal_update", "update", u),) for u in counts(1, s.updaters)]
    return steps


def step_order(step: Sequence[Case], rnd: int) -> tuple[Case, ...]:
    """The cases of a step in round ``rnd`` (1-based): as given in odd rounds,
    reversed in even ones, so that neither a figure nor its baseline always
    runs first."""
    return tuple(step) if rnd % 2 else tuple(reversed(step))


def comparisons(case: Case, settings: Settings) -> dict[str, Case]:
    """What each figure of ``case`` is set beside, in the same mode and run:
    ratio name -> the baseline case."""
    if case.workload == "append" and case.variant == "flow":
        return {"vs_raw": Case("append", "raw", case.n)}
    if case.workload == "append_many":
        return {"vs_append": Case("append", "flow", case.n)}
    if case.workload == "signal_get":
        out = {"vs_scan": Case("signal_get", "scan", case.n)} if case.variant == "get" else {}
        if case.n != SHORT_HISTORY:
            out["vs_short"] = Case("signal_get", case.variant, SHORT_HISTORY)
        return out
    if case.workload == "signal_update" and case.n != 1:
        return {"vs_one_updater": Case("signal_update", "update", 1)}
    return {}


#: the figures a ratio is taken of (not retries_per_update)
RATIO_FIGURES = ("per_s", "p50_ms", "p99_ms")
#: the unit of each workload's ``per_s``
RATE_UNITS = {"append": "appends/s", "append_many": "events/s",
              "signal_update": "updates/s"}


@dataclass(frozen=True)
class Sample:
    """One round of one case in one mode.

    :ivar run: ``ops`` = events appended, get() calls or updates completed in
        the timed window; ``latencies_ns`` = each of those calls' duration
    :ivar calls: the calls completed in the timed window
    :ivar retries: SeqConflicts answered in the timed window (signal_update)
    """

    run: Run
    calls: int
    retries: int = 0

    def to_json(self) -> dict:
        """The round as JSON: the run's figures, calls and retries."""
        return {**self.run.to_json(), "calls": self.calls, "retries": self.retries}


def case_figures(workload: str, samples: Sequence[Sample]) -> dict[str, float | None]:
    """A case's figures, each the median over its rounds (None without any):
    ``per_s`` (appends, events or updates per second), ``p50_ms`` and
    ``p99_ms`` (each round's nearest-rank percentile), ``retries_per_update``."""
    if workload == "signal_get":
        lats = [Latency.of_ns(s.run.latencies_ns) for s in samples]
        return {f"{stat}_ms": median_or_none(lat.get(stat) for lat in lats if lat)
                for stat in ("p50", "p99")}
    out = {"per_s": median_or_none(s.run.ops_per_s for s in samples)}
    if workload == "signal_update":
        out["retries_per_update"] = median_or_none(
            s.retries / s.run.ops for s in samples if s.run.ops)
    return out


@dataclass(frozen=True)
class Result:
    """A case's figures in one mode, with their ratios to its baselines.

    :ivar figures: figure name -> median value (or None)
    :ivar ratios: ratio name (see :func:`comparisons`) -> figure name ->
        value / the baseline's (or None)
    """

    mode: str
    case: Case
    figures: dict
    ratios: dict
    samples: tuple = ()

    def to_json(self) -> dict:
        """The result as JSON, every round included."""
        return {"mode": self.mode, **self.case.to_json(),
                "per_s_unit": RATE_UNITS.get(self.case.workload), "figures": self.figures,
                "ratios": self.ratios, "rounds": [s.to_json() for s in self.samples]}


def build_results(samples: dict, settings: Settings) -> list[Result]:
    """Results from ``samples`` (``{(mode, case): [Sample, ...]}``), with the
    ratios of :func:`comparisons` (None where a baseline is missing)."""
    figures = {key: case_figures(key[1].workload, runs) for key, runs in samples.items()}
    out = []
    for (mode, case), runs in samples.items():
        ratios = {}
        for name, base in comparisons(case, settings).items():
            base_figs = figures.get((mode, base), {})
            ratios[name] = {f: ratio(v, base_figs.get(f))
                            for f, v in figures[mode, case].items() if f in RATIO_FIGURES}
        out.append(Result(mode, case, figures[mode, case], ratios, tuple(runs)))
    return out


def fill_plan(values: int) -> list[tuple[int, int]]:
    """How signal_get writes a history of ``values`` values: ``(first, last)``
    version ranges, one append each. The last :data:`SHORT_HISTORY` values
    are appended one by one, as Signal.update writes them (get() reads the
    last append only, so it must hold one value as in real use); those before
    them :data:`FILL_BATCH` to an append, to write long histories quickly
    (a scan reads the same values either way)."""
    singles = min(values, SHORT_HISTORY)
    batched = values - singles
    out = [(first, min(batched, first + FILL_BATCH - 1))
           for first in range(1, batched + 1, FILL_BATCH)]
    return out + [(v, v) for v in range(batched + 1, values + 1)]


def signal_records(first: int, last: int, by: str, at: float | None = None) -> list[dict]:
    """The records Signal.update writes for versions ``first`` .. ``last``
    of an integer signal whose value is its version."""
    at = time.time() if at is None else at
    return [{"value": v, "version": v, "id": uuid.uuid4().hex, "by": by, "at": at}
            for v in range(first, last + 1)]


# ---- transports that change one thing -----------------------------------------------------

class TransportProxy:
    """A transport that forwards everything to ``inner``; subclasses change one
    operation (the onepipe code under test is not touched)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        """Anything not overridden: the inner transport's."""
        return getattr(self.inner, name)


class ScanLast(TransportProxy):
    """``read_last`` by reading the whole stream, as a client does against a
    server without Unbroken's ``?last=true`` read."""

    async def read_last(self, path: str):
        """The latest message, found by reading every message (``scan_last``)."""
        from unbroken_server.onepipe.transport import scan_last

        return await scan_last(self.inner, path)


class CountingAppends(TransportProxy):
    """Counts appends and the SeqConflicts they are answered with."""

    def __init__(self, inner):
        from unbroken_server.onepipe import SeqConflict

        super().__init__(inner)
        self.appends = 0
        self.conflicts = 0
        self._conflict = SeqConflict

    async def append(self, path, values, **kw):
        """The inner append, counted."""
        self.appends += 1
        try:
            return await self.inner.append(path, values, **kw)
        except self._conflict:
            self.conflicts += 1
            raise


# ---- the closed loop ---------------------------------------------------------------------

async def closed_loop(op: Callable[[], Awaitable[int]], tasks: int, warmup: float,
                      duration: float, server: Server,
                      counter: Callable[[], int] | None = None) -> Sample:
    """``tasks`` tasks each awaiting ``op()`` (which returns how many items it
    did) again as soon as it returns, until the timed window ``warmup`` ..
    ``warmup + duration`` seconds from now has passed; calls completed within
    the window are counted (their items, their durations). ``counter``, read
    at the window's edges, gives ``retries``. A failing call ends the loop
    and is raised (in an exception group)."""
    clock = time.perf_counter_ns
    start = clock() + int(warmup * 1e9)
    end = start + int(duration * 1e9)
    lat = array.array("q")
    items = calls = 0
    window = {}

    async def worker() -> None:
        """Call ``op`` until the window has passed."""
        nonlocal items, calls
        while (t := clock()) < end:
            n = await op()
            done = clock()
            if start <= done < end:
                items += n
                calls += 1
                lat.append(done - t)

    async def meter() -> None:
        """CPU shares and ``counter`` over the window."""
        await anyio.sleep(max(0.0, (start - clock()) / 1e9))
        cpu, first = CpuMeter(server), counter() if counter else 0
        await anyio.sleep(max(0.0, (end - clock()) / 1e9))
        _, window["server_cpu"], window["client_cpu"] = cpu.stop()
        window["retries"] = (counter() if counter else 0) - first

    with anyio.fail_after(warmup + duration + STOP_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(meter)
            for _ in range(tasks):
                tg.start_soon(worker)
    run = Run(duration, items, 0, latencies_ns=lat, server_cpu=window["server_cpu"],
              client_cpu=window["client_cpu"], note=f"{calls} calls by {tasks} tasks")
    return Sample(run, calls, window["retries"])


# ---- the modes ---------------------------------------------------------------------------

class Mode:
    """One mode of connect(), opened once for the run: its runtime, the way
    its baseline appends, and the signals of signal_get."""

    def __init__(self, name: str):
        self.name = name
        self.rt = None
        self.store = None            # inprocess: the store, for the raw baseline
        self.remote: Store | None = None
        self.server = Server(name, "", "")   # remote: the measured process (CPU)
        self.description = ""
        self.failed: str | None = None
        self.histories: dict[int, object] = {}

    @property
    def active(self) -> bool:
        """Opened and not failed."""
        return self.rt is not None and self.failed is None

    def start_remote(self, root: str, progress: Progress) -> None:
        """Start the remote mode's ``unbroken serve`` subprocess (before the
        event loop); on failure the mode is marked failed with its reason."""
        self.remote = Store(self.name, None, None)
        self.remote.start(root, progress, child_env())
        if self.remote.skipped is not None:
            self.failed = f"its server did not start: {self.remote.skipped}"
        else:
            self.server = self.remote.servers[0]

    async def open(self, root: str, progress: Progress) -> None:
        """Open the runtime (and, inprocess, its store)."""
        from unbroken_engine import Durability, FileBackedStreamStore, LogConfig
        from unbroken_server.onepipe import connect

        data_dir = os.path.join(root, self.name)
        if self.failed is not None:
            return
        try:
            if self.name == "inprocess":
                self.store = await anyio.to_thread.run_sync(
                    FileBackedStreamStore, data_dir, LogConfig(durability=Durability.ALWAYS))
                self.rt = await connect("inprocess", store=self.store, environ={}).open()
                self.description = ("connect('inprocess'): a FileBackedStreamStore in this "
                                    "process, durability always")
            elif self.name == "embedded":
                self.rt = await connect("embedded", port=0, data_dir=data_dir,
                                        environ={}).open()
                self.server = Server(self.name, self.rt.url, "")
                self.description = (f"connect('embedded', port=0): unbroken serve in a thread "
                                    f"of this process at {self.rt.url}, file store, "
                                    f"durability always")
            else:
                self.rt = await connect("remote", url=self.server.url, environ={}).open()
                self.description = (f"connect('remote'): an unbroken serve subprocess at "
                                    f"{self.server.url} (pid {self.server.pid}), file store, "
                                    f"--durability always")
        except Exception as exc:  # noqa: BLE001 - reported; the other modes still run
            self.failed = f"could not open: {describe(exc)}"
            progress.say(f"{self.name}: {self.failed}")
            return
        progress.say(f"opened {self.name}: {self.description}")

    async def aclose(self) -> None:
        """Close the runtime (the embedded server stops) and the in-process store."""
        try:
            if self.rt is not None:
                await self.rt.aclose()
        finally:
            if self.store is not None:
                await self.store.aclose()

    def stop_remote(self) -> list[str]:
        """Stop the remote server; what was unusual in its output."""
        return self.remote.stop() if self.remote is not None else []

    # ---- what the workloads need ------------------------------------------------------

    async def raw_appender(self, body: bytes) -> Callable[[], Awaitable[int]]:
        """An op appending ``body`` to a new JSON stream without the Flow layer:
        the store's append in-process, a POST through the runtime's client
        otherwise."""
        from unbroken_engine.stores.interface import AppendOptions

        path = f"bench/raw-{uuid.uuid4().hex[:12]}"
        await self.rt.transport.ensure(path)
        if self.store is not None:
            store, options = self.store, AppendOptions(content_type=JSON_TYPE)

            async def append() -> int:
                """One store append."""
                await store.append(path, body, options)
                return 1

            return append
        client, url = self.rt.transport.client, self.rt.transport.url(path)
        headers = {"Content-Type": JSON_TYPE}

        async def post() -> int:
            """One POST; anything but 200/204 fails the run."""
            r = await client.post(url, content=body, headers=headers)
            if r.status_code not in HTTP_OK:
                raise RuntimeError(f"POST {url}: {r.status_code} {r.text.strip()[:120]}")
            return 1

        return post

    async def history(self, values: int):
        """The signal of signal_get holding ``values`` values, written once,
        at first use, as :func:`fill_plan` says."""
        from unbroken_server.onepipe import Signal
        from unbroken_server.onepipe.signal import SEQ_WIDTH

        if values not in self.histories:
            sig = await Signal.create(f"bench-history-{values}-{uuid.uuid4().hex[:8]}",
                                      default=0).build(self.rt)
            for first, last in fill_plan(values):
                await sig.transport.append(sig.path, signal_records(first, last, "bench"),
                                           seq=f"{last:0{SEQ_WIDTH}d}")
            got = await sig.get()
            if got != values:
                raise RuntimeError(f"{sig.path}: get() gave {got!r} after writing "
                                   f"{values} values")
            self.histories[values] = sig
        return self.histories[values]


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``; of an exception group (the
    closed loop's tasks), its first error's, and how many others it holds."""
    others = 0
    while isinstance(exc, BaseExceptionGroup):
        others += len(exc.exceptions) - 1
        exc = exc.exceptions[0]
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text + (f" (and {others} more)" if others else "")


# ---- the workloads -----------------------------------------------------------------------

async def append_sample(mode: Mode, case: Case, s: Settings) -> Sample:
    """append (flow or raw) and append_many: one round of closed-loop appends
    to a new stream."""
    from unbroken_server.onepipe import Flow

    body = json_body(s.size)
    if case.variant == "raw":
        return await closed_loop(await mode.raw_appender(b"[" + body + b"]"),  # a Flow's bytes
                                 case.n, s.warmup, s.duration, mode.server)
    flow = await Flow.create(f"bench-{case.workload}-{uuid.uuid4().hex[:12]}").build(mode.rt)
    events = [json.loads(body)] * (s.batch if case.workload == "append_many" else 1)

    async def append() -> int:
        """One flow.append, or one flow.append_many of a batch."""
        if case.workload == "append":
            await flow.append(events[0])
        else:
            await flow.append_many(events)
        return len(events)

    return await closed_loop(append, case.n, s.warmup, s.duration, mode.server)


async def signal_get_sample(mode: Mode, case: Case, s: Settings) -> Sample:
    """signal_get: get() called again and again on the history of ``case.n``
    values, through the runtime's transport or (scan) one without ?last=true."""
    sig = await mode.history(case.n)
    if case.variant == "scan":
        sig = copy.copy(sig)
        sig.transport = ScanLast(sig.transport)

    async def get() -> int:
        """One get()."""
        await sig.get()
        return 1

    return await closed_loop(get, 1, s.warmup, s.duration, mode.server)


async def signal_update_sample(mode: Mode, case: Case, s: Settings) -> Sample:
    """signal_update: ``case.n`` tasks incrementing one new signal, its
    conflicts counted; a final value other than the number of updates is
    noted as WRONG."""
    from unbroken_server.onepipe import Signal

    sig = await Signal.create(f"bench-update-{uuid.uuid4().hex[:12]}", default=0).build(mode.rt)
    sig.transport = counting = CountingAppends(sig.transport)
    updates = 0

    async def update() -> int:
        """One update(n + 1)."""
        nonlocal updates
        await sig.update(lambda n: n + 1)
        updates += 1
        return 1

    sample = await closed_loop(update, case.n, s.warmup, s.duration, mode.server,
                               lambda: counting.conflicts)
    final = await sig.get()
    if final != updates:
        note = f"{sample.run.note}; WRONG: final value {final}, {updates} updates"
        sample = dataclasses.replace(sample, run=dataclasses.replace(sample.run, note=note))
    return sample


#: workload -> its measurement
MEASURE = {"append": append_sample, "append_many": append_sample,
           "signal_get": signal_get_sample, "signal_update": signal_update_sample}


def round_text(case: Case, sample: Sample) -> str:
    """A round's figure for the progress lines."""
    run = sample.run
    if case.workload == "signal_get":
        lat = Latency.of_ns(run.latencies_ns)
        text = f"p50 {fmt_ms(lat.p50)} ms, p99 {fmt_ms(lat.p99)} ms" if lat else "no calls"
    elif case.workload == "signal_update":
        text = (f"{fmt_value('appends/s', run.ops_per_s)} {RATE_UNITS[case.workload]}, "
                f"{sample.retries / run.ops if run.ops else 0:.2f} retries/update")
    else:
        text = f"{fmt_value('appends/s', run.ops_per_s)} {RATE_UNITS[case.workload]}"
    cpu = [f"{who} {share:.0%}" for who, share in (("server", run.server_cpu),
                                                    ("this process", run.client_cpu))
           if share is not None]
    return text + (f"  (cpu: {', '.join(cpu)})" if cpu else "") + (
        f"  [{run.note}]" if "WRONG" in run.note else "")


class Bench:
    """Runs the plan's steps on the modes, interleaved within each round."""

    def __init__(self, settings: Settings, modes: Sequence[Mode], progress: Progress,
                 probe_dir: str):
        self.s = settings
        self.modes = modes
        self.progress = progress
        self.probe_dir = probe_dir
        self.fsync_ms: list[float] = []
        self.samples: dict[tuple[str, Case], list[Sample]] = {}

    async def _measure(self, mode: Mode, case: Case, rnd: int) -> None:
        try:
            mode.server.check_alive()
            sample = await MEASURE[case.workload](mode, case, self.s)
        except Exception as exc:  # noqa: BLE001 - reported; the other modes go on
            mode.failed = f"round {rnd}, {case.label}: {describe(exc)}"
            self.progress.say(f"    {mode.name}: FAILED ({mode.failed}); not measured further")
            return
        self.samples.setdefault((mode.name, case), []).append(sample)
        self.progress.say(f"    round {rnd}/{self.s.rounds} {case.label:<34} {mode.name:<9} "
                          f"{round_text(case, sample)}")

    async def run(self) -> None:
        """Every round: each step of the plan in every mode, in turn."""
        s = self.s
        for rnd in range(1, s.rounds + 1):
            self.fsync_ms.append(fsync_probe(self.probe_dir))
            self.progress.say(f"round {rnd}/{s.rounds} (disk fsync {self.fsync_ms[-1]:.2f} ms)")
            for step in plan(s):
                for mode in self.modes:
                    for case in step_order(step, rnd):
                        if mode.active:
                            await self._measure(mode, case, rnd)


# ---- output ---------------------------------------------------------------------------------

def fmt_ms(v: float | None) -> str:
    """Milliseconds: three decimals under 1 ms, two above; None -> ``"-"``."""
    if v is None:
        return "-"
    return f"{v:,.3f}" if v < 1 else f"{v:,.2f}"


def fmt_x(r: float | None) -> str:
    """A ratio: ``"0.85x"``, ``"0.0031x"`` (two significant digits below
    0.1), ``"312x"`` (none after the point from 100); None -> ``"-"``."""
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:,.0f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def _rate(v: float | None) -> str:
    """A rate for the tables: ``"12,346"``."""
    return fmt_value("appends/s", v)


class Report:
    """The results, looked up by mode and case, and rendered."""

    def __init__(self, results: Sequence[Result], settings: Settings, modes: Sequence[Mode]):
        self.results = list(results)
        self.s = settings
        self.modes = [m for m in modes if m.rt is not None]   # every one that was measured
        self._by = {(r.mode, r.case): r for r in self.results}

    def figure(self, mode: str, case: Case, name: str) -> float | None:
        """A median figure, None when not measured."""
        r = self._by.get((mode, case))
        return r.figures.get(name) if r else None

    def ratio(self, mode: str, case: Case, ratio: str, name: str) -> float | None:
        """A ratio of a figure to its baseline, None when either is missing."""
        r = self._by.get((mode, case))
        return r.ratios.get(ratio, {}).get(name) if r else None

    def _mode_cell(self, mode: Mode) -> str:
        return mode.name + (" (!)" if mode.failed else "")

    def append_rows(self) -> list[list[str]]:
        """append: per mode and task count, flow and raw appends/s and flow/raw."""
        out = []
        for m in self.modes:
            for t in counts(1, self.s.tasks):
                flow, raw = Case("append", "flow", t), Case("append", "raw", t)
                out.append([self._mode_cell(m), str(t), _rate(self.figure(m.name, flow, "per_s")),
                            _rate(self.figure(m.name, raw, "per_s")),
                            fmt_x(self.ratio(m.name, flow, "vs_raw", "per_s"))])
        return out

    def append_many_rows(self) -> list[list[str]]:
        """append_many: per mode, events/s and x append."""
        case = Case("append_many", "flow", self.s.tasks)
        return [[self._mode_cell(m), str(self.s.tasks), f"{self.s.batch:,}",
                 _rate(self.figure(m.name, case, "per_s")),
                 fmt_x(self.ratio(m.name, case, "vs_append", "per_s"))] for m in self.modes]

    def signal_get_rows(self) -> list[list[str]]:
        """signal_get: per mode, a line per history and a long/short line."""
        out = []
        for m in self.modes:
            for h in (SHORT_HISTORY, self.s.history):
                get, scan = Case("signal_get", "get", h), Case("signal_get", "scan", h)
                out.append([self._mode_cell(m), f"{h:,}"]
                           + [fmt_ms(self.figure(m.name, c, f)) for c in (get, scan)
                              for f in ("p50_ms", "p99_ms")]
                           + [fmt_x(self.ratio(m.name, get, "vs_scan", f))
                              for f in ("p50_ms", "p99_ms")])
            out.append([self._mode_cell(m), "long/short"]
                       + [fmt_x(self.ratio(m.name, Case("signal_get", v, self.s.history),
                                           "vs_short", f))
                          for v in ("get", "scan") for f in ("p50_ms", "p99_ms")] + ["", ""])
        return out

    def signal_update_rows(self) -> list[list[str]]:
        """signal_update: per mode and updater count, updates/s, retries, x 1 updater."""
        out = []
        for m in self.modes:
            for u in counts(1, self.s.updaters):
                case = Case("signal_update", "update", u)
                retries = self.figure(m.name, case, "retries_per_update")
                out.append([self._mode_cell(m), str(u), _rate(self.figure(m.name, case, "per_s")),
                            "-" if retries is None else f"{retries:.2f}",
                            fmt_x(self.ratio(m.name, case, "vs_one_updater", "per_s")
                                  if u != 1 else 1.0)])
        return out

    def sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """``(title, header, rows)`` of each workload that ran."""
        s = self.s
        out = []
        if "append" in s.workloads:
            out.append((f"append: appends/s, closed loop, {s.size} B events; raw = the same "
                        f"bytes without Flow (store.append in-process, an httpx POST "
                        f"otherwise); flow/raw = the layer's cost",
                        ["mode", "tasks", "flow appends/s", "raw appends/s", "flow/raw"],
                        self.append_rows()))
        if "append_many" in s.workloads:
            out.append((f"append_many: events/s, flow.append_many of {s.batch:,} events per "
                        f"call; x append = / flow.append's appends/s with the same tasks",
                        ["mode", "tasks", "batch", "events/s", "x append"],
                        self.append_many_rows()))
        if "signal_get" in s.workloads:
            out.append(("signal_get: ms per Signal.get(), one call after another; get = "
                        "?last=true (store.read_last in-process), scan = the same get() "
                        "reading the whole history (a server without the extension); "
                        "long/short = the figure with the long history / with the short one",
                        ["mode", "history", "get p50", "get p99", "scan p50", "scan p99",
                         "get/scan p50", "get/scan p99"], self.signal_get_rows()))
        if "signal_update" in s.workloads:
            out.append(("signal_update: sig.update(lambda n: n + 1) by concurrent tasks on "
                        "one signal; retries = SeqConflicts per completed update; x 1 "
                        "updater = / the updates/s of one",
                        ["mode", "updaters", "updates/s", "retries/update", "x 1 updater"],
                        self.signal_update_rows()))
        return out


def warnings_for(results: Sequence[Result], modes: Sequence[Mode], fsync_ms: Sequence[float],
                 server_notes: Sequence[str]) -> list[str]:
    """What the reader of the tables should know: modes that failed, wrong
    signal values, figures without a single completed call, a swinging disk
    and unusual output of the remote server."""
    out = [f"{m.name}: {m.failed}" + (" (its figures cover the rounds before)"
                                      if m.rt is not None else "")
           for m in modes if m.failed]
    for r in results:
        for s in r.samples:
            if "WRONG" in s.run.note:
                out.append(f"{r.mode}: {r.case.label}: {s.run.note}")
        idle = sum(1 for s in r.samples if not s.calls)
        if idle:
            out.append(f"{r.mode}: {r.case.label}: no call completed within the timed "
                       f"window in {idle} round{'s' if idle != 1 else ''} (raise --duration)")
    if fsync_ms and min(fsync_ms) > 0 and max(fsync_ms) >= 5 * min(fsync_ms):
        out.append(f"disk write+fdatasync swung between {min(fsync_ms):.2f} and "
                   f"{max(fsync_ms):.2f} ms across the rounds: appends waited on it")
    return out + [f"remote server output: {n}" for n in server_notes]


def machine_info(modes: Sequence[Mode], load_before, fsync_ms: Sequence[float],
                 directory: str | None) -> dict:
    """The machine (as ``unbroken bench engine`` reports it), the load around
    the run, the disk, and the modes."""
    info = {**platform_info(), **engine_info(directory)}
    info.update(load_average_before=load_before, load_average_after=load_average(),
                fsync_ms=list(fsync_ms),
                modes={m.name: {"what": m.description, "failed": m.failed} for m in modes})
    return info


def render_text(results: Sequence[Result], settings: Settings, modes: Sequence[Mode],
                machine: dict, warnings: Sequence[str]) -> str:
    """The report: what was measured and how, a table per workload, warnings."""
    s = settings
    fs = machine["fsync_ms"]
    disk = (f"; disk write+fdatasync {statistics.median(fs):.2f} ms (median of {len(fs)} "
            f"probes)" if fs else "")
    described = "\n".join(f"  {m.name:<9} {m.description or m.failed}" for m in modes)
    head = (
        f"Unbroken OnePipe benchmark{' (--quick)' if s.quick else ''}: Python "
        f"{machine['python']}, {machine['cpu_count']} CPUs; load average (1/5/15 min) before "
        f"{fmt_load(machine['load_average_before'])}, after "
        f"{fmt_load(machine['load_average_after'])}{disk}\n"
        f"modes:\n{described}\n"
        f"figures: median of {s.rounds} round{'s' if s.rounds != 1 else ''} ({s.warmup:g} s "
        f"warm-up + {s.duration:g} s timed each; modes interleaved, a figure and its "
        f"baseline back to back); every ratio is between figures of the same mode in this "
        f"run (throughput: higher is better; latency: lower is better); (!) = the mode "
        f"failed during the run")
    report = Report(results, s, modes)
    parts = [head] + [f"{title}\n{render_table(header, rows)}"
                      for title, header, rows in report.sections()]
    return "\n\n".join(parts + render_warnings(warnings))


def render_json(results: Sequence[Result], settings: Settings, machine: dict,
                warnings: Sequence[str]) -> str:
    """The report as JSON (no NaN or infinity)."""
    doc = {
        "machine": machine,
        "settings": settings.to_json(),
        "method": "modes measured one at a time, interleaved within each round, a figure "
                  "and its baseline back to back; every figure is the median over the "
                  "rounds (latency: of each round's nearest-rank percentile); a ratio is "
                  "figure / its baseline's, same mode and run",
        "results": [r.to_json() for r in results],
        "warnings": list(warnings),
    }
    return json_text(doc)


# ---- entry point ----------------------------------------------------------------------------

async def _bench(bench: Bench, root: str) -> None:
    """Open the modes, run the bench, close them (whatever happens)."""
    async with contextlib.AsyncExitStack() as stack:
        for mode in bench.modes:
            stack.push_async_callback(mode.aclose)
            await mode.open(root, bench.progress)
        if any(m.active for m in bench.modes):
            await bench.run()


def run(args: argparse.Namespace) -> int:
    """Run ``unbroken bench onepipe``; returns the exit status (0 whatever
    the figures; 1 when no mode could be opened)."""
    settings = Settings.from_args(args)
    progress = Progress()
    load_before = load_average()
    modes = [Mode(name) for name in settings.modes]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="unbroken-bench-onepipe-",
                                     dir=settings.directory) as root:
        bench = Bench(settings, modes, progress, root)
        try:
            for mode in modes:
                if mode.name == "remote":
                    mode.start_remote(root, progress)
            asyncio.run(_bench(bench, root))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            for mode in modes:
                notes += mode.stop_remote()
    if not any(m.rt is not None for m in modes):
        print("unbroken bench onepipe: no mode could be opened", file=sys.stderr)
        for m in modes:
            print(f"  {m.name}: {m.failed}", file=sys.stderr)
        return 1
    results = build_results(bench.samples, settings)
    warnings = warnings_for(results, modes, bench.fsync_ms, notes)
    for w in warnings:
        progress.say(f"warning: {w}")
    machine = machine_info(modes, load_before, bench.fsync_ms, settings.directory)
    if settings.as_json:
        print(render_json(results, settings, machine, warnings))
    else:
        print(render_text(results, settings, modes, machine, warnings))
    return 0

