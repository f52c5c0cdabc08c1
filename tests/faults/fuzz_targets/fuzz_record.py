"""Coverage-guided fuzzing of the C record decoder (``ub_record_decode``,
``ub_record_peek``, ``ub_record_encode``).

Run it (atheris is an optional extra: ``pip install '.[fuzz]'``)::

    python tests/faults/fuzz_targets/fuzz_record.py -max_total_time=600
    # keep what it finds between runs (new inputs go to the first directory):
    python tests/faults/fuzz_targets/fuzz_record.py -max_total_time=600 /tmp/rec-corpus
    # under ASan, as CI runs it: see tests/faults/test_fuzz_native.py

Any libFuzzer option works (``-runs=``, ``-jobs=``, ``-artifact_prefix=``...);
a failure is saved as ``crash-<sha1>`` and replayed with
``python tests/faults/fuzz_targets/fuzz_record.py crash-...``. The C code is
built with coverage instrumentation by gcc (see ``_harness.py``); the seeds
are in ``corpus/record/``.

Input: byte 0 picks the position to decode at (``byte % 24``, clamped to the
buffer), the rest is the buffer: a record region as a segment holds it. Every
call checks the decoder's contract against the independent Python decoder of
``_reference.py`` (its own CRC32C):

* the verdict (record / needs more / corrupt, and the named reason) is the
  reference's, for ``ub_record_decode`` and, without the CRC, for
  ``ub_record_peek``;
* a record lies inside the buffer, its parts are contiguous, and encoding
  its fields again gives exactly its bytes (the encoding is canonical);
* decoding on from record to record (as a scan does) agrees at every step;
* no byte outside ``buf[0, len)`` is read: the buffer is placed against an
  inaccessible page on each side in turn.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import _reference as ref  # noqa: E402

MAX_LEN = 1 << 16
STEPS = 8  # records decoded on from the first one

native = _harness.Native(MAX_LEN)


def decode(ptr, buf: bytes, pos: int, fn):
    ffi, why = native.ffi, native.why
    why[0] = ffi.NULL
    rc = fn(ptr, len(buf), pos, native.rec, why)
    reason = ffi.string(why[0]).decode() if why[0] != ffi.NULL else None
    return rc, reason


def check_record(buf: bytes, pos: int, want) -> None:
    """The ``ub_record`` just decoded is ``want`` (a reference Rec)."""
    rec = native.rec
    assert (rec.type, rec.msg_count, rec.attrs_len, rec.payload_len, rec.next) == \
        (want.type, want.count, want.attrs_len, want.payload_len, want.next), want
    assert rec.attrs_pos == pos + ref.REC_HEADER
    assert rec.payload_pos == rec.attrs_pos + rec.attrs_len
    assert rec.next == rec.payload_pos + rec.payload_len <= len(buf)
    assert 1 <= rec.type <= ref.MAX_TYPE


def check_at(ptr, buf: bytes, pos: int, peek: bool):
    """Decode (and peek) at ``pos``; returns the reference Rec or None."""
    lib = native.lib
    want, want_reason, want_rec = ref.decode(buf, len(buf), pos)
    rc, reason = decode(ptr, buf, pos, lib.ub_record_decode)
    assert rc == want, (pos, rc, want, reason)
    if rc == ref.CORRUPT:
        assert reason in ref.REASONS and reason == want_reason, (reason, want_reason)
    elif rc == ref.OK:
        check_record(buf, pos, want_rec)
    if peek:
        pwant, preason, prec = ref.peek(buf, len(buf), pos)
        rc, reason = decode(ptr, buf, pos, lib.ub_record_peek)
        assert rc == pwant, ("peek", pos, rc, pwant, reason)
        if rc == ref.CORRUPT:
            assert reason == preason, ("peek", reason, preason)
        elif rc == ref.OK:
            check_record(buf, pos, prec)
    return want_rec


def test_one_input(data: bytes) -> None:
    if not native.ready:
        native.load()
        native.rec = native.ffi.new("ub_record *")
        native.why = native.ffi.new("const char **")
        native.written = native.ffi.new("size_t *")
    if not data:
        return
    ffi, lib, guarded = native.ffi, native.lib, native.guarded
    buf = data[1:]
    pos = min(data[0] % 24, len(buf))
    for ptr in (guarded.at_end(buf), guarded.at_start(buf)):
        rec = check_at(ptr, buf, pos, native.has_peek)
        if rec is None:
            continue
        attrs = buf[rec.pos + ref.REC_HEADER:rec.payload_pos]
        payload = buf[rec.payload_pos:rec.next]
        out = ffi.new("uint8_t[]", rec.next - pos)
        assert lib.ub_record_encode(out, len(out), rec.type, rec.count, attrs, len(attrs),
                                    payload, len(payload), native.written) == ref.OK
        assert ffi.buffer(out, native.written[0])[:] == buf[pos:rec.next]
        for _ in range(STEPS):  # on through the region, as a scan goes
            rec = check_at(ptr, buf, rec.next, False)
            if rec is None:
                break


SEEDS = [
    b"\x00" + ref.encode(1, b"hello"),
    b"\x00" + ref.encode(1, b"hello") + ref.encode(1, b'{"a":1},2', count=2),
    b"\x00" + ref.encode(3, b"", b"\x81\xa1p\x93\xa2w1\x00\x07", 0),
    b"\x15" + ref.encode(1, b"hello") + ref.encode(2, b"bye"),
    b"\x00" + ref.encode(4, b"", b"\x80", 0)[:10],
    b"\x00" + bytes(32),
    b"\x00" + ref.encode(1, b"a") + ref.encode(1, b"b") + ref.encode(2, b"c") + b"\x01" * 5,
]

if __name__ == "__main__":
    _harness.main(test_one_input, SEEDS, max_len=4096, name="record")
