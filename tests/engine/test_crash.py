"""Process crashes: a child appends under Durability.ALWAYS and acknowledges
each append on stdout; the parent SIGKILLs it at a random moment, reopens the
log and checks that every acknowledged record is there, exactly once.

A kill in the middle of a segment roll is too hard to time, so the on-disk
states a roll passes through are built by hand instead (see the last tests).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import HEADER, Durability, LogConfig, SegmentedLog

SEGMENT_SIZE = 128 * 1024  # records average ~1 KiB: a roll every ~130 records
WRITERS = 4

CHILD = textwrap.dedent("""
    import os, sys, threading
    from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog

    directory, cycle, writers, segment_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def payload(w, i):
        stamp = b"%04d%08d" % (w, i)
        n = (w * 7919 + i * 104729) % 2000
        return b"rec:" + stamp + b":" + (stamp * (n // 12 + 1))[:n]

    log = SegmentedLog.open(directory, LogConfig(segment_size=segment_size,
                                                 durability=Durability.ALWAYS))
    os.write(1, b"ready %d\\n" % log.end_offset)

    def writer(w):
        i = 0
        while True:
            off = log.append(payload(w, i))
            os.write(1, b"ack %d %d %d\\n" % (w, i, off))  # one write: atomic on a pipe
            i += 1

    threads = [threading.Thread(target=writer, args=(cycle * 100 + t,), daemon=True)
               for t in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def payload(w: int, i: int) -> bytes:
    stamp = b"%04d%08d" % (w, i)
    n = (w * 7919 + i * 104729) % 2000
    return b"rec:" + stamp + b":" + (stamp * (n // 12 + 1))[:n]


def parse(p: bytes) -> tuple[int, int] | None:
    """(writer, index) of a child's record, checking all of its bytes."""
    if not p.startswith(b"rec:"):
        return None
    w, i = int(p[4:8]), int(p[8:16])
    assert p == payload(w, i), f"record of writer {w} #{i} has damaged bytes"
    return w, i


class Child:
    """The appending child process, its acknowledgements read by a thread."""

    def __init__(self, script, directory, cycle):
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(directory), str(cycle), str(WRITERS),
             str(SEGMENT_SIZE)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill_after(self, acks: int, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while (sum(1 for ln in self.lines if ln.startswith(b"ack")) < acks
               and self.proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.002)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)  # every line written before the kill
        stderr = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        assert self.proc.returncode == -signal.SIGKILL, f"child died on its own:\n{stderr}"
        assert self.lines and self.lines[0].startswith(b"ready"), stderr
        assert all(ln.endswith(b"\n") for ln in self.lines), "torn acknowledgement line"
        return int(self.lines[0].split()[1]), [tuple(map(int, ln.split()[1:]))
                                               for ln in self.lines[1:]]


def test_sigkill_never_loses_an_acknowledged_append(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "log"
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"kill points drawn with random.Random({seed})")  # shown on failure
    rnd = random.Random(seed)
    config = LogConfig(segment_size=SEGMENT_SIZE, durability=Durability.ALWAYS)
    acked: dict[tuple[int, int], int] = {}  # (writer, index) -> offset, every cycle
    expected_end = 0
    parent_records = []
    for cycle in range(8):
        ready_end, acks = Child(script, directory, cycle).kill_after(rnd.randint(20, 1500))
        assert ready_end == expected_end  # the child saw the log the parent left
        assert len(acks) >= 1
        per_writer: dict[int, list[tuple[int, int]]] = {}
        for w, i, off in acks:
            per_writer.setdefault(w, []).append((i, off))
            acked[(w, i)] = off
        for w, seq in per_writer.items():  # a writer's acks come in its order
            assert [i for i, _ in seq] == list(range(len(seq)))
            assert [off for _, off in seq] == sorted(off for _, off in seq)

        with SegmentedLog.open(directory, config) as log:
            assert log.recovery.end_offset == log.end_offset
            found: dict[tuple[int, int], int] = {}
            order: dict[int, list[int]] = {}
            parents = []
            for rec in log.records():
                key = parse(rec.payload)
                if key is None:
                    parents.append(rec.payload)
                    continue
                assert key not in found, f"record {key} is in the log twice"
                found[key] = rec.next_offset
                order.setdefault(key[0], []).append(key[1])
            assert parents == parent_records
            missing = [k for k in acked if k not in found]
            assert not missing, f"acknowledged records lost: {missing[:10]}"
            for key, off in acked.items():
                assert found[key] == off, f"record {key} moved"
            # each writer's records (acknowledged or not) are its first ones, in order
            for w, seq in order.items():
                assert seq == list(range(len(seq))), f"writer {w}: records out of order"
            # and the log takes new appends
            mine = b"parent after kill %d" % cycle
            off = log.append(mine)
            parent_records.append(mine)
            assert log.durable_offset >= off == log.end_offset
            assert bytes(log.read(off - len(mine) - 16).data) == mine
            expected_end = log.end_offset
    assert len(list(directory.glob("*.seg"))) > 1, "no segment roll happened"


# ---- the on-disk states of a segment roll -----------------------------------------

SMALL = LogConfig(segment_size=4096, index_interval=128, durability=Durability.NEVER)


def sealed_without_successor(directory):
    """A log whose last segment was just sealed (cut to its end, .idx written)
    and whose next segment does not exist yet: the state of a roll between the
    seal and the creation of the new file. Returns the records it holds."""
    with SegmentedLog.open(directory, SMALL) as log:
        i = 0
        while len(list(directory.glob("*.seg"))) < 3:
            log.write(b"payload %04d " % i + b"." * (i * 37 % 500))
            i += 1
    # the write that rolled went to the new segment: in this timeline it never happened
    os.unlink(sorted(directory.glob("*.seg"))[-1])
    with SegmentedLog.open(directory, SMALL) as log:
        records = [(r.payload, r.next_offset) for r in log.records()]
    sealed = sorted(directory.glob("*.seg"))[-1]
    base = int(sealed.stem)
    assert (directory / layout.index_name(base)).exists()
    assert sealed.stat().st_size == records[-1][1] - base + HEADER  # cut to its end
    return records


def check_accepts_appends(directory, records):
    with SegmentedLog.open(directory, SMALL) as log:
        assert [(r.payload, r.next_offset) for r in log.records()] == records
        end = log.end_offset
        assert end == records[-1][1]
        more = [b"after %d " % i + b"+" * (i * 91 % 700) for i in range(40)]  # rolls again
        for p in more:
            log.write(p)
        segments = len(list(directory.glob("*.seg")))
    with SegmentedLog.open(directory, SMALL) as log:
        got = [r.payload for r in log.records()]
        assert got == [p for p, _ in records] + more
    assert segments > 3


@pytest.mark.parametrize("zero_size", [0, HEADER - 1, HEADER, 64 * 1024])
def test_roll_crash_leaves_a_zero_segment(tmp_path, zero_size):
    """(a) The new segment file was created (and preallocated) but its header
    never reached the disk: it is removed at open, and nothing else changes."""
    records = sealed_without_successor(tmp_path)
    zero = tmp_path / layout.segment_name(records[-1][1])
    zero.write_bytes(bytes(zero_size))
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert log.recovery.empty_segments_removed == 1
        assert log.end_offset == records[-1][1]
    assert not zero.exists()
    check_accepts_appends(tmp_path, records)


def test_roll_crash_before_the_new_segment(tmp_path):
    """(b) The previous segment was sealed and no new segment exists yet: it
    reopens as the active segment and accepts appends."""
    records = sealed_without_successor(tmp_path)
    (tmp_path / (layout.index_name(records[0][1]) + ".tmp")).write_bytes(b"half an index")
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert log.recovery.bytes_cut == 0
        assert log.recovery.empty_segments_removed == 0
    assert not list(tmp_path.glob("*.tmp"))
    check_accepts_appends(tmp_path, records)


# ---- a roll that fails --------------------------------------------------------------

@pytest.mark.parametrize("active", ["empty active segment", "active segment with records"])
def test_full_disk_at_roll_loses_nothing_acknowledged(tmp_path, active):
    """The disk is full when a roll creates the next segment: the append that
    needed the roll fails with StorageFull and writes nothing; once there is
    room again the log takes appends, and every acknowledged one survives.
    The disk fills through the C core's allocation switch, so the failure
    takes the real ENOSPC path of segment creation."""
    config = LogConfig(segment_size=4096, index_interval=128, durability=Durability.ALWAYS)
    log = SegmentedLog.open(tmp_path, config)
    acked = []
    if active == "active segment with records":
        acked.append((b"a" * 3000, log.append(b"a" * 3000)))
    segments = sorted(p.name for p in tmp_path.iterdir())
    big = b"b" * 5000  # needs a segment of its own
    nat._test_fail_next_alloc(1)
    try:
        with pytest.raises(errors.StorageFull):
            log.append(big)
        assert nat._test_fail_next_alloc(0) == 0, "the append allocated nothing"
    finally:
        nat._test_fail_next_alloc(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == segments  # no new or .tmp file
    assert log.end_offset == (acked[-1][1] if acked else 0)
    for p in [b"small", b"c" * 3000, b"d" * 3000, big]:  # rolls again
        off = log.append(p)
        assert log.durable_offset >= off
        acked.append((p, off))
    assert len(list(tmp_path.glob("*.seg"))) > len(segments)
    want = [(p[:8], len(p), off) for p, off in acked]
    assert [(r.payload[:8], len(r.payload), r.next_offset) for r in log.records()] == want
    log.close()
    with SegmentedLog.open(tmp_path, config) as log:
        assert [(r.payload[:8], len(r.payload), r.next_offset) for r in log.records()] == want
        assert log.start_offset == 0


# ---- damage that is not a torn tail --------------------------------------------------

def several_segments(directory):
    with SegmentedLog.open(directory, SMALL) as log:
        ends = [log.write(b"p%03d" % i + b"x" * 300) for i in range(40)]
    segments = sorted(directory.glob("*.seg"))
    assert len(segments) >= 4
    return ends, segments


def test_truncated_sealed_segment_is_reported_not_dropped(tmp_path):
    ends, segments = several_segments(tmp_path)
    os.truncate(segments[1], segments[1].stat().st_size - 10)
    with pytest.raises(errors.CorruptSegment) as bad:
        SegmentedLog.open(tmp_path, SMALL)
    assert bad.value.path == str(segments[1])
    assert HEADER <= bad.value.position < segments[1].stat().st_size
    assert segments[1].stat().st_size > HEADER  # and nothing was cut to "repair" it


def test_missing_middle_segment_is_reported(tmp_path):
    ends, segments = several_segments(tmp_path)
    os.unlink(segments[1])
    with pytest.raises(errors.CorruptSegment):
        SegmentedLog.open(tmp_path, SMALL)


def test_damaged_sealed_record_is_never_served(tmp_path):
    ends, segments = several_segments(tmp_path)
    base = int(segments[1].stem)
    with open(segments[1], "r+b") as f:  # flip one payload bit of its first record
        f.seek(HEADER + 20)
        byte = f.read(1)[0]
        f.seek(HEADER + 20)
        f.write(bytes([byte ^ 1]))
    with SegmentedLog.open(tmp_path, SMALL) as log:
        with pytest.raises(errors.CorruptSegment) as bad:
            log.read(base)
        assert (bad.value.path, bad.value.position) == (str(segments[1]), HEADER)
        with pytest.raises(errors.CorruptSegment):
            list(log.records())
        # a read that stops before the damage is served
        r = log.read(0, 1)
        assert bytes(r.data) == b"p000" + b"x" * 300
        # records after the damaged one are still readable
        later = log.read(int(segments[2].stem), 1)
        assert later.records == 1


def test_damage_before_valid_records_of_the_active_segment(tmp_path):
    """Damage followed by valid records is not a torn tail: open refuses it
    (those records may have been acknowledged) unless asked to repair."""
    ends, segments = several_segments(tmp_path)
    active, base = segments[-1], int(segments[-1].stem)
    with open(active, "r+b") as f:
        f.seek(HEADER + 10)  # the first record's type byte
        f.write(b"\x7f")
    with pytest.raises(errors.CorruptSegment) as bad:
        SegmentedLog.open(tmp_path, SMALL)
    assert (bad.value.path, bad.value.position) == (str(active), HEADER)
    with SegmentedLog.open(tmp_path, SMALL, repair=True) as log:
        assert log.end_offset == base  # cut at the first bad record
        assert log.recovery.bytes_cut > 0
        assert [r.next_offset for r in log.records()] == [e for e in ends if e <= base]


def test_damaged_index_is_rebuilt(tmp_path):
    ends, segments = several_segments(tmp_path)
    idx = tmp_path / layout.index_name(int(segments[0].stem))
    with open(idx, "r+b") as f:
        f.seek(70)
        f.write(b"\xff" * 6)
    (tmp_path / layout.index_name(int(segments[1].stem))).unlink()
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert log.recovery.indexes_rebuilt == 2
        assert [r.next_offset for r in log.records()] == ends
        for n, end in enumerate(ends):
            off, k = log.find_message(n)
            assert k == 0 and log.read(off, 1).next_offset == end
