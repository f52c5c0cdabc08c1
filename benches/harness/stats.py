"""Latency and ratio statistics of the benchmarks: nearest-rank percentiles
(with deliveries that never arrived), latency summaries, medians, ratios."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``: the smallest value
    with at least ``p`` % of the values at or below it. ``p`` = 100 is the max,
    0 the min. No interpolation, so every answer is an observed value.

    :raises ValueError: no values, or ``p`` outside 0..100
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    rank = math.ceil(p / 100 * n)
    return sorted_values[max(rank, 1) - 1]


def percentile_with_missing(sorted_values: Sequence[float], missing: int,
                            p: float) -> tuple[float, bool]:
    """:func:`percentile` of ``sorted_values`` plus ``missing`` samples that never
    arrived (counted as later than all of them). ``(value, lower_bound)``: when
    the rank falls among the missing ones the answer is only known to exceed
    the largest observed value, which is returned with ``lower_bound`` True.

    :raises ValueError: no observed values, or ``p`` outside 0..100
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    rank = max(math.ceil(p / 100 * (n + missing)), 1)
    if rank > n:
        return sorted_values[-1], True
    return sorted_values[rank - 1], False


STATS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


@dataclass(frozen=True)
class Latency:
    """Summary of latency samples, in milliseconds.

    :ivar missing: samples that never arrived; they count as slower than every
        observed one, so a percentile that falls among them is a lower bound
        (named in ``lower_bounds``)
    """

    count: int
    p50: float
    p99: float
    max: float
    missing: int = 0
    lower_bounds: frozenset = frozenset()
    p90: float = math.nan

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int], missing: int = 0) -> "Latency | None":
        """From samples in nanoseconds (any order); None when there are none."""
        if not len(samples_ns):
            return None
        xs = sorted(samples_ns)
        values, bounds = {}, set()
        for stat, p in STATS.items():
            v, bound = percentile_with_missing(xs, missing, p)
            values[stat] = v / 1e6
            if bound:
                bounds.add(stat)
        return cls(len(xs), values["p50"], values["p99"], values["max"], missing,
                   frozenset(bounds), p90=values["p90"])

    def get(self, stat: str) -> float:
        """The value of ``stat``: "p50", "p90", "p99" or "max"."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max}[stat]

    def to_json(self) -> dict:
        """The summary as JSON."""
        return {"count": self.count, "missing": self.missing, "p50_ms": self.p50,
                "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max,
                "lower_bounds": sorted(self.lower_bounds)}


def median_or_none(values) -> float | None:
    """The median of the values that are not None; None when there are none."""
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None when either is unknown or not finite, or ``b`` is 0."""
    if a is None or b is None or not b or not math.isfinite(b) or not math.isfinite(a):
        return None
    return a / b
