"""Measure the Unbroken engine in-process and set each figure beside this
machine's ceiling for the same work.

Every workload runs against real segment files, in its own temporary directory
under --dir (default: the system's temporary directory), which is removed
afterwards. Progress goes to stderr; a table and the project's performance
targets (PASS/MISS) go to stdout. It only reports: the exit status is 0 even
when a target is missed.

Workloads
  append    records of each --sizes under each --durability policy, one call
            per record (log.append) and batched (log.append_batch of --batch
            records). Under "always" also --writers concurrent asyncio tasks
            calling log.append_async (they share flushes: group commit), and
            "never" with the same writers (more than one) to compare against.
  read      catch-up read of a --read-mib MiB log of 1 KiB records from the
            start, log.read(offset, max_bytes=1 MiB) in a loop, CRCs verified
            by the engine; octet mode and JSON mode.
  recover   SegmentedLog.open of one full active segment of 100 B records.
  ceiling   the same bytes with no engine (C, no framing, no CRC, no Python):
            memcpy of --round-mib MiB into a fresh mmap'd file in pieces of each
            record size (mmap-copy), memcpy of --read-mib MiB in memory in 1 MiB
            pieces, and write + fdatasync of each record size (its us/op is the
            latency of one write + fdatasync; each write extends that file, while
            the engine writes into preallocated space, so "always" with one
            writer can come out above it).

How figures are taken
  Each workload runs a warm-up round (a small calibrating round first when its
  size is not fixed), then --repeats timed rounds of about --duration seconds,
  timed with time.perf_counter. The table shows the MEDIAN round. An append
  round starts on a fresh log and stops before the log is closed, so the final
  flush of "never" and "interval" is not counted (segment rolls are: sealing a
  segment syncs it). A round writes at most --records records and --round-mib
  MiB; a read round reads the whole log as many times as fit in --duration.
  MB/s counts payload bytes (1 MB = 10^6 bytes); us/op is per record.
  "ratio" is the figure over its ceiling, in the ceiling's unit.

Targets (from the issue)
  64 KiB appends one at a time, never      >= 0.8 x mmap-copy 64 KiB (MB/s)
  64 B appends one at a time, never        >= 300,000 records/s
  64 B appends batched, never              >= 3,000,000 records/s
  always, 64 writers (per size)            >= 0.5 x never with 64 writers
                                           >= 10 x always with 1 writer
  catch-up read, octet                     >= 0.3 x memcpy (MB/s)
  recovery of a full 64 MiB active segment of 100 B records  < 0.2 s
  (--quick recovers a 16 MiB segment and scales that limit to 0.05 s)

Examples
  unbroken bench engine --quick            whole run well under a minute
  unbroken bench engine                    full run, a few minutes
  unbroken bench engine --sizes 1KiB --durability always --writers 1,64
  unbroken bench engine --only read,recover --read-mib 1024
  unbroken bench engine --quick --json > bench.json
  unbroken bench engine --quick --plot engine.png   (pip install 'unbroken[plot]')
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Sequence

import anyio

from unbroken_engine import Durability, LogConfig, SegmentedLog, _native

from .harness.machine import engine_info, platform_info
from .harness.options import (
    KiB,
    MiB,
    add_output_flags,
    choices,
    count_list,
    fmt_size,
    or_default,
    parse_size,
    positive_float,
    positive_int,
    split_list,
    unique,
)
from .harness.report import json_text
from .harness.report import render_table as render_columns
from .harness.report import render_targets as render_target_lines
from .harness.stats import ratio
from .harness.workloads import json_body

READ_CHUNK = 1 * MiB            # max_bytes of one catch-up read; memcpy piece size
READ_RECORD = 1 * KiB           # record size of the catch-up log
RECOVERY_RECORD = 100           # record size of the recovery segment
FDATASYNC_START = 20            # write + fdatasync rounds of the calibrating round
FULL_SEGMENT = 64 * MiB         # the segment size the recovery target speaks of
MAX_WRITERS = 1024
MAX_READ_PASSES = 1000          # whole-log reads in one round of the read workloads
WORKLOADS = ("ceiling", "append", "read", "recover")
STATISTIC = "median"

DEFAULT_SIZES = (64, 1 * KiB, 64 * KiB)
DEFAULT_WRITERS = (1, 16, 64)
DEFAULT_DURABILITY = (Durability.NEVER, Durability.INTERVAL, Durability.ALWAYS)


@dataclass(frozen=True)
class Profile:
    """Defaults that --quick shrinks; any explicit option wins over them."""

    repeats: int
    duration: float
    records: int
    round_mib: int
    read_mib: int
    recovery_segment: int


FULL = Profile(repeats=5, duration=0.5, records=2_000_000, round_mib=256,
               read_mib=256, recovery_segment=FULL_SEGMENT)
QUICK = Profile(repeats=3, duration=0.1, records=200_000, round_mib=64,
                read_mib=64, recovery_segment=16 * MiB)


# ---- parsing options (pure) ----------------------------------------------------


def size_list(text: str) -> tuple[int, ...]:
    """``"64,1KiB,65536"`` -> ``(64, 1024, 65536)``; each 1 B .. MAX_PAYLOAD."""
    sizes = [parse_size(t) for t in split_list(text, "sizes")]
    for s in sizes:
        if not 1 <= s <= _native.MAX_PAYLOAD:
            raise argparse.ArgumentTypeError(
                f"record size {s} out of range 1..{_native.MAX_PAYLOAD}")
    return unique(sizes)


def durability_list(text: str) -> tuple[Durability, ...]:
    """``"never,always"`` -> ``(Durability.NEVER, Durability.ALWAYS)``."""
    out = []
    for t in split_list(text, "durability"):
        try:
            out.append(Durability(t.lower()))
        except ValueError:
            names = ", ".join(d.value for d in Durability)
            raise argparse.ArgumentTypeError(
                f"unknown durability {t!r} (choose from {names})") from None
    return unique(out)


def workload_list(text: str) -> tuple[str, ...]:
    """``"read,recover"`` -> ``("read", "recover")``; names from WORKLOADS."""
    return choices(text, "workload", WORKLOADS, listed="only")


def writers_list(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``; each 1 .. MAX_WRITERS."""
    return count_list(text, "writers", MAX_WRITERS)


