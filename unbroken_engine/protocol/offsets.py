"""Offsets as the protocol sees them: opaque, fixed-width, sortable strings.

Inside the engine an offset is an ``int``: a byte position in a stream's log
(see docs/format.md). On the wire it is rendered ``"%016d_%016d"`` -- a zero
high part and the position -- so string order is log order, it never contains
``, & = ? /``, and it can never be ``-1`` or ``now``. Parsing is strict
(``isValidOffsetFormat`` in durable-streams): anything but two runs of exactly
16 digits joined by ``_``, or the sentinels, is refused before any arithmetic.

The sentinels print as their names and are compared with ``is``, like h11's
``NEED_DATA``.
"""
from __future__ import annotations

import re

from ..errors import InvalidOffset

__all__ = ["START", "NOW", "format_offset", "parse_offset", "ZERO"]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: the beginning of a stream (wire form ``-1``, or no offset at all)
START = _Sentinel("START")
#: the current tail of a stream (wire form ``now``)
NOW = _Sentinel("NOW")

_WIRE = re.compile(r"([0-9]{16})_([0-9]{16})")
_MAX = 10**16 - 1


def format_offset(position: int) -> str:
    """The wire form of a log position: ``0000000000000000_0000000000001234``."""
    if not 0 <= position <= _MAX:
        raise ValueError(f"offset {position} out of range")
    return f"0000000000000000_{position:016d}"


#: the wire form of position 0, a stream's first offset
ZERO = format_offset(0)


def parse_offset(text: str | None):
    """Parse a wire offset: ``None``/``"-1"`` -> :data:`START`, ``"now"`` ->
    :data:`NOW`, ``"dddddddddddddddd_dddddddddddddddd"`` -> ``int``.

    :raises InvalidOffset: anything else (including a non-zero high part,
        which this server never hands out)
    """
    if text is None or text == "-1":
        return START
    if text == "now":
        return NOW
    m = _WIRE.fullmatch(text)
    if m is None or m.group(1) != "0" * 16:
        raise InvalidOffset(text[:64], "malformed offset")
    return int(m.group(2))
