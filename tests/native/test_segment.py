"""Segments, recovery and the sparse index, LevelDB ``log_test.cc`` style.

Each test writes a log (or one segment), closes it, damages the files the way a
crash or a bad disk would (the verbs come from ``conftest.py``), reopens, and
asserts what a user relies on:

* a torn tail of the *active* segment is cut, and everything before it reads
  back byte for byte;
* damage before valid data, or anywhere in a *sealed* segment, is reported as
  ``CorruptSegment(path, position, reason)`` -- never dropped silently, never
  served;
* offsets are record boundaries: anything else is ``InvalidOffset``;
* ``find_message`` agrees with a plain Python model (a ``bisect`` oracle).

The rules under test are in the top comment of ``cext/ub_segment.c`` and in
``docs/format.md`` ("Recovery").
"""
from __future__ import annotations

import bisect
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.errors import CorruptSegment, InvalidOffset, LogClosedError, RecordTooLarge
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog

HEADER = nat.SEG_HEADER_SIZE
H = nat.REC_HEADER_SIZE
RECORD_DAMAGE = {"checksum mismatch", "bad record length", "bad record type"}


def payloads(n, size=100, seed=0):
    """Distinct payloads with no zero byte, so zeroed bytes never look like data."""
    return [bytes([(seed + i) % 255 + 1]) * size for i in range(n)]


def varied_payloads(n, seed, max_size=150):
    rng = random.Random(seed)
    return [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, max_size)))
            for _ in range(n)]


class _R:
    """A record as the tests expect it (same fields as conftest's ``Rec``)."""

    __slots__ = ("offset", "end", "payload", "msg_count")

    def __init__(self, offset, end, payload, msg_count=1):
        self.offset, self.end, self.payload, self.msg_count = offset, end, payload, msg_count


def written(end, payload, msg_count=1) -> _R:
    """The record a ``write(payload)`` that returned ``end`` appended."""
    return _R(end - len(payload) - H, end, payload, msg_count)


def corrupt_at(exc_info, path, position, reason=None):
    exc = exc_info.value
    assert Path(exc.path) == Path(path)
    assert exc.position == position
    if reason is not None:
        assert exc.reason == reason, exc


def append_survives_reopen(lf, log, expected, assert_log_holds):
    """Append after recovery; the new record and all before it survive a reopen."""
    new = b"after recovery" * 3
    recs = list(expected) + [written(log.write(new), new)]
    log.close()
    with lf.open() as again:
        assert again.recovery.bytes_cut == 0
        assert_log_holds(again, recs)


# =============================================================================
# The active segment: torn tails are cut, damage before valid data is reported
# =============================================================================

@pytest.mark.parametrize("keep", [1, 5, 15, 16, 17, 60, 115])
def test_truncated_trailing_record_is_ignored(log_files, assert_log_holds, keep):
    """The file ends inside the last record (its write never fully landed)."""
    lf = log_files(payloads(20))
    last = lf.records[-1]
    f, pos = lf.locate(last.offset)
    f.truncate_to(pos + keep)
    torn = len(f.read(pos).rstrip(b"\0"))  # bytes_cut counts up to the last non-zero byte
    log = lf.open()
    assert log.recovery.bytes_cut == torn > 0
    assert log.recovery.active_records == len(lf.records) - 1
    assert log.end_offset == last.offset
    assert_log_holds(log, lf.records[:-1])
    append_survives_reopen(lf, log, lf.records[:-1], assert_log_holds)


@pytest.mark.parametrize("keep", [4, 12, 16, 50])
def test_torn_trailing_record_is_ignored(log_files, assert_log_holds, keep):
    """The head of the last record landed, its tail is still preallocated zeros."""
    lf = log_files(payloads(20))
    last = lf.records[-1]
    f, pos = lf.locate(last.offset)
    f.zero_fill(pos + keep, last.end - last.offset - keep)
    torn = len(f.read(pos).rstrip(b"\0"))
    log = lf.open()
    assert log.recovery.bytes_cut == torn > 0
    assert_log_holds(log, lf.records[:-1])
    append_survives_reopen(lf, log, lf.records[:-1], assert_log_holds)


@pytest.mark.parametrize("copied", [40, 90])
def test_append_cut_short_is_torn_even_if_its_payload_looks_like_records(
        log_files, assert_log_holds, copied):
    """A process killed inside an append leaves the header, part of the payload
    and a zero CRC (written last). Its payload may carry bytes that decode as a
    valid record (a stream of exported segments does): that is not data after
    the damage, so the append is cut rather than the log refused."""
    embedded = nat.encode_record(nat.REC_DATA, b"an inner record " * 2)
    payload = b"x" * 8 + embedded + b"y" * 60
    lf = log_files(payloads(20) + [payload])
    last = lf.records[-1]
    f, pos = lf.locate(last.offset)
    f.write_at(pos, b"\0\0\0\0")  # the CRC had not been written yet
    f.zero_fill(pos + 16 + copied, last.end - last.offset - 16 - copied)
    log = lf.open()
    assert log.recovery.bytes_cut > 0
    assert_log_holds(log, lf.records[:-1])
    append_survives_reopen(lf, log, lf.records[:-1], assert_log_holds)


def test_complete_record_with_damaged_length_is_not_mistaken_for_a_cut_append(log_files):
    """Same shape, but the record was complete (its CRC is there) and its length
    now claims the valid records after it: reported, never cut."""
    lf = log_files(payloads(20))
    rec = lf.records[10]
    f, pos = lf.locate(rec.offset)
    f.set_u32(pos + 4, lf.records[-1].end - rec.offset)  # swallow the rest
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, pos)