def segment_size(text: str) -> int:
    """A segment size with optional suffix, 4 KiB .. 4 GiB - 64 KiB."""
    n = parse_size(text)
    if not 4 * KiB <= n <= 0xFFFF0000:
        raise argparse.ArgumentTypeError(f"segment size {n} out of range 4KiB..0xFFFF0000")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``unbroken bench engine`` to ``parser``."""
    add = parser.add_argument
    add("--quick", action="store_true",
        help="small run (well under a minute): fewer repeats, shorter rounds, "
             f"{QUICK.read_mib} MiB read log, {QUICK.recovery_segment // MiB} MiB recovery "
             "segment")
    add("--sizes", type=size_list, default=DEFAULT_SIZES, metavar="LIST",
        help="record sizes to append, comma-separated, K/KiB and M/MiB suffixes allowed "
             "(default: 64,1KiB,64KiB)")
    add("--durability", type=durability_list, default=DEFAULT_DURABILITY, metavar="LIST",
        help="durability policies for appends: never,interval,always (default: all three)")
    add("--writers", type=writers_list, default=DEFAULT_WRITERS, metavar="LIST",
        help="concurrent append_async tasks (default: 1,16,64)")
    add("--batch", type=positive_int, default=1000, metavar="N",
        help="records per append_batch call (default: 1000)")
    add("--segment-size", type=segment_size, default=None, metavar="SIZE",
        help="segment size of every log (default: the engine's, 64MiB; --quick "
             "recovers a 16MiB segment unless this is given)")
    add("--repeats", type=positive_int, default=None, metavar="N",
        help=f"timed rounds per workload, after a warm-up (default: {FULL.repeats}, "
             f"quick {QUICK.repeats})")
    add("--duration", type=positive_float, default=None, metavar="SECONDS",
        help=f"aimed length of one timed round (default: {FULL.duration}, quick {QUICK.duration})")
    add("--records", type=positive_int, default=None, metavar="N",
        help=f"most records appended in one round (default: {FULL.records:,}, "
             f"quick {QUICK.records:,})")
    add("--round-mib", type=positive_int, default=None, metavar="MIB",
        help=f"most MiB appended in one round, and the mmap-copy size (default: "
             f"{FULL.round_mib}, quick {QUICK.round_mib})")
    add("--read-mib", type=positive_int, default=None, metavar="MIB",
        help=f"size of the catch-up read log (default: {FULL.read_mib}, quick {QUICK.read_mib})")
    add("--only", type=workload_list, default=WORKLOADS, metavar="LIST",
        help="run only these workloads: ceiling,append,read,recover (default: all; "
             "targets whose figures are missing say n/a)")
    add_output_flags(parser, "where to create the scratch directories (default: the system "
                             "temp dir)")
    from . import plot
    plot.add_argument(parser)


@dataclass(frozen=True)
class Settings:
    """The options of one run, --quick defaults resolved."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    durabilities: tuple[Durability, ...] = DEFAULT_DURABILITY
    writers: tuple[int, ...] = DEFAULT_WRITERS
    batch: int = 1000
    segment_size: int = _native.DEFAULT_SEGMENT_SIZE
    recovery_segment: int = FULL_SEGMENT
    repeats: int = FULL.repeats
    duration: float = FULL.duration
    records: int = FULL.records
    round_mib: int = FULL.round_mib
    read_mib: int = FULL.read_mib
    only: tuple[str, ...] = WORKLOADS
    quick: bool = False
    as_json: bool = False
    directory: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        profile = QUICK if args.quick else FULL
        pick = or_default
        seg = args.segment_size
        return cls(
            sizes=tuple(args.sizes), durabilities=tuple(args.durability),
            writers=tuple(args.writers), batch=args.batch,
            segment_size=pick(seg, _native.DEFAULT_SEGMENT_SIZE),
            recovery_segment=pick(seg, profile.recovery_segment),
            repeats=pick(args.repeats, profile.repeats),
            duration=pick(args.duration, profile.duration),
            records=pick(args.records, profile.records),
            round_mib=pick(args.round_mib, profile.round_mib),
            read_mib=pick(args.read_mib, profile.read_mib), only=tuple(args.only),
            quick=args.quick, as_json=args.as_json, directory=args.dir)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["durabilities"] = [x.value for x in self.durabilities]
        return d


