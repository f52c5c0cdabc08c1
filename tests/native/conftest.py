"""Fixtures for the native-layer tests: files we can damage on purpose.

LevelDB's ``log_test.cc`` writes records, then pokes the bytes (``IncrementByte``,
``ShrinkSize``, ``FixChecksum``) and asserts what the reader reports. We do the
same against real files:

* ``segment_bytes(records)`` builds one segment file through
  ``_native.NativeSegment.create``/``append`` and closes it;
* ``log_files(payloads, ...)`` builds a log directory through ``SegmentedLog``
  and closes it.

Both hand back :class:`DamageableFile` objects whose verbs are the damage a
crash or a bad disk does: ``flip_byte(pos)``, ``truncate(n)``,
``zero_fill(pos, n)``, ``set_u32``/``set_u16``/``set_u8`` and ``fix_crc(record_pos)``
(recompute a record's CRC after its length was changed, so the damage is "a
valid-CRC record with a wrong length" and only the length checks can catch it).

Tests run with ``--import-mode=importlib``, so helpers are handed out as
fixtures rather than imported from this module.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unbroken_engine import _native as nat
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog

HEADER = nat.SEG_HEADER_SIZE
REC_HEADER = nat.REC_HEADER_SIZE

# Record header fields (cext/ub_format.h): offsets inside a record.
CRC_AT, PAYLOAD_LEN_AT, ATTRS_LEN_AT, TYPE_AT, FLAGS_AT, MSG_COUNT_AT = 0, 4, 8, 10, 11, 12


class DamageableFile:
    """One file on disk plus the verbs that damage it (all positions absolute)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"<DamageableFile {self.path.name} {self.size} bytes>"

    # ---- looking -------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def read(self, pos: int = 0, n: int | None = None) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(pos)
            return f.read() if n is None else f.read(n)

    def u32(self, pos: int) -> int:
        return struct.unpack("<I", self.read(pos, 4))[0]

    def u16(self, pos: int) -> int:
        return struct.unpack("<H", self.read(pos, 2))[0]

    def data_end(self) -> int:
        """Position after the last non-zero byte (the end of a preallocated file's data)."""
        data = self.read()
        return len(data.rstrip(b"\0"))

    # ---- damaging ------------------------------------------------------------
    def write_at(self, pos: int, data: bytes) -> None:
        assert 0 <= pos and pos + len(data) <= self.size, "damage must stay inside the file"
        with open(self.path, "r+b") as f:
            f.seek(pos)
            f.write(data)

    def flip_byte(self, pos: int, xor: int = 0xFF) -> None:
        """XOR the byte at ``pos`` with ``xor`` (non-zero: the byte always changes)."""
        assert xor & 0xFF
        old = self.read(pos, 1)[0]
        self.write_at(pos, bytes([old ^ xor]))

    def truncate(self, n: int) -> None:
        """Cut ``n`` bytes off the end of the file."""
        assert 0 <= n <= self.size
        os.truncate(self.path, self.size - n)

    def truncate_to(self, size: int) -> None:
        assert 0 <= size <= self.size
        os.truncate(self.path, size)

    def zero_fill(self, pos: int, n: int) -> None:
        """Overwrite ``n`` bytes from ``pos`` with zeros (clamped to the file)."""
        n = min(n, self.size - pos)
        self.write_at(pos, bytes(n))

    def set_u8(self, pos: int, v: int) -> None:
        self.write_at(pos, struct.pack("<B", v))

    def set_u16(self, pos: int, v: int) -> None:
        self.write_at(pos, struct.pack("<H", v))

    def set_u32(self, pos: int, v: int) -> None:
        self.write_at(pos, struct.pack("<I", v))

    def fix_crc(self, record_pos: int) -> int:
        """Store the masked CRC32C the record at ``record_pos`` needs for its
        *current* header: over bytes [4, 16 + attrs + payload) of the record,
        little-endian at byte 0. Where the (damaged) length reaches past the
        end of the file the CRC covers what is there: the decoder never gets
        to the CRC then, so its value does not matter. Returns the new CRC."""
        payload_len = self.u32(record_pos + PAYLOAD_LEN_AT)
        attrs_len = self.u16(record_pos + ATTRS_LEN_AT)
        end = min(record_pos + REC_HEADER + attrs_len + payload_len, self.size)
        covered = self.read(record_pos + 4, end - record_pos - 4)
        masked = nat.crc_mask(nat.crc32c(covered))
        self.set_u32(record_pos + CRC_AT, masked)
        return masked


# ---- one native segment -------------------------------------------------------

