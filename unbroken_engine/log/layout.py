"""File names inside a log's directory, made in one place (Kafka's LogFileUtils).

Segments and their indexes are named by their base offset, padded to 20
digits so that ``ls`` and a plain string sort list them in log order::

    00000000000000000000.seg   00000000000000000000.idx
    00000000000067108864.seg   ...
"""
from __future__ import annotations

import os
import re
from pathlib import Path

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


def unwritten_tail(directory, bases: list[int]) -> list[Path]:
    """The trailing segment files whose header never reached the disk,
    newest first: the last of ``bases`` (sorted base offsets) while its file
    holds only zeros (or is shorter than a header and zero).

    A crash between creating a segment file and syncing its header leaves
    such a file. Nothing in it was ever acknowledged -- the header is synced
    before the first append -- so the log's open removes them and the
    operator tools report them; any other damage is not this rule's.
    """
    found = []
    for base in reversed(bases):
        path = Path(directory) / segment_name(base)
        if not _all_zero_file(path):
            break
        found.append(path)
    return found


def _all_zero_file(path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
    return True


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
