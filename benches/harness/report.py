"""Output shared by the benchmarks: progress lines, formatted figures,
aligned tables, the targets and warnings sections, and JSON without NaN or
infinity."""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

from .results import Run
from .stats import Latency


@dataclass
class Progress:
    """Progress lines on stderr, each with the seconds since the start."""

    stream: object = None
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        """Write ``text`` as one line, after the seconds since the start."""
        stream = self.stream or sys.stderr
        stream.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        stream.flush()


def fmt_value(metric: str, v: float | None) -> str:
    """A figure: appends/s without decimals, MB/s with one, anything else
    (milliseconds) with two; ``"-"`` when unknown or not finite."""
    if v is None or not math.isfinite(v):
        return "-"
    if metric == "appends/s":
        return f"{v:,.0f}"
    if metric == "MB/s":
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def fmt_run(metric: str, run: Run) -> str:
    """One round of an HTTP workload for the progress lines: its figure in
    ``metric``, CPU shares, errors and missing deliveries."""
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


def fmt_load(values) -> str:
    """A load average ``[1, 5, 15 min]`` as ``"0.50/0.40/0.30"``; ``"?"`` when unknown."""
    return "/".join(f"{x:.2f}" for x in values) if values else "?"


def finite(x):
    """``x`` with every infinite or NaN float replaced by None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def json_text(doc) -> str:
    """``doc`` as indented JSON, every infinite or NaN float as null."""
    return json.dumps(finite(doc), indent=2, allow_nan=False)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Collection[int] | None = None) -> str:
    """An aligned table with a rule under the header.

    :param right: the columns aligned right (default: all but the first)
    """
    body = [list(header), *rows]
    widths = [max(len(str(r[i])) for r in body) for i in range(len(header))]
    if right is None:
        right = range(1, len(header))

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(body[0]), rule] + [line(r) for r in body[1:]])


def render_targets(targets: Sequence, value_text: Callable[[object], str]) -> str:
    """The targets section: a line per target with its status, its label and
    ``value_text(target)``, and its note.

    :param targets: objects with ``status``, ``label`` and ``note``
    """
    if not targets:
        return "targets: none for these workloads"
    width = max(len(t.label) for t in targets)
    lines = ["targets (reporting only: the exit status is 0 either way)"]
    for t in targets:
        line = f"  {t.status:<4}  {t.label.ljust(width)}  {value_text(t)}"
        lines.append(line + (f"  [{t.note}]" if t.note else ""))
    return "\n".join(lines)


def render_warnings(warnings: Sequence[str]) -> list[str]:
    """The warnings section as a list of one part (none without warnings)."""
    return ["warnings\n" + "\n".join(f"  {w}" for w in warnings)] if warnings else []
