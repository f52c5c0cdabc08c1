"""SegmentedLog: one stream's append-only log, made of segment files.

Offsets are byte positions in the log: a segment's records start at its base
offset, and offset ``base + (position - header size)`` is a record boundary.
So offsets are contiguous across segments, every offset the log returns is the
boundary after a record, and finding a segment is ``bisect_right(bases,
offset) - 1`` (Kafka's ``floorSegment``). The last segment is the *active* one:
the only one appended to and the only one recovered in tolerant mode.

Durability (:class:`Durability`):

* ``ALWAYS`` -- an append returns only once its bytes are on disk. Concurrent
  appends share one ``fdatasync`` (group commit): whoever finds no flush in
  progress becomes the leader, captures the written end, syncs, and wakes every
  waiter that end covers; appends that arrive meanwhile join the next flush.
  The blocking API does this with a condition variable, the async API with an
  anyio event and one worker thread per flush, so the event loop never blocks
  on the disk.
* ``INTERVAL`` -- appends return at once; one shared background thread flushes
  every log with unflushed bytes every ``flush_interval`` seconds. A crash of
  the machine (not of the process) may lose up to that window.
* ``NEVER`` -- the OS writes back when it likes (development, benchmarks).
  Segments sealed by a roll are still synced by the background thread, off
  the appending path, so their files can be closed.

:meth:`SegmentedLog.settle` and :attr:`SegmentedLog.settled_offset` are the
one answer to "does this policy wait for the disk": callers that acknowledge
appends (the stores) ask them instead of testing the policy themselves.

A process crash never loses an appended record under any policy: records are
written into a shared mapping of the file, which the kernel keeps.

Concurrency contract: appends, rolls and retention take the log's append lock
(a ``threading.Lock``); reads take no lock and are safe from any thread or task
while appends go on. ``close()`` must be called once no other call is in flight.
"""
from __future__ import annotations

import bisect
import enum
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import anyio
import anyio.lowlevel

from .. import _native as nat
from .. import _testhooks, errors
from . import layout

HEADER = nat.SEG_HEADER_SIZE
DEFAULT_READ_BYTES = 1 << 20


class Durability(enum.Enum):
    """When an append counts as done. See the module docstring."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


class RecordType(enum.IntEnum):
    """What a record means to the stream (the C ``UB_REC_*`` values)."""

    DATA = nat.REC_DATA
    DATA_CLOSE = nat.REC_DATA_CLOSE
    CLOSE = nat.REC_CLOSE
    CHECKPOINT = nat.REC_CHECKPOINT


@dataclass(frozen=True)
class LogConfig:
    """Tunables of a log.

    :ivar segment_size: roll to a new segment when the next record does not fit
        (a larger record gets a segment of its own, up to ``MAX_PAYLOAD``)
    :ivar index_interval: bytes between sparse index entries
    :ivar durability: see :class:`Durability`
    :ivar flush_interval: seconds between flushes under ``INTERVAL``
    """

    segment_size: int = nat.DEFAULT_SEGMENT_SIZE
    index_interval: int = nat.DEFAULT_INDEX_INTERVAL
    durability: Durability = Durability.ALWAYS
    flush_interval: float = 0.01

    def __post_init__(self):
        if not HEADER + nat.REC_HEADER_SIZE <= self.segment_size <= 0xFFFF0000:
            raise errors.InvalidArgument(f"segment_size {self.segment_size} out of range")
        if not 64 <= self.index_interval <= self.segment_size:
            raise errors.InvalidArgument(f"index_interval {self.index_interval} out of range")
        if not isinstance(self.durability, Durability):
            object.__setattr__(self, "durability", Durability(self.durability))
        if not self.flush_interval > 0:
            raise errors.InvalidArgument("flush_interval must be positive")


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`SegmentedLog.open` found (a ``RecoveryEvent`` in durable-streams).

    :ivar bytes_cut: bytes of a torn tail cut from the active segment
    """

    path: str
    segments: int
    active_records: int
    bytes_cut: int
    indexes_rebuilt: int
    empty_segments_removed: int
    start_offset: int
    end_offset: int
    seconds: float


