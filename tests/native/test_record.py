"""Record framing: ``encode_record`` / ``decode_record`` (cext/ub_record.c).

The decoder's contract is h11's ``_readers.py`` contract: given (buf, pos) it
returns a record, or ``NEEDMORE`` when the buffer ends inside the record, or
raises ``CorruptSegment`` with a named reason. :func:`check_decode` holds every
encoded record to it three ways -- whole, one byte at a time, and with
trailing bytes -- and the damage tests check that no changed byte is ever
accepted.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unbroken_engine import _native as nat
from unbroken_engine import errors

REASONS = {"checksum mismatch", "bad record length", "bad record type", "zero header"}
H = nat.REC_HEADER_SIZE
TYPES = [nat.REC_DATA, nat.REC_DATA_CLOSE, nat.REC_CLOSE, nat.REC_CHECKPOINT]


def make_payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@st.composite
def records(draw, max_payload=70_000, max_attrs=300):
    """(type, msg_count, attrs, payload): sizes drawn from ranges, not powers of two."""
    typ = draw(st.sampled_from(TYPES))
    msg_count = draw(st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1)))
    attrs = draw(st.binary(max_size=max_attrs))
    size = draw(st.integers(0, max_payload))
    payload = make_payload(size, draw(st.integers(0, 2**32 - 1)))
    return typ, msg_count, attrs, payload


def encode(rec) -> bytes:
    typ, msg_count, attrs, payload = rec
    return nat.encode_record(typ, payload, attrs=attrs, msg_count=msg_count)


def decoded(rec, next_pos: int) -> nat.DecodedRecord:
    typ, msg_count, attrs, payload = rec
    return nat.DecodedRecord(typ, msg_count, attrs, payload, next_pos)


def prefix_lengths(n: int, everything_up_to: int = 4096) -> list[int]:
    """Every prefix length shorter than ``n`` for small records; for big ones,
    every length through the header and attrs region, the last 300, and a
    spread in between (each call is cheap, 70 000 of them per example are not)."""
    if n <= everything_up_to:
        return list(range(n))
    rng = random.Random(n)
    picks = set(range(512)) | set(range(n - 300, n)) | {rng.randrange(n) for _ in range(300)}
    return sorted(picks)


def check_decode(rec, trailing: bytes = b"", lead: bytes = b"") -> bytes:
    """Decode the encoding of ``rec`` whole, byte by byte, with trailing bytes
    and at a non-zero position; return the encoding."""
    data = encode(rec)
    n = len(data)

    # whole
    assert nat.decode_record(data) == decoded(rec, n)

    # one byte at a time: every shorter prefix asks for more
    view = memoryview(data)
    for k in prefix_lengths(n):
        assert nat.decode_record(view[:k]) is nat.NEEDMORE, f"prefix of {k}/{n} bytes"

    # with trailing bytes: same record, next stops at its end, trailing untouched
    buf = bytearray(data + trailing)
    before = bytes(buf)
    assert nat.decode_record(buf) == decoded(rec, n)
    assert bytes(buf) == before

    # at a position inside a larger buffer
    framed = lead + data + trailing
    assert nat.decode_record(framed, len(lead)) == decoded(rec, len(lead) + n)
    return data


# ---- round trips -----------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=records(), trailing=st.binary(max_size=40), lead=st.binary(max_size=20))
def test_round_trip_whole_byte_by_byte_and_with_trailing_bytes(rec, trailing, lead):
    check_decode(rec, trailing, lead)


@settings(max_examples=100, deadline=None)
@given(rec=records(max_payload=600, max_attrs=40), trailing=st.binary(max_size=40))
def test_round_trip_small_records_every_prefix(rec, trailing):
    # small sizes: every prefix is tried (prefix_lengths is exhaustive here)
    check_decode(rec, trailing)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 65537])
@pytest.mark.parametrize("attrs", [b"", b"\x81\xa1p\x01", bytes(range(256)) * 2])
def test_round_trip_edge_sizes(size, attrs):
    check_decode((nat.REC_DATA, 1, attrs, make_payload(size, size)), trailing=b"\x01" * 20)


def test_round_trip_largest_attrs():
    check_decode((nat.REC_CHECKPOINT, 0, b"\x5a" * nat.MAX_ATTRS, b"p"))


@settings(max_examples=50, deadline=None)
@given(recs=st.lists(records(max_payload=2000, max_attrs=50), min_size=1, max_size=8))
def test_back_to_back_records_decode_in_sequence(recs):
    buf = b"".join(encode(r) for r in recs)
    pos = 0
    for r in recs:
        got = nat.decode_record(buf, pos)
        assert (got.type, got.msg_count, got.attrs, got.payload) == r
        pos = got.next
    assert pos == len(buf)
    assert nat.decode_record(buf, pos) is nat.NEEDMORE  # nothing after the last one


def test_worked_example_from_docs_format_md():
    # docs/format.md "Worked example": the exact bytes of three records.
    hello = nat.encode_record(nat.REC_DATA, b"hello")
    assert hello == bytes.fromhex("4d7119cc 05000000 0000 01 00 01000000 68656c6c6f")
    batch = nat.encode_record(nat.REC_DATA, b'{"a":1},2', msg_count=2)
    assert batch == bytes.fromhex("f777bf8b 09000000 0000 01 00 02000000 7b2261223a317d2c32")
    close = nat.encode_record(nat.REC_CLOSE, b"", attrs=bytes.fromhex("81a17093a277310007"),
                              msg_count=0)
    assert close == bytes.fromhex("0255004f 00000000 0900 03 00 00000000 81a17093a277310007")


@settings(max_examples=100, deadline=None)
@given(rec=records(max_payload=3000, max_attrs=300))
def test_encoding_layout_matches_ub_format_h(rec):
    typ, msg_count, attrs, payload = rec
    data = encode(rec)
    crc, plen, alen, t, flags, count = struct.unpack_from("<IIHBBI", data)
    assert (plen, alen, t, flags, count) == (len(payload), len(attrs), typ, 0, msg_count)
    assert data[H:H + len(attrs)] == attrs and data[H + len(attrs):] == payload
    assert nat.crc_unmask(crc) == nat.crc32c(data[4:])


# ---- refused encodings --------------------------------------------------------------

@pytest.mark.parametrize("typ", [0, nat.REC_CHECKPOINT + 1, 255])
def test_encode_refuses_a_bad_type(typ):
    with pytest.raises(errors.InvalidArgument):
        nat.encode_record(typ, b"x")


def test_encode_refuses_attrs_over_the_limit():
    with pytest.raises(errors.RecordTooLarge):
        nat.encode_record(nat.REC_DATA, b"x", attrs=bytes(nat.MAX_ATTRS + 1))


# ---- damage is never accepted ------------------------------------------------------

def expect_corrupt(buf, reason: str, pos: int = 0) -> None:
    with pytest.raises(errors.CorruptSegment) as exc:
        nat.decode_record(buf, pos)
    assert exc.value.reason == reason
    assert exc.value.position == pos


def damaged(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def test_checksum_mismatch():
    data = nat.encode_record(nat.REC_DATA, b"hello world")
    expect_corrupt(damaged(data, H + 3, b"L"), "checksum mismatch")
    expect_corrupt(damaged(data, 0, b"\x00"), "checksum mismatch")          # the CRC itself
    expect_corrupt(damaged(data, 12, b"\x02"), "checksum mismatch")         # msg_count is covered


@pytest.mark.parametrize("length", [nat.MAX_PAYLOAD + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_bad_record_length(length):
    # An impossible length is corruption at once -- not NEEDMORE, which would
    # have a reader wait for gigabytes that will never come. The CRC is fixed
    # up so only the length check can catch it.
    data = bytearray(nat.encode_record(nat.REC_DATA, b"hello"))
    struct.pack_into("<I", data, 4, length)
    struct.pack_into("<I", data, 0, nat.crc_mask(nat.crc32c(bytes(data[4:]))))
    expect_corrupt(bytes(data), "bad record length")
    expect_corrupt(b"\x07" * 9 + bytes(data), "bad record length", pos=9)


@pytest.mark.parametrize("type_byte, flags", [(nat.REC_CHECKPOINT + 1, 0), (0xFF, 0),
                                               (0, 0), (nat.REC_DATA, 1), (nat.REC_DATA, 0x80)])
def test_bad_record_type(type_byte, flags):
    data = bytearray(nat.encode_record(nat.REC_DATA, b"hello"))
    data[10], data[11] = type_byte, flags
    struct.pack_into("<I", data, 0, nat.crc_mask(nat.crc32c(bytes(data[4:]))))
    expect_corrupt(bytes(data), "bad record type")


def test_zero_header():
    expect_corrupt(bytes(H), "zero header")
    expect_corrupt(bytes(4096), "zero header")
    expect_corrupt(nat.encode_record(nat.REC_DATA, b"ab") + bytes(H), "zero header",
                   pos=H + 2)
    # fewer than a header's worth of zeros cannot be judged yet
    assert nat.decode_record(bytes(H - 1)) is nat.NEEDMORE


def test_position_past_the_buffer_needs_more():
    data = nat.encode_record(nat.REC_DATA, b"hello")
    assert nat.decode_record(data, len(data)) is nat.NEEDMORE
    assert nat.decode_record(data, len(data) + 100) is nat.NEEDMORE


def claimed_size(buf: bytes) -> int:
    plen, alen = struct.unpack_from("<IH", buf, 4)
    return H + alen + plen


@settings(max_examples=200, deadline=None)
@given(rec=records(max_payload=2000, max_attrs=64), where=st.integers(0, 2**32),
       xor=st.integers(1, 255), trailing=st.sampled_from([b"", b"\x00" * 64, "record"]))
def test_a_flipped_byte_is_never_accepted(rec, where, xor, trailing):
    data = encode(rec)
    if trailing == "record":
        trailing = nat.encode_record(nat.REC_DATA, b"the next record " * 4)
    at = where % len(data)
    buf = bytearray(data + trailing)
    buf[at] ^= xor
    try:
        got = nat.decode_record(bytes(buf))
    except errors.CorruptSegment as exc:
        assert exc.reason in REASONS
        assert exc.position == 0
        return
    # The only other answer allowed: the flip enlarged a length past the buffer.
    assert got is nat.NEEDMORE, f"accepted a damaged record: {got!r}"
    assert 4 <= at < 10, "only a length field can make a record look longer"
    assert claimed_size(bytes(buf)) > len(buf)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200), pos=st.integers(0, 220))
def test_decoder_never_misbehaves_on_garbage(garbage, pos):
    # Whatever the bytes: NEEDMORE, a named CorruptSegment, or a record whose
    # canonical encoding is exactly the bytes it was decoded from.
    try:
        got = nat.decode_record(garbage, pos)
    except errors.CorruptSegment as exc:
        assert exc.reason in REASONS
        return
    if got is nat.NEEDMORE:
        assert pos > len(garbage) - H or claimed_size(garbage[pos:]) > len(garbage) - pos
        return
    again = nat.encode_record(got.type, got.payload, got.attrs, got.msg_count)
    assert garbage[pos:got.next] == again


@settings(max_examples=200, deadline=None)
@given(rec=records(max_payload=300, max_attrs=20), start=st.integers(0, 400),
       junk=st.binary(min_size=1, max_size=24))
def test_overwritten_slice_is_never_accepted(rec, start, junk):
    data = encode(rec)
    start %= len(data)
    buf = damaged(data, start, junk[:len(data) - start])
    if buf == data:
        return  # the "damage" wrote the same bytes
    try:
        got = nat.decode_record(buf)
    except errors.CorruptSegment as exc:
        assert exc.reason in REASONS
        return
    assert got is nat.NEEDMORE
    assert claimed_size(buf) > len(buf)
