"""MemoryLog: a pure-Python log with the same offsets and reads as SegmentedLog.

The in-memory store keeps its streams in these. Offsets follow the on-disk
arithmetic exactly (a record advances the offset by its framed size: header +
attrs + payload), so the memory and file stores hand out the same offsets for
the same appends and a model test can compare them answer for answer.
"""
from __future__ import annotations

import bisect
from typing import Iterator, Sequence

from .. import _native as nat
from .. import errors
from .paging import part_size
from .segmented import DEFAULT_READ_BYTES, ReadResult, Record, RecordType

_CLOSERS = (RecordType.DATA_CLOSE, RecordType.CLOSE)


class MemoryLog:
    """A log held in a Python list. Same contract as
    :class:`~unbroken_engine.log.segmented.SegmentedLog` for everything a store uses;
    durability calls return at once (there is no disk)."""

    def __init__(self, base_offset: int = 0):
        self._offsets: list[int] = []  # start offset of each record
        self._records: list[Record] = []
        self._start = base_offset
        self._end = base_offset
        self._messages = 0
        self._msg_before: list[int] = []  # messages before each record
        self._closed = False

    # -- properties (as SegmentedLog) --
    start_offset = property(lambda self: self._start)
    end_offset = property(lambda self: self._end)
    durable_offset = property(lambda self: self._end)
    settled_offset = property(lambda self: self._end)
    message_count = property(lambda self: self._messages)

    @property
    def last_type(self) -> RecordType | None:
        return self._records[-1].type if self._records else None

    @property
    def is_closed(self) -> bool:
        return self.last_type in _CLOSERS

    def _check_open(self) -> None:
        if self._closed:
            raise errors.LogClosedError("memory log is closed")

    # -- appending --
    def write(self, payload, attrs=b"", type: int = nat.REC_DATA, msg_count: int = 1) -> int:
        """Append one record; :return: the offset after it."""
        self._check_open()
        payload, attrs = bytes(payload), bytes(attrs)
        if len(payload) > nat.MAX_PAYLOAD or len(attrs) > nat.MAX_ATTRS:
            raise errors.RecordTooLarge("record over the format's limits")
        start = self._end
        end = start + nat.record_size(len(attrs), len(payload))
        self._offsets.append(start)
        self._msg_before.append(self._messages)
        self._records.append(Record(start, RecordType(type), msg_count, attrs, payload, end))
        self._end = end
        self._messages += msg_count
        return end

    append = write

    async def append_async(self, payload, attrs=b"", type: int = nat.REC_DATA,
                           msg_count: int = 1) -> int:
        return self.write(payload, attrs, type, msg_count)

    def write_batch(self, payloads: Sequence[bytes]) -> int:
        for p in payloads:
            self.write(p)
        return self._end

    append_batch = write_batch

    async def wait_durable(self, offset: int) -> None:
        return None

    async def settle(self, offset: int) -> None:
        return None

    def sync(self) -> int:
        return self._end

    # -- reading --
    def _index_of(self, offset: int) -> int:
        if offset < self._start:
            raise errors.OffsetGone(offset, self._start)
        if offset < 0 or offset > self._end:
            raise errors.InvalidOffset(offset, "beyond the end of the log")
        if offset == self._end:
            return len(self._records)
        i = bisect.bisect_left(self._offsets, offset)
        if i >= len(self._offsets) or self._offsets[i] != offset:
            raise errors.InvalidOffset(offset)
        return i

    def check_offset(self, offset: int) -> None:
        """Raise unless ``offset`` is a record boundary of this log."""
        self._check_open()
        self._index_of(offset)

    def read(self, offset: int, max_bytes: int = DEFAULT_READ_BYTES, *,
             json: bool = False, until: int | None = None) -> ReadResult:
        """Same contract as :meth:`SegmentedLog.read`."""
        self._check_open()
        i = self._index_of(offset)
        stop = self._end if until is None else min(until, self._end)
        parts: list[bytes] = []
        size = records = messages = 0
        closed = False
        budget = max_bytes
        while i < len(self._records) and self._offsets[i] < stop:
            rec = self._records[i]
            need = part_size(rec.payload, json, bool(parts))
            if not records:
                budget = max(budget, need)  # the first record comes whole (C: its buffer grows)
            if size + need > budget:
                break
            if rec.payload or not json:
                parts.append(rec.payload)
            size += need
            records += 1
            messages += rec.msg_count
            offset = rec.next_offset
            i += 1
            if rec.type in _CLOSERS:
                closed = True
                break
        data = (b"," if json else b"").join(p for p in parts if p)
        return ReadResult(memoryview(data), offset, records, messages, closed, offset >= stop)

    def records(self, offset: int | None = None) -> Iterator[Record]:
        """Every record from ``offset`` (default: the start)."""
        i = self._index_of(self._start if offset is None else offset)
        while i < len(self._records):
            yield self._records[i]
            i += 1

    def find_message(self, n: int) -> tuple[int, int]:
        """``(offset of the record holding message n, index within it)``."""
        if n < 0 or n >= self._messages:
            raise errors.InvalidOffset(n, "no such message")
        i = bisect.bisect_right(self._msg_before, n) - 1
        while self._records[i].msg_count == 0 or n - self._msg_before[i] >= self._records[i].msg_count:
            i += 1
        return self._offsets[i], n - self._msg_before[i]

    def close(self) -> None:
        self._closed = True
