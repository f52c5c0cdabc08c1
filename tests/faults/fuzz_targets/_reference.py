"""Independent Python models of the on-disk format (docs/format.md), the
oracles of the record and segment fuzz targets.

Written from the format's description, not from the C: a record decoder
(``decode`` / ``peek``), the recovery scan of a segment file (``scan``,
``recover_active``, ``recover_sealed``) and the reads that follow it.
"""
from __future__ import annotations

import struct

SEG_HEADER = 64
SEG_MAGIC = b"UBSEGv1\n"
FORMAT_VERSION = 1
REC_HEADER = 16
MAX_TYPE = 4
MAX_PAYLOAD = 256 * 1024 * 1024
U32_MAX = 0xFFFFFFFF
OK, NEEDMORE, CORRUPT, ERANGE, ENOSPACE = 0, -1, -2, -5, -10
REC_DATA_CLOSE, REC_CLOSE = 2, 3
REASONS = {"checksum mismatch", "bad record length", "bad record type", "zero header"}

# ---- CRC32C (Castagnoli), masked as LevelDB does ------------------------------------

_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---- records ---------------------------------------------------------------------------

class Rec(tuple):
    """``(pos, type, msg_count, attrs_len, payload_len, next)`` of one record."""

    pos = property(lambda r: r[0])
    type = property(lambda r: r[1])
    count = property(lambda r: r[2])
    attrs_len = property(lambda r: r[3])
    payload_len = property(lambda r: r[4])
    next = property(lambda r: r[5])
    payload_pos = property(lambda r: r[0] + REC_HEADER + r[3])


def peek(buf, length: int, pos: int):
    """The header checks without the CRC: ``(verdict, reason, Rec or None)``."""
    if pos > length or length - pos < REC_HEADER:
        return NEEDMORE, None, None
    _crc, payload_len, attrs_len, rtype, flags, count = struct.unpack_from("<IIHBBI", buf, pos)
    if rtype == 0:
        zero = bytes(buf[pos:pos + REC_HEADER]) == bytes(REC_HEADER)
        return CORRUPT, "zero header" if zero else "bad record type", None
    if rtype > MAX_TYPE or flags != 0:
        return CORRUPT, "bad record type", None
    if payload_len > MAX_PAYLOAD:
        return CORRUPT, "bad record length", None
    end = pos + REC_HEADER + attrs_len + payload_len
    if end > length:
        return NEEDMORE, None, None
    return OK, None, Rec((pos, rtype, count, attrs_len, payload_len, end))


def decode(buf, length: int, pos: int, crc=crc32c):
    """A record of ``buf[0, length)`` at ``pos``: ``(verdict, reason, Rec or None)``."""
    verdict, reason, rec = peek(buf, length, pos)
    if verdict != OK:
        return verdict, reason, rec
    if mask(crc(bytes(buf[pos + 4:rec.next]))) != struct.unpack_from("<I", buf, pos)[0]:
        return CORRUPT, "checksum mismatch", None
    return OK, None, rec


def encode(rtype: int, payload: bytes, attrs: bytes = b"", count: int = 1) -> bytes:
    body = struct.pack("<IHBBI", len(payload), len(attrs), rtype, 0, count) + attrs + payload
    return struct.pack("<I", mask(crc32c(body))) + body


# ---- segments ----------------------------------------------------------------------------

def segment_header(base_offset: int = 0, base_msg: int = 0, created_ms: int = 0) -> bytes:
    h = SEG_MAGIC + struct.pack("<IIQQQ", FORMAT_VERSION, SEG_HEADER, base_offset, base_msg,
                                created_ms) + bytes(20)
    return h + struct.pack("<I", mask(crc32c(h)))


def header_verdict(data: bytes):
    """``None`` when the segment header is good, else the reason it is refused."""
    if len(data) < SEG_HEADER:
        return "short segment header"
    h = data[:SEG_HEADER]
    if h[:8] != SEG_MAGIC or mask(crc32c(h[:60])) != struct.unpack_from("<I", h, 60)[0]:
        return "zero segment header" if h == bytes(SEG_HEADER) else "bad segment header"
    if struct.unpack_from("<II", h, 8) != (FORMAT_VERSION, SEG_HEADER):
        return "unsupported segment version"
    return None


