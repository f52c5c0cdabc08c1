"""SharedStreamStore: the protocol over a backend that several processes share.

The Redis and PostgreSQL stores keep nothing of a stream in the process: every
operation reads the stream's state from the backend, decides with the same
rules as :class:`~unbroken_engine.stores.base.BaseStreamStore` (the pure checks in
:mod:`.streams` and :mod:`.producers` are shared), and writes its outcome back
in one backend transaction (:class:`Tx`). A backend supplies only storage:

* a **row** per stream path (:class:`Row`: configuration, tail offset, closure,
  last Stream-Seq, fork links, soft delete), plus its sliding-TTL clock;
* the stream's **records**, keyed by the row's incarnation id ``rid`` (a new id
  per creation, so a path deleted and created again never sees old data, and
  a fork keeps reading its source's records by id);
* **producer state** per ``(rid, producer id)``;
* a **notification channel** (Redis pub/sub, PostgreSQL LISTEN/NOTIFY) that
  carries the path of every stream that changed to every instance.

Atomicity. A transaction either commits all its writes or none, and it only
commits if no row it read changed meanwhile: PostgreSQL locks the rows it reads
(``SELECT ... FOR UPDATE``), Redis watches their keys (``WATCH``/``MULTI``/
``EXEC``) and a conflict re-runs the operation (:class:`Conflict`). So two
instances appending to one stream at once never lose, duplicate or reorder an
acknowledged append, and producer fencing holds across instances. Within one
instance, appends to a path queue up and commit together (group commit: one
transaction carries every append that arrived while the previous one was on
its way, each decided in order), so they neither retry against each other
nor wait one round trip apiece.

Time. Expiry is decided on the backend's clock: each instance measures its
offset from the backend's clock at start and every minute
(:meth:`Backend.server_time`), so instances whose own clocks disagree by a
little still agree on when a stream expires. Expired streams are removed by
:meth:`sweep`, which runs in one instance at a time (a backend lock); an
expired stream is not served by any instance meanwhile.

Outages. A backend that cannot be reached raises
:class:`~unbroken_engine.errors.BackendUnavailable` (HTTP 503) at once; live
readers' waits end with it. The notification listener reconnects by itself
and then wakes every waiter to look again, so a dropped notification never
strands a reader.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable

import anyio

from ... import _native as nat
from ... import errors
from ...log.paging import fits, part_size
from ...log.segmented import RecordType
from ...protocol import framing
from ...protocol.media import is_json, media_type
from ...protocol.offsets import NOW, START
from ...protocol.producers import ProducerOutcome, ProducerState, validate
from ...protocol.rules import (
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
from ..base import closed_answer
from ..interface import (
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
from ..notify import StreamNotifier

log = logging.getLogger("unbroken")

_CLOSERS = (RecordType.DATA_CLOSE, RecordType.CLOSE)
#: how long an operation that keeps losing races (a row changed under a Redis
#: compare-and-set, a PostgreSQL deadlock or unique violation) is re-run, with
#: jittered backoff, before it answers 503
CONTENTION_LIMIT = 5.0
#: most records fetched per backend round trip when reading; the first trip
#: asks for few, later ones for as many as the byte budget seems to allow
READ_BATCH = 1024
FIRST_READ_BATCH = 16
#: how often each instance re-measures its offset from the backend's clock
CLOCK_EVERY = 60.0


#: bytes of recently written or read records each instance keeps: records
#: never change once committed, so live readers following a stream's tail
#: read them from here instead of one backend trip each
RECORD_CACHE_BYTES = 8 << 20
#: records larger than this are not cached
RECORD_CACHE_MAX = 256 << 10


class RecordCache:
    """Recent records by (incarnation id, offset), least recently used out.

    Safe without invalidation: a committed record never changes, and an
    incarnation id is never reused. Only runs of records that follow each
    other are served, so a reader gets exactly what the backend would give.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self._recs: OrderedDict = OrderedDict()

    def add(self, rid: str, recs) -> None:
        """Remember ``recs`` (committed records of ``rid``)."""
        for rec in recs:
            n = len(rec.payload) + len(rec.attrs) + 64
            if n > RECORD_CACHE_MAX or (rid, rec.offset) in self._recs:
                continue
            self._recs[(rid, rec.offset)] = rec
            self.size += n
        while self.size > self.capacity and self._recs:
            _, old = self._recs.popitem(last=False)
            self.size -= len(old.payload) + len(old.attrs) + 64

    def run(self, rid: str, at: int, hi: int, most: int = 1024) -> list:
        """The cached records of ``rid`` that follow each other from ``at``
        (below ``hi``); empty if the one at ``at`` is not cached."""
        out = []
        while at < hi and len(out) < most:
            rec = self._recs.get((rid, at))
            if rec is None:
                break
            self._recs.move_to_end((rid, at))
            out.append(rec)
            at = rec.next_offset
        return out


#: most appends (and bytes) one transaction commits for a stream
APPEND_BATCH = 64
APPEND_BATCH_BYTES = 4 << 20


