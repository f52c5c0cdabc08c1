"""Strict JSON validation and array flattening (cext/ub_json.c).

The oracle (tests/support/json_oracle.py, shared with the fuzz target
tests/faults/fuzz_targets/fuzz_json.py) is Python's own parser in its
strictest form (``python_accepts``), plus the one rule where we are
deliberately stricter than ``json.loads``: nesting deeper than
``UB_JSON_MAX_DEPTH`` (512, the top-level container is depth 1) is rejected.
Like ``json.loads``, lone surrogate escapes (``"\\ud800"``, ``"\\udc00"``, a
reversed pair) are accepted: RFC 8259 allows any ``\\uXXXX`` escape; raw
bytes must still be well-formed UTF-8.

The oracle keeps numbers as their text, so that Python's 4300-digit
int-conversion limit does not turn a valid huge number into a rejection.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.json_oracle import DECODER, MAX_DEPTH, WS, loads, python_accepts
from unbroken_engine import _native
from unbroken_engine.errors import InvalidJSON

# ---- calling the native code --------------------------------------------------

def _validate(data: bytes):
    """(is_array, count), or the InvalidJSON raised."""
    try:
        return _native.json_validate(data)
    except InvalidJSON as exc:
        return exc


def _flatten(data: bytes):
    try:
        return _native.json_flatten(data)
    except InvalidJSON as exc:
        return exc


def _split_elements(joined: bytes):
    """Split flatten's output back into element texts with Python's parser;
    asserts each element starts right where the previous ',' ended."""
    text = joined.decode("utf-8")
    elements, i = [], 0
    while text:
        _, end = DECODER.raw_decode(text, i)   # no whitespace skipping here
        elements.append(text[i:end])
        if end == len(text):
            break
        assert text[end] == ",", (text, end)
        i = end + 1
    return elements


def assert_flatten_round_trips(data: bytes):
    """The properties of a valid document's flatten output."""
    value = loads(data)
    joined, count = _native.json_flatten(data)
    is_array, vcount = _native.json_validate(data)
    assert vcount == count
    assert len(joined) <= len(data)
    if not isinstance(value, list):
        assert not is_array
        assert count == 1
        assert joined == data.strip(WS)
        return
    assert is_array
    assert count == len(value)
    assert loads(b"[" + joined + b"]") == value
    # Elements are verbatim, in order, non-overlapping substrings of the input.
    elements = _split_elements(joined)
    assert len(elements) == count
    source, at = data.decode("utf-8"), 0
    for element in elements:
        found = source.find(element, at)
        assert found >= 0, (element, source)
        at = found + len(element)


def assert_agrees_with_python(data: bytes):
    expected = python_accepts(data)
    validated, flattened = _validate(data), _flatten(data)
    if expected:
        assert not isinstance(validated, InvalidJSON), (data[:200], validated)
        assert not isinstance(flattened, InvalidJSON), (data[:200], flattened)
        assert_flatten_round_trips(data)
    else:
        assert isinstance(validated, InvalidJSON), (data[:200], validated)
        assert isinstance(flattened, InvalidJSON), (data[:200], flattened)
        assert validated.position == flattened.position
        assert 0 <= validated.position <= len(data)


# ---- corpus -------------------------------------------------------------------

def nested(depth: int, inner: bytes = b"0") -> bytes:
    """depth containers, alternating array and object."""
    opens, closes = [], []
    for level in range(depth):
        if level % 2:
            opens.append(b'{"k":')
            closes.append(b"}")
        else:
            opens.append(b"[")
            closes.append(b"]")
    return b"".join(opens) + inner + b"".join(reversed(closes))