@dataclass(frozen=True)
class ReadResult:
    """A catch-up read.

    :ivar data: the payloads (JSON mode: joined by ``,``, the contents of a
        JSON array), zero-copy view of a buffer owned by this result
    :ivar next_offset: offset after the last record read (pass it to the next read)
    :ivar closed: a close record was read; nothing follows it
    :ivar at_end: ``next_offset`` was the end of the log when the read finished
    """

    data: memoryview
    next_offset: int
    records: int
    messages: int
    closed: bool
    at_end: bool


@dataclass(frozen=True)
class Record:
    """One record with its offset, as :meth:`SegmentedLog.records` yields it."""

    offset: int
    type: RecordType
    msg_count: int
    attrs: bytes
    payload: bytes
    next_offset: int


class _Segment:
    """A native segment plus its base offset (what the log keeps per file)."""

    __slots__ = ("base", "native")

    def __init__(self, base: int, native: nat.NativeSegment):
        self.base = base
        self.native = native

    def end_offset(self) -> int:
        return self.base + self.native.end() - HEADER


class SegmentedLog:
    """One stream's log in one directory. Open it with :meth:`open`."""

    def __init__(self, directory, config: LogConfig, segments: list[_Segment],
                 report: RecoveryReport):
        self.directory = os.fspath(directory)
        self.config = config
        self.recovery = report
        # (segments, their base offsets): replaced whole on roll and retention,
        # so a reader takes both from one consistent snapshot without a lock.
        self._view: tuple[tuple[_Segment, ...], tuple[int, ...]] = _view_of(segments)
        self._active = segments[-1]
        self._lock = threading.Lock()  # appends, rolls, retention
        self._flush_lock = threading.Lock()  # a flush vs. a seal or close of its file
        self._unsynced_seals: list[_Segment] = []  # sealed under NEVER/INTERVAL, not yet synced
        self._closed = False
        self._written = self._active.end_offset()
        self._synced = self._written  # recovery leaves everything it kept durable
        self._synced_lock = threading.Lock()
        self._sync_cond = threading.Condition()
        self._sync_leader = False
        self._async_flush: anyio.Event | None = None
        self._always = config.durability is Durability.ALWAYS
        if config.durability is Durability.INTERVAL:
            _IntervalFlusher.register(self)

    # ---- opening ---------------------------------------------------------

    @classmethod
    def open(cls, directory, config: LogConfig | None = None, *,
             repair: bool = False, base_offset: int = 0) -> "SegmentedLog":
        """Open the log in ``directory`` (created if missing) and recover it.

        Sealed segments are opened with their saved index (rebuilt by a
        checking scan when missing or damaged); the active segment is scanned
        record by record, every CRC verified, and a torn tail cut.

        :param repair: cut the active segment at its first bad record even when
            valid records follow (operator repair; loses those records)
        :param base_offset: where a *new* log's offsets start (a fork continues
            its source's offsets); ignored when the directory holds a log
        :raises CorruptSegment: a bad record in a sealed segment, or before
            valid data in the active one, or segments that do not line up
        """
        config = config or LogConfig()
        t0 = time.perf_counter()
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))
        bases = layout.list_segments(directory)
        unwritten = layout.unwritten_tail(directory, bases)  # a crash left them: never acked
        for path in unwritten:
            os.unlink(path)
        del bases[len(bases) - len(unwritten):]
        removed = len(unwritten)
        segments: list[_Segment] = []
        rebuilt = cut = active_records = 0
        for i, base in enumerate(bases):
            path = os.path.join(directory, layout.segment_name(base))
            last = i == len(bases) - 1
            mode = (nat.OPEN_REPAIR if repair else nat.OPEN_ACTIVE) if last else nat.OPEN_SEALED
            native, rep = nat.NativeSegment.open(
                path, os.path.join(directory, layout.index_name(base)), mode,
                config.segment_size, config.index_interval)
            seg = _Segment(base, native)
            _check_lines_up(seg, segments[-1] if segments else None, path)
            segments.append(seg)
            rebuilt += rep.index_rebuilt
            cut += rep.bytes_cut
            if last:
                active_records = rep.records
        if not segments:
            segments.append(_create_segment(directory, base_offset, 0, config,
                                            config.segment_size))
        else:
            # What a crashed process wrote may still be only in the page cache:
            # flush it before counting it durable (an idempotent retry is then
            # a duplicate of bytes that really are on disk).
            segments[-1].native.sync()
        report = RecoveryReport(directory, len(segments), active_records, cut, rebuilt,
                                removed, segments[0].base, segments[-1].end_offset(),
                                time.perf_counter() - t0)
        return cls(directory, config, segments, report)

    # ---- properties --------------------------------------------------------

    @property
    def _segments(self) -> tuple[_Segment, ...]:
        return self._view[0]

    @property
    def start_offset(self) -> int:
        """Earliest retained offset (0 until retention drops a segment)."""
        return self._view[1][0]

    @property
    def end_offset(self) -> int:
        """Offset after the last record (the next append's offset)."""
        return self._active.end_offset()

    @property
    def durable_offset(self) -> int:
        """Offset up to which appends are known to be on disk."""
        return self._synced

    @property
    def settled_offset(self) -> int:
        """Offset up to which appends count as done under the policy: the
        durable offset under ``ALWAYS``, the end under ``INTERVAL`` and
        ``NEVER`` (acknowledged before their flush). What a store lets
        readers see."""
        return self._synced if self._always else self.end_offset

    @property
    def message_count(self) -> int:
        """Messages appended over the log's life (retention does not lower it)."""
        info = self._active.native.info()
        return info.base_msg + info.messages

    @property
    def last_type(self) -> RecordType | None:
        """Type of the last record, or None for an empty log."""
        for seg in reversed(self._segments):
            t = seg.native.info().last_type
            if t:
                return RecordType(t)
        return None

    @property
    def is_closed(self) -> bool:
        """Whether the last record closed the stream."""
        return self.last_type in (RecordType.DATA_CLOSE, RecordType.CLOSE)

    # ---- appending --------------------------------------------------------

    def write(self, payload, attrs=b"", type: int = nat.REC_DATA, msg_count: int = 1) -> int:
        """Append one record without waiting for durability.

        Not for concurrent use with :meth:`close`. Thread-safe otherwise.

        :param payload: bytes-like, at most ``MAX_PAYLOAD`` bytes
        :param attrs: small msgpack-encoded attributes (at most 65535 bytes)
        :param type: a :class:`RecordType`
        :param msg_count: messages the payload carries (a JSON batch carries many)
        :return: the offset after the record
        :raises RecordTooLarge: payload or attrs over the limits
        :raises StorageFull: the disk refused to grow the segment; nothing written
        """
        with self._lock:
            if self._closed:
                raise errors.LogClosedError(f"log {self.directory} is closed")
            seg = self._active
            end = seg.native.append(type, msg_count, attrs, payload)
            if end < 0:
                seg = self._roll(nat.record_size(len(attrs), len(payload)))
                end = seg.native.append(type, msg_count, attrs, payload)
                if end < 0:
                    raise errors.RecordTooLarge("record does not fit an empty segment")
            off = seg.base + end - HEADER
            self._written = off
            return off

    def append(self, payload, attrs=b"", type: int = nat.REC_DATA, msg_count: int = 1) -> int:
        """Append one record and, under ``ALWAYS``, wait until it is on disk.

        Same parameters and errors as :meth:`write`; blocks the calling thread
        for the flush (use :meth:`append_async` from an event loop).
        """
        off = self.write(payload, attrs, type, msg_count)
        if self._always:
            self.sync_to(off)
        return off

    async def append_async(self, payload, attrs=b"", type: int = nat.REC_DATA,
                           msg_count: int = 1) -> int:
        """:meth:`append` for async callers: the flush runs in a worker thread
        and concurrent appends share it. Safe to call from many tasks."""
        off = self.write(payload, attrs, type, msg_count)
        await self.settle(off)
        return off

    def write_batch(self, payloads: Sequence[bytes]) -> int:
        """Append one data record (one message, no attrs) per payload, in order,
        in one call into C. Does not wait for durability.

        :return: the offset after the last record
        """
        n = len(payloads)
        if n == 0:
            return self.end_offset
        lens = [len(p) for p in payloads]
        if max(lens) > nat.MAX_PAYLOAD:
            raise errors.RecordTooLarge(f"payload over {nat.MAX_PAYLOAD} bytes")
        joined = b"".join(payloads)
        cjoined = nat.from_buffer(joined)
        clens = nat.lengths_array(lens)
        with self._lock:
            if self._closed:
                raise errors.LogClosedError(f"log {self.directory} is closed")
            i = byte = 0
            seg = self._active
            while True:
                done, end, full = seg.native.append_batch(cjoined + byte, clens + i, n - i)
                byte += sum(lens[i:i + done])
                i += done
                if not full:
                    break
                seg = self._roll(nat.record_size(0, lens[i]))
            off = seg.base + end - HEADER
            self._written = off
            return off

    def append_batch(self, payloads: Sequence[bytes]) -> int:
        """:meth:`write_batch`, then wait for durability under ``ALWAYS``."""
        off = self.write_batch(payloads)
        if self._always:
            self.sync_to(off)
        return off

    async def append_batch_async(self, payloads: Sequence[bytes]) -> int:
        """:meth:`append_batch` for async callers."""
        off = self.write_batch(payloads)
        await self.settle(off)
        return off

    def _roll(self, record_size: int) -> _Segment:
        """Seal the active segment and start a new one (append lock held).

        The new file is created under a temporary name, the old one sealed,
        then the new one renamed into place and the directory synced. A failure
        at any step leaves the old active segment in place and appendable
        (the append that needed the room raises); a crash at any step leaves a
        directory that opens to the same records (``*.tmp`` files are removed
        at open). An empty active segment too small for a large record is
        replaced by the rename itself, so the log never has no segment.
        """
        if record_size > nat.MAX_RECORD:
            raise errors.RecordTooLarge(f"record of {record_size} bytes exceeds {nat.MAX_RECORD}")
        active = self._active
        info = active.native.info()
        empty = info.records == 0
        base = active.base if empty else active.end_offset()
        base_msg = info.base_msg + info.messages
        capacity = max(self.config.segment_size, HEADER + record_size)
        final = os.path.join(self.directory, layout.segment_name(base))
        tmp = final + ".tmp"
        native = nat.NativeSegment.create(tmp, base, base_msg, int(time.time() * 1000),
                                          capacity, self.config.index_interval)
        _testhooks.maybe_kill("roll.created")
        try:
            with self._flush_lock:
                if not empty:
                    # Under ALWAYS the seal's flush is short (acknowledged bytes
                    # are on disk already) and must be synchronous: the next
                    # flush syncs only the new active segment. Otherwise the
                    # background flusher syncs it, off the appending thread.
                    sync = self._always
                    active.native.seal(os.path.join(self.directory, layout.index_name(active.base)),
                                       sync)
                    if not sync:
                        self._unsynced_seals.append(active)
                        _IntervalFlusher.register(self)
                _testhooks.maybe_kill("roll.sealed")
                os.replace(tmp, final)
                native.path = final
                _testhooks.maybe_kill("roll.renamed")
                layout.fsync_dir(self.directory)
        except BaseException:
            native.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _testhooks.maybe_kill("roll.synced")
        seg = _Segment(base, native)
        segments = list(self._segments)
        if empty:
            segments.pop()  # readers holding it keep their mapping until released
        segments.append(seg)
        self._view = _view_of(segments)
        self._active = seg
        return seg

    # ---- durability ----------------------------------------------------------

    def _flush(self) -> int:
        """fdatasync the active segment; return the offset now known durable.

        Segments sealed without a flush are synced first; the others were
        synced when sealed, so this covers everything written before ``target``
        was captured.
        """
        with self._flush_lock:  # a roll or close cannot swap the file meanwhile
            if self._closed:
                raise errors.LogClosedError(f"log {self.directory} is closed")
            target = self._written
            self._sync_seals()
            self._active.native.sync()
        return target

    def _sync_seals(self) -> None:
        """Sync segments sealed without a flush (flush lock held)."""
        while self._unsynced_seals:
            self._unsynced_seals[0].native.sync()
            self._unsynced_seals.pop(0)

    def _background_flush(self) -> None:
        """The shared flusher's call: sealed segments under every policy, the
        active one under ``INTERVAL``."""
        if self._closed:
            return
        if self.config.durability is Durability.INTERVAL and self._written > self._synced:
            self._note_synced(self._flush())
        elif self._unsynced_seals:
            with self._flush_lock:
                if not self._closed:
                    self._sync_seals()

    def _note_synced(self, target: int) -> None:
        with self._synced_lock:
            if target > self._synced:
                self._synced = target

    def sync(self) -> int:
        """Flush now, whatever the policy. :return: the durable offset."""
        self.sync_to(self._written)
        return self._synced

    def sync_to(self, offset: int) -> None:
        """Block until everything up to ``offset`` is on disk (group commit).

        Safe to call from any thread; concurrent callers share one flush.
        :raises StorageIOError: the flush failed (nothing past the last good
            flush counts as durable)
        """
        while self._synced < offset:
            with self._sync_cond:
                if self._synced >= offset:
                    return
                if self._sync_leader:
                    self._sync_cond.wait()
                    continue
                self._sync_leader = True
            try:
                self._note_synced(self._flush())
            finally:
                with self._sync_cond:
                    self._sync_leader = False
                    self._sync_cond.notify_all()

    async def wait_durable(self, offset: int) -> None:
        """Wait until everything up to ``offset`` is on disk, without blocking
        the event loop: one task per round runs the flush in a worker thread and
        every task waiting meanwhile rides on it (group commit)."""
        while self._synced < offset:
            pending = self._async_flush
            if pending is not None:
                await pending.wait()
                continue
            done = self._async_flush = anyio.Event()
            try:
                # let the tasks that are ready append first, so they ride on
                # this flush instead of waiting for the next one
                await anyio.lowlevel.checkpoint()
                self._note_synced(await anyio.to_thread.run_sync(self._flush))
            finally:
                self._async_flush = None
                done.set()

    async def settle(self, offset: int) -> None:
        """Wait until an append that ended at ``offset`` may be acknowledged
        under the policy: under ``ALWAYS`` until it is on disk
        (:meth:`wait_durable`, group commit); under ``INTERVAL`` and ``NEVER``
        not at all, and nothing is flushed here (the background flusher,
        resp. the OS, writes it back). Afterwards :attr:`settled_offset`
        covers ``offset``.

        :raises StorageIOError: under ``ALWAYS``, the flush failed
        :raises LogClosedError: under ``ALWAYS``, the log was closed meanwhile
        """
        if self._always:
            await self.wait_durable(offset)

    # ---- reading -----------------------------------------------------------------

    def _segment_for(self, offset: int) -> tuple[int, tuple[_Segment, ...]]:
        segments, bases = self._view  # one consistent snapshot
        if offset < bases[0]:
            raise errors.OffsetGone(offset, bases[0])
        return bisect.bisect_right(bases, offset) - 1, segments

    def check_offset(self, offset: int) -> None:
        """Raise unless ``offset`` is a record boundary of this log.

        :raises OffsetGone: before the earliest retained offset
        :raises InvalidOffset: beyond the end, or inside a record
        """
        if offset > self.end_offset or offset < 0:
            raise errors.InvalidOffset(offset, "beyond the end of the log")
        i, segments = self._segment_for(offset)
        seg = segments[i]
        if not seg.native.is_boundary(offset - seg.base + HEADER):
            raise errors.InvalidOffset(offset)

    def read(self, offset: int, max_bytes: int = DEFAULT_READ_BYTES, *,
             json: bool = False, until: int | None = None) -> ReadResult:
        """Read records from ``offset`` (a boundary this log returned).

        Payloads are gathered in C into one buffer, each record's CRC verified,
        stopping on a record boundary once ``max_bytes`` is reached (the first
        record is returned whole even when larger) and after a close record.
        In JSON mode the payloads (each one or more JSON values joined by
        ``,``) are joined by ``,``: the contents of the JSON array the store
        frames (:mod:`~unbroken_engine.protocol.framing`); empty when there are none. With ``until`` (a record boundary), nothing at or past
        it is read and ``at_end`` means "reached ``until``" (a fork's view of
        its source). Safe to call from any thread or task.

        :raises OffsetGone: before the earliest retained offset
        :raises InvalidOffset: beyond the end or not a record boundary
        :raises CorruptSegment: a record failed its CRC (its bytes are not served)
        """
        if self._closed:
            raise errors.LogClosedError(f"log {self.directory} is closed")
        if offset < 0 or offset > self.end_offset:
            raise errors.InvalidOffset(offset, "beyond the end of the log")
        stop = self.end_offset if until is None else min(until, self.end_offset)
        i, segments = self._segment_for(offset)
        # never more room than the log holds from here (payloads < records)
        buf, out = nat.new_buffer(max(0, min(max_bytes, stop - offset)))
        filled = records = messages = 0
        closed = started = False
        while True:
            seg = segments[i]
            pos = offset - seg.base + HEADER
            r = seg.native.read_into(pos, stop - seg.base + HEADER,
                                     nat.offset_pointer(out, filled), json, started)
            if r.need and records == 0 and filled == 0:
                buf, out = nat.new_buffer(r.need)
                continue
            filled += r.bytes
            records += r.records
            messages += r.messages
            started = bool(r.json_started)
            offset = seg.base + r.next - HEADER
            if r.closed:
                closed = True
                break
            if r.need or r.next < seg.native.end() or i + 1 >= len(segments) or offset >= stop:
                break
            i += 1
        at_end = offset >= (self.end_offset if until is None else stop)
        return ReadResult(memoryview(buf)[:filled], offset, records, messages, closed, at_end)

    def records(self, offset: int | None = None) -> Iterator[Record]:
        """Yield every record from ``offset`` (default: the start) to the end as
        of each step, attrs and payload copied out, CRCs verified. For recovery
        and tools; catch-up readers want :meth:`read`."""
        offset = self.start_offset if offset is None else offset
        self.check_offset(offset)
        while offset < self.end_offset:
            i, segments = self._segment_for(offset)
            seg = segments[i]
            pos = offset - seg.base + HEADER
            if pos >= seg.native.end():
                if i + 1 >= len(segments):
                    return
                offset = segments[i + 1].base
                continue
            rec = seg.native.record_at(pos)
            nxt = seg.base + rec.next - HEADER
            yield Record(offset, RecordType(rec.type), rec.msg_count, rec.attrs,
                         rec.payload, nxt)
            offset = nxt

    def find_message(self, n: int) -> tuple[int, int]:
        """Locate the ``n``-th message of the log (0-based, over its whole life).

        :return: ``(offset of the record holding it, its index within the record)``
        :raises InvalidOffset: ``n`` is not below :attr:`message_count`
        :raises OffsetGone: the message lies in a segment retention dropped
        """
        segments = self._segments
        infos = [s.native.info() for s in segments]
        if n < 0 or n >= self.message_count:
            raise errors.InvalidOffset(n, "no such message")
        if n < infos[0].base_msg:
            raise errors.OffsetGone(n, infos[0].base_msg)
        i = bisect.bisect_right([inf.base_msg for inf in infos], n) - 1
        while infos[i].messages <= n - infos[i].base_msg:
            i += 1  # segments holding no message share their base_msg
        seg = segments[i]
        pos, first = seg.native.find_msg(n - infos[i].base_msg)
        return seg.base + pos - HEADER, n - infos[i].base_msg - first

    # ---- retention and life cycle -------------------------------------------

    def drop_before(self, offset: int) -> int:
        """Retention hook: delete whole sealed segments that end at or before
        ``offset``. The active segment is never dropped. Reads before the new
        start raise :class:`OffsetGone`.

        :return: number of segments deleted
        """
        with self._lock:
            keep = list(self._segments)
            dropped = []
            while len(keep) > 1 and keep[1].base <= offset:
                dropped.append(keep.pop(0))
            if not dropped:
                return 0
            self._view = _view_of(keep)
        for seg in dropped:
            # Unlink only: readers holding the old list may still be inside the
            # mapping; it is unmapped when the last reference goes.
            for name in (layout.segment_name(seg.base), layout.index_name(seg.base)):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
        layout.fsync_dir(self.directory)
        return len(dropped)

    def close(self) -> None:
        """Flush (whatever the policy) and close every segment. Idempotent.
        Later calls raise :class:`LogClosedError`."""
        _IntervalFlusher.unregister(self)
        with self._lock, self._flush_lock:
            if self._closed:
                return
            try:
                self._sync_seals()
                self._active.native.sync()
            finally:
                self._closed = True
                for seg in self._segments:
                    seg.native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<SegmentedLog {self.directory!r} segments={len(self._segments)} "
                f"start={self.start_offset} end={self._written}>")