@pytest.mark.parametrize("zeroed", [1, 3])
def test_zero_fill_tail_is_skipped(log_files, assert_log_holds, zeroed):
    """Whole trailing records of zeros are the normal end of a preallocated file."""
    lf = log_files(payloads(20))
    first_gone = lf.records[-zeroed]
    f, pos = lf.locate(first_gone.offset)
    f.zero_fill(pos, lf.records[-1].end - first_gone.offset)
    log = lf.open()
    assert log.recovery.bytes_cut == 0  # nothing but zeros: nothing was cut
    assert_log_holds(log, lf.records[:-zeroed])
    append_survives_reopen(lf, log, lf.records[:-zeroed], assert_log_holds)


def test_garbage_after_the_last_record_is_cut(log_files, assert_log_holds):
    """A stray non-zero byte in the preallocated tail is a torn tail, not data."""
    lf = log_files(payloads(20))
    f, pos = lf.locate(lf.end_offset)
    f.flip_byte(pos + 300, 0x5A)
    log = lf.open()
    assert log.recovery.bytes_cut == 301
    assert_log_holds(log, lf.records)
    assert f.data_end() == pos  # the stray byte was zeroed


@pytest.mark.parametrize("where", ["payload", "crc", "msg_count", "payload_len_low_bit"])
def test_checksum_mismatch_before_valid_data_is_reported(log_files, where):
    lf = log_files(payloads(20))
    rec = lf.records[3]
    f, pos = lf.locate(rec.offset)
    at, xor = {"payload": (pos + H + 10, 0xFF), "crc": (pos + 1, 0x01),
               "msg_count": (pos + 12, 0x02), "payload_len_low_bit": (pos + 4, 0x01)}[where]
    f.flip_byte(at, xor)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, pos, "checksum mismatch")
    # the damage is reported, not repaired behind the user's back
    with pytest.raises(CorruptSegment):
        lf.open()


def test_zeroed_record_before_valid_data_is_reported(log_files):
    """A hole of zeros (a page that never reached the disk) with data after it."""
    lf = log_files(payloads(20))
    rec = lf.records[7]
    f, pos = lf.locate(rec.offset)
    f.zero_fill(pos, rec.end - rec.offset)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, pos, "zero header")


@pytest.mark.parametrize("type_byte, flags", [(0x07, 0), (0, 0), (nat.REC_DATA, 0x01)])
def test_bad_type_before_valid_data_is_reported(log_files, type_byte, flags):
    lf = log_files(payloads(20))
    f, pos = lf.locate(lf.records[2].offset)
    f.set_u8(pos + 10, type_byte)
    f.set_u8(pos + 11, flags)
    f.fix_crc(pos)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, pos, "bad record type")


def _set_length(f, pos, how):
    old = f.u32(pos + 4)
    new = {"huge": nat.MAX_PAYLOAD + 1, "past_file_end": f.size,
           "longer": old + 3, "shorter": old - 3}[how]
    f.set_u32(pos + 4, new)
    f.fix_crc(pos)


@pytest.mark.parametrize("how", ["huge", "past_file_end"])
def test_bad_length_at_end_is_ignored(log_files, assert_log_holds, how):
    """The last record claims more bytes than can exist: torn, cut."""
    lf = log_files(payloads(20))
    last = lf.records[-1]
    f, pos = lf.locate(last.offset)
    _set_length(f, pos, how)
    log = lf.open()
    assert log.recovery.bytes_cut > 0
    assert_log_holds(log, lf.records[:-1])
    append_survives_reopen(lf, log, lf.records[:-1], assert_log_holds)


@pytest.mark.parametrize("how", ["huge", "past_file_end", "longer", "shorter"])
def test_bad_length_before_valid_data_is_reported(log_files, how):
    """A valid-CRC record with a wrong length in front of good records."""
    lf = log_files(payloads(20))
    rec = lf.records[4]
    f, pos = lf.locate(rec.offset)
    _set_length(f, pos, how)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    assert Path(exc.value.path) == f.path
    if how in ("huge", "past_file_end"):
        corrupt_at(exc, f.path, pos, "bad record length")
    else:
        # The CRC was fixed, so the record itself passes; the scan notices at
        # the misaligned position right after it, still before the good data.
        assert rec.end - rec.offset - 3 <= exc.value.position - pos <= rec.end - rec.offset + 3
        assert exc.value.reason in RECORD_DAMAGE | {"zero header"}


@pytest.mark.parametrize("damage", ["checksum", "zero_hole", "bad_length"])
def test_repair_mode_cuts_at_the_bad_record(log_files, assert_log_holds, damage):
    lf = log_files(payloads(20))
    rec = lf.records[6]
    f, pos = lf.locate(rec.offset)
    if damage == "checksum":
        f.flip_byte(pos + H + 30)
    elif damage == "zero_hole":
        f.zero_fill(pos, rec.end - rec.offset)
    else:
        _set_length(f, pos, "huge")
    with pytest.raises(CorruptSegment):
        lf.open()
    log = lf.open(repair=True)
    assert log.recovery.bytes_cut > 0
    assert log.end_offset == rec.offset
    assert_log_holds(log, lf.records[:6])
    append_survives_reopen(lf, log, lf.records[:6], assert_log_holds)