VALID = {
    # numbers at the edges
    "zero": b"0",
    "minus_zero": b"-0",
    "zero_exponent": b"0e0",
    "exponent_plus": b"1E+2",
    "exponent_minus": b"1e-2",
    "large_double": b"1.5e308",
    "overflowing_double": b"1e999",
    "negative_fraction_exponent": b"-1.25E-10",
    "minus_zero_fraction": b"-0.0e-0",
    "huge_integer": b"123456789" * 1000,
    "huge_fraction": b"0." + b"9" * 5000,
    "numbers_in_array": b"[0,-0,1,-1,1.0,1e1,1E1,1e+1,1e-1,10,99.99]",
    # literals
    "true": b"true",
    "false": b"false",
    "null": b"null",
    # strings
    "empty_string": b'""',
    "every_simple_escape": b'"\\" \\\\ \\/ \\b \\f \\n \\r \\t"',
    "unicode_escapes_both_cases": b'"\\u0041\\u00e9\\uABCD\\uabcd\\uFfFf"',
    "escaped_nul": b'"\\u0000"',
    "escaped_control_chars": b'"\\u001f\\u0001\\n\\t"',
    "surrogate_pair": b'"\\ud83d\\ude00"',
    "surrogate_pair_upper": b'"\\uD83D\\uDE00"',
    "surrogate_pair_lowest": b'"\\ud800\\udc00"',
    "surrogate_pair_highest": b'"\\udbff\\udfff"',
    # lone surrogate escapes: valid JSON (RFC 8259 section 7), as JSON.stringify writes them
    "lone_high_surrogate": b'"\\ud800"',
    "lone_low_surrogate": b'"\\udc00"',
    "high_surrogate_then_char": b'"\\ud800x"',
    "high_surrogate_then_bmp_escape": b'"\\ud800\\u0041"',
    "two_high_surrogates": b'"\\ud800\\ud800"',
    "reversed_pair": b'"\\udc00\\ud800"',
    "high_surrogate_then_newline_escape": b'"\\ud83d\\n"',
    "high_surrogate_at_string_end": b'["a\\udbff", 1]',
    "lone_surrogate_in_key": b'{"\\udfff":1}',
    "lone_surrogate_under_duplicate_key": b'{"a":"\\ud800","a":1}',
    "raw_utf8": '"é € 😀 中文"'.encode(),
    "raw_max_code_point": b'"\xf4\x8f\xbf\xbf"',
    "raw_before_surrogates": b'"\xed\x9f\xbf"',
    "raw_after_surrogates": b'"\xee\x80\x80"',
    "raw_u_ffff": b'"\xef\xbf\xbf"',
    "raw_del": b'"\x7f"',
    "long_ascii_string": b'"' + b"abcdefgh" * 1000 + b'"',
    "long_string_with_escapes": b'"' + b"abcdefg\\n\xc3\xa9" * 500 + b'"',
    # structure
    "empty_array": b"[]",
    "empty_array_with_whitespace": b"[ \n ]",
    "empty_object": b"{}",
    "empty_object_with_whitespace": b"{ \t }",
    "surrounding_whitespace": b"\t\n\r 1 \r\n\t",
    "object": b'{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
    "duplicate_keys": b'{"a":1,"a":2}',
    "empty_key": b'{"":0}',
    "whitespace_everywhere": b' [ 1 , [ 2 , 3 ] , { "k" : "v" , "l" : [ ] } ] ',
    "nested_empty": b"[[],{},[[]],{\"a\":{}}]",
    "array_depth_512": b"[" * 512 + b"]" * 512,
    "mixed_depth_512": nested(512),
    "object_depth_512": b'{"a":' * 511 + b"{}" + b"}" * 511,
}

