"""Option values shared by the ``unbroken bench`` commands: argparse value
types (sizes, comma-separated lists, positive and bounded numbers, seconds,
existing directories, URLs) and byte-size formatting."""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Sequence
from urllib.parse import urlsplit

STREAM_PREFIX = "/v1/stream/"


KiB = 1024
MiB = 1024 * KiB


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)


_UNITS = {None: 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB}


def parse_size(text: str) -> int:
    """``"64"`` -> 64, ``"1KiB"``/``"1k"`` -> 1024, ``"64MiB"`` -> 67108864.

    :raises argparse.ArgumentTypeError: not a size
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r} is not a size (bytes, optionally with a K/KiB or M/MiB suffix)")
    return int(m.group(1)) * _UNITS[m.group(2) and m.group(2).lower()]


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def _unique(values):
    return tuple(dict.fromkeys(values))


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return x


def existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing directory")
    return text


def fmt_size(n: int) -> str:
    """64 -> '64B', 1024 -> '1KiB', 65536 -> '64KiB', 1048576 -> '1MiB', 1000 -> '1000B'."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}B"


def _choices(text: str, what: str, allowed: Sequence[str]) -> tuple[str, ...]:
    out = []
    for t in _split(text, what):
        if t.lower() not in allowed:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {t!r} (choose from {', '.join(allowed)})")
        out.append(t.lower())
    return _unique(out)


def _count_list(text: str, what: str, top: int) -> tuple[int, ...]:
    out = []
    for t in _split(text, what):
        if not t.isdigit() or not 1 <= int(t) <= top:
            raise argparse.ArgumentTypeError(
                f"{what}: {t!r} is not a whole number from 1 to {top}")
        out.append(int(t))
    return _unique(out)


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


def non_negative_seconds(text: str) -> float:
    """A number of seconds >= 0 (a warm-up may be 0)."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (x >= 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return x
