"""File names inside a log's directory, made in one place (Kafka's LogFileUtils).

Segments and their indexes are named by their base offset, padded to 20
digits so that ``ls`` and a plain string sort list them in log order::

    00000000000000000000.seg   00000000000000000000.idx
    00000000000067108864.seg   ...
"""
from __future__ import annotations

import os
import re

import xxhash

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


# ---- stream directories (the file-backed store) -------------------------------

META_NAME = "meta.msgpack"
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: Encoded names longer than this are cut and suffixed with a hash of the path.
MAX_DIR_NAME = 160


def stream_dir_name(path: str) -> str:
    """A directory name for a stream path that can never escape the data
    directory or collide with another stream's.

    Bytes of the UTF-8 path outside ``[A-Za-z0-9_-]`` (and ``.`` except at the
    start) are percent-encoded, so ``/``, ``..``, NUL, ``%`` and backslashes
    never reach the filesystem; the encoding is one-to-one. A name longer than
    :data:`MAX_DIR_NAME` keeps its first 100 characters and gains ``~`` and the
    path's 128-bit xxh3 (``~`` never appears otherwise, being encoded); the
    meta file holds the full path and is checked on open.
    """
    raw = path.encode("utf-8")
    out = []
    for i, b in enumerate(raw):
        if b in _SAFE or (b == 0x2E and i > 0):
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
    name = "".join(out)
    if len(name) > MAX_DIR_NAME:
        name = name[:100] + "~" + xxhash.xxh3_128_hexdigest(raw)
    return name


def is_stream_dir_name(name: str) -> bool:
    """Whether a directory entry can be a stream (not a temp or trash folder)."""
    return not name.startswith(".")
