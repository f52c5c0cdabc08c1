"""Coverage-guided fuzzing of the C JSON validator and flattener (cext/ub_json.c).

Run it (atheris is an optional extra: ``pip install '.[fuzz]'``)::

    python tests/faults/fuzz_targets/fuzz_json.py -max_total_time=600
    # keep what it finds between runs (new inputs go to the first directory):
    python tests/faults/fuzz_targets/fuzz_json.py -max_total_time=600 /tmp/json-corpus

Any libFuzzer option works; a failure is saved as ``crash-<sha1>`` and
replayed with ``python tests/faults/fuzz_targets/fuzz_json.py crash-...``.
The C code is built with coverage instrumentation by gcc (see
``_harness.py``); tests/faults/test_fuzz_native.py runs this for a fixed
budget in CI. The seeds are in ``corpus/json/``.

Every input is checked against Python's own parser in its strictest form
(tests/support/json_oracle.py, the oracle of tests/native/test_json.py too:
RFC 8259, no NaN/Infinity, valid UTF-8, lone surrogate escapes accepted as
Python does, plus the one rule where Unbroken is stricter -- nesting at most
512):

* ``ub_json_validate`` and ``ub_json_flatten`` accept exactly what the
  oracle accepts, and refuse at the same byte position, within the input;
* a flattened array is exactly its elements as Python's parser delimits them
  (``raw_decode``), verbatim and in order, joined by ',' (so ``[`` + output +
  ``]`` parses to the same value), never longer than the input; a non-array
  is the value without the surrounding whitespace;
* ``ub_json_prefix`` splits a flattened payload exactly after the k-th
  element (k = 0, 1, half, all but one, all; one more is ``UB_ERANGE``);
* no byte outside the input is read (guard pages on both sides, in turn).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# tests/, for the oracle in tests/support/json_oracle.py
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))
import _harness  # noqa: E402
from support.json_oracle import REFUSED, WS, loads, python_elements, python_value  # noqa: E402

MAX_LEN = 1 << 16
OK, EJSON, ERANGE = 0, -9, -5


# ---- the target -------------------------------------------------------------------------

native = _harness.Native(MAX_LEN)


def test_one_input(data: bytes) -> None:
    if not native.ready:
        native.load()
        ffi = native.ffi
        native.out = ffi.new("uint8_t[]", MAX_LEN + 1)
        native.out_len, native.count = ffi.new("size_t *"), ffi.new("uint32_t *")
        native.count2, native.is_array = ffi.new("uint32_t *"), ffi.new("int *")
        native.err, native.err2 = ffi.new("size_t *"), ffi.new("size_t *")
        native.prefix = ffi.new("size_t *")
    ffi, lib, n = native.ffi, native.lib, native
    value = python_value(data)
    for ptr in (n.guarded.at_end(data), n.guarded.at_start(data)):
        rv = lib.ub_json_validate(ptr, len(data), n.is_array, n.count2, n.err2)
        rf = lib.ub_json_flatten(ptr, len(data), n.out, n.out_len, n.count, n.err)
        if value is REFUSED:
            assert rv == rf == EJSON, (rv, rf, data[:100])
            assert n.err[0] == n.err2[0] <= len(data), (n.err[0], n.err2[0], len(data))
            assert n.count[0] == 0 and n.out_len[0] == 0
            continue
        assert rv == rf == OK, (rv, rf, data[:100])
        joined = ffi.buffer(n.out, n.out_len[0])[:]
        count = n.count[0]
        assert n.count2[0] == count and len(joined) <= len(data)
        if not isinstance(value, list):
            assert not n.is_array[0] and count == 1
            assert joined == data.strip(WS)
            continue
        assert n.is_array[0] and count == len(value)
        elements = python_elements(data)
        assert joined == b",".join(elements), (joined[:100], elements[:5])
        assert loads(b"[" + joined + b"]") == value
        # the prefix of k elements is the first k elements
        for k in sorted({0, 1, count // 2, count - 1, count} & set(range(count + 1))):
            assert lib.ub_json_prefix(joined, len(joined), k, n.prefix) == OK
            assert joined[:n.prefix[0]] == b",".join(elements[:k]), (k, n.prefix[0])
        assert lib.ub_json_prefix(joined, len(joined), count + 1, n.prefix) == ERANGE


SEEDS = [
    b"0", b"-0.5e+3", b"true", b"null", b'""', b'"\\u00e9\\ud83d\\ude00"', b"[]", b"[1,2]",
    b' [ 1 , "a" , {"k": [null]} ] ', b'{"a":1,"a":2}', '"é € 😀"'.encode(), b"[" * 40,
    b"[" * 512 + b"]" * 512, b'"\\ud800"', b"NaN", b"[1,]", b"\xef\xbb\xbf[]", b"1e999",
    b'"\x7f"', b'"\xed\xa0\x80"', b'["\\/\\b\\f\\n\\r\\t\\"\\\\"]',
    b'["\\udc00\\ud800",{"\\udbff":1}]',
]

if __name__ == "__main__":
    _harness.main(test_one_input, SEEDS, max_len=4096, name="json")
