"""Operator tools for a file store's data directory: verify, repair, inspect.

The functions here return report dataclasses and print nothing; the
``unbroken verify`` and ``unbroken inspect`` commands (``server/operator.py``)
render them. Run them on a stopped server: a check reads while appends go on
only at the risk of reporting the append in progress as a torn tail, and a
repair must never race the server.

**Checking changes no byte.** Sealed segments are opened with
``OPEN_SEALED`` (``O_RDONLY``, mapped ``PROT_READ``) and with their index path
pointed at a file in a temporary directory that does not exist yet, so the C
code verifies every record's CRC up to the exact file size and writes the
index it rebuilds *there*; the saved ``.idx`` is then compared with that
rebuild. The active segment's recovery (``OPEN_ACTIVE``) zeroes a torn tail in
place, so it runs on a *copy* of the file in the temporary directory: the
verdict (normal end, torn tail, damage before valid data) is the C recovery's
own, byte for byte what the next open of the store would decide.

**Repair** does what the store's own open would do and nothing that can lose
an acknowledged record: it cuts torn tails (``OPEN_ACTIVE`` on the file),
installs rebuilt indexes, removes never-written trailing segment files and
leftover temporary files and folders. Damage that valid records follow is cut
only with ``force`` -- at the earliest bad record of the stream, with
:meth:`SegmentedLog.open(..., repair=True) <unbroken_engine.log.segmented.SegmentedLog.open>`
for the active segment, and by truncating a sealed one and moving the
segments after it aside -- and the cut files are first copied into a
``repair-dropped-<time>/`` folder inside the stream folder (ignored by the
store), so even a forced cut keeps the bytes it took out of the log.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import msgpack

from .. import _native as nat
from .. import errors
from ..log import layout
from ..log.segmented import LogConfig, RecordType, SegmentedLog
from ..stores.base import Stream
from ..stores.file import DEFAULT_DATA_DIR, META_VERSION, SNAPSHOT_NAME, lock_data_dir

HEADER = nat.SEG_HEADER_SIZE
REC_HEADER = nat.REC_HEADER_SIZE
INTERVAL = nat.DEFAULT_INDEX_INTERVAL

# The layouts this module reads itself, as cext/ub_format.h and the index
# code of cext/ub_segment.c lay them out. Every size, position, magic and
# version comes from C through _native; a format here names only the order
# and width of fields, and tests/native/test_smoke.py checks that its size
# is the C constant's.
#: index header up to its reserved bytes: magic, version, entries, data end,
#: records, messages, last record type (its CRC is at IDX_HEADER_CRC_POS)
IDX_HEADER_FIELDS = struct.Struct(f"<{nat.MAGIC_SIZE}sIIQQQI")
#: an index entry: record position, messages before it
IDX_ENTRY = struct.Struct("<II")
#: a record header: CRC, payload length, attrs length, type, flags, message count
REC_HEADER_FIELDS = struct.Struct("<IIHBBI")
#: a masked CRC32C
CRC = struct.Struct("<I")

#: severities of an :class:`Issue`
DAMAGE, WARNING, NOTE = "damage", "warning", "note"
#: how an :class:`Issue` is repaired: by ``--repair``, only by ``--repair
#: --force`` (loses records), or not by this tool
SAFE, FORCE, MANUAL = "safe", "force", "manual"

DROPPED_PREFIX = "repair-dropped-"
_LEFTOVER_PREFIXES = (".tmp-", ".trash-")
_CLOSERS = (nat.REC_DATA_CLOSE, nat.REC_CLOSE)

#: progress callback: (bytes of segments checked so far, total bytes)
Progress = Callable[[int, int], None]


# ---- reports ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Issue:
    """One thing found wrong (or worth knowing) about a stream.

    :ivar severity: :data:`DAMAGE`, :data:`WARNING` or :data:`NOTE`
    :ivar file: the file concerned (a segment, an index, the meta file)
    :ivar position: byte position in that file, where there is one
    :ivar repair: :data:`SAFE`, :data:`FORCE` or :data:`MANUAL`
    :ivar drop_records: for the cut ``--force`` would make: valid records after
        the damage that it would drop (likewise messages and bytes)
    """

    severity: str
    reason: str
    file: str | None = None
    position: int | None = None
    repair: str = MANUAL
    drop_records: int = 0
    drop_messages: int = 0
    drop_bytes: int = 0


@dataclass(frozen=True)
class RepairAction:
    """One change a repair made."""

    action: str
    file: str
    position: int | None = None
    bytes_dropped: int = 0
    records_dropped: int = 0
    messages_dropped: int = 0
    saved_to: str | None = None


@dataclass(frozen=True)
class SegmentInfo:
    """One segment file as a check or an inspection found it.

    ``records``, ``messages``, ``base_msg`` and ``end`` are None when the file
    could not be read. ``index`` is ``"ok"``, ``"missing"``, ``"stale"``,
    ``"-"`` (active segments have none) or ``"?"`` (not checked).
    """

    file: str
    base_offset: int
    size: int
    active: bool
    records: int | None = None
    messages: int | None = None
    base_msg: int | None = None
    end: int | None = None
    index_entries: int | None = None
    index: str = "?"

    @property
    def end_offset(self) -> int | None:
        return None if self.end is None else self.base_offset + self.end - HEADER


@dataclass(frozen=True)
class StreamReport:
    """The verdict on one stream folder.

    :ivar status: ``"ok"``, ``"warn"``, ``"damaged"``, or ``"repaired"`` (this
        run repaired it and it is healthy now)
    :ivar issues: what is wrong now (after the repair, if one ran)
    :ivar found: what the check found before any repair
    :ivar refused: why a found problem was not repaired
    """

    folder: str
    path: str | None
    status: str
    issues: tuple[Issue, ...]
    found: tuple[Issue, ...]
    actions: tuple[RepairAction, ...]
    refused: tuple[str, ...]
    segments: tuple[SegmentInfo, ...]
    size: int
    start_offset: int | None
    end_offset: int | None


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on a data directory (or one stream folder)."""

    directory: str
    single_stream: bool
    repair: bool
    force: bool
    streams: tuple[StreamReport, ...]
    notes: tuple[Issue, ...]
    actions: tuple[RepairAction, ...]
    segments: int
    bytes: int
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for s in self.streams if s.status == status)

    @property
    def healthy(self) -> bool:
        """No stream is damaged (warnings are fine: the next open fixes them)."""
        return not any(s.status == "damaged" for s in self.streams)

    @property
    def exit_status(self) -> int:
        return 0 if self.healthy else 1