# ---- results and their maths (pure) -----------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One timed round: ``ops`` records (or reads, syncs, copies) in ``seconds``."""

    seconds: float
    ops: int
    nbytes: int


@dataclass(frozen=True)
class Result:
    """The figures of one workload: the median of its timed rounds.

    :ivar ceiling_unit: "MB/s" or "ops/s": what ``ratio`` divides
    """

    workload: str
    label: str
    params: dict
    samples: tuple[Sample, ...]
    ceiling: str | None = None
    ceiling_value: float | None = None
    ceiling_unit: str | None = None
    ratio: float | None = None

    @property
    def name(self) -> str:
        return f"{self.workload} {self.label}"

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def ops_per_s(self) -> float:
        return statistics.median(_rate(s.ops, s.seconds) for s in self.samples)

    @property
    def mb_per_s(self) -> float:
        return statistics.median(_rate(s.nbytes, s.seconds) for s in self.samples) / 1e6

    @property
    def us_per_op(self) -> float:
        return 1e6 / self.ops_per_s if self.ops_per_s else math.inf

    def figure(self, unit: str) -> float:
        """This result in ``unit``: ``"MB/s"`` or ``"ops/s"``."""
        return self.mb_per_s if unit == "MB/s" else self.ops_per_s

    def against(self, ceiling: "Result", unit: str, name: str | None = None) -> "Result":
        """A copy with ``ceiling`` attached as this result's reference."""
        value = ceiling.figure(unit)
        return dataclasses.replace(self, ceiling=name or ceiling.label, ceiling_value=value,
                                   ceiling_unit=unit, ratio=ratio(self.figure(unit), value))

    def to_json(self) -> dict:
        return {
            "name": self.name, "workload": self.workload, "params": self.params,
            "ops_per_s": self.ops_per_s, "mb_per_s": self.mb_per_s,
            "seconds": self.seconds, "us_per_op": self.us_per_op,
            "ops_per_round": self.samples[0].ops, "bytes_per_round": self.samples[0].nbytes,
            "rounds_seconds": [s.seconds for s in self.samples],
            "ceiling": self.ceiling, "ceiling_value": self.ceiling_value,
            "ceiling_unit": self.ceiling_unit, "ratio": self.ratio,
        }


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else math.inf