def test_repair_mode_on_an_intact_log_changes_nothing(log_files, assert_log_holds):
    lf = log_files(payloads(20))
    with lf.open(repair=True) as log:
        assert log.recovery.bytes_cut == 0
        assert_log_holds(log, lf.records)


# =============================================================================
# Sealed segments: strict, and CRC-checked on every read
# =============================================================================

def multi_segment_log(log_files, n=100, **kw):
    lf = log_files(payloads(n), **kw)
    assert len(lf.bases()) >= 3
    return lf


def test_sealed_checksum_mismatch_is_reported_when_read(log_files):
    lf = multi_segment_log(log_files)
    sealed = lf.in_segment(0)
    bad = sealed[10]
    f, pos = lf.locate(bad.offset)
    f.flip_byte(pos + H + 50)
    with lf.open() as log:  # the saved .idx is trusted at open
        for reader in (lambda: log.read(bad.offset, max_bytes=1),
                       lambda: log.read(log.start_offset, max_bytes=1 << 20),
                       lambda: list(log.records())):
            with pytest.raises(CorruptSegment) as exc:
                reader()
            corrupt_at(exc, f.path, pos, "checksum mismatch")
        # every other record still reads back exactly
        for r in lf.records:
            if r is not bad:
                assert bytes(log.read(r.offset, max_bytes=1).data) == r.payload


@pytest.mark.parametrize("index", ["deleted", "garbage"])
def test_sealed_checksum_mismatch_without_index_fails_open(log_files, index):
    """Without a trusted index the rebuild scan is strict: damage fails the open."""
    lf = multi_segment_log(log_files)
    bad = lf.in_segment(1)[5]
    f, pos = lf.locate(bad.offset)
    f.flip_byte(pos + H + 1)
    if index == "deleted":
        os.unlink(lf.idx_path(1))
    else:
        lf.idx_path(1).write_bytes(random.Random(4).randbytes(200))
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, pos, "checksum mismatch")
    with pytest.raises(CorruptSegment):
        lf.open(repair=True)  # repair is for the active segment only


@pytest.mark.parametrize("cut", ["one_byte", "mid_record", "whole_record", "to_header"])
@pytest.mark.parametrize("index", ["kept", "deleted"])
def test_truncated_sealed_segment_is_reported(log_files, cut, index):
    """A sealed segment never comes back silently shorter."""
    lf = multi_segment_log(log_files)
    sealed = lf.in_segment(0)
    f = lf.seg(0)
    last = sealed[-1]
    n = {"one_byte": 1, "mid_record": 50, "whole_record": last.end - last.offset,
         "to_header": f.size - HEADER}[cut]
    f.truncate(n)
    if index == "deleted":
        os.unlink(lf.idx_path(0))
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    if cut in ("one_byte", "mid_record"):
        corrupt_at(exc, f.path, last.offset + HEADER, "truncated record")
    else:  # cut on a record boundary: the next segment no longer lines up
        assert exc.value.path in (str(f.path), str(lf.seg(1).path))
        assert "does not follow the previous one" in exc.value.reason


def test_missing_middle_segment_is_reported(log_files):
    lf = multi_segment_log(log_files)
    os.unlink(lf.seg(1).path)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    assert "does not follow the previous one" in exc.value.reason


@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("at", [0, 7, 8, 12, 16, 24, 32, 40, 59, 60, 63])
def test_segment_header_damage_is_reported(log_files, which, at):
    lf = multi_segment_log(log_files)
    f = lf.seg(which)
    f.flip_byte(at, 0x01)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, 0, "bad segment header")


@pytest.mark.parametrize("which", [1, -1])
def test_zeroed_segment_header_is_reported(log_files, which):
    """Records behind a header of zeros: not an unwritten file, so not removed."""
    lf = multi_segment_log(log_files)
    f = lf.seg(which)
    f.zero_fill(0, HEADER)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, 0, "zero segment header")


def _rewrite_header_u64(f, at, value):
    f.write_at(at, struct.pack("<Q", value))
    f.set_u32(60, nat.crc_mask(nat.crc32c(f.read(0, 60))))


def test_header_base_offset_must_match_the_file_name(log_files):
    lf = multi_segment_log(log_files)
    f = lf.seg(1)
    _rewrite_header_u64(f, 16, lf.bases()[1] + 1)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    assert Path(exc.value.path) == f.path
    assert "does not match the file name" in exc.value.reason


def test_header_base_msg_must_follow_the_previous_segment(log_files):
    lf = multi_segment_log(log_files)
    f = lf.seg(2)
    _rewrite_header_u64(f, 24, len(lf.in_segment(0)) + len(lf.in_segment(1)) + 1)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    assert "does not follow the previous one" in exc.value.reason


# =============================================================================
# Index files: anything doubtful is rebuilt, and the data is the same
# =============================================================================

def _damage_index(lf, i, how):
    p = lf.idx_path(i)
    data = p.read_bytes()
    if how == "deleted":
        p.unlink()
    elif how == "garbage":
        p.write_bytes(random.Random(i).randbytes(len(data)))
    elif how == "empty":
        p.write_bytes(b"")
    elif how == "truncated":
        p.write_bytes(data[:-3])
    elif how == "flipped_entry":
        p.write_bytes(damaged(data, len(data) - 5, bytes([data[-5] ^ 0x10])))
    elif how == "flipped_header":
        p.write_bytes(damaged(data, 20, bytes([data[20] ^ 0x01])))
    elif how == "swapped":  # each segment gets the other one's index
        if i == 0:
            other = lf.idx_path(1)
            a, b = p.read_bytes(), other.read_bytes()
            p.write_bytes(b)
            other.write_bytes(a)
    else:
        raise AssertionError(how)


