"""Retention: SegmentedLog.drop_before(offset) deletes whole sealed segments
that end at or before ``offset`` -- never the active one -- and reads before
the new start raise OffsetGone, before and after a reopen."""
from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys

import pytest

from unbroken_engine import errors
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import HEADER, Durability, LogConfig, SegmentedLog

SMALL = LogConfig(segment_size=4096, index_interval=128, durability=Durability.NEVER)


def build(directory, n=80):
    """A log of several segments. Returns (log, records, bases) where records
    are (offset, payload, end, message number)."""
    log = SegmentedLog.open(directory, SMALL)
    records, off = [], 0
    for i in range(n):
        p = b"r%03d-" % i + b"x" * (i * 53 % 700)
        end = log.write(p)
        records.append((off, p, end, i))
        off = end
    bases = sorted(int(p.stem) for p in directory.glob("*.seg"))
    assert len(bases) >= 5
    return log, records, bases


def files(directory):
    return sorted(p.name for p in directory.iterdir())


def check_retained(log, records, start):
    """Reads from the new start on return exactly the retained records, and
    reads before it raise OffsetGone."""
    kept = [r for r in records if r[0] >= start]
    assert log.start_offset == start
    assert [(r.offset, r.payload, r.next_offset) for r in log.records()] == \
        [(o, p, e) for o, p, e, _ in kept]
    assert bytes(log.read(start, 1 << 22).data) == b"".join(p for _, p, _, _ in kept)
    for o, p, e, n in kept[:: max(1, len(kept) // 7)]:
        r = log.read(o, 1)
        assert bytes(r.data) == p and r.next_offset == e
        assert log.find_message(n) == (o, 0)
    assert log.message_count == len(records)  # retention does not lower it
    assert log.end_offset == records[-1][2]
    for o, p, e, n in [r for r in records if r[0] < start][:: 5]:
        with pytest.raises(errors.OffsetGone) as gone:
            log.read(o)
        assert gone.value.earliest == start
        with pytest.raises(errors.OffsetGone):
            log.check_offset(o)
        with pytest.raises(errors.OffsetGone):
            list(log.records(o))
        with pytest.raises(errors.OffsetGone):
            log.find_message(n)


def test_drop_before_removes_whole_sealed_segments(tmp_path):
    log, records, bases = build(tmp_path)
    before = files(tmp_path)
    assert log.drop_before(bases[2]) == 2
    gone = {layout.segment_name(b) for b in bases[:2]} | {layout.index_name(b) for b in bases[:2]}
    assert files(tmp_path) == sorted(set(before) - gone)
    assert not gone & set(files(tmp_path))
    check_retained(log, records, bases[2])
    # the log goes on
    end = log.write(b"after retention")
    assert bytes(log.read(records[-1][2]).data) == b"after retention"
    assert log.end_offset == end
    log.close()


@pytest.mark.parametrize("where", ["first segment", "segment end - 1", "segment end",
                                   "segment end + 1", "inside the active", "end", "far beyond"])
def test_drop_before_keeps_segments_reaching_past_the_offset(tmp_path, where):
    log, records, bases = build(tmp_path)
    offset = {
        "first segment": bases[1] - 1,
        "segment end - 1": bases[3] - 1,
        "segment end": bases[3],
        "segment end + 1": bases[3] + 1,
        "inside the active": bases[-1] + 1,
        "end": log.end_offset,
        "far beyond": 10 ** 15,
    }[where]
    # the segment holding `offset` stays (and the active one always)
    start = bases[min(bisect.bisect_right(bases, offset), len(bases)) - 1]
    dropped = bases.index(start)
    assert log.drop_before(offset) == dropped
    assert sorted(int(p.stem) for p in tmp_path.glob("*.seg")) == bases[dropped:]
    check_retained(log, records, start)
    assert log.drop_before(offset) == 0  # nothing more to drop
    log.close()


def test_drop_before_never_drops_the_active_segment(tmp_path):
    log, records, bases = build(tmp_path)
    assert log.drop_before(log.end_offset + 1) == len(bases) - 1
    assert [int(p.stem) for p in tmp_path.glob("*.seg")] == [bases[-1]]
    check_retained(log, records, bases[-1])
    r = log.read(log.end_offset)
    assert bytes(r.data) == b"" and r.at_end
    # appends go on, through further rolls, and the new segments can be dropped too
    for i in range(30):
        log.write(b"more %d " % i + b"y" * 400)
    assert len(list(tmp_path.glob("*.seg"))) > 1
    assert log.drop_before(log.end_offset) >= 1
    assert len(list(tmp_path.glob("*.seg"))) == 1
    log.close()


def test_drop_before_the_first_segment_end_drops_nothing(tmp_path):
    log, records, bases = build(tmp_path)
    before = files(tmp_path)
    assert log.drop_before(0) == 0
    assert log.drop_before(bases[1] - 1) == 0
    assert files(tmp_path) == before
    check_retained(log, records, 0)
    log.close()


def test_retention_survives_reopen(tmp_path):
    log, records, bases = build(tmp_path)
    located = {n: log.find_message(n) for _, _, _, n in records}
    assert log.drop_before(bases[3]) == 3
    log.close()
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert log.recovery.start_offset == bases[3]
        check_retained(log, records, bases[3])
        for n, where in located.items():
            if where[0] >= bases[3]:
                assert log.find_message(n) == where
        # retention goes on from the reopened start
        assert log.drop_before(bases[4]) == 1
        check_retained(log, records, bases[4])
    with SegmentedLog.open(tmp_path, SMALL) as log:
        check_retained(log, records, bases[4])


#: run in a subprocess that SIGKILLs itself at a step of the roll
#: (UNBROKEN_TEST_KILL_AT, unbroken_engine/_testhooks.py): retention, then a
#: record larger than a segment, which replaces the empty active segment
CRASHING_WRITER = """
import sys
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog
directory, end, drops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = SegmentedLog.open(directory, LogConfig(segment_size=4096, index_interval=128,
                                             durability=Durability.NEVER))
assert log.drop_before(end) == drops and log.start_offset == end
log.write(b"L" * (2 * 4096))
print("the roll finished: the crash point was never reached")
"""


@pytest.mark.parametrize("step", ["roll.created", "roll.sealed", "roll.renamed", "roll.synced"])
def test_offsets_never_go_back_after_retention_and_a_crash_in_a_roll(tmp_path, step):
    """Retention dropped every sealed segment and the active one is empty (the
    process crashed right after a roll, before the append that caused it). A
    record larger than a segment then replaces that empty segment, and the
    process dies while the replacement is being made -- really dies: a
    subprocess SIGKILLs itself at each step of the roll (new file created
    under its temporary name; nothing to seal; renamed over the empty
    segment; directory synced). On reopen the log must still start and end
    where it did: offsets handed out before must not be reused for new data."""
    log, records, bases = build(tmp_path)
    while len(list(tmp_path.glob("*.seg"))) == len(bases):
        log.write(b"z" * 300)  # until a roll: the new segment holds just this record
    log.close()
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    bases.append(int(newest.stem))
    # the crash came after the roll created the segment, before the append
    os.truncate(newest, HEADER)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        end, count = log.end_offset, log.message_count
    assert end == int(newest.stem) > 0

    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path), str(end), str(len(bases) - 1)],
        env={**os.environ, "UNBROKEN_TEST_KILL_AT": f"{step}:1"},
        cwd=tmp_path,  # not the repository root: its source tree would shadow the install
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert f"test hook: SIGKILL at {step}" in proc.stderr, proc.stderr
    assert [int(p.stem) for p in tmp_path.glob("*.seg")] == [end]  # retention happened
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert (log.start_offset, log.end_offset, log.message_count) == (end, end, count)
        off = log.write(b"next")
        assert off > end
    assert not list(tmp_path.glob("*.tmp"))