@dataclass(frozen=True)
class ProducerInfo:
    id: str
    epoch: int
    last_seq: int


@dataclass(frozen=True)
class StreamInfo:
    """One stream as ``inspect`` lists it (offsets are log positions)."""

    path: str | None
    folder: str
    content_type: str | None
    size: int
    segments: int
    start_offset: int | None
    end_offset: int | None
    messages: int | None
    closed: bool | None
    ttl: int | None
    expires_at: str | None
    expires: str | None
    expired: bool
    fork_from: str | None
    fork_offset: int | None
    soft_deleted: bool
    created_at: str | None
    damaged: str | None


@dataclass(frozen=True)
class StreamDetail:
    """One stream in detail: segments, producers, Stream-Seq, forks."""

    info: StreamInfo
    segments: tuple[SegmentInfo, ...]
    producers: tuple[ProducerInfo, ...]
    last_seq: str | None
    closed_at: int | None
    fork_sub_offset: int
    forks: tuple[str, ...]
    snapshot: bool


@dataclass(frozen=True)
class InspectReport:
    directory: str
    single_stream: bool
    streams: tuple[StreamInfo, ...]


# ---- locating streams --------------------------------------------------------------------

def _is_stream_folder(d: Path) -> bool:
    return (d / layout.META_NAME).exists() or bool(layout.list_segments(d))


def locate(directory=DEFAULT_DATA_DIR) -> tuple[Path, list[Path], bool]:
    """``(data dir, stream folders, single)``: ``directory`` is either a data
    directory (its stream folders, sorted) or one stream folder (``single``).

    :raises FileNotFoundError: ``directory`` does not exist
    :raises NotADirectoryError: it is not a directory
    """
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such directory")
    if not d.is_dir():
        raise NotADirectoryError(f"{d}: not a directory")
    if _is_stream_folder(d):
        return d.parent, [d], True
    folders = sorted(e for e in d.iterdir()
                     if e.is_dir() and layout.is_stream_dir_name(e.name))
    return d, folders, False


def segment_bytes(directory=DEFAULT_DATA_DIR) -> int:
    """Total size of the segment files a check of ``directory`` reads."""
    _, folders, _ = locate(directory)
    return sum(_file_size(f / layout.segment_name(b))
               for f in folders for b in layout.list_segments(f))


def _file_size(p) -> int:
    try:
        return os.stat(p).st_size
    except OSError:
        return 0


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(_file_size(os.path.join(root, f)) for f in files)
    return total


# ---- the meta file ---------------------------------------------------------------------

def _check_meta(folder: Path) -> tuple[dict | None, list[Issue]]:
    """Read ``meta.msgpack`` the way the store does and name what is wrong."""
    path = folder / layout.META_NAME
    where = str(path)

    def bad(reason):
        return None, [Issue(DAMAGE, reason, where, None, MANUAL)]

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return bad("meta file missing")
    except OSError as exc:
        return bad(f"meta file unreadable: {exc.strerror or exc}")
    try:
        meta = msgpack.unpackb(raw)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds
        return bad(f"meta file is not valid msgpack ({type(exc).__name__})")
    if not isinstance(meta, dict):
        return bad("meta file does not hold a map")
    if meta.get("version") != META_VERSION:
        return bad(f"meta file version {meta.get('version')!r} is not {META_VERSION}")
    p = meta.get("path")
    if not isinstance(p, str) or not p:
        return bad("meta file has no stream path")
    if layout.stream_dir_name(p) != folder.name:
        return bad(f"meta file names another stream ({p!r}, whose folder is "
                   f"{layout.stream_dir_name(p)!r})")
    why = _meta_fields_problem(meta)
    if why:
        return bad(f"meta file {why}")
    return meta, []