def damaged(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


@pytest.mark.parametrize("how", ["deleted", "garbage", "empty", "truncated", "flipped_entry",
                                 "flipped_header", "swapped"])
def test_missing_or_bad_index_is_rebuilt(log_files, assert_log_holds, how):
    sizes = varied_payloads(150, seed=3)
    lf = log_files(sizes, index_interval=128, msg_counts=[1 + i % 3 for i in range(150)])
    assert len(lf.bases()) >= 4
    for i in (0, 1):
        _damage_index(lf, i, how)
    with lf.open() as log:
        assert log.recovery.indexes_rebuilt == 2
        assert_log_holds(log, lf.records)
        check_find_message(log, lf.records)
        check_boundaries(log, lf.records, sample=400)
    with lf.open() as log:  # rebuilt indexes were saved: no rebuild the second time
        assert log.recovery.indexes_rebuilt == 0
        assert_log_holds(log, lf.records)


# =============================================================================
# Trailing segment files that were created but never written
# =============================================================================

@pytest.mark.parametrize("size", ["zeros", "empty", "short_zeros"])
def test_unwritten_trailing_segment_is_removed(log_files, assert_log_holds, size):
    lf = multi_segment_log(log_files)
    f = lf.seg(-1)
    kept = [r for r in lf.records if r.offset < lf.bases()[-1]]
    if size == "zeros":
        f.zero_fill(0, f.size)
    else:
        f.truncate_to(0 if size == "empty" else 40)
        f.zero_fill(0, 40)
    n_before = len(lf.bases())
    log = lf.open()
    assert log.recovery.empty_segments_removed == 1
    assert log.recovery.segments == n_before - 1
    assert not f.path.exists()
    assert_log_holds(log, kept)
    # the segment before it is the active one now: appends go on and roll
    more = payloads(50, seed=77)
    recs = list(kept)
    for p in more:
        recs.append(written(log.write(p), p))
    log.close()
    with lf.open() as again:
        assert_log_holds(again, recs)
        check_find_message(again, recs)


def test_zeroed_middle_segment_is_not_removed(log_files):
    lf = multi_segment_log(log_files)
    f = lf.seg(1)
    f.zero_fill(0, f.size)
    with pytest.raises(CorruptSegment) as exc:
        lf.open()
    corrupt_at(exc, f.path, 0, "zero segment header")
    assert f.path.exists()


# =============================================================================
# Random damage: reported, or a clean prefix -- never different bytes
# =============================================================================

@pytest.fixture(scope="module")
def pristine_log(tmp_path_factory):
    """A closed 3-segment log (an index entry at every record) and its records."""
    d = tmp_path_factory.mktemp("pristine") / "log"
    config = LogConfig(segment_size=4096, index_interval=64, durability=Durability.NEVER)
    recs = []
    rng = random.Random(11)
    with SegmentedLog.open(d, config) as log:
        # Every record is >= index_interval bytes, so each has its own index
        # entry and no boundary check hops over a damaged header (that case
        # is test_damaged_length_in_sealed_segment_is_reported_at_that_record).
        for _ in range(110):
            p = rng.randbytes(rng.randrange(48, 120))
            end = log.write(p)
            recs.append((end - len(p) - H, end, p))
    return d, config, recs


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([0, 1, -1]), kind=st.sampled_from(["header", "record", "tail"]),
       xor=st.integers(1, 255), data=st.data())
