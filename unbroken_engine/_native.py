"""The one module that touches the compiled C core (``unbroken_engine._cext``).

Every ``lib.*`` call in the project is in this file and is followed by
:func:`check`, which turns a negative return code into the exception class
whose ``UB_NAME`` names it (the map is built by scanning :mod:`.errors`).
Everything above this module works with :class:`NativeSegment` objects and
plain Python values and never sees cdata or an integer code.

Payloads are passed zero-copy: ``bytes`` go straight to ``const uint8_t *``
and other buffers through ``ffi.from_buffer``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import errors

try:
    from ._cext import ffi, lib
except ModuleNotFoundError as exc:
    if exc.name != f"{__package__}._cext":
        raise
    _here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"the C extension {__package__}._cext is not built in {_here}: Python is importing "
        f"the source tree at {_here} (the current directory is probably the repository "
        "root); run `pip install -e .` to build it in place, or run from another "
        "directory") from exc

# ---- constants re-exported from cext/ub_format.h -------------------------
FORMAT_VERSION: int = lib.UB_FORMAT_VERSION
MAGIC_SIZE: int = lib.UB_MAGIC_SIZE
SEG_MAGIC: bytes = ffi.unpack(lib.UB_SEG_MAGIC, lib.UB_MAGIC_SIZE)
IDX_MAGIC: bytes = ffi.unpack(lib.UB_IDX_MAGIC, lib.UB_MAGIC_SIZE)
SEG_HEADER_SIZE: int = lib.UB_SEG_HEADER_SIZE
SEG_HEADER_CRC_POS: int = lib.UB_SEG_HEADER_CRC_POS
REC_HEADER_SIZE: int = lib.UB_REC_HEADER_SIZE
REC_TYPE_POS: int = lib.UB_REC_TYPE_POS
IDX_HEADER_SIZE: int = lib.UB_IDX_HEADER_SIZE
IDX_HEADER_CRC_POS: int = lib.UB_IDX_HEADER_CRC_POS
IDX_ENTRY_SIZE: int = lib.UB_IDX_ENTRY_SIZE
MAX_PAYLOAD: int = lib.UB_MAX_PAYLOAD
MAX_ATTRS: int = lib.UB_MAX_ATTRS
MAX_RECORD: int = lib.UB_MAX_RECORD
DEFAULT_SEGMENT_SIZE: int = lib.UB_DEFAULT_SEGMENT_SIZE
DEFAULT_INDEX_INTERVAL: int = lib.UB_DEFAULT_INDEX_INTERVAL
JSON_MAX_DEPTH: int = lib.UB_JSON_MAX_DEPTH
REC_DATA: int = lib.UB_REC_DATA
REC_DATA_CLOSE: int = lib.UB_REC_DATA_CLOSE
REC_CLOSE: int = lib.UB_REC_CLOSE
REC_CHECKPOINT: int = lib.UB_REC_CHECKPOINT
REC_ZERO: int = lib.UB_REC_ZERO
REC_MAX_TYPE: int = lib.UB_REC_MAX_TYPE
OPEN_SEALED: int = lib.UB_OPEN_SEALED
OPEN_ACTIVE: int = lib.UB_OPEN_ACTIVE
OPEN_REPAIR: int = lib.UB_OPEN_REPAIR
ENOSPACE: int = lib.UB_ENOSPACE
NEEDMORE: int = lib.UB_ENEEDMORE
ECORRUPT: int = lib.UB_ECORRUPT


def _build_error_map():
    table = {}
    for obj in vars(errors).values():
        name = getattr(obj, "UB_NAME", None)
        if isinstance(obj, type) and name:
            table[getattr(lib, name)] = obj
    return table


_ERRORS = _build_error_map()


def check(rc: int, what: str, path=None, errno_value: int = 0) -> None:
    """Raise the exception for C return code ``rc`` (no-op for ``UB_OK``).

    :param what: what was being done, for the message
    :param path: the file concerned, where there is one
    :param errno_value: the saved ``errno`` of a failed system call
    """
    if rc == 0:
        return
    message = f"{what}: {ffi.string(lib.ub_strerror(rc)).decode()}"
    if errno_value:
        message += f" ({os.strerror(errno_value)})"
    if path is not None:
        message += f" [{path}]"
    cls = _ERRORS.get(rc, errors.UnbrokenError)
    if cls is errors.CorruptSegment:
        raise cls(path, 0, message)
    if cls is errors.InvalidOffset:
        raise cls(None, message)
    if cls is errors.InvalidJSON:
        raise cls(0, message)
    if issubclass(cls, OSError) and errno_value:
        raise cls(errno_value, message)
    raise cls(message)


def _ptr(data):
    """``bytes`` pass to C as they are; other buffers through ``from_buffer``."""
    return data if type(data) is bytes else ffi.from_buffer(data)


def _reason(ptr) -> str:
    return ffi.string(ptr).decode() if ptr != ffi.NULL else "unknown"


# ---- pure functions -------------------------------------------------------

def crc32c(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (extending ``crc``); hardware path when available."""
    return lib.ub_crc32c_extend(crc, ffi.from_buffer(data), len(data))