def _meta_fields_problem(meta: dict) -> str | None:
    """What the store's ``_stream_from`` would fail on, or None."""
    def opt_time(v):
        if v is None:
            return True
        try:
            datetime.fromisoformat(v)
            return True
        except (TypeError, ValueError):
            return False

    if not isinstance(meta.get("content_type"), str):
        return "lacks a content type"
    if "ttl" not in meta or not (meta["ttl"] is None or isinstance(meta["ttl"], int)):
        return "has no valid ttl"
    if "expires_at" not in meta or not opt_time(meta["expires_at"]):
        return "has no valid expires_at"
    if not isinstance(meta.get("created_at"), (int, float)):
        return "has no valid created_at"
    req = meta.get("requested")
    if not isinstance(req, dict) or not {"content_type", "ttl", "expires_at"} <= req.keys() \
            or not opt_time(req["expires_at"]):
        return "has no valid 'requested' map"
    fork = meta.get("fork")
    if fork is not None and not (
            isinstance(fork, dict) and isinstance(fork.get("from"), str)
            and isinstance(fork.get("offset"), int) and isinstance(fork.get("sub_offset"), int)):
        return "has a damaged fork entry"
    return None


# ---- segment scans ------------------------------------------------------------------------

_names = itertools.count()


def _scratch(tmp: str, name: str) -> str:
    """A fresh path in the temporary directory (never reused: a rebuilt index
    left there must not be loaded as another segment's saved index)."""
    return os.path.join(tmp, f"{next(_names)}-{name}")


def _info_of(native: nat.NativeSegment) -> dict:
    i = native.info()
    return {"records": i.records, "messages": i.messages, "base_msg": i.base_msg,
            "end": i.end, "index_entries": i.index_entries, "base_offset": i.base_offset,
            "last_type": i.last_type}


#: the type and (zero) flags bytes of a record header: a type is never REC_ZERO
_CANDIDATE = re.compile(b"[%s-%s]\x00" % (re.escape(bytes([nat.REC_ZERO + 1])),
                                           re.escape(bytes([nat.REC_MAX_TYPE]))))


def _salvage(data: bytes, start: int) -> tuple[int, int]:
    """Valid records (and their messages) from ``start`` on, resynchronising
    after damage as the C recovery's search does: what a cut at ``start``
    drops. Candidates are found by their type/flags bytes, then CRC-checked."""
    records = messages = 0
    pos = start
    n = len(data)
    while pos + REC_HEADER <= n:
        rec = None
        try:
            rec = nat.decode_record(data, pos)
        except errors.CorruptSegment:
            pass
        if rec is not None and rec is not nat.NEEDMORE:
            records += 1
            messages += rec.msg_count
            pos = rec.next
            continue
        m = _CANDIDATE.search(data, pos + 1 + nat.REC_TYPE_POS)
        if m is None:
            break
        pos = m.start() - nat.REC_TYPE_POS
    return records, messages


def _data_extent(data: bytes, start: int) -> int:
    """Bytes from ``start`` to the last non-zero byte (what a cut zeroes)."""
    return max(0, len(data.rstrip(b"\0")) - start)


def _index_problem(idx: bytes, seg_path, info: dict, size: int) -> str | None:
    """Why a saved index does not describe its (verified) segment, or None.

    Independent of the index interval it was written with: every entry must
    sit on a record boundary and count the messages before it correctly."""
    if len(idx) < nat.IDX_HEADER_SIZE:
        return "index file too short"
    magic, version, n, data_end, records, messages, last_type = \
        IDX_HEADER_FIELDS.unpack_from(idx, 0)
    if magic != nat.IDX_MAGIC:
        return "bad index magic"
    if version != nat.FORMAT_VERSION:
        return f"unsupported index version {version}"
    if n == 0 or len(idx) != nat.IDX_HEADER_SIZE + nat.IDX_ENTRY_SIZE * n:
        return "index size does not match its entry count"
    crc = nat.crc32c(idx[nat.IDX_HEADER_SIZE:], nat.crc32c(idx[:nat.IDX_HEADER_CRC_POS]))
    if nat.crc_unmask(CRC.unpack_from(idx, nat.IDX_HEADER_CRC_POS)[0]) != crc:
        return "index checksum mismatch"
    if data_end != size:
        return f"index covers {data_end} bytes, the segment holds {size}"
    if (records, messages, last_type) != (info["records"], info["messages"], info["last_type"]):
        return (f"index counts {records} records / {messages} messages, the segment "
                f"holds {info['records']} / {info['messages']}")
    with open(seg_path, "rb") as f:
        data = f.read()
    walk = _record_starts(data)
    cur = next(walk, None)
    prev = -1
    for i in range(n):
        pos, msg = IDX_ENTRY.unpack_from(idx, nat.IDX_HEADER_SIZE + nat.IDX_ENTRY_SIZE * i)
        if pos <= prev:
            return f"index entry {i} is out of order"
        prev = pos
        while cur is not None and cur[0] < pos:
            cur = next(walk, None)
        if cur is None or cur[0] != pos:
            return f"index entry {i} (byte {pos}) is not a record boundary"
        if cur[1] != msg:
            return f"index entry {i} counts {msg} messages before byte {pos}, not {cur[1]}"
    if IDX_ENTRY.unpack_from(idx, nat.IDX_HEADER_SIZE) != (HEADER, 0):
        return "index entry 0 is not the first record"
    return None


