"""The strict-JSON oracle the C JSON code (cext/ub_json.c) is judged by.

Owns the independent answer to "is this text JSON, and what are its
elements": Python's own parser in its strictest form -- RFC 8259, no
NaN/Infinity, valid UTF-8, lone surrogate escapes accepted as Python does
(RFC 8259 allows any ``\\uXXXX`` escape) -- plus the one rule where Unbroken
is deliberately stricter than ``json.loads``: nesting deeper than
:data:`MAX_DEPTH` (512; the top-level container is depth 1) is refused.

Numbers are kept as their text (``parse_int=str, parse_float=str``): Python's
4300-digit int-conversion limit cannot turn a valid huge number into a
refusal, and two decoded values are equal only if their numbers are spelled
alike (a flattened element is verbatim).

Used by tests/native/test_json.py and by the fuzz target
tests/faults/fuzz_targets/fuzz_json.py (a script: it puts tests/ on
``sys.path`` itself). Standard library only.
"""
from __future__ import annotations

import json

#: the deepest nesting Unbroken accepts (UB_JSON_MAX_DEPTH)
MAX_DEPTH = 512
#: JSON's whitespace
WS = b" \t\r\n"


class Obj(tuple):
    """An object as its (key, value) pairs: keeps duplicate keys and never
    compares equal to an array (a list)."""


def _reject_constant(name):
    raise ValueError(f"non-standard constant {name}")


DECODER = json.JSONDecoder(parse_int=str, parse_float=str,  # numbers kept verbatim
                           parse_constant=_reject_constant, object_pairs_hook=Obj)


def loads(data: bytes):
    """The decoded value. :raises: UnicodeDecodeError, ValueError, RecursionError."""
    return DECODER.decode(data.decode("utf-8"))


def depth(value) -> int:
    """Nesting depth of a decoded value. Iterative: values may be deep."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, Obj):
            deepest = max(deepest, d + 1)
            stack.extend((item, d + 1) for _, item in v)
        elif isinstance(v, list):
            deepest = max(deepest, d + 1)
            stack.extend((item, d + 1) for item in v)
    return deepest


#: what :func:`python_value` returns for a text the oracle refuses
REFUSED = object()


def python_value(data: bytes):
    """The decoded value, or :data:`REFUSED` when the oracle refuses the text."""
    try:
        value = loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return REFUSED
    if depth(value) > MAX_DEPTH:
        return REFUSED
    return value


def python_accepts(data: bytes) -> bool:
    return python_value(data) is not REFUSED


def python_elements(data: bytes) -> list:
    """The elements of an accepted top-level array, verbatim, as Python's
    parser delimits them (``raw_decode`` from each element's first byte)."""
    text = data.decode("utf-8")
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    assert text[i] == "["
    elements = []
    while True:
        i += 1
        while text[i] in ws:
            i += 1
        if text[i] == "]" and not elements:
            return elements
        _, end = DECODER.raw_decode(text, i)
        elements.append(text[i:end].encode("utf-8"))
        i = end
        while text[i] in ws:
            i += 1
        if text[i] == "]":
            return elements
        assert text[i] == ","
