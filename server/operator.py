"""``unbroken verify`` and ``unbroken inspect``: the operator tools' command line.

The logic is in :mod:`unbroken_engine.tools.verify` (importable, returns reports);
this module parses options, renders the reports as text or JSON, draws a
progress bar on a terminal and maps the verdict to an exit status.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from unbroken_engine.stores.file import DEFAULT_DATA_DIR

VERIFY_DESCRIPTION = """\
Check a file store's data directory (or one stream folder) offline: each
stream's meta file, every segment header, every record's CRC (sealed segments
strictly, the active one with the torn-tail rule of recovery), that segments
line up, that each .idx matches its segment, and that fork sources exist.

Without --repair nothing is modified. --repair cuts torn tails, rebuilds
missing or stale indexes and removes never-written segment files and leftover
temporary files -- what the store's own open would do; it never drops a
record that could have been acknowledged. Damage that valid records follow is
cut only with --repair --force, which reports how many records and bytes it
dropped and keeps a copy of the cut files in repair-dropped-<time>/ inside the
stream folder. Stop the server before --repair.

Exit status: 0 healthy (warnings such as torn tails allowed), 1 damage found
(or left after --repair), 2 usage error or the check could not run.
"""

INSPECT_DESCRIPTION = """\
List the streams of a data directory (or one stream folder) read-only: path,
content type, size, segments, start and end offsets (wire form), message
count, closed, TTL or expiry, fork source, soft-deleted. With PATH, one stream
in detail: its segments, idempotent producers (id, epoch, last seq), last
Stream-Seq and closure, rebuilt from its records as the store does.