def find(results: Sequence[Result], workload: str, **params) -> Result | None:
    """The first result of ``workload`` whose params include ``params``."""
    for r in results:
        if r.workload == workload and all(r.params.get(k) == v for k, v in params.items()):
            return r
    return None


def reference_for(result: Result, results: Sequence[Result]):
    """``(ceiling result, unit, name)`` that ``result`` is compared with, or None.

    * never/interval appends -> mmap-copy of the same size (MB/s)
    * always with one writer -> write + fdatasync of the same size (ops/s)
    * always with N > 1 writers -> never with N writers (ops/s)
    * catch-up reads -> memcpy (MB/s)
    """
    p = result.params
    if result.workload == "append":
        if p["durability"] in ("never", "interval"):
            c = find(results, "ceiling", kind="mmap-copy", size=p["size"])
            return c and (c, "MB/s", c.label)
        if p.get("writers", 1) == 1 and p["mode"] != "batch":
            c = find(results, "ceiling", kind="fdatasync", size=p["size"])
            return c and (c, "ops/s", c.label)
        if p["mode"] == "async":
            c = find(results, "append", size=p["size"], durability="never", mode="async",
                     writers=p["writers"])
            return c and (c, "ops/s", f"never w={p['writers']}")
    if result.workload == "read":
        c = find(results, "ceiling", kind="memcpy")
        return c and (c, "MB/s", c.label)
    return None


def attach_ceilings(results: Sequence[Result]) -> list[Result]:
    """Every result with its ceiling and ratio filled in where it has one."""
    out = []
    for r in results:
        ref = reference_for(r, results)
        out.append(r.against(*ref) if ref else r)
    return out


# ---- targets (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One line of the targets section: ``value`` against ``threshold``.

    :ivar value: None when the workloads it needs were not run
    :ivar below: the target is ``value < threshold`` (otherwise ``>=``)
    """

    label: str
    value: float | None
    threshold: float
    unit: str = "x"
    below: bool = False
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "n/a"
        ok = self.value < self.threshold if self.below else self.value >= self.threshold
        return "PASS" if ok else "MISS"

    def to_json(self) -> dict:
        return {"label": self.label, "value": self.value, "threshold": self.threshold,
                "unit": self.unit, "comparison": "<" if self.below else ">=",
                "status": self.status, "note": self.note}


def _fig(r: Result | None, unit: str) -> float | None:
    return r.figure(unit) if r else None


def _over(a: float | None, b: float | None) -> float | None:
    return ratio(a, b) if a is not None and b is not None else None


def evaluate_targets(results: Sequence[Result], settings: Settings) -> list[Target]:
    """The issue's targets, each computed from ``results``."""
    targets = [
        Target("append 64KiB never single vs mmap-copy 64KiB (MB/s)",
               _over(_fig(find(results, "append", size=64 * KiB, durability="never",
                               mode="single"), "MB/s"),
                     _fig(find(results, "ceiling", kind="mmap-copy", size=64 * KiB), "MB/s")),
               0.8),
        Target("append 64B never single (records/s)",
               _fig(find(results, "append", size=64, durability="never", mode="single"),
                    "ops/s"), 300_000, unit="/s"),
        Target(f"append 64B never batch={settings.batch} (records/s)",
               _fig(find(results, "append", size=64, durability="never", mode="batch"),
                    "ops/s"), 3_000_000, unit="/s"),
    ]
    targets += group_commit_targets(results, settings)
    targets.append(Target(
        "read octet vs memcpy (MB/s)",
        _over(_fig(find(results, "read", mode="octet"), "MB/s"),
              _fig(find(results, "ceiling", kind="memcpy"), "MB/s")), 0.3))
    targets.append(recovery_target(results, settings))
    return targets