def crc32c_sw(data, crc: int = 0) -> int:
    """CRC32C through the table path only (to test it against the hardware)."""
    return lib.ub_crc32c_sw(crc, ffi.from_buffer(data), len(data))


def crc32c_hw_active() -> bool:
    """Whether the SSE4.2 instruction path is in use on this CPU."""
    return bool(lib.ub_crc32c_hw())


def crc_mask(crc: int) -> int:
    """Mask a CRC for storage (LevelDB's ``Mask``)."""
    return lib.ub_crc_mask(crc)


def crc_unmask(masked: int) -> int:
    """Inverse of :func:`crc_mask`."""
    return lib.ub_crc_unmask(masked)


def record_size(attrs_len: int, payload_len: int) -> int:
    """The bytes a record takes in a segment, which is also how far it moves
    the log offset: header, attrs and payload (``ub_record_size``, in Python
    so the hot paths need no C call)."""
    return REC_HEADER_SIZE + attrs_len + payload_len


@dataclass(frozen=True)
class DecodedRecord:
    """One record as the decoder saw it; positions are into the given buffer."""

    type: int
    msg_count: int
    attrs: bytes
    payload: bytes
    next: int


def encode_record(type: int, payload: bytes, attrs: bytes = b"", msg_count: int = 1) -> bytes:
    """Frame one record into a new ``bytes`` (the on-disk bytes of a record)."""
    if len(attrs) > MAX_ATTRS or len(payload) > MAX_PAYLOAD:
        raise errors.RecordTooLarge(f"attrs of {len(attrs)} or payload of {len(payload)} "
                                    f"bytes over the limits ({MAX_ATTRS}, {MAX_PAYLOAD})")
    size = lib.ub_record_size(len(attrs), len(payload))
    buf = ffi.new("uint8_t[]", size)
    written = ffi.new("size_t *")
    check(lib.ub_record_encode(buf, size, type, msg_count, _ptr(attrs), len(attrs),
                               _ptr(payload), len(payload), written), "encode record")
    return ffi.buffer(buf, written[0])[:]


def decode_record(buf, pos: int = 0):
    """Decode the record at ``buf[pos:]``.

    :return: a :class:`DecodedRecord`, or :data:`NEEDMORE` when the buffer ends
        inside the record
    :raises CorruptSegment: with a named ``reason`` when the bytes are damaged
    """
    rec = ffi.new("ub_record *")
    why = ffi.new("const char **")
    cbuf = ffi.from_buffer(buf)
    rc = lib.ub_record_decode(cbuf, len(buf), pos, rec, why)
    if rc == NEEDMORE:
        return NEEDMORE
    if rc == ECORRUPT:
        raise errors.CorruptSegment("<buffer>", pos, _reason(why[0]))
    check(rc, "decode record")
    view = memoryview(buf)
    return DecodedRecord(
        rec.type, rec.msg_count,
        bytes(view[rec.attrs_pos:rec.attrs_pos + rec.attrs_len]),
        bytes(view[rec.payload_pos:rec.payload_pos + rec.payload_len]),
        rec.next)