def test_a_flipped_byte_is_reported_or_cut_never_served(pristine_log, which, kind, xor, data):
    src, config, recs = pristine_log
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "log"
        shutil.copytree(src, d)
        bases = layout.list_segments(d)
        seg_i = range(len(bases))[which]
        path = d / layout.segment_name(bases[seg_i])
        active = seg_i == len(bases) - 1
        mine = [r for r in recs if r[0] >= bases[seg_i]
                and (active or r[0] < bases[seg_i + 1])]
        data_end = HEADER + mine[-1][1] - bases[seg_i]
        if kind == "tail" and not active:
            kind = "record"  # a sealed segment has no tail
        if kind == "header":
            at = data.draw(st.integers(0, HEADER - 1), label="at")
        elif kind == "record":
            o, e, _ = mine[data.draw(st.integers(0, len(mine) - 1), label="record")]
            at = o - bases[seg_i] + HEADER + data.draw(st.integers(0, e - o - 1), label="byte")
        else:
            at = data.draw(st.integers(data_end, path.stat().st_size - 1), label="at")
        event(f"{'active' if active else 'sealed'} {kind}")
        with open(path, "r+b") as fh:
            fh.seek(at)
            b = fh.read(1)[0]
            fh.seek(at)
            fh.write(bytes([b ^ xor]))
        off = bases[seg_i] + at - HEADER  # log offset of the damaged byte
        hit = [r for r in recs if r[0] <= off < r[1]]  # the damaged record, if any
        bad_pos = hit[0][0] - bases[seg_i] + HEADER if hit else None

        if kind == "header":
            with pytest.raises(CorruptSegment) as exc:
                SegmentedLog.open(d, config)
            corrupt_at(exc, path, 0, "bad segment header")
            return
        if active:
            if not hit:  # a stray byte in the zero tail: cut, nothing lost
                with SegmentedLog.open(d, config) as log:
                    assert log.recovery.bytes_cut > 0
                    assert [(r.offset, r.payload) for r in log.records()] == \
                        [(o, p) for o, _, p in recs]
            elif hit[0] is recs[-1]:  # the last record: a torn tail
                with SegmentedLog.open(d, config) as log:
                    assert log.recovery.bytes_cut > 0
                    assert [(r.offset, r.payload) for r in log.records()] == \
                        [(o, p) for o, _, p in recs[:-1]]
            else:  # valid records follow: reported at the damaged record
                with pytest.raises(CorruptSegment) as exc:
                    SegmentedLog.open(d, config)
                corrupt_at(exc, path, bad_pos)
                assert exc.value.reason in RECORD_DAMAGE
            return
        # sealed: opens (its .idx is trusted), the damaged record is refused
        # when read, every other record reads back exactly
        with SegmentedLog.open(d, config) as log:
            for o, e, p in recs:
                if (o, e, p) == hit[0]:
                    with pytest.raises(CorruptSegment) as exc:
                        log.read(o, max_bytes=1)
                    corrupt_at(exc, path, bad_pos)
                    # a length now reaching past the segment's end reads as truncated
                    assert exc.value.reason in RECORD_DAMAGE | {"truncated record"}
                    continue
                try:
                    assert bytes(log.read(o, max_bytes=1).data) == p
                except CorruptSegment as exc:
                    # A read peeks at the header after its last record, even
                    # with no room left, so damage there may fail the read of
                    # the record just before it (reported as doubtful): it must
                    # still name the damaged record, and only that neighbour.
                    assert e == hit[0][0], "an intact record far from the damage failed"
                    assert (Path(exc.path), exc.position) == (path, bad_pos)
        # without its index the same damage fails the open
        os.unlink(d / layout.index_name(bases[seg_i]))
        with pytest.raises(CorruptSegment) as exc:
            SegmentedLog.open(d, config)
        corrupt_at(exc, path, bad_pos)


# =============================================================================
# Offsets: record boundaries only
# =============================================================================

def check_boundaries(log, recs, sample=None, rng=None):
    """read() and check_offset() accept exactly the record boundaries."""
    bounds = sorted({r.offset for r in recs} | {r.end for r in recs} | {log.start_offset})
    end = log.end_offset
    offsets = range(0, end + 1)
    if sample is not None:  # boundaries, their neighbours, and random others
        rng = rng or random.Random(sample)
        picks = set(bounds) | {b + d for b in bounds for d in (-1, 1, 2, 15, 16, 17)}
        picks |= {rng.randrange(end + 1) for _ in range(sample)}
        offsets = sorted(o for o in picks if 0 <= o <= end)
    by_offset = {r.offset: r for r in recs}
    for off in offsets:
        i = bisect.bisect_left(bounds, off)
        if i < len(bounds) and bounds[i] == off:
            log.check_offset(off)
            got = log.read(off, max_bytes=1)
            if off in by_offset:
                assert bytes(got.data) == by_offset[off].payload
            else:
                assert off == end and bytes(got.data) == b"" and got.at_end
        else:
            with pytest.raises(InvalidOffset):
                log.check_offset(off)
            with pytest.raises(InvalidOffset):
                log.read(off, max_bytes=1)


@pytest.mark.parametrize("index_interval", [64, 200])
def test_every_non_boundary_offset_is_refused(log_files, index_interval):
    lf = log_files(varied_payloads(80, seed=5), index_interval=index_interval)
    assert len(lf.bases()) >= 2
    with lf.open() as log:
        check_boundaries(log, lf.records)
    # the same with indexes built by rebuild scans
    for i in range(len(lf.bases()) - 1):
        os.unlink(lf.idx_path(i))
    with lf.open() as log:
        assert log.recovery.indexes_rebuilt == len(lf.bases()) - 1
        check_boundaries(log, lf.records)


def test_boundaries_while_appending(tmp_path):
    """Boundaries are proven from the index built by appends, before any reopen."""
    config = LogConfig(segment_size=4096, index_interval=64, durability=Durability.NEVER)
    recs = []
    with SegmentedLog.open(tmp_path / "log", config) as log:
        for i, p in enumerate(varied_payloads(60, seed=9)):
            recs.append(written(log.write(p), p))
            if i % 20 == 19:
                check_boundaries(log, recs)


@pytest.mark.parametrize("delta", [1, 2, 1000, 2**40, 2**63])
def test_offsets_past_the_end_are_refused(log_files, delta):
    lf = log_files(payloads(10))
    with lf.open() as log:
        with pytest.raises(InvalidOffset):
            log.read(log.end_offset + delta)
        with pytest.raises(InvalidOffset):
            log.check_offset(log.end_offset + delta)


@pytest.mark.parametrize("off", [-1, -2**40])
def test_negative_offsets_are_refused(log_files, off):
    lf = log_files(payloads(3))
    with lf.open() as log:
        with pytest.raises(InvalidOffset):
            log.read(off)
        with pytest.raises(InvalidOffset):
            log.check_offset(off)


def test_reading_at_the_end_returns_nothing(log_files):
    lf = log_files(payloads(10))
    with lf.open() as log:
        r = log.read(log.end_offset)
        assert bytes(r.data) == b"" and r.next_offset == log.end_offset and r.at_end
        assert r.records == 0


