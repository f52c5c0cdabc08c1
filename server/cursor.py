"""Stream-Cursor values (protocol section 10.1): 20-second intervals counted
from 2024-10-09T00:00:00Z, as decimal strings, that never go backwards.

When a client echoes a cursor that is not behind the current interval (a CDN
may have collapsed requests onto it), the server answers with a later one,
jittered by 1 to 180 intervals, so collapsed requests do not all align again.
"""
from __future__ import annotations

import random
import time

EPOCH = 1728432000  # 2024-10-09T00:00:00Z
INTERVAL = 20


def current_interval(now: float | None = None) -> int:
    """The interval number of ``now`` (wall-clock seconds)."""
    return int(((time.time() if now is None else now) - EPOCH) // INTERVAL)


def next_cursor(echoed: str | None, now: float | None = None, rng=random) -> str:
    """The cursor to return, given the one the client sent (or None)."""
    current = current_interval(now)
    if echoed is not None and echoed.isdigit() and len(echoed) < 19:
        client = int(echoed)
        if client >= current:
            return str(client + max(1, -(-rng.randint(1, 3600) // INTERVAL)))
    return str(current)