@dataclass
class _Pending:
    """An append waiting for its stream's next transaction."""

    data: bytes
    o: AppendOptions
    future: asyncio.Future


class Conflict(Exception):
    """A transaction lost a race with another writer; the operation re-runs."""


@dataclass(frozen=True)
class _RaiseAfterCommit:
    """An operation's answer is an error, but what it changed on the way (a
    lazy expiry) is committed first."""

    error: Exception


@dataclass
class Row:
    """A stream's state, as a backend stores it (one per live path).

    :ivar rid: incarnation id: names the stream's records and producer state
    :ivar chain: the inherited ranges of a fork, oldest first:
        ``[rid, lo, hi]`` means offsets ``lo..hi`` are ``rid``'s records
    :ivar base: where the stream's own records start (a fork's offset, else 0)
    :ivar source: ``[path, rid]`` of a fork's source
    :ivar forks: ``[path, rid]`` of the forks that read through this stream
    :ivar last_access: when it was last read or written (sliding TTL)
    :ivar last_msg: where the last of the stream's own records that carries
        messages starts, kept by the transaction that writes it (None: it
        has none, or the row was written before this was kept)
    """

    path: str
    rid: str
    content_type: str
    created_at: float
    last_access: float
    ttl: int | None = None
    expires_at: str | None = None  # ISO 8601, as given
    req_media: str | None = None
    req_ttl: int | None = None
    req_expires_at: str | None = None
    fork_from: str | None = None
    fork_sub_offset: int = 0
    base: int = 0
    chain: list = field(default_factory=list)
    source: list | None = None
    forks: list = field(default_factory=list)
    tail: int = 0
    closed_at: int | None = None
    last_seq: str | None = None
    soft_deleted: bool = False
    last_msg: int | None = None

    # -- what the shared rules (streams.check_same_config) read --
    @property
    def media(self) -> str:
        """The content type's media type (lower case, no parameters)."""
        return media_type(self.content_type)

    @property
    def json(self) -> bool:
        """Whether this is a JSON stream."""
        return is_json(self.content_type)

    @property
    def fork_offset(self) -> int | None:
        """Where a fork starts in its source (None: not a fork)."""
        return self.base if self.source is not None else None

    @property
    def requested(self) -> Requested:
        """What the creating request asked for (to judge an identical create)."""
        return Requested(self.req_media, self.req_ttl, _parse_time(self.req_expires_at),
                          self.fork_from, self.fork_offset, self.fork_sub_offset)

    def expires(self) -> datetime | None:
        """The absolute expiry as a datetime, if any."""
        return _parse_time(self.expires_at)

    def to_dict(self) -> dict:
        """Everything but ``path`` and ``last_access`` (stored beside it)."""
        return {"rid": self.rid, "ct": self.content_type, "created": self.created_at,
                "ttl": self.ttl, "exp": self.expires_at, "rmedia": self.req_media,
                "rttl": self.req_ttl, "rexp": self.req_expires_at, "ffrom": self.fork_from,
                "fsub": self.fork_sub_offset, "base": self.base, "chain": self.chain,
                "src": self.source, "forks": self.forks, "tail": self.tail,
                "closed": self.closed_at, "seq": self.last_seq, "soft": self.soft_deleted,
                "lm": self.last_msg}

    @classmethod
    def from_dict(cls, path: str, d: dict, last_access: float) -> "Row":
        """The row :meth:`to_dict` made."""
        return cls(path=path, rid=d["rid"], content_type=d["ct"], created_at=d["created"],
                   last_access=last_access, ttl=d["ttl"], expires_at=d["exp"],
                   req_media=d["rmedia"], req_ttl=d["rttl"], req_expires_at=d["rexp"],
                   fork_from=d["ffrom"], fork_sub_offset=d["fsub"], base=d["base"],
                   chain=[list(c) for c in d["chain"]],
                   source=list(d["src"]) if d["src"] else None,
                   forks=[list(f) for f in d["forks"]], tail=d["tail"],
                   closed_at=d["closed"], last_seq=d["seq"], soft_deleted=d["soft"],
                   last_msg=d.get("lm"))  # rows written before it was kept: None


