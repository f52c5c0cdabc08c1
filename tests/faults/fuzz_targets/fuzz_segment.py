"""Coverage-guided fuzzing of segment recovery (``ub_segment_open``: the
recovery scan, torn-tail cutting, the index rebuild and reload) and of the
reads that trust what it recovered (cext/ub_segment.c).

Run it (atheris is an optional extra: ``pip install '.[fuzz]'``)::

    python tests/faults/fuzz_targets/fuzz_segment.py -max_total_time=600
    python tests/faults/fuzz_targets/fuzz_segment.py -max_total_time=600 /tmp/seg-corpus

A failure is saved as ``crash-<sha1>`` and replayed with
``python tests/faults/fuzz_targets/fuzz_segment.py crash-...``. The seeds are
in ``corpus/segment/``. Segment files are written to a private directory under
/dev/shm (``UNBROKEN_FUZZ_WORKDIR`` to choose), one file at a time.

Input: three control bytes, then the bytes after the segment header (a
record region), from which the segment file is made:

* byte 0, bits 0-1: how it is opened: 0 active, 1 repair, 2 or 3 sealed (its
  index missing, so rebuilt by a checking scan, then reopened with the index
  it wrote -- and, when byte 2 is odd, once more after one byte of that index
  was damaged);
* byte 0, bit 2: the capacity passed (and so the length of the mapping) is the
  file's size; otherwise three pages more (then a read past the end of the
  file is a SIGBUS);
* byte 0, bit 3: raw: the region is the whole file, header included;
* byte 0, bit 4: the file's size is a multiple of the page size, as the
  engine allocates active segments, and the region (then ``byte 0 >> 5``
  zero bytes) ends it: a filler record between header and region takes up
  the room (so the bytes at the very end of the allocation are the fuzzer's);
* byte 1: the index interval (``1 + 4 * byte``);
* byte 2: the reads' output capacity (``4 * byte``), JSON mode (bit 0) and
  whether a JSON array was already started (bit 1).

What opening must do is computed by the independent model of
``_reference.py`` (``recover_active`` / ``recover_sealed``, from
docs/format.md; it uses the C CRC32C, which fuzz_record.py checks): the
verdict, the reason and position of damage, the valid end, the record and
message counts, the bytes cut and the file's bytes afterwards (a torn tail is
zeroed). After a successful open: ``ub_segment_info_get``, boundary checks,
``ub_segment_record_at``, ``ub_segment_find_msg`` and ``ub_segment_read``
agree with the model's records; an active segment takes one more append and
then reopens cleanly with it; a sealed one reopens from its index with the
same counts.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import _reference as ref  # noqa: E402

ACTIVE, REPAIR, SEALED = 1, 2, 0  # UB_OPEN_*
PAGE = 4096
PROBES = 48  # records whose reads are checked, at most

native = _harness.Native(16)


def _workdir() -> str:
    base = os.environ.get("UNBROKEN_FUZZ_WORKDIR")
    if base:
        os.makedirs(base, exist_ok=True)
        return base
    return _harness.private_dir("segment", "/dev/shm" if os.access("/dev/shm", os.W_OK)
                                else None)


def setup() -> None:
    native.load()
    ffi, lib = native.ffi, native.lib
    work = _workdir()
    native.seg_path = os.path.join(work, "seg")
    native.idx_path = os.path.join(work, "seg.idx")
    native.cseg, native.cidx = native.seg_path.encode(), native.idx_path.encode()
    native.out = ffi.new("ub_segment **")
    native.res = ffi.new("ub_scan_result *")
    native.info = ffi.new("ub_segment_info *")
    native.rec = ffi.new("ub_record *")
    native.bad, native.why = ffi.new("uint64_t *"), ffi.new("const char **")
    native.pos, native.first = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    native.end = ffi.new("uint64_t *")
    native.rr = ffi.new("ub_read_result *")
    native.crc = lambda b: lib.ub_crc32c(b, len(b))


def reason(ptr):
    return native.ffi.string(ptr).decode() if ptr != native.ffi.NULL else None


def make_file(data: bytes) -> bytes:
    flags, region = data[0], data[3:]
    body = region if flags & 8 else ref.segment_header(7, 3, 1) + region
    if flags & 16:  # the region ends (flags >> 5 zero bytes before) a page boundary
        head, rest = body[:ref.SEG_HEADER], body[ref.SEG_HEADER:] + bytes(flags >> 5)
        free = -(len(head) + len(rest)) % PAGE
        if 0 < free < ref.REC_HEADER:
            free += PAGE
        body = head + (ref.encode(1, bytes(free - ref.REC_HEADER)) if free else b"") + rest
    return body


def open_segment(mode: int, capacity: int, interval: int):
    native.out[0] = native.ffi.NULL
    rc = native.lib.ub_segment_open(native.cseg, native.cidx, mode, capacity, interval,
                                    native.out, native.res)
    return rc, native.out[0]


def check_open(rc: int, want: ref.Recovery) -> None:
    res = native.res
    got = (rc, reason(res.reason) if rc else None, res.bad_pos, res.bytes_cut,
           bool(res.index_rebuilt))
    expect = (want.rc, want.reason, want.bad_pos, want.bytes_cut, want.index_rebuilt)
    assert got == expect, (got, expect)
    if want.scan is not None:
        assert (res.valid_end, res.records) == (want.scan.stop, len(want.scan.records)), \
            ((res.valid_end, res.records), (want.scan.stop, len(want.scan.records)))
    else:
        assert (res.valid_end, res.records) == (0, 0)


def check_info(seg, content: bytes, scan: ref.Scan, end: int, capacity: int,
               sealed: bool) -> None:
    info = native.info
    native.lib.ub_segment_info_get(seg, info)
    got = (info.base_offset, info.base_msg, info.created_ms, info.end, info.alloc,
           info.capacity, info.records, info.messages, info.last_type, info.sealed,
           info.index_entries)
    header = tuple(int.from_bytes(content[i:i + 8], "little") for i in (16, 24, 32))
    want = (*header, end, len(content), capacity, len(scan.records), scan.messages,
            scan.last_type, int(sealed), len(scan.index))
    assert got == want, (got, want)


def check_reads(seg, scan: ref.Scan, end: int, after: bytes, knob: int) -> None:
    ffi, lib, bad, why = native.ffi, native.lib, native.bad, native.why
    recs = scan.records[:PROBES]
    bounds = {r.pos for r in scan.records} | {end}
    probes = {ref.SEG_HEADER - 1, end, end + 1} | {r.pos + k for r in recs for k in (0, 1, 4)}
    for p in sorted(probes):
        rc = lib.ub_segment_check_boundary(seg, p, bad, why)
        want = ref.OK if p in bounds and p >= ref.SEG_HEADER else ref.ERANGE
        assert rc == want, ("boundary", p, rc, want)
    for i, r in enumerate(recs):
        rc = lib.ub_segment_record_at(seg, r.pos, native.rec, bad, why)
        c = native.rec
        assert rc == ref.OK, ("record_at", r.pos, rc, reason(why[0]))
        assert (c.type, c.msg_count, c.attrs_pos, c.attrs_len, c.payload_pos, c.payload_len,
                c.next) == (r.type, r.count, r.pos + ref.REC_HEADER, r.attrs_len,
                            r.payload_pos, r.payload_len, r.next), ("record_at", r)
        before = scan.before[i]
        for m in {before, before + r.count - 1} if r.count else ():
            rc = lib.ub_segment_find_msg(seg, m, native.pos, native.first, bad, why)
            assert (rc, native.pos[0], native.first[0]) == (ref.OK, r.pos, before), \
                ("find_msg", m, rc, native.pos[0], native.first[0], r.pos, before)
    assert lib.ub_segment_record_at(seg, end, native.rec, bad, why) == ref.ERANGE
    assert lib.ub_segment_find_msg(seg, scan.messages, native.pos, native.first, bad,
                                   why) == ref.ERANGE
    cap, json, started = 4 * knob, knob & 1, bool(knob & 2)
    out = ffi.new("uint8_t[]", max(cap, 1))  # exact: ASan sees a write past cap
    rr = native.rr
    starts = [ref.SEG_HEADER] + [r.pos for r in recs[1:8]]
    for start in starts:
        for limit in (end, end - 1 - knob % 23):
            rr.json_started = started
            rc = lib.ub_segment_read(seg, start, limit, out, cap, json, rr)
            want = ref.read(scan, start, min(limit, end), cap, json, started)
            (wrc, wbad, wreason, parts, nrec, nmsg, need, nxt, closed, wstarted) = want
            assert rc == wrc, ("read", start, limit, rc, wrc, reason(rr.reason))
            if rc != ref.OK:
                assert (rr.bad_pos, reason(rr.reason)) == (wbad, wreason), "read damage"
                continue
            expect = b"".join(b"," * sep + after[r.payload_pos:r.next] for r, sep in parts)
            assert (rr.records, rr.messages, rr.need, rr.next, bool(rr.closed),
                    bool(rr.json_started), rr.bytes) == (nrec, nmsg, need, nxt, closed,
                                                         wstarted, len(expect)), \
                ("read", start, limit, cap)
            assert ffi.buffer(out, rr.bytes)[:] == expect, ("read bytes", start, limit)


def read_file() -> bytes:
    with open(native.seg_path, "rb") as f:
        return f.read()


def test_one_input(data: bytes) -> None:
    if not native.ready:
        setup()
    if len(data) < 3:
        return
    lib = native.lib
    for path in (native.seg_path, native.idx_path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    content = make_file(data)
    with open(native.seg_path, "wb") as f:
        f.write(content)
    mode = (ACTIVE, REPAIR, SEALED, SEALED)[data[0] & 3]
    interval = 1 + 4 * data[1]
    size = len(content)
    capacity = size if data[0] & 4 else size + 3 * PAGE
    if mode == SEALED:
        want = ref.recover_sealed(content, native.crc, interval)
    else:
        want = ref.recover_active(content, mode == REPAIR, native.crc, interval, capacity)
    room = False
    rc, seg = open_segment(mode, capacity, interval)
    try:
        check_open(rc, want)
        if rc != ref.OK:
            assert seg == native.ffi.NULL
            return
        scan = want.scan
        end = size if mode == SEALED else scan.stop
        check_info(seg, content, scan, end, size if mode == SEALED else capacity,
                   mode == SEALED)
        check_reads(seg, scan, end, want.after, data[2])
        assert read_file() == want.after, "the file after recovery"
        if mode != SEALED:
            n = lib.ub_segment_append(seg, 1, 1, b"", 0, b"fuzz", 4, native.end)
            room = end + 20 <= capacity and scan.messages + 1 <= ref.U32_MAX
            assert n == (ref.OK if room else ref.ENOSPACE), ("append", n)
    finally:
        if seg != native.ffi.NULL:
            lib.ub_segment_close(seg)
    # reopen: the appended record is there and nothing is cut; a sealed segment
    # comes back from the index it wrote (or, damaged, from a scan again)
    if mode != SEALED:
        rc, seg = open_segment(ACTIVE, capacity, interval)
        try:
            assert rc == ref.OK, ("reopen", rc, reason(native.res.reason))
            res = native.res
            records = len(scan.records) + (1 if room else 0)
            assert (res.records, res.bytes_cut, res.valid_end) == \
                (records, 0, end + (20 if room else 0)), "reopen"
        finally:
            lib.ub_segment_close(seg)
        return
    damaged = data[2] & 1
    if damaged:
        with open(native.idx_path, "r+b") as f:
            idx = bytearray(f.read())
            idx[data[1] % len(idx)] ^= 1 << (data[2] >> 5)
            f.seek(0)
            f.write(idx)
    # index_load refuses an entry at the end of the file, entry 0 of an empty
    # segment too: an empty sealed segment is always rescanned (nothing to scan)
    rebuilt = bool(damaged) or size == ref.SEG_HEADER
    rc, seg = open_segment(SEALED, 0, interval)
    try:
        assert (rc, bool(native.res.index_rebuilt)) == (ref.OK, rebuilt), \
            ("reopen sealed", rc, reason(native.res.reason))
        check_info(seg, content, scan, size, size, True)
    finally:
        lib.ub_segment_close(seg)


def _seed(flags: int, interval: int, knob: int, region: bytes) -> bytes:
    return bytes([flags, interval, knob]) + region


_A = ref.encode(1, b'{"a":1}') + ref.encode(1, b"[1,2]", count=2)
_B = _A + ref.encode(4, b"", b"\x81\xa1p\x93\xa2w1\x00\x07", 0) + ref.encode(2, b"3")
_TORN = bytearray(ref.encode(1, b"abcdefgh"))
_TORN[0:4] = bytes(4)  # an append cut short: its CRC field still zero
_BAD = bytearray(_B)
_BAD[20] ^= 0xFF  # damage in the first record, valid records after it

SEEDS = [
    _seed(0, 0, 0x40, _A),
    _seed(0, 1, 0x41, _B + bytes(40)),
    _seed(0, 2, 0x12, _A + bytes(_TORN)),
    _seed(0, 3, 0x20, _A + b"\x07\x00\x01"),
    _seed(0, 0, 0x08, bytes(_BAD)),
    _seed(1, 0, 0x08, bytes(_BAD)),
    _seed(2, 1, 0x21, _B),
    _seed(2, 0, 0x80, _A + b"\x01"),
    _seed(4 | 16 | (3 << 5), 5, 0x30, _B + bytes(_TORN)),
    _seed(16, 9, 0x31, _A + _A[:-1] + b"\x01"),
    _seed(8, 0, 0, ref.segment_header() + _A),
    _seed(8, 0, 0, bytes(64)),
    _seed(0, 0, 3, ref.encode(1, b"x" * 200) + ref.encode(3, b"")),
    # regression: the scan stopped 2 bytes before the end of a page-sized file;
    # the torn-append check read the CRC field past the file (SIGBUS)
    _seed(16, 9, 0x31, b"\xb2\x79"),
]

if __name__ == "__main__":
    _harness.main(test_one_input, SEEDS, max_len=4096, name="segment")
