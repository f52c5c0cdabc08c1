"""Smoke tests of the C boundary: it imports, its constants are the ones
``cext/ub_format.h`` documents, and its CRC32C gives the published answers.

The header is parsed as text, so a constant changed in C but not re-exported
(or re-exported under the wrong name) fails here, not in a corrupted file.
"""
from __future__ import annotations

import ast
import operator
import os
import platform
import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine._cext import lib

CEXT = Path(__file__).resolve().parents[2] / "cext"

_DEFINE = re.compile(r"^#define[ \t]+(UB_\w+)[ \t]+(.+?)[ \t]*(?:/\*.*)?$", re.M)
_CDEF_DEFINE = re.compile(r"^#define[ \t]+(UB_\w+)[ \t]+\.\.\.", re.M)
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.LShift: operator.lshift}


def _eval(expr: str, known: dict):
    """Value of a C constant expression made of literals, known names, + - * <<."""
    if expr.startswith('"'):
        return ast.literal_eval(expr).encode()
    tree = ast.parse(re.sub(r"\b(\d+)[uU][lL]*\b", r"\1", expr), mode="eval")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot evaluate {expr!r}")

    return ev(tree)


def parse_defines(header: str) -> dict:
    """``{name: value}`` for every ``#define UB_...`` with a value in a header."""
    values: dict = {}
    for name, expr in _DEFINE.findall((CEXT / header).read_text()):
        if name.endswith("_H"):
            continue
        values[name] = _eval(expr.strip(), values)
    return values


FORMAT = parse_defines("ub_format.h")
ERRORS = parse_defines("ub_errors.h")
# Constants the cffi cdef re-exports (``#define UB_X ...``): what Python can see.
CDEF = set(_CDEF_DEFINE.findall((CEXT / "ub.cdef").read_text()))


def test_module_imports():
    import unbroken_engine

    assert unbroken_engine.SegmentedLog is not None
    assert nat.ffi is not None and nat.lib is lib


def test_header_parser_sees_the_format():
    # Guards the tests below against a regex that silently matched nothing.
    assert FORMAT["UB_SEG_MAGIC"] == b"UBSEGv1\n"
    assert FORMAT["UB_MAX_PAYLOAD"] == 256 * 1024 * 1024
    assert len(FORMAT) >= 20
    assert ERRORS["UB_OK"] == 0 and len(ERRORS) >= 10
    assert len(CDEF) >= 30


@pytest.mark.parametrize("name", sorted(n for n, v in FORMAT.items()
                                         if isinstance(v, int) and n in CDEF))
def test_cffi_constant_agrees_with_ub_format_h(name):
    assert getattr(lib, name) == FORMAT[name]


def test_cdef_reexports_the_format_python_needs():
    needed = {"UB_SEG_HEADER_SIZE", "UB_REC_HEADER_SIZE", "UB_IDX_HEADER_SIZE",
              "UB_IDX_ENTRY_SIZE", "UB_MAX_PAYLOAD", "UB_MAX_ATTRS", "UB_MAX_RECORD",
              "UB_REC_ZERO", "UB_REC_DATA", "UB_REC_DATA_CLOSE", "UB_REC_CLOSE",
              "UB_REC_CHECKPOINT", "UB_REC_MAX_TYPE", "UB_FORMAT_VERSION"}
    assert needed <= CDEF
    assert set(ERRORS) <= CDEF


@pytest.mark.parametrize("exported, name", [
    ("SEG_HEADER_SIZE", "UB_SEG_HEADER_SIZE"),
    ("REC_HEADER_SIZE", "UB_REC_HEADER_SIZE"),
    ("MAX_PAYLOAD", "UB_MAX_PAYLOAD"),
    ("MAX_ATTRS", "UB_MAX_ATTRS"),
    ("MAX_RECORD", "UB_MAX_RECORD"),
    ("DEFAULT_SEGMENT_SIZE", "UB_DEFAULT_SEGMENT_SIZE"),
    ("DEFAULT_INDEX_INTERVAL", "UB_DEFAULT_INDEX_INTERVAL"),
    ("REC_DATA", "UB_REC_DATA"),
    ("REC_DATA_CLOSE", "UB_REC_DATA_CLOSE"),
    ("REC_CLOSE", "UB_REC_CLOSE"),
    ("REC_CHECKPOINT", "UB_REC_CHECKPOINT"),
    ("REC_ZERO", "UB_REC_ZERO"),
    ("REC_MAX_TYPE", "UB_REC_MAX_TYPE"),
    ("FORMAT_VERSION", "UB_FORMAT_VERSION"),
    ("MAGIC_SIZE", "UB_MAGIC_SIZE"),
    ("SEG_MAGIC", "UB_SEG_MAGIC"),
    ("IDX_MAGIC", "UB_IDX_MAGIC"),
    ("SEG_HEADER_CRC_POS", "UB_SEG_HEADER_CRC_POS"),
    ("REC_TYPE_POS", "UB_REC_TYPE_POS"),
    ("IDX_HEADER_SIZE", "UB_IDX_HEADER_SIZE"),
    ("IDX_HEADER_CRC_POS", "UB_IDX_HEADER_CRC_POS"),
    ("IDX_ENTRY_SIZE", "UB_IDX_ENTRY_SIZE"),
])
def test_native_reexport_agrees_with_ub_format_h(exported, name):
    assert getattr(nat, exported) == FORMAT[name]