def json_flatten(data) -> tuple[bytes, int]:
    """Validate a JSON body and flatten one top-level array level.

    :return: ``(messages joined by ',', message count)``; ``(b"", 0)`` for ``[]``
    :raises InvalidJSON: with the byte position where parsing failed
    """
    n = len(data)
    out = ffi.new("uint8_t[]", n or 1)
    out_len = ffi.new("size_t *")
    count = ffi.new("uint32_t *")
    err = ffi.new("size_t *")
    rc = lib.ub_json_flatten(ffi.from_buffer(data), n, out, out_len, count, err)
    if rc == lib.UB_EJSON:
        raise errors.InvalidJSON(err[0])
    check(rc, "flatten JSON")
    return ffi.buffer(out, out_len[0])[:], count[0]


def json_validate(data) -> tuple[bool, int]:
    """Validate a JSON body. :return: ``(top level is an array, element count)``."""
    is_array = ffi.new("int *")
    count = ffi.new("uint32_t *")
    err = ffi.new("size_t *")
    rc = lib.ub_json_validate(ffi.from_buffer(data), len(data), is_array, count, err)
    if rc == lib.UB_EJSON:
        raise errors.InvalidJSON(err[0])
    check(rc, "validate JSON")
    return bool(is_array[0]), count[0]


def json_prefix(payload, n: int) -> bytes:
    """The first ``n`` values of a stored JSON payload (values joined by ',').

    :raises InvalidOffset: the payload holds fewer than ``n`` values
    """
    out = ffi.new("size_t *")
    rc = lib.ub_json_prefix(ffi.from_buffer(payload), len(payload), n, out)
    if rc == lib.UB_ERANGE:
        raise errors.InvalidOffset(n, "sub-offset past the message's values")
    check(rc, "split JSON payload")
    return bytes(payload[:out[0]])


# ---- segments ---------------------------------------------------------------

@dataclass(frozen=True)
class ScanReport:
    """What opening a segment found: records, bytes cut, index rebuilt."""

    valid_end: int
    bytes_cut: int
    records: int
    index_rebuilt: bool


class _Closed:
    """Stands in for the native pointer of a closed segment."""

    def __repr__(self):
        return "<closed segment: every call raises LogClosedError>"

    def __bool__(self):
        return False


_CLOSED = _Closed()