INVALID = {
    # empty, whitespace, BOM
    "empty": b"",
    "space_only": b" ",
    "whitespace_only": b"\n\t\r ",
    "bom_array": b"\xef\xbb\xbf[]",
    "bom_number": b"\xef\xbb\xbf1",
    "vertical_tab_whitespace": b"[1\x0b]",
    "nbsp_whitespace": b"\xc2\xa01",
    "nul_before_value": b"\x001",
    # non-standard constants
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus_infinity": b"-Infinity",
    "nan_in_array": b"[NaN]",
    # numbers
    "lone_minus": b"-",
    "leading_zero": b"01",
    "negative_leading_zero": b"-01",
    "double_zero": b"00",
    "leading_plus": b"+1",
    "leading_dot": b".5",
    "trailing_dot": b"1.",
    "dot_before_exponent": b"1.e5",
    "exponent_without_digits": b"1e",
    "exponent_sign_without_digits": b"1e+",
    "exponent_minus_without_digits": b"1E-",
    "exponent_dot": b"1e.5",
    "exponent_two_signs": b"1E+-5",
    "hex": b"0x10",
    "double_minus": b"--1",
    "two_dots": b"1.5.",
    "space_after_minus": b"- 1",
    "huge_integer_leading_zero": b"0" + b"1" * 5000,
    "minus_in_array": b"[-]",
    # literals
    "truncated_true": b"tru",
    "truncated_null": b"nul",
    "truncated_false": b"fals",
    "capitalised_true": b"True",
    "upper_null": b"NULL",
    "true_with_suffix": b"truex",
    "null_with_suffix": b"nulll",
    # trailing garbage
    "two_numbers": b"1 2",
    "array_then_word": b"[] x",
    "extra_close_brace": b"{}}",
    "extra_close_bracket": b"[]]",
    "two_strings": b'"a" "b"',
    "two_arrays": b"[1] [2]",
    "trailing_comma_top_level": b"1,",
    # structure
    "trailing_comma_in_array": b"[1,]",
    "trailing_comma_in_object": b'{"a":1,}',
    "leading_comma_in_array": b"[,1]",
    "double_comma": b"[1,,2]",
    "comma_only_object": b"{,}",
    "missing_colon": b'{"a" 1}',
    "missing_value": b'{"a":}',
    "key_without_value": b'{"a"}',
    "number_key": b"{1:2}",
    "null_key": b"{null:1}",
    "array_key": b"{[]:1}",
    "single_quoted_key": b"{'a':1}",
    "missing_comma_in_object": b'{"a":1 "b":2}',
    "missing_comma_in_array": b"[1 2]",
    "unclosed_array": b"[",
    "unclosed_object": b"{",
    "lone_close_bracket": b"]",
    "lone_close_brace": b"}",
    "unclosed_object_after_value": b'{"a":1',
    "unclosed_array_after_value": b"[1",
    "unclosed_array_after_string": b'["a"',
    "mismatched_brackets": b"[1}",
    "mismatched_braces": b'{"a":1]',
    "colon_in_array": b"[1:2]",
    # strings
    "unterminated_string": b'"abc',
    "single_quotes": b"'a'",
    "escape_x": b'"\\x41"',
    "escape_short_unicode": b'"\\u12"',
    "escape_bad_hex": b'"\\u12G4"',
    "escape_upper_u": b'"\\U0041"',
    "escape_at_end": b'"\\',
    "escape_u_at_end": b'"\\u',
    "escape_apostrophe": b'"\\\'"',
    "escape_zero": b'"\\0"',
    "raw_nul": b'"\x00"',
    "raw_unit_separator": b'"\x1f"',
    "raw_newline": b'"\n"',
    "raw_tab": b'"\t"',
    # a surrogate escape with bad hex is still a bad escape
    "surrogate_escape_short": b'"\\ud80"',
    "low_surrogate_escape_bad_hex": b'"\\ud800\\udcx0"',
    # invalid UTF-8
    "overlong_nul": b'"\xc0\x80"',
    "overlong_two_byte": b'"\xc1\xbf"',
    "overlong_three_byte": b'"\xe0\x80\x80"',
    "overlong_four_byte": b'"\xf0\x80\x80\x80"',
    "utf8_surrogate_low_end": b'"\xed\xa0\x80"',
    "utf8_surrogate_high_end": b'"\xed\xbf\xbf"',
    "above_max_code_point": b'"\xf4\x90\x80\x80"',
    "lead_f5": b'"\xf5\x80\x80\x80"',
    "byte_ff": b'"\xff"',
    "lone_continuation": b'"\x80"',
    "truncated_two_byte_before_quote": b'"\xc3"',
    "truncated_three_byte_before_quote": b'"\xe2\x82"',
    "truncated_four_byte_at_end": b'"\xf0\x9f\x98',
    "truncated_two_byte_at_end": b'"\xc3',
    "raw_utf8_outside_string": "é".encode(),
    "raw_utf8_in_array": "[é]".encode(),
    # depth
    "array_depth_513": b"[" * 513 + b"]" * 513,
    "mixed_depth_513": nested(513),
    "object_depth_513": b'{"a":' * 512 + b"{}" + b"}" * 512,
    "unclosed_brackets_100000": b"[" * 100_000,
    "balanced_brackets_100000": b"[" * 100_000 + b"]" * 100_000,
    "unclosed_objects_100000": b'{"a":' * 100_000,
}