@pytest.mark.parametrize("attrs_len, payload_len", [(0, 0), (3, 0), (0, 1 << 20), (65535, 7)])
def test_record_size_is_the_c_one(attrs_len, payload_len):
    assert nat.record_size(attrs_len, payload_len) == lib.ub_record_size(attrs_len, payload_len)


def test_verify_struct_layouts_have_the_c_sizes():
    # unbroken_engine.tools.verify reads index files and record headers with
    # struct formats; their sizes and positions must be ub_format.h's.
    import struct

    from unbroken_engine.tools import verify as v

    assert v.REC_HEADER_FIELDS.size == FORMAT["UB_REC_HEADER_SIZE"]
    assert struct.calcsize(v.REC_HEADER_FIELDS.format[:4]) == FORMAT["UB_REC_TYPE_POS"]
    assert v.REC_HEADER_FIELDS.format[4:6] == "BB"  # type, then the flags byte
    assert v.IDX_ENTRY.size == FORMAT["UB_IDX_ENTRY_SIZE"]
    assert v.IDX_HEADER_FIELDS.format.startswith(f"<{FORMAT['UB_MAGIC_SIZE']}s")
    assert v.IDX_HEADER_FIELDS.size <= FORMAT["UB_IDX_HEADER_CRC_POS"]
    assert FORMAT["UB_IDX_HEADER_CRC_POS"] + v.CRC.size == FORMAT["UB_IDX_HEADER_SIZE"]
    assert v.HEADER == FORMAT["UB_SEG_HEADER_SIZE"] and v.REC_HEADER == v.REC_HEADER_FIELDS.size


def test_format_constants_are_consistent():
    assert FORMAT["UB_MAX_RECORD"] == (FORMAT["UB_REC_HEADER_SIZE"] + FORMAT["UB_MAX_ATTRS"]
                                       + FORMAT["UB_MAX_PAYLOAD"])
    assert len(FORMAT["UB_SEG_MAGIC"]) == len(FORMAT["UB_IDX_MAGIC"]) == FORMAT["UB_MAGIC_SIZE"]
    assert FORMAT["UB_SEG_HEADER_CRC_POS"] + 4 == FORMAT["UB_SEG_HEADER_SIZE"]
    assert FORMAT["UB_IDX_HEADER_CRC_POS"] + 4 == FORMAT["UB_IDX_HEADER_SIZE"]
    assert FORMAT["UB_REC_TYPE_POS"] + 2 <= FORMAT["UB_REC_HEADER_SIZE"]
    types = [FORMAT[f"UB_REC_{t}"] for t in ("DATA", "DATA_CLOSE", "CLOSE", "CHECKPOINT")]
    assert FORMAT["UB_REC_ZERO"] == 0 not in types
    assert sorted(types) == list(range(1, FORMAT["UB_REC_MAX_TYPE"] + 1))


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_code_agrees_with_ub_errors_h(name):
    assert getattr(lib, name) == ERRORS[name]


def test_error_codes_and_messages_are_distinct():
    codes = [v for n, v in ERRORS.items() if n != "UB_OK"]
    assert len(set(codes)) == len(codes) and all(c < 0 for c in codes)
    messages = {nat.ffi.string(lib.ub_strerror(c)) for c in codes}
    assert len(messages) == len(codes) and b"" not in messages
    assert nat.NEEDMORE == ERRORS["UB_ENEEDMORE"] and nat.ECORRUPT == ERRORS["UB_ECORRUPT"]


def _error_classes():
    return [c for c in vars(errors).values()
            if isinstance(c, type) and getattr(c, "UB_NAME", None)]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_each_error_class_names_a_real_code(cls):
    assert cls.UB_NAME in ERRORS
    assert issubclass(cls, errors.UnbrokenError)
    with pytest.raises(cls):
        nat.check(ERRORS[cls.UB_NAME], "smoke")


def test_check_ok_is_silent():
    nat.check(0, "smoke")


# ---- CRC32C ------------------------------------------------------------------

# "123456789" -> 0xE3069283 is the published check value of CRC-32C (Castagnoli),
# e.g. in the "Catalogue of parametrised CRC algorithms" (CRC-32/ISCSI) and
# LevelDB's util/crc32c_test.cc. The other four are the iSCSI test vectors of
# RFC 3720, appendix B.4 (the RFC prints each CRC as its little-endian bytes:
# "aa 36 91 8a" for 32 zero bytes is 0x8A9136AA).
KNOWN_ANSWERS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data, expected", KNOWN_ANSWERS, ids=["check", "zeros", "ones",
                                                               "ascending", "descending"])
