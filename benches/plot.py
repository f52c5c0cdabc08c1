"""``--plot out.png`` for ``unbroken bench engine`` and ``unbroken bench http``.

A simple matplotlib figure: one subplot per workload kind, each figure drawn
against the knob the run swept (record/body size, writers/connections,
durability). matplotlib is an optional extra (``pip install 'unbroken[plot]'``)
and is imported only here, inside the functions, so the benchmarks run without
it; :func:`require` lets a run fail fast, before any measurement, when it is
missing.
"""
from __future__ import annotations

import importlib
import math
from typing import Sequence

INSTALL_HINT = "pip install 'unbroken[plot]'"
EXIT_MISSING = 2


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


def _pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}") from exc


def require() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib can be imported."""
    _pyplot()


def check(args, command: str, stream=None) -> int | None:
    """For a ``run(args)``: None when ``args.plot`` is unset or matplotlib is
    there; else print why to ``stream`` (stderr) and return exit status 2."""
    if not getattr(args, "plot", None):
        return None
    try:
        require()
    except PlotUnavailable as exc:
        import sys
        print(f"unbroken bench {command}: {exc}", file=stream or sys.stderr)
        return EXIT_MISSING
    return None


def add_argument(parser) -> None:
    parser.add_argument(
        "--plot", default=None, metavar="FILE.png",
        help="also draw the figures against the swept knob into this PNG "
             f"(needs matplotlib: {INSTALL_HINT})")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _draw(panels: dict, path: str, title: str) -> str:
    """``panels``: subplot title -> (x label, y label, {series name: [(x, y)]},
    categorical x). Writes ``path``; returns it."""
    plt = _pyplot()
    panels = {k: v for k, v in panels.items() if any(v[2].values())}
    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.2 * n), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "nothing measured", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (name, (xlabel, ylabel, series, categorical)) in zip(
            (a[0] for a in axes), panels.items()):
        ticks: list = []
        if categorical:
            for pts in series.values():
                for x, _ in pts:
                    if x not in ticks:
                        ticks.append(x)
            if all(isinstance(t, (int, float)) for t in ticks):
                ticks.sort()
        for label, pts in series.items():
            pts = [(x, y) for x, y in pts if _finite(y)]
            if not pts:
                continue
            if categorical:
                xs = [ticks.index(x) for x, _ in pts]
            else:
                pts.sort()
                xs = [x for x, _ in pts]
            ax.plot(xs, [y for _, y in pts], marker="o", label=label)
        if categorical:
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels([str(t) for t in ticks])
        elif len({x for pts in series.values() for x, _ in pts}) > 1:
            ax.set_xscale("log", base=2)
        ys = [y for pts in series.values() for _, y in pts if _finite(y)]
        if ys and min(ys) > 0 and max(ys) / min(ys) > 100:
            ax.set_yscale("log")  # e.g. "always" single vs "never" batched
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if any(series.values()):
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def _add(series: dict, name: str, x, y) -> None:
    series.setdefault(name, []).append((x, y))


# ---- bench engine -------------------------------------------------------------------------

def engine_panels(results: Sequence) -> dict:
    """Subplots of ``unbroken bench engine`` results (engine.Result objects).

    append: records/s against record size, one line per policy and mode
    (single, batch); group commit: records/s against writers per policy and
    size; read: MB/s per mode; ceiling: MB/s (mmap-copy) and ops/s (fdatasync)
    against size; recover: seconds.
    """
    append: dict = {}
    writers: dict = {}
    read: dict = {}
    ceiling: dict = {}
    recover: dict = {}
    for r in results:
        p = r.params
        if r.workload == "append":
            if p.get("mode") == "async":
                _add(writers, f"{p['durability']} {_size(p['size'])}", p["writers"],
                     r.ops_per_s)
            else:
                _add(append, f"{p['durability']} {p['mode']}", p["size"], r.ops_per_s)
        elif r.workload == "read":
            _add(read, "catch-up read", p["mode"], r.mb_per_s)
        elif r.workload == "ceiling":
            if p.get("kind") == "mmap-copy":
                _add(ceiling, "mmap-copy MB/s", p["size"], r.mb_per_s)
            elif p.get("kind") == "fdatasync":
                _add(ceiling, "write+fdatasync ops/s", p["size"], r.ops_per_s)
        elif r.workload == "recover":
            _add(recover, "open full segment", _size(p["segment_size"]), r.seconds)
    return {
        "append: one call per record vs append_batch, per durability":
            ("record size (bytes)", "records/s", append, False),
        "group commit: concurrent append_async writers":
            ("writers", "records/s", writers, True),
        "catch-up read": ("mode", "MB/s", read, True),
        "ceiling (no engine)": ("size (bytes)", "MB/s or ops/s", ceiling, False),
        "recovery": ("segment", "seconds", recover, True),
    }


def plot_engine(results: Sequence, path: str) -> str:
    return _draw(engine_panels(results), path, "unbroken bench engine")


# ---- bench http ---------------------------------------------------------------------------

def http_panels(results: Sequence) -> dict:
    """Subplots of ``unbroken bench http`` results (http.Result objects): appends/s
    against connections (one line per server, size, type and layout); read MB/s
    per mode; SSE and long-poll latency percentiles against readers."""
    append: dict = {}
    read: dict = {}
    sse: dict = {}
    for r in results:
        p = r.params
        for side in r.runs:
            v = r.value(side)
            if r.workload == "append":
                _add(append, f"{side} {_size(p['size'])} {p['type']} {p['layout']}",
                     p["connections"], v)
            elif r.workload == "read":
                _add(read, side, p["mode"], v)
            elif r.workload in ("sse", "longpoll"):
                _add(sse, f"{side} {r.workload} {r.metric}", p["readers"], v)
    return {
        "append: closed-loop connections": ("connections", "appends/s", append, True),
        "catch-up read": ("mode", "MB/s", read, True),
        "live delivery latency (SSE, long-poll)": ("readers", "ms", sse, True),
    }


def plot_http(results: Sequence, path: str) -> str:
    return _draw(http_panels(results), path, "unbroken bench http")


def _size(n: int) -> str:
    for unit, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}B"
