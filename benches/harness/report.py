"""Output shared by the benchmarks: progress lines, formatted figures, and
JSON without NaN or infinity."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from .results import Run
from .stats import Latency


@dataclass
class Progress:
    """Progress lines on stderr, each with the seconds since the start."""

    stream: object = None
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        stream.flush()


def _fmt_value(metric: str, v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if metric == "appends/s":
        return f"{v:,.0f}"
    if metric == "MB/s":
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def _fmt_run(metric: str, run: Run) -> str:
    if metric == "appends/s":
        text = f"{run.ops_per_s:,.0f} appends/s"
    elif metric == "MB/s":
        text = f"{run.mb_per_s:,.1f} MB/s"
    else:
        lat = Latency.of_ns(run.latencies_ns, run.missing)

        def ms(stat):
            return f"{'>' if stat in lat.lower_bounds else ''}{lat.get(stat):.2f} ms"

        text = (f"p50 {ms('p50')}, p90 {ms('p90')}, p99 {ms('p99')}, max {ms('max')}" if lat
                else "no deliveries")
    cpu = []
    if run.server_cpu is not None:
        cpu.append(f"server {run.server_cpu:.0%}")
    if run.client_cpu is not None:
        cpu.append(f"generator {run.client_cpu:.0%}")
    if cpu:
        text += f"  (cpu: {', '.join(cpu)})"
    if run.errors:
        text += f"  [{run.errors} errors{'; ' + run.note if run.note else ''}]"
    if run.missing:
        text += f"  [{run.missing} deliveries missing]"
    if run.note and metric not in ("appends/s", "MB/s"):
        text += f"\n        {run.note}"
    return text


def _load(values) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "?"


def _finite(x):
    """``x`` with every infinite or NaN float replaced by None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
