"""File names inside a log's directory, made in one place (Kafka's LogFileUtils).

Segments and their indexes are named by their base offset, padded to 20
digits so that ``ls`` and a plain string sort list them in log order::

    00000000000000000000.seg   00000000000000000000.idx
    00000000000067108864.seg   ...
"""
from __future__ import annotations

import os
import re

SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")


def segment_name(base_offset: int) -> str:
    """``00000000000000001234.seg`` for base offset 1234."""
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


def index_name(base_offset: int) -> str:
    """``00000000000000001234.idx`` for base offset 1234."""
    return f"{base_offset:020d}{INDEX_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The base offset a segment file name encodes, or None for other files."""
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


def list_segments(directory) -> list[int]:
    """Base offsets of the segment files in ``directory``, sorted."""
    bases = []
    for name in os.listdir(directory):
        base = parse_segment_name(name)
        if base is not None:
            bases.append(base)
    return sorted(bases)


def fsync_dir(directory) -> None:
    """Make a directory's entries (new or removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