def test_kafka_style_random_offset_lookups(log_files):
    """Random offsets against a bisect oracle over the boundaries (OffsetIndexTest.randomLookupTest)."""
    lf = log_files(varied_payloads(1500, seed=21, max_size=60), segment_size=64 * 1024,
                   index_interval=64)
    with lf.open() as log:
        check_boundaries(log, lf.records, sample=3000, rng=random.Random(1))


@pytest.mark.parametrize("max_bytes", [0, 1, 99, 100, 101, 250, 1000, 5000])
def test_chained_reads_return_every_byte_once(log_files, max_bytes):
    """A catch-up reader following next_offset gets every payload once, in
    chunks that stop on record boundaries: greedy up to max_bytes (or up to
    the size of a larger first record, which is returned whole), across
    segments -- the model below."""
    ps = varied_payloads(120, seed=max_bytes, max_size=300)
    lf = log_files(ps)
    assert len(lf.bases()) >= 4
    chunks, i = [], 0  # the model
    while i < len(ps):
        j, size = i + 1, len(ps[i])
        limit = max(max_bytes, size)  # a larger first record sets the room
        while j < len(ps) and size + len(ps[j]) <= limit:
            size += len(ps[j])
            j += 1
        chunks.append((b"".join(ps[i:j]), lf.records[j - 1].end, j - i))
        i = j
    with lf.open() as log:
        off, got = 0, []
        while True:
            r = log.read(off, max_bytes=max_bytes)
            if r.records == 0:
                assert r.at_end and off == log.end_offset
                break
            got.append((bytes(r.data), r.next_offset, r.records))
            assert r.at_end == (r.next_offset == log.end_offset)
            off = r.next_offset
        assert got == chunks


# =============================================================================
# The sparse index by message number: find_message against a model
# =============================================================================