def group_commit_targets(results: Sequence[Result], settings: Settings) -> list[Target]:
    """always with the most writers vs never with as many, and vs one writer."""
    many, one = max(settings.writers), min(settings.writers)
    out = []
    for size in settings.sizes:
        def pick(durability, writers):
            return _fig(find(results, "append", size=size, durability=durability,
                             mode="async", writers=writers), "ops/s")
        always_many = pick("always", many)
        out.append(Target(f"{fmt_size(size)}: always w={many} / never w={many} (records/s)",
                          _over(always_many, pick("never", many) if many > 1 else None), 0.5))
        out.append(Target(f"{fmt_size(size)}: always w={many} / always w={one} (records/s)",
                          _over(always_many, pick("always", one) if many > one else None), 10))
    return out


def recovery_target(results: Sequence[Result], settings: Settings) -> Target:
    """< 0.2 s for a full 64 MiB segment, scaled linearly for another size."""
    seg = settings.recovery_segment
    limit = 0.2 * seg / FULL_SEGMENT
    r = find(results, "recover")
    note = ""
    if seg != FULL_SEGMENT:
        note = (f"{'--quick: ' if settings.quick else ''}{fmt_size(seg)} segment, "
                f"limit scaled 0.2 s x {fmt_size(seg)}/64MiB")
    label = f"recover full {fmt_size(seg)} active segment of 100B records (seconds)"
    if r:
        label = (f"recover full {fmt_size(seg)} active segment "
                 f"({r.samples[0].ops:,} x 100B records, seconds)")
    return Target(label, r.seconds if r else None, limit, unit="s", below=True, note=note)


# ---- workloads: each returns one Sample ---------------------------------------------

def append_single(log: SegmentedLog, payload: bytes, count: int) -> Sample:
    """``count`` records, one ``log.append`` call each."""
    append = log.append
    t0 = time.perf_counter()
    for _ in range(count):
        append(payload)
    return Sample(time.perf_counter() - t0, count, count * len(payload))