@pytest.mark.parametrize("data", VALID.values(), ids=VALID.keys())
def test_accepts_valid_document(data):
    assert python_accepts(data), "corpus entry is not valid per the oracle"
    assert_agrees_with_python(data)


@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_rejects_invalid_document(data):
    assert not python_accepts(data), "corpus entry is valid per the oracle"
    assert_agrees_with_python(data)


def test_oracle_treats_depth_as_stricter_than_python():
    # Python itself accepts this; our documented choice is to refuse it.
    data = b"[" * 513 + b"]" * 513
    json.loads(data)
    assert not python_accepts(data)
    assert isinstance(_validate(data), InvalidJSON)


@pytest.mark.parametrize("data, messages", [
    (b'"\\ud800"', [b'"\\ud800"']),
    (b'["\\udc00", "a\\ud800b"]', [b'"\\udc00"', b'"a\\ud800b"']),
    (b'{"\\ud800": 1}', [b'{"\\ud800": 1}']),
    (b'["\\udc00\\ud800"]', [b'"\\udc00\\ud800"']),
])
def test_lone_surrogate_escapes_are_kept_verbatim(data, messages):
    """What JSON.stringify writes for a string holding a lone surrogate is
    accepted, and the escapes are kept byte for byte."""
    assert _native.json_flatten(data) == (b",".join(messages), len(messages))


def test_encoded_surrogate_bytes_are_still_refused():
    """An escape may name a surrogate; raw UTF-8 bytes may not encode one."""
    for data in (b'"\xed\xa0\x80"', b'"\xed\xb0\x80"', b'["\\ud800", "\xed\xbf\xbf"]'):
        assert isinstance(_validate(data), InvalidJSON)
        assert isinstance(_flatten(data), InvalidJSON)


def test_rejects_trailing_comma_in_array():
    with pytest.raises(InvalidJSON) as info:
        _native.json_flatten(b"[1,2,]")
    assert info.value.position == 5


def test_rejects_trailing_comma_in_object():
    with pytest.raises(InvalidJSON) as info:
        _native.json_validate(b'{"a":1,}')
    assert info.value.position == 7


@pytest.mark.parametrize("data, position", [
    (b"", 0),
    (b"   ", 3),
    (b"\xef\xbb\xbf[]", 0),
    (b"1 2", 2),
    (b"[] x", 3),
    (b"{}}", 2),
    (b"01", 1),
    (b"1.", 2),
    (b"-", 1),
    (b"tru", 3),
    (b"True", 0),
    (b'{"a" 1}', 5),
    (b'{1:2}', 1),
    (b'"\\x"', 2),
    (b'"\\u12"', 5),
    (b'"abc', 4),
    (b'"a\nb"', 2),
    (b'"\\ud80"', 6),
    (b'"\\ud800\\udcx0"', 11),
    (b'"\xc0\x80"', 1),
    (b'"\xed\xa0\x80"', 2),
    (b'"\xf4\x90\x80\x80"', 2),
    (b'"\xe2\x82"', 3),
    (b'"\xc3', 2),
    (b"[" * 513 + b"]" * 513, 512),
    (b"[1" + b"," * 3, 3),
])
def test_error_position_is_where_the_error_was_detected(data, position):
    for call in (_native.json_validate, _native.json_flatten):
        with pytest.raises(InvalidJSON) as info:
            call(data)
        assert info.value.position == position