@pytest.mark.parametrize("impl", [nat.crc32c, nat.crc32c_sw], ids=["crc32c", "crc32c_sw"])
def test_crc32c_known_answers(impl, data, expected):
    assert impl(data) == expected


def test_crc32c_empty_is_zero_and_extend_of_nothing_is_identity():
    assert nat.crc32c(b"") == 0 == nat.crc32c_sw(b"")
    assert nat.crc32c(b"", 0xE3069283) == 0xE3069283


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64")
                    or os.environ.get("UNBROKEN_CEXT_NO_SSE42"),
                    reason="the SSE4.2 path exists on x86-64 builds only")
def test_hardware_path_is_used_where_the_cpu_has_it():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert nat.crc32c_hw_active() == (" sse4_2" in flags)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), align=st.integers(0, 15), seed=st.integers(0, 2**32 - 1))
def test_crc32c_hardware_and_table_paths_agree(data, align, seed):
    # Misalign the start on purpose: both paths have an unaligned head loop.
    view = memoryview(bytes(align) + data)[align:]
    assert nat.crc32c(view) == nat.crc32c_sw(view)
    assert nat.crc32c(view, seed) == nat.crc32c_sw(view, seed)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000), cut=st.integers(0, 2000))
def test_crc32c_extends(data, cut):
    cut = min(cut, len(data))
    assert nat.crc32c(data[cut:], nat.crc32c(data[:cut])) == nat.crc32c(data)
    assert nat.crc32c_sw(data[cut:], nat.crc32c_sw(data[:cut])) == nat.crc32c(data)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=512), pos=st.integers(0, 511), bit=st.integers(0, 7))
def test_crc32c_detects_any_single_bit_flip(data, pos, bit):
    pos %= len(data)
    damaged = bytearray(data)
    damaged[pos] ^= 1 << bit
    assert nat.crc32c(bytes(damaged)) != nat.crc32c(data)


# ---- masking -----------------------------------------------------------------

MASK_DELTA = 0xA282EAD8  # LevelDB util/crc32c.h kMaskDelta


def leveldb_mask(crc: int) -> int:
    """LevelDB's Mask(): rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


# Masking is a bijection of u32, so it has fixed points: these two (found by
# brute force over all 2**32 values) are the only ones. A stored CRC equal to
# one of them is still checked correctly; it just looks unmasked.
MASK_FIXED_POINTS = {0x8299F00B, 0xD7EE9AB5}


def test_mask_fixed_points():
    for x in MASK_FIXED_POINTS:
        assert nat.crc_mask(x) == x == leveldb_mask(x)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mask_matches_leveldb_and_unmask_inverts_it(crc):
    assert nat.crc_mask(crc) == leveldb_mask(crc)
    assert nat.crc_unmask(nat.crc_mask(crc)) == crc
    assert nat.crc_mask(nat.crc_unmask(crc)) == crc


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=256))
def test_mask_changes_a_crc(data):
    crc = nat.crc32c(data)
    assume(crc not in MASK_FIXED_POINTS)
    assert nat.crc_mask(crc) != crc
    assert nat.crc_mask(nat.crc_mask(crc)) != crc


@pytest.mark.parametrize("data, crc", KNOWN_ANSWERS + [(b"foo", nat.crc32c(b"foo"))])
def test_mask_changes_known_crcs(data, crc):
    # LevelDB crc32c_test "Mask": Mask(crc) != crc and Mask(Mask(crc)) != crc.
    assert nat.crc_mask(crc) != crc
    assert nat.crc_mask(nat.crc_mask(crc)) != crc
    assert nat.crc_unmask(nat.crc_mask(crc)) == crc


def test_sync_counter_counts_every_segment_flush(tmp_path):
    """``_test_sync_count`` is what the durability tests count flushes with:
    one per segment sync (failed ones too) and per synced seal, none for a
    seal left to a later sync."""
    seg = nat.NativeSegment.create(str(tmp_path / "a.seg"), 0, 0, 0, 4096, 256)
    try:
        before = nat._test_sync_count()
        seg.append(nat.REC_DATA, 1, b"", b"one")
        assert nat._test_sync_count() == before  # an append alone never flushes
        seg.sync()
        assert nat._test_sync_count() == before + 1
        nat._test_fail_next_sync(1)
        with pytest.raises(errors.StorageIOError):
            seg.sync()
        assert nat._test_fail_next_sync(0) == 0
        assert nat._test_sync_count() == before + 2
        seg.seal(str(tmp_path / "a.idx"), sync=False)
        assert nat._test_sync_count() == before + 2
        seg.sync()
        assert nat._test_sync_count() == before + 3
    finally:
        seg.close()
    other = nat.NativeSegment.create(str(tmp_path / "b.seg"), 0, 0, 0, 4096, 256)
    try:
        other.append(nat.REC_DATA, 1, b"", b"two")
        before = nat._test_sync_count()
        other.seal(str(tmp_path / "b.idx"), sync=True)
        assert nat._test_sync_count() == before + 1
    finally:
        other.close()
