"""The machine the figures were taken on: platform, load average, and the
disk's write + fdatasync latency now."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from .options import KiB


FSYNC_PROBES = 10


def fsync_probe(directory: str, count: int = FSYNC_PROBES, size: int = 4 * KiB) -> float:
    """The disk's state now: median milliseconds of appending ``size`` bytes to
    a file in ``directory`` and fdatasync'ing it, ``count`` times. Both servers
    wait on this; on a shared machine it can swing by 100x within minutes."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
    try:
        buf = os.urandom(size)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1e3


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
