"""The machine the figures were taken on: platform, load average, the
engine build, and the disk's write + fdatasync latency now."""
from __future__ import annotations

import os
import platform
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
    """The 1, 5 and 15 minute load averages, None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def platform_info() -> dict:
    """Python, its implementation, the platform and the CPU count."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def engine_info(directory: str | None = None) -> dict:
    """The engine build (CRC32C in hardware, version) and the scratch directory."""
    from unbroken_engine import __version__ as engine_version
    from unbroken_engine import _native

    return {
        "crc32c_hardware": _native.crc32c_hw_active(),
        "engine_version": engine_version,
        "dir": directory or tempfile.gettempdir(),
    }
