"""Coverage-guided fuzzing of the C record decoder (``ub_record_decode``).

Run it (atheris is not a dependency of the project; install it first)::

    python -m pip install atheris
    python tests/faults/fuzz_targets/fuzz_record.py -max_total_time=600
    # with a corpus directory kept between runs, seeded by the harness:
    python tests/faults/fuzz_targets/fuzz_record.py --seeds=/tmp/rec-corpus -max_total_time=600

Any libFuzzer option works (``-runs=``, ``-atheris_runs=``, ``-jobs=``...); a
crash is written as ``crash-<sha1>`` (``-artifact_prefix=`` to choose where)
and replayed with ``python tests/faults/fuzz_targets/fuzz_record.py crash-...``.
With clang installed the C code is instrumented for coverage (see
``_harness.py``); tests/faults/test_fuzz_native.py runs this briefly in CI.

Input: byte 0 picks the position to decode at (``byte % 24``, clamped to the
buffer), the rest is the buffer. Every call checks the decoder's contract
against an independent Python decoder:

* the verdict (record / needs more / corrupt, and the named reason) is the
  reference's;
* a record lies inside the buffer, its parts are contiguous, and encoding
  its fields again gives exactly its bytes (the encoding is canonical);
* no byte outside ``buf[0, len)`` is read: the buffer is placed against an
  inaccessible page on each side in turn.
"""
from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

HEADER = 16
MAX_TYPE = 4
MAX_PAYLOAD = 256 * 1024 * 1024
MAX_LEN = 1 << 16
OK, NEEDMORE, CORRUPT = 0, -1, -2
REASONS = {"checksum mismatch", "bad record length", "bad record type", "zero header"}

# ---- an independent reference ----------------------------------------------------

_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def reference(buf: bytes, pos: int):
    """``(verdict, reason, next)`` as docs/format.md defines a record."""
    if pos > len(buf) or len(buf) - pos < HEADER:
        return NEEDMORE, None, None
    crc, payload_len, attrs_len, rtype, flags, _count = struct.unpack_from("<IIHBBI", buf, pos)
    if rtype == 0:
        return CORRUPT, "zero header" if buf[pos:pos + HEADER] == bytes(HEADER) else \
            "bad record type", None
    if rtype > MAX_TYPE or flags != 0:
        return CORRUPT, "bad record type", None
    if payload_len > MAX_PAYLOAD:
        return CORRUPT, "bad record length", None
    end = pos + HEADER + attrs_len + payload_len
    if end > len(buf):
        return NEEDMORE, None, None
    if mask(crc32c(buf[pos + 4:end])) != crc:
        return CORRUPT, "checksum mismatch", None
    return OK, None, end


# ---- the target ----------------------------------------------------------------------------

native = _harness.Native(MAX_LEN)


def decode(ptr, buf: bytes, pos: int):
    ffi, why = native.ffi, native.why
    why[0] = ffi.NULL
    rc = native.lib.ub_record_decode(ptr, len(buf), pos, native.rec, why)
    reason = ffi.string(why[0]).decode() if why[0] != ffi.NULL else None
    return rc, reason


def test_one_input(data: bytes) -> None:
    if not native.ready:
        native.load()
        native.rec = native.ffi.new("ub_record *")
        native.why = native.ffi.new("const char **")
        native.written = native.ffi.new("size_t *")
    if not data:
        return
    ffi, lib, rec, guarded = native.ffi, native.lib, native.rec, native.guarded
    buf = data[1:]
    pos = min(data[0] % 24, len(buf))
    want, want_reason, want_next = reference(buf, pos)
    for ptr in (guarded.at_end(buf), guarded.at_start(buf)):
        rc, reason = decode(ptr, buf, pos)
        assert rc == want, (rc, want, reason)
        if rc == CORRUPT:
            assert reason in REASONS and reason == want_reason, (reason, want_reason)
        if rc != OK:
            continue
        assert rec.next == want_next
        assert rec.attrs_pos == pos + HEADER
        assert rec.payload_pos == rec.attrs_pos + rec.attrs_len
        assert rec.next == rec.payload_pos + rec.payload_len <= len(buf)
        assert 1 <= rec.type <= MAX_TYPE
        attrs = buf[rec.attrs_pos:rec.payload_pos]
        payload = buf[rec.payload_pos:rec.next]
        out = ffi.new("uint8_t[]", rec.next - pos)
        assert lib.ub_record_encode(out, len(out), rec.type, rec.msg_count, attrs, len(attrs),
                                    payload, len(payload), native.written) == OK
        assert ffi.buffer(out, native.written[0])[:] == buf[pos:rec.next]


def _record(rtype, payload, attrs=b"", count=1):
    body = struct.pack("<IHBBI", len(payload), len(attrs), rtype, 0, count) + attrs + payload
    return struct.pack("<I", mask(crc32c(body))) + body


SEEDS = [
    b"\x00" + _record(1, b"hello"),
    b"\x00" + _record(1, b"hello") + _record(1, b'{"a":1},2', count=2),
    b"\x00" + _record(3, b"", b"\x81\xa1p\x93\xa2w1\x00\x07", 0),
    b"\x15" + _record(1, b"hello") + _record(2, b"bye"),
    b"\x00" + _record(4, b"", b"\x80", 0)[:10],
    b"\x00" + bytes(32),
]

if __name__ == "__main__":
    _harness.main(test_one_input, SEEDS, max_len=4096)