class Rec:
    """One stored record: an append (or a close) at ``offset``."""

    __slots__ = ("offset", "type", "msg_count", "attrs", "payload")

    def __init__(self, offset: int, type: int, msg_count: int, attrs: bytes, payload: bytes):
        self.offset = offset
        self.type = type
        self.msg_count = msg_count
        self.attrs = attrs
        self.payload = payload

    @property
    def next_offset(self) -> int:
        """The offset after this record (the file store's arithmetic)."""
        return self.offset + nat.record_size(len(self.attrs), len(self.payload))

    def __repr__(self) -> str:
        return f"Rec({self.offset}, type={self.type}, {len(self.payload)} bytes)"


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class Tx(abc.ABC):
    """One backend transaction. Reads go to the backend at once (and lock or
    watch what they read); writes are collected and applied by
    :meth:`commit`, all or nothing. Rows read are cached, so an operation
    that reads a row again (a cascade of removals) sees its own changes."""

    def __init__(self) -> None:
        self._rows: dict[str, Row | None] = {}
        self._producers: dict[tuple[str, str], ProducerState | None] = {}
        self.puts: dict[str, Row] = {}
        self.drops: dict[str, Row] = {}
        self.records: list[tuple[str, list[Rec]]] = []
        self.producers: list[tuple[Row, str, int, int]] = []
        self.notices: list[str] = []

    async def get(self, path: str, producer: str | None = None) -> Row | None:
        """The row at ``path`` (None if there is none), locked or watched;
        ``producer``: that producer's state will be asked for too (a backend
        may fetch it in the same round trip)."""
        if path not in self._rows:
            row, state = await self._load(path, producer)
            self._rows[path] = row
            if producer is not None and row is not None:
                self._producers[(path, producer)] = state
        return self._rows[path]

    async def producer(self, row: Row, pid: str) -> ProducerState | None:
        """A producer's state in stream ``row`` (read in this transaction)."""
        key = (row.path, pid)
        if key not in self._producers:
            self._producers[key] = await self._load_producer(row, pid)
        return self._producers[key]

    def put(self, row: Row) -> None:
        """Create or replace ``row`` (and its last access) at commit."""
        self._rows[row.path] = row
        self.drops.pop(row.path, None)
        self.puts[row.path] = row

    def drop(self, row: Row) -> None:
        """Remove ``row`` with its records and producer state at commit."""
        self._rows[row.path] = None
        self.puts.pop(row.path, None)
        self.drops[row.path] = row

    def add_records(self, rid: str, recs: list[Rec]) -> None:
        """Store ``recs`` in stream ``rid`` at commit."""
        if recs:
            self.records.append((rid, recs))

    def set_producer(self, row: Row, pid: str, epoch: int, seq: int) -> None:
        """Record a producer's new (epoch, seq) in stream ``row`` at commit
        (later appends of the same transaction see it at once)."""
        self.producers.append((row, pid, epoch, seq))
        self._producers[(row.path, pid)] = ProducerState(epoch, seq)

    def notify(self, path: str) -> None:
        """Tell every instance ``path`` changed, once the commit is done."""
        self.notices.append(path)

    @abc.abstractmethod
    async def _load(self, path: str, producer: str | None) -> tuple[Row | None, object]:
        """``(row, state of producer)``; the state only if asked and cheap."""

    @abc.abstractmethod
    async def _load_producer(self, row: Row, pid: str) -> ProducerState | None: ...

    @abc.abstractmethod
    async def commit(self) -> None:
        """Apply the writes. :raises Conflict: a row read changed meanwhile."""


class Backend(abc.ABC):
    """Storage for :class:`SharedStreamStore`. Every method may raise
    :class:`~unbroken_engine.errors.BackendUnavailable`."""

    #: shown in the server's start-up line
    description = "backend"

    @abc.abstractmethod
    async def start(self, on_notify: Callable[[str], None],
                    on_reconnect: Callable[[], None]) -> None:
        """Connect, create or migrate the schema, and start listening:
        ``on_notify(path)`` for each change any instance makes, and
        ``on_reconnect()`` after the listener lost its connection and got it back."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening and release every connection."""

    @abc.abstractmethod
    def transaction(self, hot: bool = False):
        """An async context manager yielding a :class:`Tx`; leaving it without
        an exception commits (the caller catches :class:`Conflict`). ``hot``:
        the transaction is an append, which needs no lock on the last access."""

    @abc.abstractmethod
    async def load(self, path: str) -> Row | None:
        """The row at ``path``, without a lock (one consistent read)."""

    @abc.abstractmethod
    async def rows(self, prefix: str = "") -> list[Row]:
        """Every row whose path starts with ``prefix``."""

    @abc.abstractmethod
    async def records(self, rid: str, lo: int, hi: int, limit: int) -> list[Rec]:
        """Up to ``limit`` records of ``rid`` starting at offsets ``lo..hi-1``, in order."""

    @abc.abstractmethod
    async def touch(self, path: str, rid: str, when: float) -> None:
        """Move the row's last access to ``when`` (if later, and if the row is
        still incarnation ``rid``)."""

    @abc.abstractmethod
    async def server_time(self) -> float:
        """The backend's clock, in Unix seconds."""

    @abc.abstractmethod
    async def drop_everything(self) -> None:
        """Remove every key or table of this store."""

    @abc.abstractmethod
    def sweep_lock(self):
        """An async context manager yielding True if this instance holds the
        backend-wide sweep lock (False: another instance is sweeping)."""