@dataclass
class SegmentBytes(DamageableFile):
    """A segment file built by ``NativeSegment`` with its records' positions."""

    path: Path
    idx_path: Path
    positions: list[int] = field(default_factory=list)  # start of each record
    ends: list[int] = field(default_factory=list)       # end of each record
    records: list[tuple[int, int, bytes, bytes]] = field(default_factory=list)
    capacity: int = 0
    index_interval: int = 64

    def __post_init__(self):
        DamageableFile.__init__(self, self.path)

    def open(self, mode: int = nat.OPEN_ACTIVE, capacity: int | None = None):
        """Reopen it: ``(NativeSegment, ScanReport)``."""
        return nat.NativeSegment.open(self.path, self.idx_path, mode,
                                      capacity or self.capacity, self.index_interval)


@pytest.fixture
def segment_bytes(tmp_path):
    """Factory: ``segment_bytes(records, capacity=4096, index_interval=64,
    sealed=False)`` builds one segment file and closes it.

    ``records`` are payload ``bytes`` or ``(type, msg_count, attrs, payload)``.
    With ``sealed=True`` the segment is sealed (file cut to its data, ``.idx``
    written) before it is closed.
    """
    counter = iter(range(1_000_000))

    def build(records, capacity=4096, index_interval=64, sealed=False, base=0):
        n = next(counter)
        path = tmp_path / f"seg{n}" / layout.segment_name(base)
        path.parent.mkdir()
        idx_path = path.with_suffix(".idx")
        seg = nat.NativeSegment.create(path, base, 0, 1_700_000_000_000, capacity,
                                       index_interval)
        out = SegmentBytes(path, idx_path, capacity=capacity, index_interval=index_interval)
        for r in records:
            typ, count, attrs, payload = (nat.REC_DATA, 1, b"", r) if isinstance(r, bytes) else r
            pos = seg.end()
            end = seg.append(typ, count, attrs, payload)
            assert end > 0, "test records must fit the segment"
            out.positions.append(pos)
            out.ends.append(end)
            out.records.append((typ, count, attrs, payload))
        if sealed:
            seg.seal(idx_path)
        seg.close()
        return out

    return build


# ---- a whole log directory -----------------------------------------------------

@dataclass(frozen=True)
class Rec:
    """A record the test wrote: where it starts and ends in the log."""

    offset: int
    end: int
    payload: bytes
    msg_count: int = 1


class LogFiles:
    """A closed log directory, what was written to it, and its files."""

    def __init__(self, directory: Path, config: LogConfig, records: list[Rec]):
        self.dir = directory
        self.config = config
        self.records = records

    @property
    def end_offset(self) -> int:
        return self.records[-1].end if self.records else 0

    def bases(self) -> list[int]:
        return layout.list_segments(self.dir)

    def seg(self, i: int) -> DamageableFile:
        """Segment file ``i`` in log order (``-1`` is the active segment)."""
        return DamageableFile(self.dir / layout.segment_name(self.bases()[i]))

    def idx_path(self, i: int) -> Path:
        return self.dir / layout.index_name(self.bases()[i])

    def in_segment(self, i: int) -> list[Rec]:
        bases = self.bases()
        lo = bases[i]
        hi = bases[i + 1] if i + 1 < len(bases) and i != -1 else float("inf")
        return [r for r in self.records if lo <= r.offset < hi]

    def locate(self, offset: int) -> tuple[DamageableFile, int]:
        """The segment file holding ``offset`` and its byte position in that file."""
        bases = self.bases()
        i = max(j for j, b in enumerate(bases) if b <= offset)
        return self.seg(i), offset - bases[i] + HEADER

    def open(self, **kw) -> SegmentedLog:
        return SegmentedLog.open(self.dir, self.config, **kw)


@pytest.fixture
def log_files(tmp_path):
    """Factory: ``log_files(payloads, segment_size=4096, index_interval=64,
    msg_counts=None)`` appends each payload as one record to a new log, closes
    it and returns a :class:`LogFiles`."""
    counter = iter(range(1_000_000))

    def build(payloads, segment_size=4096, index_interval=64, msg_counts=None):
        config = LogConfig(segment_size=segment_size, index_interval=index_interval,
                           durability=Durability.NEVER)
        directory = tmp_path / f"log{next(counter)}"
        records = []
        with SegmentedLog.open(directory, config) as log:
            for i, p in enumerate(payloads):
                k = 1 if msg_counts is None else msg_counts[i]
                end = log.write(p, msg_count=k)
                records.append(Rec(end - len(p) - REC_HEADER, end, p, k))
        return LogFiles(directory, config, records)

    return build


@pytest.fixture
def assert_log_holds():
    """``assert_log_holds(log, recs)``: the log holds exactly these records,
    record by record (``records()``) and through one catch-up read."""

    def check(log: SegmentedLog, recs: list[Rec]) -> None:
        got = [(r.offset, r.next_offset, r.payload, r.msg_count) for r in log.records()]
        assert got == [(r.offset, r.end, r.payload, r.msg_count) for r in recs]
        end = recs[-1].end if recs else log.start_offset
        assert log.end_offset == end
        result = log.read(log.start_offset, max_bytes=1 << 24)
        assert bytes(result.data) == b"".join(r.payload for r in recs)
        assert result.next_offset == end and result.at_end

    return check