def _record_starts(data: bytes):
    """(position, messages before) of each record of a verified segment."""
    pos, msgs = HEADER, 0
    while pos + REC_HEADER <= len(data):
        _crc, payload_len, attrs_len, _type, _flags, count = \
            REC_HEADER_FIELDS.unpack_from(data, pos)
        yield pos, msgs
        msgs += count
        pos += nat.record_size(attrs_len, payload_len)


# ---- checking one stream --------------------------------------------------------------------

@dataclass
class _Cut:
    """Where ``--force`` would cut a stream's log: segment index and position."""

    segment: int
    position: int
    records: int = 0
    messages: int = 0
    bytes: int = 0


@dataclass
class _Checked:
    folder: Path
    meta: dict | None
    issues: list[Issue] = field(default_factory=list)
    segments: list[SegmentInfo] = field(default_factory=list)
    damaged_segments: set = field(default_factory=set)
    cut: _Cut | None = None
    cut_issue: int | None = None  # index into issues of the damage the cut is for
    rebuilt: dict = field(default_factory=dict)  # index path -> rebuilt copy in tmp
    torn: bool = False
    unwritten: list = field(default_factory=list)
    temp_files: list = field(default_factory=list)
    size: int = 0

    @property
    def damaged(self) -> bool:
        return any(i.severity == DAMAGE for i in self.issues)

    @property
    def end_offset(self) -> int | None:
        if not self.segments or self.segments[-1].end is None:
            return None
        return self.segments[-1].end_offset


def _check_stream(folder: Path, tmp: str, tick: Progress | None = None) -> _Checked:
    meta, issues = _check_meta(folder)
    c = _Checked(folder, meta, issues, size=_folder_size(folder))
    names = sorted(os.listdir(folder))
    for name in names:
        if name.endswith(".tmp"):
            c.temp_files.append(folder / name)
            c.issues.append(Issue(NOTE, "leftover temporary file (removed by --repair or the "
                                  "next open)", str(folder / name), None, SAFE))
        elif name.startswith(DROPPED_PREFIX):
            c.issues.append(Issue(NOTE, "bytes cut by an earlier forced repair are kept here "
                                  "(delete it when no longer needed)", str(folder / name)))
    bases = layout.list_segments(folder)
    for path in layout.unwritten_tail(folder, bases):
        c.unwritten.append(path)
        c.issues.append(Issue(WARNING, "segment file never written (only zeros; removed by "
                              "--repair or the next open)", str(path), 0, SAFE))
        bases.pop()
        if tick:
            tick(_file_size(path))
    if not bases:
        c.issues.append(Issue(DAMAGE, "no segment files: the stream's log is missing",
                              str(folder), None, MANUAL))
        return c
    for i, base in enumerate(bases):
        path = folder / layout.segment_name(base)
        active = i == len(bases) - 1
        size = _file_size(path)
        scratch = _scratch(tmp, path.name)
        try:
            seg = (_check_active if active else _check_sealed)(c, path, base, size, scratch)
        except errors.CorruptSegment as exc:
            c.damaged_segments.add(i)
            seg = SegmentInfo(str(path), base, size, active)
            _note_damage(c, i, path, exc.position, exc.reason)
        c.segments.append(seg)
        if tick:
            tick(size)
    _check_lines_up(c)
    if c.cut is not None:
        _estimate_cut(c)
    return c


def _check_sealed(c: _Checked, path: Path, base: int, size: int, scratch: str) -> SegmentInfo:
    rebuilt = scratch + ".idx"  # does not exist: OPEN_SEALED scans every record into it
    native, _ = nat.NativeSegment.open(str(path), rebuilt, nat.OPEN_SEALED, size, INTERVAL)
    try:
        info = _info_of(native)
    finally:
        native.close()
    _check_header_base(path, base, info)
    idx_path = path.with_suffix(layout.INDEX_SUFFIX)
    state = "ok"
    try:
        saved = idx_path.read_bytes()
    except FileNotFoundError:
        saved = None
    if saved is None:
        state = "missing"
        c.issues.append(Issue(WARNING, "index file missing (rebuilt by --repair or the next open)",
                              str(idx_path), None, SAFE))
    else:
        try:
            same = os.path.exists(rebuilt) and saved == Path(rebuilt).read_bytes()
        except OSError:
            same = False
        why = None if same else _index_problem(saved, path, info, size)
        if why:
            state = "stale"
            c.issues.append(Issue(WARNING, f"index does not match its segment: {why} "
                                  "(rebuilt by --repair)", str(idx_path), None, SAFE))
    if state != "ok" and os.path.exists(rebuilt):
        c.rebuilt[str(idx_path)] = rebuilt
    return SegmentInfo(str(path), base, size, False, info["records"], info["messages"],
                       info["base_msg"], info["end"], info["index_entries"], state)


def _check_active(c: _Checked, path: Path, base: int, size: int, scratch: str) -> SegmentInfo:
    # OPEN_ACTIVE zeroes a torn tail in place: recover a copy instead
    shutil.copyfile(path, scratch)
    try:
        try:
            native, rep = nat.NativeSegment.open(scratch, scratch + ".idx", nat.OPEN_ACTIVE,
                                                 size, INTERVAL)
        except errors.CorruptSegment as exc:
            raise errors.CorruptSegment(path, exc.position, exc.reason) from None
        try:
            info = _info_of(native)
        finally:
            native.close()
    finally:
        os.unlink(scratch)
    _check_header_base(path, base, info)
    if rep.bytes_cut:
        c.torn = True
        c.issues.append(Issue(WARNING, f"torn tail of {rep.bytes_cut} bytes after the last "
                              "valid record (cut by --repair or the next open)",
                              str(path), rep.valid_end, SAFE, drop_bytes=rep.bytes_cut))
    return SegmentInfo(str(path), base, size, True, info["records"], info["messages"],
                       info["base_msg"], info["end"], None, "-")