class SharedStreamStore(StreamStore):
    """The protocol over a :class:`Backend`; open one with :meth:`open`.

    :param clock: wall-clock seconds; by default the backend's clock (through
        the measured offset). Tests inject a fake one.
    :param local_clock: this machine's clock, which the measured offset
        corrects (injectable to test instances whose clocks disagree)
    """

    kind = "shared"

    def __init__(self, backend: Backend, *, clock: Callable[[], float] | None = None,
                 local_clock: Callable[[], float] = time.time):
        self._b = backend
        self._notifier = StreamNotifier()
        self._fixed_clock = clock
        self._local = local_clock  # this machine's clock, corrected by the offset
        self._skew = 0.0
        self._closed = False
        self._queues: dict[str, list] = {}  # path -> appends waiting (_drain)
        self._draining: set[str] = set()
        self._loads: dict = {}  # notifier event -> future of the row (_load_once)
        self._woken: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> rows
        self._records = RecordCache(RECORD_CACHE_BYTES)
        self._clock_task: asyncio.Task | None = None
        self.description = backend.description

    async def _start(self) -> "SharedStreamStore":
        """Start the backend and the clock; a store that fails to start
        closes its backend (what every ``open`` of a backend's store does)."""
        try:
            await self._b.start(self._notifier.notify, self._on_reconnect)
            await self._measure_clock()
        except BaseException:
            await self._b.close()
            raise
        if self._fixed_clock is None:
            self._clock_task = asyncio.get_running_loop().create_task(self._clock_loop())
        return self

    def _on_reconnect(self) -> None:
        self._notifier.wake_waiters()  # notifications may have been missed

    async def _measure_clock(self) -> None:
        t0 = self._local()
        server = await self._b.server_time()
        t1 = self._local()
        self._skew = server - (t0 + t1) / 2

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_EVERY)
            try:
                await self._measure_clock()
            except errors.BackendUnavailable:
                pass  # keep the last offset; the next round tries again

    def _now(self) -> float:
        if self._fixed_clock is not None:
            return self._fixed_clock()
        return self._local() + self._skew

    # ---- helpers ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.LogClosedError("store is closed")

    async def _run(self, op: Callable[[Tx], Awaitable], *, hot: bool = False):
        """Run ``op`` in a transaction, again while it loses races.
        ``hot``: an append (the backend may lock or watch less)."""
        self._check_open()
        deadline = time.monotonic() + CONTENTION_LIMIT
        for attempt in range(1 << 30):
            try:
                async with self._b.transaction(hot=hot) as tx:
                    result = await op(tx)
            except Conflict:
                if time.monotonic() > deadline:
                    break
                # jittered backoff: instances that collided do not collide again in step
                await anyio.sleep(random.uniform(0, min(0.05, 0.0005 * (1 << min(attempt, 7)))))
                continue
            for rid, recs in tx.records:  # committed: immutable from now on
                self._records.add(rid, recs)
            if isinstance(result, _RaiseAfterCommit):
                raise result.error
            return result
        raise errors.BackendUnavailable("too much contention on the backend; try again")

    @staticmethod
    def _is_expired(row: Row, now: float) -> bool:
        return is_expired(row.expires(), row.ttl, row.last_access, now)

    async def _checked(self, load, row: Row | None, path: str, now: float) -> Row:
        """``row`` (read by ``load``: the backend, or a transaction) if it may
        be served. A stream that expired while forks still read through it is
        soft-deleted by its expiry -- 410, as the in-process stores answer
        (the next sweep records it) -- and a soft-deleted one whose forks have
        all expired counts as gone.

        :raises StreamNotFound: missing, or expired (or soft-deleted) with no live fork
        :raises StreamSoftDeleted: soft-deleted, or expired, with a live fork
        """
        if row is None:
            raise errors.StreamNotFound(path)
        if row.soft_deleted or self._is_expired(row, now):
            if await self._live_fork(load, row, now):
                raise errors.StreamSoftDeleted(path)
            raise errors.StreamNotFound(path)
        return row

    async def _live_fork(self, load, row: Row, now: float) -> bool:
        """Whether a fork still reads through ``row`` (a soft-deleted fork
        does: its own forks read through it; an expired one does not)."""
        for fpath, frid in row.forks:
            fork = await load(fpath)
            if fork is not None and fork.rid == frid and (
                    fork.soft_deleted or not self._is_expired(fork, now)):
                return True
        return False

    async def _served(self, path: str, now: float) -> Row:
        """The row at ``path`` read without a transaction, if it may be served."""
        return await self._checked(self._b.load, await self._b.load(path), path, now)

    def _meta(self, row: Row) -> StreamMeta:
        return StreamMeta(row.path, row.content_type, row.tail, row.closed_at is not None,
                          row.created_at, row.ttl, row.expires())

    async def _touch(self, row: Row, now: float) -> None:
        if row.ttl is not None and row.expires_at is None:
            await self._b.touch(row.path, row.rid, now)

    # ---- forks, expiry, removal (inside a transaction) ----------------------------

    async def _has_live_forks(self, tx: Tx, row: Row, now: float, removed: list) -> bool:
        """Whether forks still read through ``row``; expired ones go first."""
        for fpath, frid in list(row.forks):
            fork = await tx.get(fpath)
            if fork is None or fork.rid != frid:
                self._unlink(tx, row, fpath)  # gone without telling us
            elif not fork.soft_deleted and self._is_expired(fork, now):
                await self._expire(tx, fork, now, removed)
            row = await tx.get(row.path) or row
        return bool(row.forks)

    def _unlink(self, tx: Tx, row: Row, fpath: str) -> None:
        row.forks = [f for f in row.forks if f[0] != fpath]
        tx.put(row)

    async def _expire(self, tx: Tx, row: Row, now: float, removed: list) -> None:
        """An expired stream goes; with live forks it is soft-deleted instead."""
        if await self._has_live_forks(tx, row, now, removed):
            row.soft_deleted = True
            tx.put(row)
            tx.notify(row.path)
            removed.append(row.path)
        else:
            await self._remove(tx, row, removed)

    async def _remove(self, tx: Tx, row: Row, removed: list) -> None:
        """Remove a stream and release its source; a soft-deleted source whose
        last fork this was goes too (up the chain)."""
        while row is not None:
            removed.append(row.path)
            tx.drop(row)
            tx.notify(row.path)
            if row.source is None:
                return
            src = await tx.get(row.source[0])
            if src is None or src.rid != row.source[1]:
                return
            self._unlink(tx, src, row.path)
            row = src if (src.soft_deleted and not src.forks) else None

    async def _settle(self, tx: Tx, path: str, now: float, removed: list) -> Row | None:
        """The row at ``path`` after lazy expiry: None if it is gone (or goes now)."""
        row = await tx.get(path)
        if row is None:
            return None
        if not row.soft_deleted and self._is_expired(row, now):
            await self._expire(tx, row, now, removed)
            row = await tx.get(path)
        if row is not None and row.soft_deleted and not await self._has_live_forks(
                tx, row, now, removed):
            row = await tx.get(path)
            if row is not None:
                await self._remove(tx, row, removed)
            return None
        return row

    # ---- create ---------------------------------------------------------------------

    async def create(self, path: str, options: CreateOptions = CreateOptions()) -> CreateResult:
        check_path(path)
        o = options
        check_create_options(o)
        if o.fork_from is not None:
            check_path(o.fork_from)
        return await self._run(lambda tx: self._create(tx, path, o))

    async def _create(self, tx: Tx, path: str, o: CreateOptions) -> CreateResult:
        now = self._now()
        removed: list = []
        row = await self._settle(tx, path, now, removed)
        if row is not None:
            if row.soft_deleted:
                raise errors.ConfigMismatch(f"stream {path!r} was deleted and still has forks")
            check_same_config(row, o)
            return CreateResult(False, self._meta(row))
        source = None
        if o.fork_from is not None:
            source = await self._settle(tx, o.fork_from, now, removed)
            if source is None:
                raise errors.StreamNotFound(o.fork_from)
            if source.soft_deleted:
                raise errors.ConfigMismatch(f"fork source {o.fork_from!r} was deleted")
        content_type = created_content_type(o, source)
        records: list[tuple] = []
        base, chain = 0, []
        if source is not None:
            base = source.tail if o.fork_offset is None else o.fork_offset
            await self._check_boundary(source, base, "fork offset")
            chain = self._view(source, base)
            if o.fork_sub_offset:
                records.append(await fork_prefix(functools.partial(self._record_at, source),
                                                 base, o.fork_sub_offset, source.json))
        records.extend(initial_records(content_type, o.data, o.closed))
        inherited = None if source is None else (source.ttl, source.expires())
        ttl, expires_at = created_expiry(o, inherited)
        row = Row(path=path, rid=uuid.uuid4().hex, content_type=content_type, created_at=now,
                  last_access=now, ttl=ttl,
                  expires_at=expires_at.isoformat() if expires_at else None,
                  req_media=None if o.content_type is None else media_type(o.content_type),
                  req_ttl=o.ttl,
                  req_expires_at=o.expires_at.isoformat() if o.expires_at else None,
                  fork_from=o.fork_from, fork_sub_offset=o.fork_sub_offset, base=base,
                  chain=chain, source=[source.path, source.rid] if source else None,
                  tail=base)
        recs = []
        for payload, attrs, kind, count in records:
            rec = Rec(row.tail, int(kind), count, attrs, payload)
            recs.append(rec)
            if count:
                row.last_msg = rec.offset
            row.tail = rec.next_offset
            if kind in _CLOSERS:
                row.closed_at = row.tail
        tx.put(row)
        tx.add_records(row.rid, recs)
        if source is not None:
            source.forks = [*source.forks, [path, row.rid]]
            tx.put(source)
        return CreateResult(True, self._meta(row))

    @staticmethod
    def _view(row: Row, upto: int) -> list:
        """The ranges a fork of ``row`` at ``upto`` inherits."""
        chain = [[rid, lo, min(hi, upto)] for rid, lo, hi in row.chain if lo < upto]
        if upto > row.base:
            chain.append([row.rid, row.base, upto])
        return chain

    @staticmethod
    def _ranges(row: Row, lo: int, hi: int):
        """``(rid, lo, hi)`` pieces covering ``lo..hi`` of ``row``'s view."""
        for rid, a, b in [*row.chain, [row.rid, row.base, row.tail]]:
            a, b = max(a, lo), min(b, hi)
            if a < b:
                yield rid, a, b

    async def _check_boundary(self, row: Row, offset: int, what: str) -> None:
        if offset < 0 or offset > row.tail:
            raise errors.InvalidOffset(offset, f"{what} beyond the tail of the stream")
        if offset == row.tail:
            return
        rec = await self._record_at(row, offset)
        if rec is None or rec.offset != offset:
            raise errors.InvalidOffset(offset)

    async def _record_at(self, row: Row, offset: int) -> Rec | None:
        """The first record at or after ``offset`` in ``row``'s view."""
        for rid, a, b in self._ranges(row, offset, row.tail):
            recs = await self._b.records(rid, a, b, 1)
            if recs:
                return recs[0]
        return None

    # ---- metadata, append -------------------------------------------------------

    async def get(self, path: str) -> StreamMeta:
        self._check_open()
        return self._meta(await self._served(path, self._now()))

    async def append(self, path: str, data: bytes,
                     options: AppendOptions = AppendOptions()) -> AppendResult:
        o = options
        close_only = not data
        if close_only and not o.close:
            raise errors.EmptyBody("an append needs data (or a close)")
        if o.producer is not None:
            check_producer(o.producer)
        item = _Pending(bytes(data), o, asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(path, [])
        queue.append(item)
        if len(queue) == 1 and path not in self._draining:
            self._draining.add(path)
            # shielded: the appends of other requests ride on this one's
            # transaction, so its client going away must not cancel it
            with anyio.CancelScope(shield=True):
                await self._drain(path, queue)
        return await asyncio.shield(item.future) if not item.future.done() \
            else item.future.result()

    async def _drain(self, path: str, queue: list) -> None:
        """Commit the appends queued for ``path``, many per transaction
        (group commit: while one transaction is on its way, the next batch
        gathers), each decided in order against the state the previous left."""
        try:
            while queue:
                batch, size = [], 0
                while queue and len(batch) < APPEND_BATCH and (
                        not batch or size + len(queue[0].data) <= APPEND_BATCH_BYTES):
                    size += len(queue[0].data)
                    batch.append(queue.pop(0))
                try:
                    outcomes = await self._run(
                        lambda tx, b=batch: self._append_batch(tx, path, b), hot=True)
                except Exception as exc:  # the transaction failed: every append in it
                    outcomes = [(False, exc)] * len(batch)
                for item, (ok, value) in zip(batch, outcomes):
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
                        item.future.exception()  # its awaiter may be gone
        finally:
            self._draining.discard(path)
            if not queue:
                self._queues.pop(path, None)

    async def _append_batch(self, tx: Tx, path: str, batch: list) -> list:
        outcomes = []
        for item in batch:
            try:
                outcomes.append((True, await self._append(tx, path, item.data, item.o)))
            except errors.BackendUnavailable:
                raise
            except errors.UnbrokenError as exc:  # refused: this append only
                outcomes.append((False, exc))
        return outcomes

    async def _append(self, tx: Tx, path: str, data: bytes, o: AppendOptions) -> AppendResult:
        now = self._now()
        row = await self._checked(tx.get, await tx.get(path, o.producer.id if o.producer else None),
                                  path, now)
        close_only = not data
        p = o.producer
        if row.ttl is not None and row.expires_at is None:
            row.last_access = now  # a sliding TTL is renewed by every append
            tx.put(row)
        if row.closed_at is not None:
            return await self._append_to_closed(tx, row, o, close_only)
        if not close_only and o.content_type is not None and \
                media_type(o.content_type) != row.media:
            raise errors.ContentTypeMismatch(row.content_type, o.content_type)
        outcome = None
        if p is not None:
            state = await tx.producer(row, p.id)
            outcome = validate(state, p.epoch, p.seq)
            if outcome is ProducerOutcome.DUPLICATE:
                return AppendResult(row.tail, outcome, p.epoch, state.last_seq, False)
        check_stream_seq(row.last_seq, o.seq)
        payload, attrs, kind, count = append_record(data, o, row.json)
        rec = Rec(row.tail, int(kind), count, attrs, bytes(payload))
        if count:
            row.last_msg = rec.offset
        row.tail = rec.next_offset
        if o.close:
            row.closed_at = row.tail
        if o.seq is not None:
            row.last_seq = o.seq
        tx.add_records(row.rid, [rec])
        if p is not None:
            tx.set_producer(row, p.id, p.epoch, p.seq)
        tx.put(row)
        tx.notify(path)
        return AppendResult(row.tail, outcome, p.epoch if p else None, p.seq if p else None,
                            row.closed_at is not None)

    async def _append_to_closed(self, tx: Tx, row: Row, o: AppendOptions,
                                close_only: bool) -> AppendResult:
        state = await tx.producer(row, o.producer.id) if o.producer is not None else None
        return closed_answer(state, o, close_only, row.tail, row.path, row.closed_at)

    # ---- reads ---------------------------------------------------------------------------

    async def _row_to_read(self, path: str) -> Row:
        """The row a read serves (the one a wake-up just loaded, if any),
        its sliding TTL renewed."""
        self._check_open()
        now = self._now()
        row = self._woken_row(path)
        if row is None:
            row = await self._served(path, now)
        await self._touch(row, now)
        return row

    async def read(self, path: str, offset=None, max_bytes: int = DEFAULT_READ_CHUNK) -> ReadResult:
        row = await self._row_to_read(path)
        tail = row.tail
        closed = row.closed_at is not None
        if offset is NOW:
            return ReadResult(framing.empty(row.json), tail, True, closed, row.content_type)
        if offset is None or offset is START:
            offset = row.chain[0][1] if row.chain else row.base
        if not isinstance(offset, int) or offset < 0 or offset > tail:
            raise errors.InvalidOffset(offset, "beyond the tail of the stream")
        parts, nxt = await self._read_range(row, offset, max_bytes)
        data = framing.join(parts, row.json)
        up_to_date = nxt >= tail
        return ReadResult(data, nxt, up_to_date, up_to_date and closed, row.content_type)

    async def read_last(self, path: str) -> LastMessage:
        row = await self._row_to_read(path)
        closed = row.closed_at is not None
        found = None
        if row.last_msg is not None:  # the row says where: one record
            found = row.rid, row.last_msg
        rec = await self._one_record(*found) if found else await self._scan_last(row)
        if rec is None:
            if found:  # deleted since its row was read
                raise errors.StreamNotFound(path)
            return LastMessage(b"", None, row.tail, closed, row.content_type)
        data = last_json_value(rec.payload, rec.msg_count) if row.json else bytes(rec.payload)
        return LastMessage(data, rec.offset, row.tail, closed, row.content_type, True)

    async def _one_record(self, rid: str, offset: int) -> Rec | None:
        """The record of ``rid`` at ``offset`` (None: not there)."""
        recs = self._records.run(rid, offset, offset + 1, 1)
        if not recs:
            recs = await self._b.records(rid, offset, offset + 1, 1)
            self._records.add(rid, recs)
        return recs[0] if recs and recs[0].offset == offset else None

    async def _scan_last(self, row: Row) -> Rec | None:
        """The last record that carries messages in ``row``'s view, found by
        reading it: for rows without ``last_msg`` (written before it was
        kept, or forks with no message of their own). The newest range with
        one ends the search."""
        for rid, lo, hi in reversed(list(self._ranges(row, 0, row.tail))):
            last = None
            at = lo
            while at < hi:
                recs = await self._b.records(rid, at, hi, READ_BATCH)
                if not recs:
                    break
                for rec in recs:
                    if rec.msg_count:
                        last = rec
                at = recs[-1].next_offset
            if last is not None:
                return last
        return None

    async def _read_range(self, row: Row, offset: int, budget: int):
        parts: list[bytes] = []
        size = taken = 0
        first = True
        limit = FIRST_READ_BATCH
        for rid, lo, hi in self._ranges(row, offset, row.tail):
            at = lo
            while at < hi:
                recs = self._records.run(rid, at, hi)
                cached = bool(recs)
                if not cached:
                    recs = await self._b.records(rid, at, hi, limit)
                    if not recs:
                        break
                    self._records.add(rid, recs)
                fetched = len(recs)
                for rec in recs:
                    if first:
                        first = False
                        if rec.offset != offset:
                            raise errors.InvalidOffset(offset)
                    need = part_size(rec.payload, row.json, bool(parts))
                    if not fits(need, budget - size, not taken):
                        return parts, offset
                    if rec.payload:
                        parts.append(rec.payload)
                    size += need
                    taken += 1
                    offset = at = rec.next_offset
                if cached:
                    continue  # the cache ran out: the backend has the rest
                if fetched < limit:
                    break
                # as many as the rest of the budget holds at the mean size so far
                mean = max(1, size // max(1, taken))
                limit = max(1, min(READ_BATCH, (budget - size) // mean + 1))
        if first and offset != row.tail:
            raise errors.InvalidOffset(offset)
        return parts, offset

    def _keep_woken_row(self, path: str, row: Row) -> None:
        """Hand the row a wait just read to this task's next :meth:`read` of
        ``path``. That read then needs no backend read of its own, and is
        still linearizable: the row was read after the wait began, which is
        after the request the task serves (an SSE or long-poll response) began."""
        task = asyncio.current_task()
        if task is not None:
            self._woken.setdefault(task, {})[path] = row

    def _woken_row(self, path: str) -> Row | None:
        task = asyncio.current_task()
        rows = self._woken.get(task) if task is not None else None
        return rows.pop(path, None) if rows else None

    async def _load_once(self, event, path: str) -> Row:
        """The served row at ``path``, read once for every waiter that holds
        ``event`` (the next notification of ``path``): a read that started
        after the event existed is fresh enough for each of them, since any
        later commit sets the event. One read per notification and instance,
        not one per live reader."""
        pending = self._loads.get(event)
        if pending is not None:
            row = await asyncio.shield(pending)
            if row is not None:
                return row
            return await self._served(path, self._now())  # its reader was cancelled
        pending = self._loads[event] = asyncio.get_running_loop().create_future()
        try:
            row = await self._served(path, self._now())
        except Exception as exc:  # every sharer gets the same answer
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning
            raise
        except BaseException:
            pending.set_result(None)  # cancelled: the sharers read for themselves
            raise
        else:
            pending.set_result(row)
            return row
        finally:
            del self._loads[event]

    async def wait_for_messages(self, path: str, offset: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        generation = self._notifier.generation
        while True:
            self._check_open()
            event = self._notifier.event(path)  # before the check: nothing slips by
            row = await self._load_once(event, path)
            if row.tail > offset or row.closed_at is not None:
                self._keep_woken_row(path, row)
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._notifier.wait_event(path, event, remaining):
                return False
            if self._notifier.generation != generation:
                return False  # notify_all(): the store is closing or the server stopping

    def waiting(self, path: str | None = None) -> int:
        return self._notifier.waiting(path)

    # ---- delete, list, sweep, close ------------------------------------------------------

    async def delete(self, path: str) -> None:
        await self._run(lambda tx: self._delete(tx, path))

    async def _delete(self, tx: Tx, path: str) -> None:
        now = self._now()
        removed: list = []
        row = await tx.get(path)
        if row is None:
            raise errors.StreamNotFound(path)
        if not row.soft_deleted and self._is_expired(row, now):
            await self._expire(tx, row, now, removed)
            return _RaiseAfterCommit(errors.StreamNotFound(path))  # the expiry sticks
        if row.soft_deleted:
            if not await self._has_live_forks(tx, row, now, removed):
                await self._remove(tx, row, removed)
                return _RaiseAfterCommit(errors.StreamNotFound(path))
            raise errors.StreamSoftDeleted(path)
        if await self._has_live_forks(tx, row, now, removed):
            row = await tx.get(path)
            row.soft_deleted = True
            tx.put(row)
            tx.notify(path)
        else:
            await self._remove(tx, row, removed)

    async def list_streams(self, prefix: str = "") -> list[StreamMeta]:
        self._check_open()
        now = self._now()
        return [self._meta(r) for r in sorted(await self._b.rows(prefix), key=lambda r: r.path)
                if r.path.startswith(prefix) and not r.soft_deleted
                and not self._is_expired(r, now)]

    async def sweep(self) -> list[str]:
        self._check_open()
        async with self._b.sweep_lock() as mine:
            if not mine:
                return []  # another instance is sweeping
            now = self._now()
            gone: list[str] = []
            for row in await self._b.rows():
                if row.soft_deleted or self._is_expired(row, now):
                    gone.extend(await self._run(lambda tx, p=row.path: self._sweep_one(tx, p)))
            return sorted(set(gone))

    async def _sweep_one(self, tx: Tx, path: str) -> list[str]:
        removed: list = []
        await self._settle(tx, path, self._now(), removed)
        return removed

    def notify_all(self) -> None:
        """Wake every live reader (shutdown)."""
        self._notifier.notify_all()

    async def drop_everything(self) -> None:
        """Delete every stream of this store and its keys or schema, for every
        instance (tests; a fresh start). Not part of the protocol."""
        await self._b.drop_everything()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notifier.notify_all()
        if self._clock_task is not None:
            self._clock_task.cancel()
        await self._b.close()



async def follow_notifications(name: str, conn, connect, paths, close,
                               on_notify: Callable[[str], None],
                               on_reconnect: Callable[[], None]) -> None:
    """Feed ``on_notify`` the path of every change announced on ``conn`` (a
    backend's notification connection), for ever: when the connection
    breaks, wake every waiter to look again (``on_reconnect``: a change may
    have been missed), reconnect with ``await connect()`` under a growing
    delay, and wake them once more when it is back.

    :param paths: ``paths(conn)``, an async iterator of the announced paths
    :param close: ``await close(conn)`` releases a broken connection
    """
    delay = 0.05
    while True:
        try:
            async for path in paths(conn):
                on_notify(path)
                delay = 0.05
            raise ConnectionError("notification connection ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reconnect whatever broke it
            log.warning("unbroken: %s notifications lost (%s); reconnecting", name, exc)
            with contextlib.suppress(Exception):
                await close(conn)
            on_reconnect()
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    conn = await connect()
                    break
                except Exception:  # noqa: BLE001 - still down
                    pass
            log.info("unbroken: %s notifications restored", name)
            on_reconnect()


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and start-up lines."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user + ':***@' if user else '***@'}{host}"
    return url