class Scan:
    """The records from the header on, up to where a scan of ``data[0, limit)`` stops."""

    def __init__(self, data: bytes, limit: int, crc, interval: int, idx_cap: int):
        self.records: list[Rec] = []
        self.before: list[int] = []  # messages before each record
        self.messages = 0
        self.index = [(SEG_HEADER, 0)]
        pos, self.verdict, self.reason = SEG_HEADER, OK, None
        while pos < limit:
            verdict, reason, rec = decode(data, limit, pos, crc)
            if verdict == OK and self.messages + rec.count > U32_MAX:
                verdict, reason = CORRUPT, "message count overflow"
            if verdict != OK:
                self.verdict, self.reason = verdict, reason
                break
            if pos - self.index[-1][0] >= interval and len(self.index) < idx_cap:
                self.index.append((pos, self.messages))
            self.records.append(rec)
            self.before.append(self.messages)
            self.messages += rec.count
            pos = rec.next
        self.stop = pos
        if pos == limit:
            self.verdict, self.reason = OK, None
        self.last_type = self.records[-1].type if self.records else 0


def _valid_record_after(data: bytes, start: int, end: int, crc) -> bool:
    for p in range(start + 1, end - REC_HEADER + 1):
        if 1 <= data[p + 10] <= MAX_TYPE and data[p + 11] == 0 and \
                decode(data, end, p, crc)[0] == OK:
            return True
    return False


def _write_in_progress(data: bytes, pos: int) -> bool:
    """An append cut short: a plausible header whose CRC field is still zero,
    and only zeros after where it claims to end."""
    verdict, _, rec = peek(data, len(data), pos)
    return verdict == OK and data[pos:pos + 4] == bytes(4) and not any(data[rec.next:])


class Recovery:
    """What opening a segment file must report (``ub_segment_open``)."""

    def __init__(self, rc: int, reason=None, bad_pos: int = 0, scan: Scan | None = None,
                 bytes_cut: int = 0, index_rebuilt: bool = False, after: bytes | None = None):
        self.rc, self.reason, self.bad_pos, self.scan = rc, reason, bad_pos, scan
        self.bytes_cut, self.index_rebuilt = bytes_cut, index_rebuilt
        self.after = after  # the file's bytes after a successful open


def recover_active(data: bytes, repair: bool, crc, interval: int, capacity: int) -> Recovery:
    """Open an active segment: scan, then tell a torn tail from damage."""
    why = header_verdict(data)
    if why is not None:
        return Recovery(CORRUPT, why)
    cap = max(capacity, len(data))
    scan = Scan(data, len(data), crc, interval, cap // interval + 2)
    stop = scan.stop
    if scan.verdict == OK or not any(data[stop:]):
        return Recovery(OK, scan=scan, after=data)
    if not repair and not _write_in_progress(data, stop) and \
            _valid_record_after(data, stop, len(data), crc):
        reason = "bad record length" if scan.verdict == NEEDMORE else scan.reason
        return Recovery(CORRUPT, reason, stop, scan)
    last = len(data.rstrip(b"\0"))
    after = data[:stop] + bytes(last - stop) + data[last:]
    return Recovery(OK, scan=scan, bytes_cut=last - stop, after=after)


def recover_sealed(data: bytes, crc, interval: int) -> Recovery:
    """Open a sealed segment without its index: a checking scan to the exact size."""
    why = header_verdict(data)
    if why is not None:
        return Recovery(CORRUPT, why)
    scan = Scan(data, len(data), crc, interval, (len(data) - SEG_HEADER) // REC_HEADER + 1)
    if scan.verdict != OK:
        reason = "truncated record" if scan.verdict == NEEDMORE else scan.reason
        return Recovery(CORRUPT, reason, scan.stop, scan, index_rebuilt=True)
    return Recovery(OK, scan=scan, index_rebuilt=True, after=data)


def read(scan: Scan, pos: int, limit: int, cap: int, json: bool, started: bool):
    """``ub_segment_read`` from the record boundary ``pos`` of a recovered segment:
    ``(rc, bad_pos, reason, payload bytes as (record, with separator) pairs,
    records, messages, need, next, closed, json_started)``."""
    by_pos = {r.pos: i for i, r in enumerate(scan.records)}
    out, records, messages, need, closed, nbytes = [], 0, 0, 0, False, 0
    i = by_pos.get(pos, len(scan.records))
    while pos < limit:
        rec = scan.records[i]
        if rec.next > limit:  # the limit cuts this record
            if records:
                break
            return CORRUPT, pos, "truncated record", [], 0, 0, 0, pos, False, started
        sep = 1 if json and rec.payload_len and started else 0
        want = rec.payload_len + sep
        if nbytes + want > cap:
            if not records:
                need = want
            break
        out.append((rec, sep))
        nbytes += want
        if json and rec.payload_len:
            started = True
        records += 1
        messages += rec.count
        pos = rec.next
        i += 1
        if rec.type in (REC_DATA_CLOSE, REC_CLOSE):
            closed = True
            break
    return OK, 0, None, out, records, messages, need, pos, closed, started