def _check_header_base(path: Path, base: int, info: dict) -> None:
    if info["base_offset"] != base:
        raise errors.CorruptSegment(path, 0, f"header base offset {info['base_offset']} "
                                             f"does not match the file name")


def _note_damage(c: _Checked, seg_index: int, path, position: int, reason: str) -> None:
    """Record damage that valid records may follow: only ``--force`` cuts it."""
    c.issues.append(Issue(DAMAGE, reason, str(path), position, FORCE))
    if c.cut is None or (seg_index, position) < (c.cut.segment, c.cut.position):
        c.cut = _Cut(seg_index, position)
        c.cut_issue = len(c.issues) - 1


def _check_lines_up(c: _Checked) -> None:
    segs = c.segments
    for i in range(1, len(segs)):
        prev, seg = segs[i - 1], segs[i]
        if prev.end is None or seg.records is None:
            continue  # already reported
        if prev.end_offset != seg.base_offset or prev.base_msg + prev.messages != seg.base_msg:
            c.damaged_segments.add(i - 1)
            _note_damage(c, i - 1, prev.file, prev.end,
                         f"segment does not follow the previous one: it ends at offset "
                         f"{prev.end_offset} ({prev.base_msg + prev.messages} messages), the "
                         f"next starts at {seg.base_offset} ({seg.base_msg} messages)")


def _estimate_cut(c: _Checked) -> None:
    """Fill in what the forced cut drops and say so in its issue."""
    cut = c.cut
    records = messages = nbytes = 0
    for j in range(cut.segment, len(c.segments)):
        seg = c.segments[j]
        start = max(cut.position, HEADER) if j == cut.segment else HEADER
        if j != cut.segment and j not in c.damaged_segments and seg.records is not None:
            records += seg.records
            messages += seg.messages
            nbytes += seg.end - HEADER
            continue
        with open(seg.file, "rb") as f:
            data = f.read()
        r, m = _salvage(data, start)
        records += r
        messages += m
        nbytes += _data_extent(data, start)
    cut.records, cut.messages, cut.bytes = records, messages, nbytes
    old = c.issues[c.cut_issue]
    if records:
        what = (f"{records} valid records ({messages} messages) follow it; --repair --force "
                f"cuts the log here and drops {nbytes} bytes")
    else:
        what = f"no valid record follows it; --repair --force cuts {nbytes} bytes"
    c.issues[c.cut_issue] = Issue(DAMAGE, f"{old.reason} ({what})", old.file, old.position,
                                  FORCE, records, messages, nbytes)


def _fork_issues(c: _Checked, data_dir: Path, by_folder: dict | None) -> list[Issue]:
    """Fork source present, healthy and long enough; the log starts where it should."""
    issues: list[Issue] = []
    meta = c.meta
    if meta is None:
        return issues
    fork = meta.get("fork")
    expected = fork["offset"] if fork else 0
    if c.segments and c.segments[0].base_offset != expected:
        issues.append(Issue(DAMAGE, f"the log starts at offset {c.segments[0].base_offset}, "
                            f"not {expected}: segment files before it are missing",
                            c.segments[0].file, 0, MANUAL))
    if not fork:
        return issues
    src_folder = data_dir / layout.stream_dir_name(fork["from"])
    where = str(c.folder / layout.META_NAME)
    src = by_folder.get(src_folder) if by_folder is not None else None
    if by_folder is None:
        if not (src_folder / layout.META_NAME).exists():
            issues.append(Issue(DAMAGE, f"fork source {fork['from']!r} is missing "
                                f"(no {src_folder})", where, None, MANUAL))
    elif src is None:
        issues.append(Issue(DAMAGE, f"fork source {fork['from']!r} is missing "
                            f"(no {src_folder})", where, None, MANUAL))
    elif src.damaged:
        issues.append(Issue(DAMAGE, f"fork source {fork['from']!r} is damaged (see that "
                            "stream): reads through it may fail, and the store refuses this "
                            "fork when it cannot open the source", where, None, MANUAL))
    elif src.end_offset is not None and fork["offset"] > src.end_offset:
        issues.append(Issue(DAMAGE, f"fork offset {fork['offset']} lies beyond the end of its "
                            f"source {fork['from']!r} ({src.end_offset})", where, None, MANUAL))
    return issues


# ---- repairing one stream ---------------------------------------------------------------

