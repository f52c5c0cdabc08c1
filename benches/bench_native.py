"""The C core through ``_native``, no files involved (group "native"):
CRC32C, record framing, JSON flattening."""
import json
import random

import pytest

from unbroken_engine import _native, errors

_random = random.Random(20241009)
DATA_64B = _random.randbytes(64)
DATA_1KB = _random.randbytes(1024)
DATA_64KB = _random.randbytes(64 * 1024)
DATA_1MB = _random.randbytes(1024 * 1024)


def _json_array(size: int) -> bytes:
    """A JSON array of small objects, padded with whitespace to exactly ``size`` bytes."""
    items, i = [], 0
    while len(json.dumps(items, separators=(",", ":"))) < size - 40:
        items.append({"id": i, "v": "abcdefgh"})
        i += 1
    text = json.dumps(items, separators=(",", ":")).encode()
    return text[:-1] + b" " * (size - len(text)) + b"]"


JSON_1KB = _json_array(1024)


def _json_ready() -> bool:
    try:
        return _native.json_flatten(b"[1,2]") == (b"1,2", 2)
    except errors.InvalidJSON:
        return False


needs_json = pytest.mark.skipif(
    not _json_ready(),
    reason="ub_json_flatten is still the placeholder in cext/ub_json.c (rejects all JSON)")

native = pytest.mark.benchmark(group="native")


@native
def test_crc32c_64b(benchmark):
    """CRC32C of 64 bytes."""
    assert benchmark(_native.crc32c, DATA_64B) == _native.crc32c_sw(DATA_64B)


@native
def test_crc32c_1kb(benchmark):
    """CRC32C of 1 KiB."""
    assert benchmark(_native.crc32c, DATA_1KB) == _native.crc32c_sw(DATA_1KB)


@native
def test_crc32c_64kb(benchmark):
    """CRC32C of 64 KiB."""
    assert benchmark(_native.crc32c, DATA_64KB) == _native.crc32c_sw(DATA_64KB)


@native
def test_crc32c_1mb(benchmark):
    """CRC32C of 1 MiB."""
    assert benchmark(_native.crc32c, DATA_1MB) == _native.crc32c_sw(DATA_1MB)


@native
def test_encode_record_64b(benchmark):
    """Frame a 64-byte data record into new bytes."""
    out = benchmark(_native.encode_record, _native.REC_DATA, DATA_64B)
    assert len(out) == _native.REC_HEADER_SIZE + 64


@native
def test_encode_record_1kb(benchmark):
    """Frame a 1 KiB data record into new bytes."""
    out = benchmark(_native.encode_record, _native.REC_DATA, DATA_1KB)
    assert len(out) == _native.REC_HEADER_SIZE + 1024


@native
def test_encode_record_64kb(benchmark):
    """Frame a 64 KiB data record into new bytes."""
    out = benchmark(_native.encode_record, _native.REC_DATA, DATA_64KB)
    assert len(out) == _native.REC_HEADER_SIZE + 64 * 1024


@native
def test_decode_record_64b(benchmark):
    """Decode (CRC-check, copy out) a 64-byte record."""
    rec = _native.encode_record(_native.REC_DATA, DATA_64B)
    assert benchmark(_native.decode_record, rec).payload == DATA_64B


@native
def test_decode_record_1kb(benchmark):
    """Decode (CRC-check, copy out) a 1 KiB record."""
    rec = _native.encode_record(_native.REC_DATA, DATA_1KB)
    assert benchmark(_native.decode_record, rec).payload == DATA_1KB


@native
def test_decode_record_64kb(benchmark):
    """Decode (CRC-check, copy out) a 64 KiB record."""
    rec = _native.encode_record(_native.REC_DATA, DATA_64KB)
    assert benchmark(_native.decode_record, rec).payload == DATA_64KB


@native
@needs_json
def test_json_flatten_1kb(benchmark):
    """Validate and flatten a 1 KiB JSON array of small objects."""
    _, count = benchmark(_native.json_flatten, JSON_1KB)
    assert count == len(json.loads(JSON_1KB))


@native
@needs_json
def test_json_validate_1kb(benchmark):
    """Validate a 1 KiB JSON array of small objects."""
    is_array, count = benchmark(_native.json_validate, JSON_1KB)
    assert is_array and count == len(json.loads(JSON_1KB))
