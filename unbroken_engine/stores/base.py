"""BaseStreamStore: every rule of the protocol, once, for the in-process stores.

The memory and file-backed stores differ only in where a stream's log lives
and how its metadata is kept; they subclass this and fill in a handful of
hooks (``_new_log``, ``_commit_new``, ``_save_meta``, ``_destroy``). All
protocol decisions -- config matching, producer fencing, Stream-Seq, closing,
JSON flattening, forks and their reference counts, soft delete, TTL -- are
made here.

Atomicity. An append is validated and written into the log with no ``await``
in between, so appends to a stream are serialized by the event loop, and the
record it writes carries the producer's (id, epoch, seq), the Stream-Seq and
the close in its attrs and type: the data and the state it implies are one
write, and recovery rebuilds the state from the log. The append then settles
under the log's durability policy (``log.settle``, the one owner of "does
this policy wait") and only then wakes live readers: under ``always`` it
waits for its fdatasync, shared by concurrent appends (group commit); under
``interval`` and ``never`` it is acknowledged at once and nothing is flushed
on its path (the log's background flusher makes it durable within
``flush_interval``, resp. the OS writes it back when it likes). A duplicate,
a refusal on the strength of earlier appends (Stream-Seq conflict, stale
epoch, sequence gap) and an append to a closed stream settle the same way
before they answer. Creating a stream and a soft delete sync their files
under every policy (they are rare, and a stream is never half-created); so
does closing the store (:meth:`BaseStreamStore.aclose`).

Visibility. Readers see a stream's log up to ``log.settled_offset``: under
``always`` its durable offset only, so a reader never sees data a crash could
take back, and the tail a HEAD reports is one an append has acknowledged;
under ``interval`` and ``never`` the end of the log, which is what those
policies acknowledge (a machine crash may take back the unflushed tail,
which readers may have seen).
"""
from __future__ import annotations

import bisect
import functools
import time

import msgpack

from .. import errors
from ..log.paging import fits, part_size
from ..log.segmented import RecordType
from ..protocol import framing
from ..protocol.media import is_json, media_type
from ..protocol.offsets import NOW, START
from ..protocol.producers import ProducerOutcome, ProducerState, validate
from ..protocol.rules import (
    Requested,
    append_record,
    check_create_options,
    check_path,
    check_producer,
    check_same_config,
    check_stream_seq,
    created_content_type,
    created_expiry,
    fork_prefix,
    initial_records,
    is_expired,
)
from .interface import (
    DEFAULT_READ_CHUNK,
    AppendOptions,
    AppendResult,
    CreateOptions,
    CreateResult,
    LastMessage,
    ReadResult,
    StreamMeta,
    StreamStore,
    last_json_value,
)
from .notify import StreamNotifier

_CLOSERS = (RecordType.DATA_CLOSE, RecordType.CLOSE)


