"""Option values shared by the ``unbroken bench`` commands: argparse value
types (byte sizes, comma-separated lists, positive and bounded numbers,
seconds, existing directories, server URLs), byte-size formatting, and the
flags every benchmark has (``--json``, ``--dir``)."""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Sequence
from urllib.parse import urlsplit

KiB = 1024
MiB = 1024 * KiB
STREAM_PREFIX = "/v1/stream/"   # where a Durable Streams server keeps its streams

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB}


# ---- sizes --------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """``"64"`` -> 64, ``"1KiB"``/``"1k"`` -> 1024, ``"64MiB"`` -> 67108864.

    :raises argparse.ArgumentTypeError: not a size
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r} is not a size (bytes, optionally with a K/KiB or M/MiB suffix)")
    return int(m.group(1)) * _UNITS[m.group(2) and m.group(2).lower()]


def fmt_size(n: int) -> str:
    """64 -> '64B', 1024 -> '1KiB', 65536 -> '64KiB', 1048576 -> '1MiB', 1000 -> '1000B'."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}B"


def body_size(text: str) -> int:
    """An append body size: 16 B .. 1 MiB, K/KiB suffixes allowed."""
    n = parse_size(text)
    if not 16 <= n <= 1 << 20:
        raise argparse.ArgumentTypeError(f"body size {n} out of range 16..{1 << 20}")
    return n


# ---- lists ----------------------------------------------------------------------------

def split_list(text: str, what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``.

    :param what: the option's name in the error message
    :raises argparse.ArgumentTypeError: empty, or an empty item
    """
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def unique(values) -> tuple:
    """``values`` without repeats, in the order of first appearance."""
    return tuple(dict.fromkeys(values))


def choices(text: str, what: str, allowed: Sequence[str],
            listed: str | None = None) -> tuple[str, ...]:
    """A comma-separated list of names from ``allowed`` (any case), in the
    order given, repeats dropped.

    :param what: what one name is, for "unknown {what} ..."
    :param listed: the list's name in the error for a malformed list
        (default: ``what``)
    """
    out = []
    for t in split_list(text, listed or what):
        if t.lower() not in allowed:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {t!r} (choose from {', '.join(allowed)})")
        out.append(t.lower())
    return unique(out)


def count(text: str, what: str, top: int) -> int:
    """A whole number from 1 to ``top``.

    :param what: the option's name in the error message
    """
    if not text.strip().isdigit() or not 1 <= int(text) <= top:
        raise argparse.ArgumentTypeError(
            f"{what}: {text!r} is not a whole number from 1 to {top}")
    return int(text)


def count_list(text: str, what: str, top: int) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``: each a :func:`count` from 1 to ``top``."""
    return unique(count(t, what, top) for t in split_list(text, what))


# ---- numbers ----------------------------------------------------------------------------

def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def _number(text: str, least: float, strict: bool, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not ((x > least if strict else x >= least) and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return x


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, 0, True, "a positive number")


def non_negative_seconds(text: str) -> float:
    """A number of seconds >= 0 (a warm-up may be 0)."""
    return _number(text, 0, False, "a number of seconds >= 0")


def bounded_int(what: str, low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high`` (``_`` and
    ``,`` between digits allowed).

    :param what: the option's name, without ``--``, in the error message
    """

    def parse(text: str) -> int:
        """``text`` as a whole number within the bounds."""
        t = text.strip().replace("_", "").replace(",", "")
        if not t.isdigit() or not low <= int(t) <= high:
            raise argparse.ArgumentTypeError(
                f"{what}: {text!r} is not a whole number from {low:,} to {high:,}")
        return int(t)

    parse.__doc__ = f"The value of --{what}: a whole number from {low:,} to {high:,}."
    return parse


def or_default(value, default):
    """``value``, or ``default`` when the option was not given (None)."""
    return default if value is None else value


# ---- places -------------------------------------------------------------------------------

def existing_dir(text: str) -> str:
    """A path to a directory that exists."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing directory")
    return text


def base_url(text: str) -> str:
    """``"http://h:1/"`` or ``"http://h:1/v1/stream/"`` -> ``"http://h:1"``."""
    parts = urlsplit(text.strip())
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// URL (https is not supported)")
    try:
        port = parts.port or 80
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a bad port") from None
    path = parts.path.rstrip("/")
    if path not in ("", STREAM_PREFIX.rstrip("/")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the server's root (http://HOST:PORT), not a path")
    host = parts.hostname
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def split_url(url: str) -> tuple[str, int]:
    """``"http://h:1"`` -> ``("h", 1)``."""
    parts = urlsplit(url)
    return parts.hostname, parts.port or 80


# ---- the flags every benchmark has ----------------------------------------------------------

def add_output_flags(parser: argparse.ArgumentParser, dir_help: str,
                     tables: str = "the table") -> None:
    """Add ``--json`` (dest ``as_json``) and ``--dir`` (dest ``dir``).

    :param dir_help: what ``--dir`` is for, with its default
    :param tables: what ``--json`` replaces in the help
    """
    parser.add_argument("--json", action="store_true", dest="as_json",
                        help=f"print machine-readable JSON instead of {tables}")
    parser.add_argument("--dir", type=existing_dir, default=None, metavar="PATH",
                        help=dir_help)