Exit status: 0 shown, 1 PATH not found, 2 usage error.
"""

#: draw a progress bar when checking more than this many bytes of segments
PROGRESS_THRESHOLD = 64 << 20

_STATUS = {"ok": "OK", "warn": "WARN", "damaged": "DAMAGED", "repaired": "REPAIRED"}
_OFFSET_KEYS = {"start_offset", "end_offset", "base_offset", "fork_offset", "closed_at"}


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=DEFAULT_DATA_DIR, metavar="DIR",
                   help="data directory or one stream folder (default: %(default)s)")
    p.add_argument("--repair", action="store_true",
                   help="cut torn tails, rebuild indexes, remove leftovers (safe)")
    p.add_argument("--force", action="store_true",
                   help="with --repair: also cut damage that valid records follow "
                        "(drops those records)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=DEFAULT_DATA_DIR, metavar="DIR",
                   help="data directory or one stream folder (default: %(default)s)")
    p.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="a stream path: show that stream in detail")
    p.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    """Dispatch ``verify`` or ``inspect``; returns the exit status."""
    return verify_main(args) if args.command == "verify" else inspect_main(args)


def _usage_error(command: str, message: str) -> int:
    print(f"unbroken {command}: error: {message}", file=sys.stderr)
    return 2


# ---- verify -----------------------------------------------------------------------------

def verify_main(args) -> int:
    from unbroken_engine import errors
    from unbroken_engine.tools import verify as v

    if args.force and not args.repair:
        return _usage_error("verify", "--force only applies with --repair")
    bar = _ProgressBar(sys.stderr)
    try:
        report = v.verify(args.dir, repair=args.repair, force=args.force, progress=bar)
    except (OSError, errors.UnbrokenError) as exc:
        bar.clear()
        return _usage_error("verify", str(exc))
    bar.clear()
    if args.json:
        data = _jsonable(report)
        data["summary"] = _counts(report)
        data["exit_status"] = report.exit_status
        print(json.dumps(data, indent=2))
    else:
        print_verify(report, sys.stdout)
    return report.exit_status


def _counts(report) -> dict:
    return {"streams": len(report.streams),
            **{name: report.count(name) for name in ("ok", "warn", "repaired", "damaged")}}


def print_verify(report, out) -> None:
    """The text report: one line per stream, details indented, then a summary."""
    what = "stream folder" if report.single_stream else "data directory"
    mode = " (repair, force)" if report.force else " (repair)" if report.repair else ""
    print(f"unbroken verify: {what} {report.directory}{mode}", file=out)
    width = max([len(_label(s)) for s in report.streams] + [6])
    for s in report.streams:
        problems = sorted((i for i in s.issues if i.severity != "note"),
                          key=lambda i: i.severity != "damage")
        notes = [i for i in s.issues if i.severity == "note"]
        head = (_issue_text(problems[0]) if problems
                else f"{len(s.segments)} segment{'s' * (len(s.segments) != 1)}, "
                     f"{_size(s.size)}")
        print(f"{_STATUS[s.status]:<9} {_label(s):<{width}}  {head}", file=out)
        for i in problems[1:] + notes:
            print(f"{'':<9} {'':<{width}}  {'also: ' if i.severity != 'note' else 'note: '}"
                  f"{_issue_text(i)}", file=out)
        for a in s.actions:
            print(f"{'':<9} {'':<{width}}  repaired: {_action_text(a)}", file=out)
        for r in s.refused:
            print(f"{'':<9} {'':<{width}}  {r}", file=out)
    for n in report.notes:
        print(f"note: {n.file}: {n.reason}", file=out)
    for a in report.actions:
        print(f"repaired: {_action_text(a)}", file=out)
    counts = _counts(report)
    parts = [f"{counts[k]} {_STATUS[k]}" for k in ("ok", "repaired", "warn", "damaged")
             if counts[k] or k in ("ok", "damaged")]
    print(f"{counts['streams']} stream{'s' * (counts['streams'] != 1)} checked "
          f"({report.segments} segment{'s' * (report.segments != 1)}, {_size(report.bytes)}) "
          f"in {report.seconds:.2f} s: "
          + ", ".join(parts) + (" -- healthy" if report.healthy else " -- DAMAGE FOUND"),
          file=out)


def _label(s) -> str:
    return s.path if s.path is not None else f"[{s.folder}]"


def _issue_text(i) -> str:
    where = i.file or ""
    if i.position is not None:
        where += f" byte {i.position}"
    return f"{where}: {i.reason}" if where else i.reason


def _action_text(a) -> str:
    text = f"{a.action}: {a.file}"
    if a.position is not None:
        text += f" at byte {a.position}"
    dropped = []
    if a.records_dropped or a.action.startswith("cut damaged"):
        dropped.append(f"{a.records_dropped} valid records ({a.messages_dropped} messages) "
                       "dropped")
    if a.bytes_dropped:
        dropped.append(f"{a.bytes_dropped} bytes cut")
    if a.saved_to:
        dropped.append(f"copy of the cut files in {a.saved_to}")
    return text + (f" ({'; '.join(dropped)})" if dropped else "")


class _ProgressBar:
    """``[#####.....]  42%`` on stderr, redrawn at most 10 times a second, only
    when stderr is a terminal and the check reads more than 64 MiB."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if total <= PROGRESS_THRESHOLD or not _isatty(self.stream):
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(1.0, done / total)
        n = int(frac * 30)
        self.stream.write(f"\rverifying [{'#' * n}{'.' * (30 - n)}] {frac:4.0%} "
                          f"{_size(done)} of {_size(total)} ")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()
            self.shown = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---- inspect ----------------------------------------------------------------------------

def inspect_main(args) -> int:
    from unbroken_engine import errors
    from unbroken_engine.tools import verify as v

    try:
        if args.path is None:
            report = v.inspect(args.dir)
            if args.json:
                print(json.dumps(_jsonable(report), indent=2))
            else:
                print_inspect(report, sys.stdout)
            return 0
        detail = v.inspect_stream(args.dir, args.path)
    except errors.StreamNotFound:
        print(f"unbroken inspect: no stream {args.path!r} in {args.dir}", file=sys.stderr)
        return 1
    except (OSError, errors.UnbrokenError) as exc:
        return _usage_error("inspect", str(exc))
    if args.json:
        print(json.dumps(_jsonable(detail), indent=2))
    else:
        print_detail(detail, sys.stdout)
    return 0


def print_inspect(report, out) -> None:
    rows = [("PATH", "CONTENT TYPE", "SIZE", "SEGS", "START", "END", "MESSAGES", "CLOSED",
             "EXPIRY", "FORK OF", "FLAGS")]
    for s in report.streams:
        flags = []
        if s.soft_deleted:
            flags.append("soft-deleted")
        if s.damaged:
            flags.append(f"DAMAGED: {s.damaged}")
        rows.append((s.path if s.path is not None else f"[{s.folder}]",
                     s.content_type or "?", _size(s.size), str(s.segments), _wire(s.start_offset),
                     _wire(s.end_offset), _opt(s.messages), _yes_no(s.closed), _expiry(s),
                     f"{s.fork_from} @ {_wire(s.fork_offset)}" if s.fork_from else "-",
                     ", ".join(flags) or "-"))
    _table(rows, out)
    print(f"{len(report.streams)} stream{'s' * (len(report.streams) != 1)} in {report.directory}",
          file=out)


def print_detail(d, out) -> None:
    s = d.info
    closed = _yes_no(s.closed)
    if s.closed and d.closed_at is not None:
        closed += f" (at {_wire(d.closed_at)})"
    fields = [
        ("stream", s.path if s.path is not None else "?"),
        ("folder", s.folder),
        ("content type", s.content_type or "?"),
        ("created", s.created_at or "?"),
        ("size", f"{_size(s.size)} in {s.segments} segment file{'s' * (s.segments != 1)}"),
        ("start offset", _wire(s.start_offset)),
        ("end offset", _wire(s.end_offset)),
        ("messages", _opt(s.messages)),
        ("closed", closed),
        ("expiry", _expiry(s)),
        ("fork of", f"{s.fork_from} at {_wire(s.fork_offset)}, sub-offset {d.fork_sub_offset}"
         if s.fork_from else "-"),
        ("forks", ", ".join(d.forks) or "-"),
        ("soft-deleted", _yes_no(s.soft_deleted)),
        ("Stream-Seq", d.last_seq if d.last_seq is not None else "-"),
        ("snapshot", "state.snapshot present" if d.snapshot else "-"),
    ]
    if s.damaged:
        fields.append(("DAMAGED", s.damaged))
    for k, val in fields:
        print(f"{k:<13} {val}", file=out)
    print("\nsegments", file=out)
    rows = [("  FILE", "BASE OFFSET", "SIZE", "RECORDS", "MESSAGES", "INDEX")]
    for g in d.segments:
        index = ("active" if g.active else
                 f"{g.index_entries} entries" + ("" if g.index == "ok" else f" ({g.index})")
                 if g.index_entries is not None else g.index)
        rows.append(("  " + g.file.rsplit("/", 1)[-1], _wire(g.base_offset), str(g.size),
                     _opt(g.records), _opt(g.messages), index))
    _table(rows, out)
    print("\nproducers", file=out)
    if d.producers:
        _table([("  ID", "EPOCH", "LAST SEQ")] +
               [("  " + p.id, str(p.epoch), str(p.last_seq)) for p in d.producers], out)
    else:
        print("  -", file=out)


def _table(rows, out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _expiry(s) -> str:
    if s.expires_at:
        text = f"at {s.expires_at}"
    elif s.ttl is not None:
        text = f"ttl {s.ttl}s (~{s.expires})"
    else:
        return "-"
    return text + (" EXPIRED" if s.expired else "")


# ---- formatting helpers ------------------------------------------------------------------

def _wire(offset) -> str:
    from unbroken_engine.protocol.offsets import format_offset

    return "-" if offset is None else format_offset(offset)


def _opt(v) -> str:
    return "?" if v is None else str(v)


def _yes_no(v) -> str:
    return "?" if v is None else "yes" if v else "no"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _jsonable(obj):
    """A report as JSON-ready data; offsets in their wire form."""
    def conv(value, key=None):
        if key in _OFFSET_KEYS and isinstance(value, int):
            return _wire(value)
        if isinstance(value, dict):
            return {k: conv(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [conv(v) for v in value]
        return value

    return conv(dataclasses.asdict(obj))