class Stream:
    """A stream's live state (one per path, owned by the store)."""

    __slots__ = ("path", "content_type", "media", "json", "ttl", "expires_at", "created_at",
                 "last_access", "log", "producers", "last_seq", "closed_at", "source",
                 "fork_offset", "forks", "soft_deleted", "requested", "handle", "removed",
                 "since_snapshot", "msg_starts")

    def __init__(self, path: str, content_type: str, log, *, ttl=None, expires_at=None,
                 created_at: float, requested: Requested, source: "Stream | None" = None,
                 fork_offset: int | None = None, handle=None):
        self.path = path
        self.content_type = content_type
        self.media = media_type(content_type)
        self.json = is_json(content_type)
        self.ttl = ttl
        self.expires_at = expires_at
        self.created_at = created_at
        self.last_access = created_at
        self.log = log
        self.producers: dict[str, ProducerState] = {}
        self.last_seq: str | None = None
        self.closed_at: int | None = None  # end offset of the close record
        self.source = source
        self.fork_offset = fork_offset
        self.forks: set[Stream] = set()  # forks reading through this stream
        self.soft_deleted = False
        self.requested = requested
        self.handle = handle  # the backend's own (e.g. the directory)
        self.removed = False
        self.since_snapshot = 0  # appends since the last state snapshot
        # Where the own log's records that carry messages start: the last one
        # readers could see when last looked at, and every one after it
        # (appends not yet durable); older ones are dropped as the visible
        # end moves past (see BaseStreamStore._message_starts). None: not
        # known (restored from a snapshot made before they were kept).
        self.msg_starts: list[int] | None = []

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @property
    def refs(self) -> int:
        """How many forks read through this stream."""
        return len(self.forks)

    def state(self, offset: int) -> dict:
        """The state the log implies up to ``offset``, for a snapshot."""
        state = {"offset": offset, "last_seq": self.last_seq, "closed_at": self.closed_at,
                 "producers": {k: [v.epoch, v.last_seq] for k, v in self.producers.items()}}
        if self.msg_starts is not None:
            # the start of the last record below ``offset`` that carries messages
            i = bisect.bisect_left(self.msg_starts, offset)
            state["last_msg"] = self.msg_starts[i - 1] if i else None
        return state

    def restore(self, state: dict) -> int:
        """Load a snapshot made by :meth:`state`; :return: its offset."""
        self.last_seq = state["last_seq"]
        self.closed_at = state["closed_at"]
        self.producers = {k: ProducerState(v[0], v[1]) for k, v in state["producers"].items()}
        if "last_msg" in state:
            last = state["last_msg"]
            self.msg_starts = [] if last is None else [last]
        else:  # a snapshot from before they were kept: found by one scan when asked
            self.msg_starts = None
        return state["offset"]

    def start_offset(self) -> int:
        """Where a read from the beginning starts (a fork's root's start)."""
        return self.source.start_offset() if self.source is not None else self.log.start_offset

    def apply(self, rec_type: RecordType, attrs: bytes, end: int, *,
              start: int | None = None, msg_count: int = 0) -> None:
        """Update producer state, Stream-Seq and closure from one record (the
        same function serves appends and recovery); with ``start``, note
        where a record that carries messages (``msg_count``) starts."""
        if attrs:
            fields = msgpack.unpackb(attrs)
            p = fields.get("p")
            if p is not None:
                self.producers[p[0]] = ProducerState(p[1], p[2])
            if "s" in fields:
                self.last_seq = fields["s"]
        if rec_type in _CLOSERS:
            self.closed_at = end
        if msg_count and start is not None and self.msg_starts is not None:
            self.msg_starts.append(start)


def closed_answer(state: ProducerState | None, o: AppendOptions, close_only: bool, end: int,
                  path: str, closed_at: int) -> AppendResult:
    """The answer to an append (``close_only``: no data) to a closed stream
    ending at ``end``, given the producer's ``state`` there: the
    producer's retry of a request already stored is a duplicate, a plain
    close again is idempotent, anything else is refused.

    :raises StreamClosed: a new request
    """
    p = o.producer
    if p is not None:
        try:
            if validate(state, p.epoch, p.seq) is ProducerOutcome.DUPLICATE:
                return AppendResult(end, ProducerOutcome.DUPLICATE, p.epoch, state.last_seq, True)
        except (errors.ProducerSeqGap, errors.InvalidEpochSeq):
            pass  # a new request: the stream is closed to it
    elif close_only:
        return AppendResult(end, closed=True)  # closing again is idempotent
    raise errors.StreamClosed(path, closed_at)