def _view_of(segments) -> tuple[tuple[_Segment, ...], tuple[int, ...]]:
    return tuple(segments), tuple(s.base for s in segments)


def _create_segment(directory, base: int, base_msg: int, config: LogConfig,
                    capacity: int) -> _Segment:
    path = os.path.join(directory, layout.segment_name(base))
    native = nat.NativeSegment.create(path, base, base_msg, int(time.time() * 1000),
                                      capacity, config.index_interval)
    layout.fsync_dir(directory)
    return _Segment(base, native)


def _check_lines_up(seg: _Segment, prev: _Segment | None, path) -> None:
    info = seg.native.info()
    if info.base_offset != seg.base:
        raise errors.CorruptSegment(path, 0, f"header base offset {info.base_offset} "
                                             f"does not match the file name")
    if prev is not None:
        pinfo = prev.native.info()
        if prev.end_offset() != seg.base or pinfo.base_msg + pinfo.messages != info.base_msg:
            # name the earlier file: it ends short of where its successor starts
            raise errors.CorruptSegment(prev.native.path, pinfo.end,
                                        "segment does not follow the previous one")


class _IntervalFlusher:
    """One daemon thread that flushes every ``INTERVAL`` log on its period."""

    _logs: "weakref.WeakSet[SegmentedLog]" = weakref.WeakSet()
    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _wake = threading.Event()

    @classmethod
    def register(cls, log: SegmentedLog) -> None:
        with cls._lock:
            cls._logs.add(log)
            if cls._thread is None:
                cls._thread = threading.Thread(target=cls._run, name="unbroken-flusher",
                                               daemon=True)
                cls._thread.start()

    @classmethod
    def unregister(cls, log: SegmentedLog) -> None:
        with cls._lock:
            cls._logs.discard(log)

    @classmethod
    def _run(cls) -> None:
        while True:
            with cls._lock:
                logs = list(cls._logs)
                if not logs:
                    cls._thread = None  # the next register() starts a new one
                    return
            period = min((lg.config.flush_interval for lg in logs
                           if lg.config.durability is Durability.INTERVAL), default=0.05)
            for lg in logs:
                try:
                    lg._background_flush()
                except errors.UnbrokenError:
                    pass  # reported by the next ALWAYS/sync call; never acked
            del logs
            time.sleep(period)