class NativeSegment:
    """A handle on one C segment. Positions are byte positions in the file.

    Not thread-safe for writers: callers hold the log's append lock around
    :meth:`append`, :meth:`append_batch`, :meth:`seal` and :meth:`truncate`.
    Reads are safe from any thread while one writer appends.
    """

    __slots__ = ("ptr", "path", "_end", "__weakref__")

    def __init__(self, ptr, path):
        self.ptr = ptr
        self.path = path
        self._end = ffi.new("uint64_t *")

    @classmethod
    def create(cls, path, base_offset: int, base_msg: int, created_ms: int,
               capacity: int, index_interval: int) -> "NativeSegment":
        """Create a new active segment file (which must not exist yet)."""
        out = ffi.new("ub_segment **")
        err = ffi.new("int *")
        rc = lib.ub_segment_create(os.fsencode(path), base_offset, base_msg, created_ms,
                                   capacity, index_interval, out, err)
        check(rc, "create segment", path, err[0])
        return cls(ffi.gc(out[0], lib.ub_segment_close), path)

    @classmethod
    def open(cls, path, idx_path, mode: int, capacity: int,
             index_interval: int) -> tuple["NativeSegment", ScanReport]:
        """Open (and recover, for an active segment) an existing segment file.

        :raises CorruptSegment: with the path, position and reason of the damage
        """
        out = ffi.new("ub_segment **")
        res = ffi.new("ub_scan_result *")
        rc = lib.ub_segment_open(os.fsencode(path), os.fsencode(idx_path), mode,
                                 capacity, index_interval, out, res)
        if rc == ECORRUPT:
            raise errors.CorruptSegment(path, res.bad_pos, _reason(res.reason))
        check(rc, "open segment", path, res.os_errno)
        report = ScanReport(res.valid_end, res.bytes_cut, res.records, bool(res.index_rebuilt))
        return cls(ffi.gc(out[0], lib.ub_segment_close), path), report

    def _p(self):
        p = self.ptr
        if not p:
            raise errors.LogClosedError(f"segment {self.path} is closed")
        return p

    def info(self):
        """A snapshot of the segment's counters (``ub_segment_info``)."""
        info = ffi.new("ub_segment_info *")
        lib.ub_segment_info_get(self._p(), info)
        return info

    def end(self) -> int:
        """Position after the last record."""
        return lib.ub_segment_end(self._p())

    def append(self, type_: int, msg_count: int, attrs, payload) -> int:
        """Append one record. :return: new end position, or raises.

        Returns ``-1`` when the record does not fit (the caller rolls).
        """
        if type(payload) is not bytes:
            payload = ffi.from_buffer(payload)
        if type(attrs) is not bytes:
            attrs = ffi.from_buffer(attrs)
        rc = lib.ub_segment_append(self._p(), type_, msg_count, attrs, len(attrs),
                                   payload, len(payload), self._end)
        if rc:
            if rc == ENOSPACE:
                return -1
            check(rc, "append", self.path, self.info().os_errno)
        return self._end[0]

    def append_batch(self, joined, lens, n: int) -> tuple[int, int, bool]:
        """Append ``n`` data records whose payloads lie back to back in ``joined``.

        :param lens: a ``uint32_t[]`` cdata (see :func:`lengths_array`)
        :return: (records appended, new end, whether the segment ran out of room)
        """
        done = ffi.new("size_t *")
        rc = lib.ub_segment_append_batch(self._p(), joined, lens, n, done, self._end)
        if rc and rc != ENOSPACE:
            check(rc, "append batch", self.path, self.info().os_errno)
        return done[0], self._end[0], rc == ENOSPACE

    def sync(self) -> None:
        """fdatasync the segment file."""
        p = self._p()
        rc = lib.ub_segment_sync(p)
        if rc:
            check(rc, "sync", self.path, self.info().os_errno)

    def seal(self, idx_path, sync: bool = True) -> None:
        """Cut the file to its end, write its index and (``sync``) fdatasync it;
        unsynced, it is synced by the next :meth:`sync`."""
        rc = lib.ub_segment_seal(self._p(), os.fsencode(idx_path), sync)
        if rc:
            check(rc, "seal", self.path, self.info().os_errno)

    def truncate(self, pos: int) -> None:
        """Cut the active segment back to ``pos`` (a record boundary)."""
        check(lib.ub_segment_truncate(self._p(), pos), "truncate", self.path)

    def is_boundary(self, pos: int) -> bool:
        """Whether ``pos`` is a record boundary (the end counts).

        :raises CorruptSegment: a record between the nearest index entry and
            ``pos`` fails its CRC (reported at that record)
        """
        bad, why = ffi.new("uint64_t *"), ffi.new("const char **")
        rc = lib.ub_segment_check_boundary(self._p(), pos, bad, why)
        if rc == ECORRUPT:
            raise errors.CorruptSegment(self.path, bad[0], _reason(why[0]))
        return rc == 0

    def read_into(self, pos: int, limit: int, out, json: bool, json_started: bool):
        """Gather payloads from ``pos`` into ``out`` (a cdata ``uint8_t *`` + cap).

        :param out: ``(cdata pointer, capacity)``
        :return: the ``ub_read_result`` cdata
        :raises InvalidOffset: when ``pos`` is not a record boundary
        :raises CorruptSegment: when a record fails its CRC
        """
        r = ffi.new("ub_read_result *")
        r.json_started = json_started
        ptr, cap = out
        rc = lib.ub_segment_read(self._p(), pos, limit, ptr, cap, json, r)
        if rc:
            if rc == ECORRUPT:
                raise errors.CorruptSegment(self.path, r.bad_pos, _reason(r.reason))
            if rc == lib.UB_ERANGE:
                raise errors.InvalidOffset(pos)
            check(rc, "read", self.path)
        return r

    def record_at(self, pos: int) -> DecodedRecord:
        """Decode and verify the record at ``pos``, copying attrs and payload out."""
        p = self._p()
        rec = ffi.new("ub_record *")
        bad, why = ffi.new("uint64_t *"), ffi.new("const char **")
        rc = lib.ub_segment_record_at(p, pos, rec, bad, why)
        if rc == ECORRUPT:
            raise errors.CorruptSegment(self.path, bad[0], _reason(why[0]))
        if rc == lib.UB_ERANGE:
            raise errors.InvalidOffset(pos)
        check(rc, "read record", self.path)
        data = lib.ub_segment_data(p)
        return DecodedRecord(rec.type, rec.msg_count,
                             ffi.buffer(data + rec.attrs_pos, rec.attrs_len)[:],
                             ffi.buffer(data + rec.payload_pos, rec.payload_len)[:],
                             rec.next)

    def find_msg(self, msg_rel: int) -> tuple[int, int] | None:
        """Position of the record holding message ``msg_rel`` of this segment and
        the number of messages before that record, or None when out of range."""
        pos = ffi.new("uint64_t *")
        first = ffi.new("uint64_t *")
        bad, why = ffi.new("uint64_t *"), ffi.new("const char **")
        rc = lib.ub_segment_find_msg(self._p(), msg_rel, pos, first, bad, why)
        if rc == lib.UB_ERANGE:
            return None
        if rc == ECORRUPT:
            raise errors.CorruptSegment(self.path, bad[0], _reason(why[0]))
        check(rc, "find message", self.path)
        return pos[0], first[0]

    def close(self) -> None:
        """Unmap and close now; later calls raise :class:`LogClosedError`."""
        p = self.ptr
        if p:
            self.ptr = _CLOSED
            ffi.release(p)