def _repair(c: _Checked, force: bool) -> tuple[list[RepairAction], list[str]]:
    actions: list[RepairAction] = []
    refused: list[str] = []
    folder = c.folder
    touched = False
    for p in c.temp_files:
        p.unlink(missing_ok=True)
        actions.append(RepairAction("removed leftover temporary file", str(p)))
        touched = True
    for p in c.unwritten:
        p.unlink(missing_ok=True)
        actions.append(RepairAction("removed never-written segment file", str(p)))
        touched = True
    if touched:
        layout.fsync_dir(folder)
    cut = c.cut if force else None
    for idx_path, rebuilt in c.rebuilt.items():
        seg_index = next(i for i, s in enumerate(c.segments)
                         if Path(s.file).with_suffix(layout.INDEX_SUFFIX) == Path(idx_path))
        if cut is not None and seg_index >= cut.segment:
            continue  # dropped or rewritten by the cut
        _install(rebuilt, idx_path)
        actions.append(RepairAction("rebuilt index", idx_path))
    if c.cut is not None and not force:
        issue = c.issues[c.cut_issue]
        refused.append(f"not cut: the damage at byte {issue.position} of {issue.file} lies "
                       f"before {c.cut.records} valid records ({c.cut.messages} messages); "
                       f"cutting it would drop them and {c.cut.bytes} bytes. Rerun with "
                       f"--repair --force to cut (the cut files are kept in "
                       f"{DROPPED_PREFIX}<time>/), or restore the stream from a backup")
    if c.torn and cut is None:  # (a forced cut moves or rewrites the active segment)
        active = c.segments[-1]
        idx = str(Path(active.file).with_suffix(layout.INDEX_SUFFIX))  # unused when active
        native, rep = nat.NativeSegment.open(active.file, idx, nat.OPEN_ACTIVE, active.size,
                                             INTERVAL)
        native.close()
        actions.append(RepairAction("cut torn tail", active.file, rep.valid_end,
                                    bytes_dropped=rep.bytes_cut))
    if cut is not None:
        actions.append(_forced_cut(c, cut))
    return actions, refused


def _install(rebuilt: str, idx_path: str) -> None:
    """Put a rebuilt index in place atomically (temp file, fsync, rename)."""
    tmp = idx_path + ".tmp"
    shutil.copyfile(rebuilt, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, idx_path)
    layout.fsync_dir(os.path.dirname(idx_path))


def _forced_cut(c: _Checked, cut: _Cut) -> RepairAction:
    """Cut the log at ``cut``: keep a copy of every file it changes or drops,
    move the later segments aside, truncate a sealed segment, then let
    ``SegmentedLog.open(repair=True)`` cut the (new) active segment."""
    folder = c.folder
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    keep = folder / f"{DROPPED_PREFIX}{stamp}"
    n = 1
    while keep.exists():
        n += 1
        keep = folder / f"{DROPPED_PREFIX}{stamp}-{n}"
    keep.mkdir()
    segs = c.segments
    target = Path(segs[cut.segment].file)
    last = cut.segment == len(segs) - 1
    for seg in reversed(segs[cut.segment + 1:]):  # newest first: the log stays a prefix
        p = Path(seg.file)
        for f in (p, p.with_suffix(layout.INDEX_SUFFIX)):
            if f.exists():
                os.rename(f, keep / f.name)
    idx = target.with_suffix(layout.INDEX_SUFFIX)
    if cut.position < HEADER:  # the header itself is bad: the whole file goes
        os.rename(target, keep / target.name)
        if idx.exists():
            os.rename(idx, keep / idx.name)
    else:
        shutil.copy2(target, keep / target.name)
        _fsync_file(keep / target.name)
        if idx.exists():
            os.rename(idx, keep / idx.name)
        if not last:
            os.truncate(target, cut.position)  # OPEN_REPAIR then finds a clean end
            _fsync_file(target)
    snapshot = folder / SNAPSHOT_NAME
    if snapshot.exists():  # it may describe records that are gone now
        os.rename(snapshot, keep / SNAPSHOT_NAME)
    layout.fsync_dir(keep)
    layout.fsync_dir(folder)
    with SegmentedLog.open(folder, LogConfig(), repair=True,
                           base_offset=segs[0].base_offset) as slog:
        cut_now = slog.recovery.bytes_cut
    return RepairAction("cut damaged log", str(target), cut.position,
                        bytes_dropped=cut.bytes if not last else max(cut.bytes, cut_now),
                        records_dropped=cut.records, messages_dropped=cut.messages,
                        saved_to=str(keep))