# Every byte class placed at each offset of a string longer than 8 bytes, so
# that both the 8-bytes-at-a-time fast path and the byte loop meet it.
BAD_IN_STRING = [b"\x00", b"\x01", b"\x1f", b"\n", b"\x80", b"\xbf", b"\xc0\x80", b"\xc3(",
                 b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\\x", b"\\ud8x"]
GOOD_IN_STRING = [b"\x7f", b" ", b"\\\"", b"\\\\", b"\\u00e9", b"\xc3\xa9",
                  b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\\ud83d\\ude00", b"\\ud800a",
                  b"\\udc00\\ud800"]


@pytest.mark.parametrize("offset", range(18))
def test_rejects_bad_string_byte_at_every_alignment(offset):
    for bad in BAD_IN_STRING:
        data = b'["' + b"a" * offset + bad + b"b" * 20 + b'"]'
        assert not python_accepts(data)
        assert_agrees_with_python(data)


@pytest.mark.parametrize("offset", range(18))
def test_accepts_good_string_bytes_at_every_alignment(offset):
    for good in GOOD_IN_STRING:
        data = b'["' + b"a" * offset + good + b"b" * 20 + b'", 1]'
        assert python_accepts(data)
        assert_agrees_with_python(data)
        assert _native.json_flatten(data) == (data[1:-4] + b",1", 2)


@pytest.mark.parametrize("offset", range(18))
def test_string_ends_at_first_unescaped_quote_at_every_alignment(offset):
    data = b'"' + b"a" * offset + b'"' + b"b" * 20 + b'"'
    with pytest.raises(InvalidJSON) as info:
        _native.json_validate(data)
    assert info.value.position == offset + 2


# ---- depth limit --------------------------------------------------------------

def test_depth_512_is_accepted_and_flattens_to_one_element():
    data = b"[" * 512 + b"]" * 512
    assert _native.json_flatten(data) == (data[1:-1], 1)
    assert _native.json_validate(data) == (True, 1)


def test_depth_limit_counts_the_top_level_array():
    ok = b'[{"a":' + nested(510) + b"}]"           # 1 + 1 + 510 = 512
    too_deep = b'[{"a":' + nested(511) + b"}]"
    assert _native.json_validate(ok) == (True, 1)
    with pytest.raises(InvalidJSON) as info:
        _native.json_validate(too_deep)
    # '[{"a":' then 255 '[' and 255 '{"k":' reach depth 512; the next '[' fails.
    assert info.value.position == 6 + 255 * 1 + 255 * 5


def test_ten_megabytes_of_open_brackets_is_rejected_at_the_depth_limit():
    data = b"[" * (10 * 1024 * 1024)
    for call in (_native.json_validate, _native.json_flatten):
        with pytest.raises(InvalidJSON) as info:
            call(data)
        assert info.value.position == MAX_DEPTH


def test_deep_but_closed_siblings_do_not_accumulate_depth():
    data = b"[" + b",".join([b"[" * 511 + b"]" * 511] * 200) + b"]"
    assert _native.json_validate(data) == (True, 200)


# ---- flatten output -----------------------------------------------------------

def test_flatten_keeps_elements_verbatim():
    assert _native.json_flatten(b'[ {"a" : 1} , "x y" ]') == (b'{"a" : 1},"x y"', 2)


def test_flatten_keeps_internal_whitespace_escapes_and_number_spelling():
    data = b'[\n  [ 1 ,\t2 ] ,\r\n"\\u00e9 \xc3\xa9\\n" , 1.50e+01,-0 ,\n{ "k" :\n[ ] }\n]\n'
    expected = b'[ 1 ,\t2 ],"\\u00e9 \xc3\xa9\\n",1.50e+01,-0,{ "k" :\n[ ] }'
    assert _native.json_flatten(data) == (expected, 5)
    assert_flatten_round_trips(data)


@pytest.mark.parametrize("data", [b"[]", b"[ \n ]", b" \t[\r\n]\n "])
def test_flatten_empty_array_gives_no_messages(data):
    assert _native.json_flatten(data) == (b"", 0)
    assert _native.json_validate(data) == (True, 0)


@pytest.mark.parametrize("data, value", [
    (b' {"a": [1, 2]} \n', b'{"a": [1, 2]}'),
    (b'\t"s p"\r', b'"s p"'),
    (b" 0 ", b"0"),
    (b"null", b"null"),
    (b"\n-1.5e+3\n", b"-1.5e+3"),
    (b"{ }", b"{ }"),
])
def test_flatten_non_array_value_is_trimmed_single_message(data, value):
    assert _native.json_flatten(data) == (value, 1)
    assert _native.json_validate(data) == (False, 1)


def test_flatten_counts_only_top_level_elements():
    assert _native.json_flatten(b"[[1,2],[3],{\"a\":[4,5]}]") == (
        b'[1,2],[3],{"a":[4,5]}', 3)


def test_flatten_single_element_array():
    assert _native.json_flatten(b' [ "only" ] ') == (b'"only"', 1)


def test_flatten_many_elements():
    data = b"[" + b" , ".join(b"%d" % i for i in range(100_000)) + b"]"
    joined, count = _native.json_flatten(data)
    assert count == 100_000
    assert joined == b",".join(b"%d" % i for i in range(100_000))
    assert _native.json_validate(data) == (True, 100_000)


def test_flatten_strings_containing_brackets_and_commas():
    data = b'[ "a, b" , "]" , "[" , "\\"]," ]'
    assert _native.json_flatten(data) == (b'"a, b","]","[","\\"],"', 4)


# ---- property-based -----------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
whitespace = st.text(alphabet=" \t\r\n", max_size=3)


@st.composite
def json_documents(draw):
    value = draw(json_values)
    item_sep = draw(whitespace) + "," + draw(whitespace)
    key_sep = draw(whitespace) + ":" + draw(whitespace)
    indent = draw(st.none() | st.integers(0, 3) | st.just("\t"))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=indent,
                      separators=(item_sep, key_sep))
    return (draw(whitespace) + text + draw(whitespace)).encode("utf-8")


PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(json_documents())
def test_generated_documents_are_accepted_and_round_trip(data):
    assert python_accepts(data)
    assert_agrees_with_python(data)


@PROPERTY
@given(st.lists(json_values, max_size=8), whitespace, whitespace)
def test_generated_arrays_flatten_to_their_elements(items, before, after):
    data = (before + "[" + " , ".join(json.dumps(v) for v in items) + "]" + after).encode()
    joined, count = _native.json_flatten(data)
    assert count == len(items)
    assert joined == ",".join(json.dumps(v) for v in items).encode()


@PROPERTY
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_and_agree_with_python(data):
    assert_agrees_with_python(data)


TOKENS = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"u", b"d83d", b"de00",
          b"\\ud800", b"\\udc00", b"\\n", b"\\x", b"0", b"1", b"-", b"+", b".", b"e",
          b"E", b"true", b"fals", b"null", b" ", b"\n", b"\t", b"\x00", b"\x1f",
          b"\xc3\xa9", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xf4\x90",
          b"\x80", b"\xef\xbb\xbf", b"a", b'"k":', b"NaN"]


@PROPERTY
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join))
def test_token_soup_never_crashes_and_agrees_with_python(data):
    assert_agrees_with_python(data)


@st.composite
def mutated_documents(draw):
    data = bytearray(draw(json_documents()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or not data:
            at = draw(st.integers(0, len(data)))
            data[at:at] = bytes([draw(st.integers(0, 255))])
        elif op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            at = draw(st.integers(0, len(data) - 1))
            del data[at]
    return bytes(data)


@PROPERTY
@given(mutated_documents())
def test_mutated_documents_never_crash_and_agree_with_python(data):
    assert_agrees_with_python(data)