class BaseStreamStore(StreamStore):
    """The protocol on top of per-stream logs. Subclasses provide the logs.

    :param clock: wall-clock seconds (``time.time``); injectable for tests
    """

    kind = "base"

    def __init__(self, *, clock=time.time):
        self._streams: dict[str, Stream] = {}
        self._notifier = StreamNotifier()
        self._clock = clock
        self._closed = False
        self._lock = None  # created lazily: anyio locks belong to a running loop

    # ---- hooks for subclasses ----------------------------------------------------

    def _visible_end(self, s: Stream) -> int:
        """Offset up to which readers may see a stream's own log: what its
        durability policy acknowledges (``log.settled_offset``)."""
        return s.log.settled_offset

    async def _build(self, path: str, content_type: str, base_offset: int,
                     records: list[tuple], meta: dict):
        """Create a stream's log holding ``records`` (``(payload, attrs, type,
        msg_count)``), durably, and return ``(log, handle)``."""
        raise NotImplementedError

    def _save_meta(self, s: Stream) -> None:
        """Persist metadata that changed after creation (soft delete)."""

    def _destroy(self, s: Stream) -> None:
        """Release and remove a stream's storage."""
        s.log.close()

    def _snapshot(self, s: Stream) -> None:
        """Save the state the log implies, so a restart need not replay it all."""

    #: appends between state snapshots (recovery replays at most this many)
    SNAPSHOT_EVERY = 4096

    # ---- lookups, expiry, removal -------------------------------------------------

    @staticmethod
    def _is_expired(s: Stream, now: float) -> bool:
        return is_expired(s.expires_at, s.ttl, s.last_access, now)

    def _lookup(self, path: str, *, touch: bool = False, soft_ok: bool = False) -> Stream:
        if self._closed:
            raise errors.LogClosedError("store is closed")
        s = self._streams.get(path)
        if s is not None and not s.soft_deleted and self._is_expired(s, self._clock()):
            self._expire(s)
            s = self._streams.get(path)
        if s is not None and s.soft_deleted and not self._has_live_forks(s):
            if not s.removed:  # its last fork expired since it was deleted
                self._remove(s)
            s = None
        if s is None:
            raise errors.StreamNotFound(path)
        if s.soft_deleted and not soft_ok:
            raise errors.StreamSoftDeleted(path)
        if touch:
            s.last_access = self._clock()
        return s

    def _has_live_forks(self, s: Stream, removed: list | None = None) -> bool:
        """Whether forks still read through ``s`` (expired ones are let go first)."""
        now = self._clock()
        for fork in list(s.forks):
            if not fork.soft_deleted and self._is_expired(fork, now):
                self._expire(fork, removed)
        return bool(s.forks)

    def _expire(self, s: Stream, removed: list | None = None) -> None:
        """An expired stream goes; with live forks it is soft-deleted instead.
        Paths removed (the stream, expired forks, released sources) are added
        to ``removed``."""
        if self._has_live_forks(s, removed):
            s.soft_deleted = True
            self._save_meta(s)
            self._notifier.notify(s.path)
            if removed is not None:
                removed.append(s.path)  # out of sight, data kept for its forks
        else:
            self._remove(s, removed)

    def _remove(self, s: Stream, removed: list | None = None) -> None:
        """Forget a stream and release its source; a soft-deleted source whose
        last fork this was goes too (up the chain)."""
        while s is not None:
            if removed is not None:
                removed.append(s.path)
            self._streams.pop(s.path, None)
            s.removed = True
            self._notifier.notify(s.path)
            self._destroy(s)
            src = s.source
            if src is None:
                return
            src.forks.discard(s)
            s = src if (src.soft_deleted and not src.forks and not src.removed) else None

    def _meta(self, s: Stream) -> StreamMeta:
        return StreamMeta(s.path, s.content_type, self._visible_end(s),
                          self._closed_visible(s), s.created_at, s.ttl, s.expires_at)

    def _closed_visible(self, s: Stream) -> bool:
        return s.closed_at is not None and self._visible_end(s) >= s.closed_at

    # ---- create ---------------------------------------------------------------------

    def _structure_lock(self):
        if self._lock is None:
            import anyio
            self._lock = anyio.Lock()
        return self._lock

    async def create(self, path: str, options: CreateOptions = CreateOptions()) -> CreateResult:
        check_path(path)
        o = options
        check_create_options(o)
        async with self._structure_lock():
            existing = self._existing(path)
            if existing is not None:
                if existing.closed:  # judge by the close only once it is on disk
                    await self._settled(existing)
                self._check_same_config(existing, o)
                return CreateResult(False, self._meta(existing))
            return await self._create_new(path, o)

    def _existing(self, path: str) -> Stream | None:
        try:
            s = self._lookup(path, soft_ok=True)
        except errors.StreamNotFound:
            return None
        if s.soft_deleted:
            raise errors.ConfigMismatch(f"stream {path!r} was deleted and still has forks")
        return s

    def _check_same_config(self, s: Stream, o: CreateOptions) -> None:
        check_same_config(s, o)

    async def _create_new(self, path: str, o: CreateOptions) -> CreateResult:
        source = None
        if o.fork_from is not None:
            source = self._lookup(o.fork_from, soft_ok=True)
            if source.soft_deleted:
                raise errors.ConfigMismatch(f"fork source {o.fork_from!r} was deleted")
        content_type = created_content_type(o, source)
        records, base = [], 0
        if source is not None:
            base = self._visible_end(source) if o.fork_offset is None else o.fork_offset
            self._check_fork_offset(source, base)
            if o.fork_sub_offset:
                records.append(await fork_prefix(functools.partial(self._record_at, source),
                                                 base, o.fork_sub_offset, source.json))
        records.extend(initial_records(content_type, o.data, o.closed))
        inherited = None if source is None else (source.ttl, source.expires_at)
        ttl, expires_at = created_expiry(o, inherited)
        now = self._clock()
        requested = Requested(None if o.content_type is None else media_type(o.content_type),
                               o.ttl, o.expires_at, o.fork_from, base if source else None,
                               o.fork_sub_offset)
        meta = {"path": path, "content_type": content_type, "ttl": ttl,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "created_at": now,
                "requested": {"ttl": o.ttl, "expires_at":
                              o.expires_at.isoformat() if o.expires_at else None,
                              "content_type": requested.media},
                "fork": None if source is None else {
                    "from": source.path, "offset": base, "sub_offset": o.fork_sub_offset}}
        log, handle = await self._build(path, content_type, base, records, meta)
        s = Stream(path, content_type, log, ttl=ttl, expires_at=expires_at, created_at=now,
                   requested=requested, source=source, fork_offset=base if source else None,
                   handle=handle)
        for rec in log.records():
            s.apply(rec.type, rec.attrs, rec.next_offset, start=rec.offset,
                    msg_count=rec.msg_count)
        self._streams[path] = s
        if source is not None:
            source.forks.add(s)
        return CreateResult(True, self._meta(s))

    def _check_fork_offset(self, s: Stream, offset: int) -> None:
        """``offset`` must be a boundary in ``s``'s view (its own log, or the
        inherited range of its source chain) and not beyond its tail."""
        if offset < 0 or offset > self._visible_end(s):
            raise errors.InvalidOffset(offset, "fork offset beyond the source's tail")
        while s.source is not None and offset < s.fork_offset:
            s = s.source
        if offset >= s.log.start_offset or s.source is None:
            s.log.check_offset(offset)

    async def _record_at(self, s: Stream, offset: int):
        """The record starting at ``offset`` in ``s``'s view, or None at its end
        (a coroutine only to fit :func:`~..protocol.rules.fork_prefix`'s
        lookup; it never waits)."""
        while s.source is not None and offset < s.fork_offset:
            s = s.source
        for rec in s.log.records(offset):
            if rec.offset < self._visible_end(s):
                return rec
            break
        return None

    # ---- metadata, append -------------------------------------------------------

    async def get(self, path: str) -> StreamMeta:
        return self._meta(self._lookup(path))

    async def append(self, path: str, data: bytes,
                     options: AppendOptions = AppendOptions()) -> AppendResult:
        o = options
        s = self._lookup(path, touch=True)
        close_only = not data
        if close_only and not o.close:
            raise errors.EmptyBody("an append needs data (or a close)")
        p = o.producer
        if p is not None:
            check_producer(p)
        if s.closed:
            await self._settled(s)  # report the tail the closing append acknowledged
            return self._append_to_closed(s, o, close_only)
        if not close_only and o.content_type is not None and media_type(o.content_type) != s.media:
            raise errors.ContentTypeMismatch(s.content_type, o.content_type)
        outcome = None
        try:
            if p is not None:
                state = s.producers.get(p.id)
                outcome = validate(state, p.epoch, p.seq)
                if outcome is ProducerOutcome.DUPLICATE:
                    await self._settled(s)  # the original may still be on its way to disk
                    return AppendResult(self._visible_end(s), outcome, p.epoch, state.last_seq,
                                        self._closed_visible(s))
            check_stream_seq(s.last_seq, o.seq)
        except (errors.SequenceConflict, errors.StaleEpoch, errors.ProducerSeqGap):
            # Refused on the strength of state that earlier appends wrote: like
            # a duplicate, answer only once that state is on disk (a failed
            # flush then makes this a 503, never a conflict a crash could undo).
            await self._settled(s)
            raise
        payload, attrs, kind, count = append_record(data, o, s.json)
        start = s.log.end_offset
        end = s.log.write(payload, attrs, kind, count)  # no await since the checks
        s.apply(kind, attrs, end, start=start, msg_count=count)
        if s.msg_starts is not None:
            self._message_starts(s)  # let go of the starts no read_last can need
        s.since_snapshot += 1
        await self._settled(s, end)
        if s.since_snapshot >= self.SNAPSHOT_EVERY and s.log.settled_offset == s.log.end_offset:
            self._snapshot(s)  # only of state that is all acknowledged (``always``: on disk)
        self._notifier.notify(path)
        return AppendResult(end, outcome, p.epoch if p else None, p.seq if p else None, s.closed)

    async def _settled(self, s: Stream, offset: int | None = None) -> None:
        """Wait until ``s``'s log lets what lies up to ``offset`` (default: its
        end) be acknowledged under its durability policy (``log.settle``:
        ``always`` waits for the disk, ``interval`` and ``never`` do not).

        :raises StreamNotFound: the stream was deleted meanwhile
        :raises StorageIOError: ``always``, and the flush failed
        """
        try:
            await s.log.settle(s.log.end_offset if offset is None else offset)
        except errors.LogClosedError:
            if s.removed:
                raise errors.StreamNotFound(s.path) from None
            raise

    def _append_to_closed(self, s: Stream, o: AppendOptions, close_only: bool) -> AppendResult:
        state = s.producers.get(o.producer.id) if o.producer is not None else None
        return closed_answer(state, o, close_only, self._visible_end(s), s.path, s.closed_at)

    # ---- reads ---------------------------------------------------------------------------

    async def read(self, path: str, offset=None, max_bytes: int = DEFAULT_READ_CHUNK) -> ReadResult:
        s = self._lookup(path, touch=True)
        tail = self._visible_end(s)
        if offset is NOW:
            return ReadResult(framing.empty(s.json), tail, True, self._closed_visible(s),
                              s.content_type)
        if offset is None or offset is START:
            offset = s.start_offset()
        if not isinstance(offset, int) or offset < 0 or offset > tail:
            raise errors.InvalidOffset(offset, "beyond the tail of the stream")
        parts, nxt = self._read_range(s, offset, max_bytes, tail)
        data = framing.join(parts, s.json)
        up_to_date = nxt >= tail
        return ReadResult(data, nxt, up_to_date, up_to_date and self._closed_visible(s),
                          s.content_type)

    async def read_last(self, path: str) -> LastMessage:
        s = self._lookup(path, touch=True)
        tail = self._visible_end(s)
        closed = self._closed_visible(s)
        found = self._last_message(s, tail)
        if found is None:
            return LastMessage(b"", None, tail, closed, s.content_type)
        holder, at = found
        rec = next(holder.log.records(at))  # one record, its CRC checked
        data = last_json_value(rec.payload, rec.msg_count) if s.json else bytes(rec.payload)
        return LastMessage(data, at, tail, closed, s.content_type, True)

    def _last_message(self, s: Stream, until: int) -> tuple[Stream, int] | None:
        """The last record that carries messages in ``s``'s view below
        ``until``: ``(stream whose log holds it, its start)``, or None. A
        fork with none of its own (its sub-offset's prefix counts) looks in
        its source below the fork offset, and so on up the chain."""
        while True:
            at = self._last_own_message(s, until)
            if at is not None:
                return s, at
            if s.source is None:
                return None
            until = min(until, s.fork_offset)
            s = s.source

    def _last_own_message(self, s: Stream, until: int) -> int | None:
        """Where the last record that carries messages in ``s``'s own log,
        below ``until``, starts (None: there is none)."""
        starts = self._message_starts(s)
        i = bisect.bisect_left(starts, until)
        if i:
            at = starts[i - 1]
            return at if at >= s.log.start_offset else None  # else: retention dropped it
        if not starts or starts[0] >= self._visible_end(s) or until <= s.log.start_offset:
            return None  # no start was ever let go, or nothing lies below ``until``
        # ``until`` is a fork's offset, before the last messages this stream
        # still lists: scan its log up to there (only forks of streams written
        # to after the fork get here)
        last = None
        for rec in s.log.records():
            if rec.offset >= until:
                break
            if rec.msg_count:
                last = rec.offset
        return last

    def _message_starts(self, s: Stream) -> list[int]:
        """``s.msg_starts`` without the starts before the last one readers can
        see (the visible end only grows: no read can need them again). When
        not known, they are found by one scan of the log."""
        visible = self._visible_end(s)
        starts = s.msg_starts
        if starts is None:  # restored from a snapshot made before they were kept
            starts = s.msg_starts = []
            for rec in s.log.records():
                if not rec.msg_count:
                    continue
                if starts and starts[-1] < visible and rec.offset < visible:
                    starts[-1] = rec.offset
                else:
                    starts.append(rec.offset)
            return starts
        i = bisect.bisect_left(starts, visible)
        if i > 1:
            del starts[:i - 1]
        return starts

    def _read_range(self, s: Stream, offset: int, budget: int, until: int):
        """Read ``s``'s view from ``offset`` up to ``until``: the inherited range
        from its source chain, then its own log. :return: (parts, next offset);
        JSON parts are array contents without brackets."""
        parts: list = []
        if s.source is not None and offset < s.fork_offset:
            parts, offset = self._read_range(s.source, offset, budget,
                                             min(until, s.fork_offset))
            budget -= sum(len(x) for x in parts)
            if offset < s.fork_offset or offset >= until or budget <= 0:
                return parts, offset
        if offset < s.log.start_offset and s.source is None:
            raise errors.OffsetGone(offset, s.log.start_offset)
        r = s.log.read(offset, budget, json=s.json, until=min(until, self._visible_end(s)))
        data = r.data
        if not fits(part_size(data, s.json, bool(parts)), budget, not parts):
            return parts, offset  # the first own append does not fit this page
        if len(data):
            parts.append(data)
        return parts, r.next_offset

    async def wait_for_messages(self, path: str, offset: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        generation = self._notifier.generation
        while True:
            s = self._lookup(path)
            if self._visible_end(s) > offset or self._closed_visible(s):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._notifier.wait(path, remaining):
                return False
            if self._notifier.generation != generation:
                return False  # notify_all(): the store is closing or the server stopping

    def waiting(self, path: str | None = None) -> int:
        return self._notifier.waiting(path)

    # ---- delete, list, sweep, close ------------------------------------------------------

    async def delete(self, path: str) -> None:
        async with self._structure_lock():
            s = self._lookup(path)
            if self._has_live_forks(s):
                s.soft_deleted = True
                self._save_meta(s)
                self._notifier.notify(path)
            else:
                self._remove(s)

    async def list_streams(self, prefix: str = "") -> list[StreamMeta]:
        now = self._clock()
        return [self._meta(s) for path, s in sorted(self._streams.items())
                if path.startswith(prefix) and not s.soft_deleted
                and not self._is_expired(s, now)]

    async def sweep(self) -> list[str]:
        async with self._structure_lock():
            now = self._clock()
            gone: list[str] = []
            for s in list(self._streams.values()):
                if s.removed:
                    continue
                if s.soft_deleted:
                    if not self._has_live_forks(s, gone) and not s.removed:
                        self._remove(s, gone)
                elif self._is_expired(s, now):
                    self._expire(s, gone)
            return sorted(set(gone))

    def notify_all(self) -> None:
        """Wake every live reader (shutdown)."""
        self._notifier.notify_all()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notifier.notify_all()
        for s in list(self._streams.values()):
            s.log.sync()
            self._snapshot(s)
            s.log.close()