def append_batched(log: SegmentedLog, payload: bytes, count: int, batch: int) -> Sample:
    """``count`` records (rounded up to whole batches) in ``log.append_batch`` calls."""
    payloads = [payload] * batch
    calls = -(-count // batch)
    t0 = time.perf_counter()
    for _ in range(calls):
        log.append_batch(payloads)
    n = calls * batch
    return Sample(time.perf_counter() - t0, n, n * len(payload))


def append_concurrent(log: SegmentedLog, payload: bytes, count: int, writers: int) -> Sample:
    """``writers`` asyncio tasks, each awaiting ``log.append_async`` in a loop."""
    per_task = -(-count // writers)

    async def writer() -> None:
        for _ in range(per_task):
            await log.append_async(payload)

    async def main() -> float:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(writers):
                tg.start_soon(writer)
        return time.perf_counter() - t0

    n = per_task * writers
    return Sample(anyio.run(main, backend="asyncio"), n, n * len(payload))


def catch_up_read(log: SegmentedLog, json_mode: bool, passes: int) -> Sample:
    """Read the whole log from the start in ``READ_CHUNK`` reads, ``passes`` times."""
    records = nbytes = 0
    t0 = time.perf_counter()
    for _ in range(passes):
        offset, end = log.start_offset, log.end_offset
        while offset < end:
            r = log.read(offset, READ_CHUNK, json=json_mode)
            records += r.records
            nbytes += len(r.data)
            offset = r.next_offset
    return Sample(time.perf_counter() - t0, records, nbytes)


def recover(path: str, config: LogConfig) -> Sample:
    """Time ``SegmentedLog.open`` (recovery scan of the active segment)."""
    t0 = time.perf_counter()
    log = SegmentedLog.open(path, config)
    seconds = time.perf_counter() - t0
    records = log.recovery.active_records
    log.close()
    return Sample(seconds, records, records * RECOVERY_RECORD)


def ceiling_mmap_copy(workdir: str, chunk: int, count: int) -> Sample:
    seconds = _native.bench_mmap_copy(os.path.join(workdir, "mmap-copy"), count * chunk, chunk)
    return Sample(seconds, count, count * chunk)


def ceiling_memcpy(count: int) -> Sample:
    return Sample(_native.bench_memcpy(count * READ_CHUNK, READ_CHUNK), count, count * READ_CHUNK)


def ceiling_fdatasync(workdir: str, size: int, count: int) -> Sample:
    """``count`` rounds of pwrite ``size`` bytes + fdatasync on one file."""
    seconds = _native.bench_fdatasync(os.path.join(workdir, "fdatasync"), count, size)
    return Sample(seconds, count, count * size)


# ---- fixtures: set a workload up, yield "run one round of N ops" ----------------------

Round = Callable[[int], Sample]


@contextlib.contextmanager
def fresh_logs(workdir: str, config: LogConfig,
               body: Callable[[SegmentedLog, int], Sample]) -> Iterator[Round]:
    """Each round on a new log, closed and removed after it (untimed)."""
    def one_round(count: int) -> Sample:
        path = tempfile.mkdtemp(dir=workdir)
        log = SegmentedLog.open(path, config)
        try:
            return body(log, count)
        finally:
            log.close()
            shutil.rmtree(path)
    yield one_round


def fill(log: SegmentedLog, payload: bytes, count: int, chunk: int = 8192) -> None:
    """Append ``count`` copies of ``payload`` in batches (setup, untimed)."""
    while count > 0:
        n = min(chunk, count)
        log.write_batch([payload] * n)
        count -= n


@contextlib.contextmanager
def read_log(workdir: str, settings: Settings, json_mode: bool) -> Iterator[Round]:
    """A ``--read-mib`` log of 1 KiB JSON records, closed and reopened before reading."""
    config = LogConfig(segment_size=settings.segment_size, durability=Durability.NEVER)
    path = os.path.join(workdir, "log")
    with SegmentedLog.open(path, config) as log:
        fill(log, json_body(READ_RECORD), settings.read_mib * MiB // READ_RECORD)
    log = SegmentedLog.open(path, config)
    try:
        yield lambda passes: catch_up_read(log, json_mode, passes)
    finally:
        log.close()


@contextlib.contextmanager
def full_segment(workdir: str, settings: Settings) -> Iterator[Round]:
    """One active segment filled exactly to capacity with 100 B records."""
    seg = settings.recovery_segment
    config = LogConfig(segment_size=seg, index_interval=min(_native.DEFAULT_INDEX_INTERVAL, seg),
                       durability=Durability.NEVER)
    path = os.path.join(workdir, "log")
    count = (seg - _native.SEG_HEADER_SIZE) // (_native.REC_HEADER_SIZE + RECOVERY_RECORD)
    with SegmentedLog.open(path, config) as log:
        fill(log, b"r" * RECOVERY_RECORD, count)
        if sum(name.endswith(".seg") for name in os.listdir(path)) != 1:
            raise RuntimeError(f"recovery setup rolled past one segment in {path}")
    yield lambda _count: recover(path, config)


@contextlib.contextmanager
def no_setup(body: Round) -> Iterator[Round]:
    """For the ceilings: each C call sets itself up and cleans up."""
    yield body


# ---- the plan: which jobs a run has ---------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One workload to measure.

    :ivar setup: given a fresh scratch directory, a context that yields a
        function running one round of N ops
    :ivar cap: most ops in one round
    :ivar start: ops of the calibrating round (== cap: fixed-size rounds)
    """

    workload: str
    label: str
    params: dict
    setup: Callable[[str], ContextManager[Round]]
    cap: int
    start: int


def _append_job(settings: Settings, size: int, durability: Durability, mode: str,
                writers: int = 1) -> Job:
    config = LogConfig(segment_size=settings.segment_size, durability=durability)
    payload = os.urandom(size)
    cap = max(1, min(settings.records, settings.round_mib * MiB // size))
    start = min(cap, 32 * writers if durability is Durability.ALWAYS else 1000)
    params = {"size": size, "durability": durability.value, "mode": mode}
    label = f"{fmt_size(size)} {durability.value} {mode}"
    if mode == "batch":
        params["batch"] = settings.batch
        label = f"{fmt_size(size)} {durability.value} batch={settings.batch}"
        cap = max(cap, settings.batch)
        start = max(start, settings.batch)

        def body(log, n):
            return append_batched(log, payload, n, settings.batch)
    elif mode == "async":
        params["writers"] = writers
        label += f" w={writers}"
        cap = max(cap, writers)
        start = max(start, writers)

        def body(log, n):
            return append_concurrent(log, payload, n, writers)
    else:
        def body(log, n):
            return append_single(log, payload, n)
    return Job("append", label, params, lambda wd: fresh_logs(wd, config, body), cap, start)


def append_jobs(settings: Settings, size: int) -> list[Job]:
    """Appends of ``size`` records: each policy single and batched, async writers."""
    jobs = []
    for d in settings.durabilities:
        jobs.append(_append_job(settings, size, d, "single"))
        jobs.append(_append_job(settings, size, d, "batch"))
        if d is Durability.ALWAYS:
            jobs += [_append_job(settings, size, d, "async", w) for w in settings.writers]
        elif d is Durability.NEVER:
            jobs += [_append_job(settings, size, d, "async", w)
                     for w in settings.writers if w > 1]
    return jobs


def read_jobs(settings: Settings) -> list[Job]:
    """The memcpy ceiling, then catch-up reads in octet and JSON mode."""
    jobs = [Job("ceiling", f"memcpy {fmt_size(READ_CHUNK)}",
                {"kind": "memcpy", "size": READ_CHUNK},
                lambda wd: no_setup(ceiling_memcpy), settings.read_mib, settings.read_mib)]
    for mode in ("octet", "json"):
        params = {"mode": mode, "log_mib": settings.read_mib, "record_size": READ_RECORD,
                  "max_bytes": READ_CHUNK}
        label = f"{mode} {settings.read_mib}MiB log, {fmt_size(READ_RECORD)} records"
        jobs.append(Job("read", label, params,
                        lambda wd, j=(mode == "json"): read_log(wd, settings, j),
                        MAX_READ_PASSES, 1))
    return jobs


def recovery_job(settings: Settings) -> Job:
    seg = settings.recovery_segment
    params = {"segment_size": seg, "record_size": RECOVERY_RECORD}
    return Job("recover", f"{fmt_size(seg)} segment, 100B records", params,
               lambda wd: full_segment(wd, settings), 1, 1)


def ceiling_jobs(settings: Settings, size: int) -> list[Job]:
    """mmap-copy of ``--round-mib`` MiB and write + fdatasync, in ``size`` pieces."""
    copies = max(1, settings.round_mib * MiB // size)
    syncs = max(FDATASYNC_START, min(settings.records, copies))
    return [
        Job("ceiling", f"mmap-copy {fmt_size(size)}", {"kind": "mmap-copy", "size": size},
            lambda wd: no_setup(lambda n: ceiling_mmap_copy(wd, size, n)), copies, copies),
        Job("ceiling", f"fdatasync {fmt_size(size)}", {"kind": "fdatasync", "size": size},
            lambda wd: no_setup(lambda n: ceiling_fdatasync(wd, size, n)), syncs,
            FDATASYNC_START),
    ]


def plan(settings: Settings) -> list[Job]:
    """Every job of a run, in run order. Each ceiling runs just before the
    figures it is compared with (a VM's disk latency drifts over minutes)."""
    jobs = []
    for size in settings.sizes:
        jobs += ceiling_jobs(settings, size) + append_jobs(settings, size)
    jobs += read_jobs(settings) + [recovery_job(settings)]
    return [j for j in jobs if j.workload in settings.only]


# ---- running ------------------------------------------------------------------------

def next_count(count: int, seconds: float, cap: int, duration: float) -> int:
    """Ops for a round of about ``duration`` s, given ``count`` ops took ``seconds``."""
    if seconds <= 0:
        return cap
    return max(1, min(cap, int(count * duration / seconds)))


def measure(one_round: Round, job: Job, settings: Settings) -> list[Sample]:
    """Warm up (calibrating the round size when it is not fixed), then time rounds."""
    warm = one_round(job.start)
    count = job.start
    if job.cap > job.start:
        count = next_count(job.start, warm.seconds, job.cap, settings.duration)
        one_round(count)  # warm-up at the measured size, not counted
    return [one_round(count) for _ in range(settings.repeats)]


def run_job(job: Job, root: str, settings: Settings) -> Result:
    """Measure ``job`` in its own scratch directory under ``root``, removed afterwards."""
    with tempfile.TemporaryDirectory(dir=root, prefix=f"{job.workload}-") as workdir:
        with job.setup(workdir) as one_round:
            samples = measure(one_round, job, settings)
    return Result(job.workload, job.label, job.params, tuple(samples))


class Progress:
    """``[3/17] append 1KiB always async w=16 ...`` on stderr; one line
    rewritten in place on a terminal, a line per job otherwise."""

    def __init__(self, total: int, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = 0

    def show(self, i: int, job: Job) -> None:
        text = f"[{i}/{self.total}] {job.workload} {job.label} ..."
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def run_all(jobs: Sequence[Job], settings: Settings, root: str,
            progress: Progress | None = None) -> list[Result]:
    results = []
    for i, job in enumerate(jobs, 1):
        if progress:
            progress.show(i, job)
        results.append(run_job(job, root, settings))
    if progress:
        progress.done()
    return results


# ---- output -------------------------------------------------------------------------

def machine_info(directory: str | None = None) -> dict:
    """The machine and the engine build the figures were taken on."""
    return {**platform_info(), **engine_info(directory)}


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.{digits}f}"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        rows.append([r.workload, r.label, _num(r.ops_per_s, 0), _num(r.mb_per_s),
                     _num(r.us_per_op, 3), f"{r.seconds:.4f}", r.ceiling or "",
                     f"{r.ratio:.2f}" if r.ratio is not None else ""])
    return rows


TABLE_HEADER = ["workload", "params", "ops/s", "MB/s", "us/op", "seconds", "ceiling", "ratio"]
_RIGHT = {2, 3, 4, 5, 7}


def render_table(results: Sequence[Result]) -> str:
    """Aligned columns; text left-aligned, numbers right-aligned."""
    return render_columns(TABLE_HEADER, table_rows(results), _RIGHT)


def _target_value(t: Target) -> str:
    if t.value is None:
        return "not measured"
    op = "<" if t.below else ">="
    if t.unit == "/s":
        return f"{t.value:,.0f}/s {op} {t.threshold:,.0f}/s"
    if t.unit == "s":
        return f"{t.value:.3f} s {op} {t.threshold:.3f} s"
    return f"{t.value:.2f} {op} {t.threshold:g}"


def render_targets(targets: Sequence[Target]) -> str:
    """The targets section."""
    return render_target_lines(targets, _target_value)


def render_text(results: Sequence[Result], targets: Sequence[Target], settings: Settings,
                machine: dict) -> str:
    head = (f"Unbroken engine benchmark{' (--quick)' if settings.quick else ''}: "
            f"Python {machine['python']}, {machine['cpu_count']} CPUs, CRC32C hardware "
            f"{'yes' if machine['crc32c_hardware'] else 'no'}, scratch in {machine['dir']}\n"
            f"figures: {STATISTIC} of {settings.repeats} timed rounds (warm-up excluded), "
            f"~{settings.duration:g} s per round; MB = 10^6 bytes; us/op per record; "
            f"ratio = figure / ceiling")
    return "\n\n".join([head, render_table(results), render_targets(targets)])


def render_json(results: Sequence[Result], targets: Sequence[Target], settings: Settings,
                machine: dict) -> str:
    doc = {
        "machine": machine,
        "statistic": STATISTIC,
        "settings": settings.to_json(),
        "results": [r.to_json() for r in results],
        "targets": [t.to_json() for t in targets],
    }
    return json_text(doc)


def run(args: argparse.Namespace) -> int:
    """Run ``unbroken bench engine``; returns the exit status (0 even on MISS;
    2 when --plot is given and matplotlib is missing, before any measurement)."""
    from . import plot
    status = plot.check(args, "engine")
    if status is not None:
        return status
    settings = Settings.from_args(args)
    jobs = plan(settings)
    with tempfile.TemporaryDirectory(prefix="unbroken-bench-", dir=settings.directory) as root:
        try:
            results = run_all(jobs, settings, root, Progress(len(jobs)))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    results = attach_ceilings(results)
    targets = evaluate_targets(results, settings)
    render = render_json if settings.as_json else render_text
    print(render(results, targets, settings, machine_info(settings.directory)))
    path = getattr(args, "plot", None)
    if path:
        plot.plot_engine(results, path)
        print(f"plot written to {path}", file=sys.stderr)
    return 0