def new_buffer(size: int):
    """A zeroed byte buffer that C can write into: ``(bytearray, (ptr, cap))``."""
    buf = bytearray(size)
    return buf, (ffi.from_buffer(buf), size)


def offset_pointer(out, skip: int):
    """``out`` advanced by ``skip`` bytes (its capacity less as much), for
    writing after what is already there."""
    ptr, cap = out
    return ptr + skip, cap - skip


def lengths_array(lengths):
    """A ``uint32_t[]`` of the given lengths, for :meth:`NativeSegment.append_batch`."""
    return ffi.new("uint32_t[]", lengths)


def from_buffer(data):
    """A zero-copy ``uint8_t *`` view of a bytes-like object."""
    return ffi.from_buffer(data)



# ---- fault injection (tests only) -------------------------------------------

def _test_fail_next_sync(n: int) -> int:
    """Tests only: the next ``n`` fdatasync calls of a segment sync or seal
    fail with EIO (``StorageIOError``); 0 disarms. Process-wide.

    :return: how many armed failures were still pending
    """
    return lib.ub_test_fail_next_sync(n)


def _test_fail_next_alloc(n: int) -> int:
    """Tests only: the next ``n`` posix_fallocate calls (segment creation or
    growth) fail with ENOSPC (``StorageFull``); 0 disarms. Process-wide.

    :return: how many armed failures were still pending
    """
    return lib.ub_test_fail_next_alloc(n)


def _test_sync_count() -> int:
    """Tests only: how many fdatasync calls segment syncs and seals have made
    in this process so far (failed ones included). Process-wide; take the
    difference of two readings."""
    return lib.ub_test_sync_count()

def bench_mmap_copy(path, total: int, chunk: int) -> float:
    """Seconds to copy ``total`` bytes in ``chunk`` pieces into a fresh mmap."""
    ns = ffi.new("uint64_t *")
    check(lib.ub_bench_mmap_copy(os.fsencode(path), total, chunk, ns), "mmap copy", path)
    return ns[0] / 1e9


def bench_memcpy(total: int, chunk: int) -> float:
    """Seconds to memcpy ``total`` bytes in ``chunk`` pieces."""
    ns = ffi.new("uint64_t *")
    check(lib.ub_bench_memcpy(total, chunk, ns), "memcpy")
    return ns[0] / 1e9


def bench_fdatasync(path, rounds: int, size: int) -> float:
    """Seconds for ``rounds`` write+fdatasync pairs of ``size`` bytes."""
    ns = ffi.new("uint64_t *")
    check(lib.ub_bench_fdatasync(os.fsencode(path), rounds, size, ns), "fdatasync", path)
    return ns[0] / 1e9