def _fsync_file(path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ---- verify -------------------------------------------------------------------------------

def verify(directory=DEFAULT_DATA_DIR, *, repair: bool = False, force: bool = False,
           progress: Progress | None = None) -> VerifyReport:
    """Check every stream of a data directory (or one stream folder).

    Without ``repair`` no file is modified. With it, the safe repairs are made
    (torn tails, indexes, unwritten segments, leftovers) and the streams are
    checked again; with ``force`` too, damage before valid data is cut.

    :param progress: called with (bytes checked, total bytes) after each segment
    :raises InvalidArgument: ``force`` without ``repair``
    :raises DataDirInUse: ``repair`` while a store has the directory open
    :raises FileNotFoundError, NotADirectoryError: ``directory``
    """
    if force and not repair:
        raise errors.InvalidArgument("--force only applies with --repair")
    t0 = time.perf_counter()
    data_dir, folders, single = locate(directory)
    with contextlib.ExitStack() as held:
        if repair:  # a repair must never race a store: hold the directory's lock
            fd = lock_data_dir(data_dir)
            if fd is not None:
                held.callback(os.close, fd)
        total = sum(_file_size(f / layout.segment_name(b))
                    for f in folders for b in layout.list_segments(f))
        done = 0

        def tick(n):
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        notes: list[Issue] = []
        top_actions: list[RepairAction] = []
        if not single:
            for e in sorted(data_dir.iterdir()):
                if e.is_dir() and e.name.startswith(_LEFTOVER_PREFIXES):
                    what = ("a stream creation that never finished" if e.name.startswith(".tmp-")
                            else "a removed stream")
                    notes.append(Issue(NOTE, f"leftover folder of {what} (removed by --repair or "
                                       "the next open)", str(e), None, SAFE))
        with tempfile.TemporaryDirectory(prefix="unbroken-verify-") as tmp:
            first = {f: _check_stream(f, tmp, tick) for f in folders}
            by = None if single else first
            found = {f: c.issues + _fork_issues(c, data_dir, by) for f, c in first.items()}
            final, actions, refused = dict(first), {}, {}
            if repair:
                for f, c in first.items():
                    acts, why = _repair(c, force) if _needs_repair(c) else ([], [])
                    actions[f], refused[f] = acts, why
                    if acts:
                        final[f] = _check_stream(f, tmp)
                for n in notes:
                    shutil.rmtree(n.file, ignore_errors=True)
                    top_actions.append(RepairAction("removed leftover folder", n.file))
                notes = []
            by = None if single else final
            reports = []
            for f in folders:
                c = final[f]
                issues = c.issues + _fork_issues(c, data_dir, by)
                reports.append(_stream_report(c, issues, found[f], actions.get(f, []),
                                              refused.get(f, [])))
        return VerifyReport(str(directory), single, repair, force, tuple(reports), tuple(notes),
                            tuple(top_actions), sum(len(r.segments) for r in reports), total,
                            time.perf_counter() - t0)


def _needs_repair(c: _Checked) -> bool:
    return bool(c.temp_files or c.unwritten or c.rebuilt or c.torn or c.cut)


def _stream_report(c: _Checked, issues, found, actions, refused) -> StreamReport:
    if any(i.severity == DAMAGE for i in issues):
        status = "damaged"
    elif actions:
        status = "repaired"
    elif any(i.severity == WARNING for i in issues):
        status = "warn"
    else:
        status = "ok"
    segs = c.segments
    return StreamReport(str(c.folder), c.meta["path"] if c.meta else _path_hint(c.folder),
                        status, tuple(issues), tuple(found), tuple(actions), tuple(refused),
                        tuple(segs), c.size, segs[0].base_offset if segs else None,
                        c.end_offset)


def _path_hint(folder: Path) -> str | None:
    """The stream path a damaged meta file still names, if it is this folder's."""
    try:
        p = msgpack.unpackb((folder / layout.META_NAME).read_bytes())["path"]
        return p if isinstance(p, str) and layout.stream_dir_name(p) == folder.name else None
    except Exception:  # noqa: BLE001 - damaged meta: the caller shows the folder
        return None


# ---- inspect ------------------------------------------------------------------------------

class _ReadOnlyLog:
    """A stream's segments opened without changing a byte: sealed ones
    read-only with a copy of their index (a rebuild goes to the copy), the
    active one recovered from a copy of its file."""

    def __init__(self, folder: Path, tmp: str):
        self.natives: list[tuple[int, nat.NativeSegment]] = []
        self.infos: list[SegmentInfo] = []
        self.error: str | None = None
        bases = layout.list_segments(folder)
        del bases[len(bases) - len(layout.unwritten_tail(folder, bases)):]
        if not bases:
            self.error = "no segment files"
        for i, base in enumerate(bases):
            path = folder / layout.segment_name(base)
            idx = path.with_suffix(layout.INDEX_SUFFIX)
            active = i == len(bases) - 1
            size = _file_size(path)
            scratch = _scratch(tmp, path.name)
            try:
                if active:
                    shutil.copyfile(path, scratch)
                    native, _ = nat.NativeSegment.open(scratch, scratch + ".idx",
                                                       nat.OPEN_ACTIVE, size, INTERVAL)
                    os.unlink(scratch)  # the mapping keeps it
                    state = "-"
                else:
                    state = "ok" if idx.exists() else "missing"
                    if idx.exists():
                        shutil.copyfile(idx, scratch + ".idx")
                    native, rep = nat.NativeSegment.open(str(path), scratch + ".idx",
                                                         nat.OPEN_SEALED, size, INTERVAL)
                    if rep.index_rebuilt and state == "ok":
                        state = "stale"
            except errors.CorruptSegment as exc:
                self.error = f"{path} byte {exc.position}: {exc.reason}"
                self.infos.append(SegmentInfo(str(path), base, size, active))
                break
            info = _info_of(native)
            self.natives.append((base, native))
            self.infos.append(SegmentInfo(str(path), base, size, active, info["records"],
                                          info["messages"], info["base_msg"], info["end"],
                                          None if active else info["index_entries"], state))

    @property
    def complete(self) -> bool:
        return self.error is None and bool(self.natives)

    def last_type(self) -> int:
        for _, native in reversed(self.natives):
            t = native.info().last_type
            if t:
                return t
        return 0

    def records(self):
        """(type, attrs, next offset) of every record, CRCs verified."""
        for base, native in self.natives:
            pos, end = HEADER, native.end()
            while pos < end:
                rec = native.record_at(pos)
                pos = rec.next
                yield rec.type, rec.attrs, base + pos - HEADER

    def close(self) -> None:
        for _, native in self.natives:
            native.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _stream_info(folder: Path, meta: dict | None, meta_issue: str | None,
                 rlog: _ReadOnlyLog, now: float) -> StreamInfo:
    infos = rlog.infos
    complete = rlog.complete
    m = meta or {}
    fork = m.get("fork") or None
    ttl, expires_at = m.get("ttl"), m.get("expires_at")
    expires = None
    if expires_at:
        expires = datetime.fromisoformat(expires_at).timestamp()
    elif ttl is not None:
        # the store's sliding TTL: last access saved at shutdown, else the last write
        mtimes = [os.stat(s.file).st_mtime for s in infos]
        last = max([m.get("created_at") or 0.0, m.get("last_access") or 0.0, *mtimes])
        expires = last + ttl
    last_info = infos[-1] if infos and complete else None
    damaged = meta_issue or rlog.error
    return StreamInfo(
        path=m.get("path") if meta else _path_hint(folder),
        folder=str(folder), content_type=m.get("content_type"), size=_folder_size(folder),
        segments=len(layout.list_segments(folder)),
        start_offset=infos[0].base_offset if infos else None,
        end_offset=last_info.end_offset if last_info else None,
        messages=(last_info.base_msg + last_info.messages) if last_info else None,
        closed=(rlog.last_type() in _CLOSERS) if complete else None,
        ttl=ttl, expires_at=expires_at, expires=_iso(expires),
        expired=expires is not None and now >= expires,
        fork_from=fork["from"] if fork else None, fork_offset=fork["offset"] if fork else None,
        soft_deleted=bool(m.get("soft_deleted")), created_at=_iso(m.get("created_at")),
        damaged=damaged)


def inspect(directory=DEFAULT_DATA_DIR, *, now: float | None = None) -> InspectReport:
    """List the streams of a data directory (or one stream folder), read-only."""
    now = time.time() if now is None else now
    data_dir, folders, single = locate(directory)
    out = []
    with tempfile.TemporaryDirectory(prefix="unbroken-inspect-") as tmp:
        for folder in folders:
            meta, issues = _check_meta(folder)
            rlog = _ReadOnlyLog(folder, tmp)
            try:
                out.append(_stream_info(folder, meta, issues[0].reason if issues else None,
                                        rlog, now))
            finally:
                rlog.close()
    return InspectReport(str(directory), single, tuple(out))


def inspect_stream(directory=DEFAULT_DATA_DIR, path: str | None = None, *,
                   now: float | None = None) -> StreamDetail:
    """One stream in detail: its segments, producers (id, epoch, last seq), last
    Stream-Seq and closure, rebuilt from its records' attrs as the store does.

    :param path: the stream path (or its folder name); optional when
        ``directory`` is a stream folder
    :raises StreamNotFound: no such stream in ``directory``
    """
    now = time.time() if now is None else now
    data_dir, folders, single = locate(directory)
    folder = _find_folder(data_dir, folders, single, path)
    meta, issues = _check_meta(folder)
    with tempfile.TemporaryDirectory(prefix="unbroken-inspect-") as tmp:
        rlog = _ReadOnlyLog(folder, tmp)
        try:
            damaged = issues[0].reason if issues else None
            s = Stream(meta["path"] if meta else "?", (meta or {}).get("content_type") or "",
                       None, created_at=0.0, requested=None)
            if rlog.complete:
                try:
                    for rtype, attrs, end in rlog.records():
                        s.apply(RecordType(rtype), attrs, end)
                except errors.CorruptSegment as exc:
                    rlog.error = f"{exc.path} byte {exc.position}: {exc.reason}"
                except (ValueError, TypeError, msgpack.UnpackException) as exc:
                    rlog.error = f"record attrs unreadable: {exc}"
            info = _stream_info(folder, meta, damaged, rlog, now)
        finally:
            rlog.close()
    forks = []
    others = folders if not single else sorted(
        e for e in data_dir.iterdir() if e.is_dir() and layout.is_stream_dir_name(e.name))
    for other in others:
        m, _ = _check_meta(other) if other != folder else (None, None)
        if m and m.get("fork") and m["fork"]["from"] == info.path:
            forks.append(m["path"])
    producers = tuple(ProducerInfo(k, v.epoch, v.last_seq) for k, v in sorted(s.producers.items()))
    fork = (meta or {}).get("fork") or {}
    return StreamDetail(info, tuple(rlog.infos), producers, s.last_seq, s.closed_at,
                        fork.get("sub_offset", 0), tuple(forks),
                        (folder / SNAPSHOT_NAME).exists())


def _find_folder(data_dir: Path, folders: list[Path], single: bool, path: str | None) -> Path:
    if single:
        folder = folders[0]
        if path is None or path in (_path_hint(folder), folder.name):
            return folder
        raise errors.StreamNotFound(path)
    if path is None:
        raise errors.InvalidArgument("which stream? give its path")
    for name in (layout.stream_dir_name(path), path):
        candidate = data_dir / name
        if candidate in folders:
            return candidate
    raise errors.StreamNotFound(path)