def check_find_message(log, recs, sample=None):
    starts, holders = [], []  # first message number of each record holding any
    total = 0
    for r in recs:
        if r.msg_count:
            starts.append(total)
            holders.append(r)
        total += r.msg_count
    assert log.message_count == total
    ns = range(total) if sample is None else sorted(
        {random.Random(sample).randrange(total) for _ in range(sample)} | {0, total - 1})
    for n in ns:
        i = bisect.bisect_right(starts, n) - 1
        assert log.find_message(n) == (holders[i].offset, n - starts[i]), n
    for n in (total, total + 1, -1):
        with pytest.raises(InvalidOffset):
            log.find_message(n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_find_message_matches_a_model(log_files, seed):
    rng = random.Random(seed)
    n = 400
    counts = [rng.choice([0, 0, 1, 1, 1, 2, 3, 5]) for _ in range(n)]
    counts[-1] = 1  # at least one message
    lf = log_files(varied_payloads(n, seed=seed, max_size=90), index_interval=rng.choice([64, 128, 256]),
                   msg_counts=counts)
    assert len(lf.bases()) >= 4
    config = lf.config
    # while writing (indexes built by appends) ...
    with SegmentedLog.open(lf.dir.parent / "again", config) as log:
        recs = []
        for r in lf.records:
            end = log.write(r.payload, msg_count=r.msg_count)
            assert end == r.end
            recs.append(r)
        check_find_message(log, recs)
    # ... after a reopen (saved .idx files) ...
    with lf.open() as log:
        assert log.recovery.indexes_rebuilt == 0
        check_find_message(log, lf.records)
    # ... and with every index rebuilt by scanning
    for i in range(len(lf.bases()) - 1):
        os.unlink(lf.idx_path(i))
    with lf.open() as log:
        check_find_message(log, lf.records)


def test_find_message_with_many_index_entries(log_files):
    """More than the warm section's 1024 entries in one segment: both search paths."""
    n = 1500
    rng = random.Random(8)
    counts = [rng.choice([0, 1, 1, 2]) for _ in range(n)]
    counts[-1] = 1
    # every record >= index_interval bytes: one index entry per record
    lf = log_files([rng.randbytes(rng.randrange(48, 90)) for _ in range(n)],
                   segment_size=256 * 1024, index_interval=64, msg_counts=counts)
    assert len(lf.bases()) == 1
    seg, _ = nat.NativeSegment.open(lf.seg(0).path, lf.idx_path(0), nat.OPEN_ACTIVE,
                                    256 * 1024, 64)
    assert seg.info().index_entries > 1024  # UB_WARM_ENTRIES in ub_segment.c
    seg.close()
    with lf.open() as log:
        check_boundaries(log, lf.records, sample=2000)
        check_find_message(log, lf.records, sample=2000)
    for i in range(len(lf.bases()) - 1):
        os.unlink(lf.idx_path(i))
    with lf.open() as log:
        check_find_message(log, lf.records, sample=2000)


def test_segments_without_messages_are_skipped_by_find_message(log_files):
    counts = [1] * 5 + [0] * 80 + [2] * 5  # the middle segments hold no message
    lf = log_files(payloads(90), msg_counts=counts)
    assert len(lf.bases()) >= 3
    with lf.open() as log:
        check_find_message(log, lf.records)


# =============================================================================
# Sizes: records bigger than a segment, and over the format's limit
# =============================================================================

@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_record_larger_than_segment_size_gets_its_own_segment(log_files, assert_log_holds,
                                                              position):
    big = bytes(range(1, 256)) * 60  # 15 300 bytes, segment_size 4096
    before = [] if position == "first" else payloads(5)
    ps = before + [big] + (payloads(5, seed=9) if position != "last" else [])
    lf = log_files(ps)
    big_rec = lf.records[len(before)]
    assert big_rec.offset in lf.bases()  # it starts a segment ...
    i = lf.bases().index(big_rec.offset)
    assert lf.in_segment(i) == [big_rec]  # ... and is alone in it
    with lf.open() as log:
        assert_log_holds(log, lf.records)
        assert bytes(log.read(big_rec.offset, max_bytes=10).data) == big  # whole, though larger
        recs = list(lf.records)
        for p in payloads(40, seed=3):
            recs.append(written(log.write(p), p))
    with lf.open() as log:
        assert_log_holds(log, recs)


def test_batch_with_a_payload_larger_than_segment_size(log_files):
    lf = log_files(payloads(5))
    batch = [b"a" * 10, bytes(range(1, 256)) * 40, b"b" * 10, b"c" * 5000]
    expected = [r.payload for r in lf.records] + batch
    with lf.open() as log:
        end = log.write_batch(batch)
        assert end == lf.end_offset + sum(H + len(p) for p in batch)
        assert [r.payload for r in log.records()] == expected
    with lf.open() as log:
        assert [r.payload for r in log.records()] == expected
        assert bytes(log.read(0, max_bytes=1 << 20).data) == b"".join(expected)
        assert log.end_offset == end


def test_payload_over_max_payload_is_refused_and_changes_nothing(log_files, assert_log_holds):
    lf = log_files(payloads(10))
    too_big = bytes(nat.MAX_PAYLOAD + 1)  # calloc'd: the pages are never touched
    with lf.open() as log:
        end, msgs, segs = log.end_offset, log.message_count, len(os.listdir(lf.dir))
        with pytest.raises(RecordTooLarge):
            log.write(too_big)
        with pytest.raises(RecordTooLarge):
            log.write_batch([b"small", too_big])
        with pytest.raises(RecordTooLarge):
            log.write(b"x", attrs=bytes(nat.MAX_ATTRS + 1))
        assert (log.end_offset, log.message_count) == (end, msgs)
        assert len(os.listdir(lf.dir)) == segs
        assert_log_holds(log, lf.records)
        end = log.write(b"still works")
    with lf.open() as log:
        assert [r.payload for r in log.records()][-1] == b"still works"
        assert log.end_offset == end
    del too_big


# =============================================================================
# Use after close
# =============================================================================

def test_closed_log_raises_instead_of_crashing(log_files):
    lf = log_files(payloads(60))
    log = lf.open()
    log.close()
    log.close()  # idempotent
    for call in (lambda: log.write(b"x"), lambda: log.append(b"x"),
                 lambda: log.write_batch([b"x"]), lambda: log.read(0),
                 lambda: log.read(lf.records[-1].offset), lambda: log.check_offset(0),
                 lambda: log.find_message(0), lambda: list(log.records()),
                 lambda: log.end_offset):
        with pytest.raises(LogClosedError):
            call()
    with lf.open() as log:  # and nothing was written by those calls
        assert log.end_offset == lf.end_offset


def test_closed_native_segment_raises_instead_of_crashing(segment_bytes):
    sb = segment_bytes(payloads(3))
    seg, _ = sb.open()
    seg.close()
    seg.close()
    for call in (seg.end, seg.info, lambda: seg.append(nat.REC_DATA, 1, b"", b"x"),
                 lambda: seg.record_at(HEADER), lambda: seg.is_boundary(HEADER),
                 lambda: seg.find_msg(0), seg.sync, lambda: seg.truncate(HEADER)):
        with pytest.raises(LogClosedError):
            call()
    assert "closed" in repr(seg.ptr)


# =============================================================================
# One native segment: layout, open modes, truncate
# =============================================================================

def test_segment_header_layout_matches_ub_format_h(segment_bytes):
    sb = segment_bytes([b"hello"], base=0)
    h = sb.read(0, HEADER)
    assert h[:8] == b"UBSEGv1\n"
    version, size, base, base_msg, created = struct.unpack_from("<IIQQQ", h, 8)
    assert (version, size, base, base_msg, created) == (1, HEADER, 0, 0, 1_700_000_000_000)
    assert h[40:60] == bytes(20)
    assert struct.unpack_from("<I", h, 60)[0] == nat.crc_mask(nat.crc32c(h[:60]))
    assert sb.read(HEADER, len(nat.encode_record(nat.REC_DATA, b"hello"))) == \
        nat.encode_record(nat.REC_DATA, b"hello")


def test_worked_example_offsets_and_bytes(tmp_path):
    """docs/format.md "Worked example": three appends, their offsets and bytes."""
    config = LogConfig(segment_size=4096, durability=Durability.NEVER)
    with SegmentedLog.open(tmp_path / "log", config) as log:
        assert log.write(b"hello") == 21
        assert log.write(b'{"a":1},2', msg_count=2) == 46
        assert log.write(b"", attrs=bytes.fromhex("81a17093a277310007"),
                         type=nat.REC_CLOSE, msg_count=0) == 71
        assert log.is_closed and log.message_count == 3
        assert bytes(log.read(0, json=True).data) == b'hello,{"a":1},2'
    data = (tmp_path / "log" / layout.segment_name(0)).read_bytes()
    assert data[64:135] == bytes.fromhex(
        "4d7119cc050000000000010001000000" "68656c6c6f"
        "f777bf8b090000000000010002000000" "7b2261223a317d2c32"
        "0255004f000000000900030000000000" "81a17093a277310007")
    assert data[135:] == bytes(len(data) - 135)


def test_open_active_reports_what_it_found(segment_bytes):
    sb = segment_bytes(payloads(7, size=33))
    seg, rep = sb.open(nat.OPEN_ACTIVE)
    assert rep == nat.ScanReport(sb.ends[-1], 0, 7, False)
    assert seg.end() == sb.ends[-1]
    assert [seg.record_at(p).payload for p in sb.positions] == payloads(7, size=33)
    seg.close()


def test_an_unsealed_segment_is_not_a_valid_sealed_one(segment_bytes):
    """A sealed segment must be valid records up to its exact size: a
    preallocated zero tail opened as sealed is damage, not an empty end."""
    sb = segment_bytes(payloads(3))
    with pytest.raises(CorruptSegment) as exc:
        sb.open(nat.OPEN_SEALED)
    corrupt_at(exc, sb.path, sb.ends[-1], "zero header")


def test_sealed_native_segment_reopens_with_its_index(segment_bytes):
    sb = segment_bytes(payloads(30, size=40), sealed=True)
    assert sb.size == sb.ends[-1] and sb.idx_path.exists()
    seg, rep = sb.open(nat.OPEN_SEALED)
    assert rep.records == 0 and not rep.index_rebuilt  # loaded, not scanned
    assert seg.info().records == 30 and seg.info().sealed
    assert all(seg.is_boundary(p) for p in sb.positions + [sb.ends[-1]])
    assert not any(seg.is_boundary(p + 1) for p in sb.positions)
    with pytest.raises(errors.InvalidArgument):
        seg.append(nat.REC_DATA, 1, b"", b"no")  # sealed: never written again
    seg.close()


def test_native_truncate_cuts_back_to_a_boundary(segment_bytes):
    sb = segment_bytes(payloads(10, size=50))
    seg, _ = sb.open()
    with pytest.raises(InvalidOffset):
        seg.truncate(sb.positions[4] + 1)
    assert seg.end() == sb.ends[-1]
    seg.truncate(sb.positions[4])
    assert seg.end() == sb.positions[4] and seg.info().records == 4
    with pytest.raises(InvalidOffset):
        seg.record_at(sb.positions[5])
    assert seg.append(nat.REC_DATA, 1, b"", b"new") == sb.positions[4] + H + 3
    seg.close()
    seg, rep = sb.open()
    assert rep.records == 5 and rep.bytes_cut == 0
    assert seg.record_at(sb.positions[4]).payload == b"new"
    seg.close()


# =============================================================================
# Regressions: engine bugs these tests found (fixed)
# =============================================================================

@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_write_accepts_bytes_like_payloads(log_files, kind):
    lf = log_files(payloads(2))
    with lf.open() as log:
        end = log.write(kind(b"bytes-like payload"), attrs=kind(b"\x80"))
        assert [r.payload for r in log.records()][-1] == b"bytes-like payload"
        assert end == log.end_offset


@pytest.mark.parametrize("xor", [0x01, 0x80])
@pytest.mark.parametrize("api", ["read", "check_offset", "find_message"])
def test_damaged_length_in_sealed_segment_is_reported_at_that_record(log_files, api, xor):
    # index_interval == segment_size: one index entry, so boundaries are
    # proven by hopping every record header from the segment's start
    lf = log_files(payloads(100), index_interval=4096)
    sealed = lf.in_segment(0)
    bad = sealed[10]
    f, pos = lf.locate(bad.offset)
    f.flip_byte(pos + 4 + (3 if xor == 0x80 else 0), xor)  # payload length
    with lf.open() as log:
        for n, r in enumerate(sealed[11:30], start=11):
            try:
                if api == "read":
                    assert bytes(log.read(r.offset, max_bytes=1).data) == r.payload
                elif api == "check_offset":
                    log.check_offset(r.offset)
                else:
                    assert log.find_message(n) == (r.offset, 0)
            except CorruptSegment as exc:
                assert exc.path == str(f.path)
                assert exc.position == pos, "must name the damaged record"
                assert exc.reason in ("checksum mismatch", "bad record length")


def test_recovery_stopping_just_before_the_end_of_a_page_sized_file(segment_bytes):
    """Found by the segment fuzzer: recovery that stops 1-3 bytes before the
    end of the file read the next record's CRC field past it -- a SIGBUS when
    the mapping (the segment's capacity) is longer than the page-sized file.
    Two stray bytes after the last record must be cut, nothing read beyond."""
    payload = b"x" * (4096 - nat.SEG_HEADER_SIZE - H - 2)
    sb = segment_bytes([payload], capacity=4096)
    assert sb.ends[-1] == 4094 and sb.path.stat().st_size == 4096
    with open(sb.path, "r+b") as f:
        f.seek(4094)
        f.write(b"\x01\x01")
    code = ("import sys; from unbroken_engine import _native as nat\n"
            "seg, rep = nat.NativeSegment.open(sys.argv[1], sys.argv[2], nat.OPEN_ACTIVE,"
            " 65536, 4096)\n"
            "print(rep.records, rep.valid_end, rep.bytes_cut)\n")
    out = subprocess.run([sys.executable, "-c", code, str(sb.path), str(sb.idx_path)],
                         capture_output=True, text=True, timeout=60, cwd=sb.path.parent)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    records, valid_end, cut = map(int, out.stdout.split())
    assert (records, valid_end) == (1, 4094) and cut == 2
