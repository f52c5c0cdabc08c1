"""RedisStreamStore: streams in Redis, shared by every instance that points at it.

Needs the ``redis`` extra (``pip install 'unbroken[redis]'``: redis-py's
asyncio client). Keys, under a prefix (default ``unbroken:``)::

    {prefix}schema          the key layout's version (a migration path, not a drop)
    {prefix}paths           sorted set of every stream path (listing, sweeping)
    {prefix}s:{path}        the stream's row (msgpack, see shared.Row)
    {prefix}a:{path}        its last access (sliding TTL), beside the row
    {prefix}r:{rid}         its records: sorted set scored by offset
    {prefix}p:{path}        its producers: hash of producer id -> [epoch, seq]
    {prefix}notify          pub/sub channel: the path of every stream that changed
    {prefix}sweep           the sweep lock (one sweeper at a time)

An operation reads the rows it needs with plain GETs, decides, and commits
with one Lua script that checks every row it read is unchanged and then
applies all its writes (a compare-and-set over several keys; a script runs
alone, so nothing comes in between). If another instance changed a row
meanwhile, nothing is written and the operation re-runs
(:class:`~unbroken_engine.stores.shared.store.Conflict`).

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an
acknowledged append survives a Redis restart; with Redis's defaults (or
``--save ""``) it survives the loss of an Unbroken instance, not of Redis.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import msgpack

from ... import errors
from ...protocol.producers import ProducerState
from .store import Backend, Conflict, Rec, Row, SharedStreamStore, Tx, follow_notifications
from .store import redact_url as _redact

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rex
except ImportError:  # pragma: no cover - exercised by the missing-extra test
    aioredis = None

log = logging.getLogger("unbroken")

SCHEMA_VERSION = 1
#: key-layout migrations: MIGRATIONS[n] takes version n to n+1 (v1 is the first
#: layout, created on first use, so it has nothing to migrate)
MIGRATIONS: list = []
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
POOL_TIMEOUT = 2.0  # how long a request waits for a free connection
SWEEP_LOCK_MS = 30_000

_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[2], ARGV[1]) end
return 1
"""
# ARGV[1] = msgpack [checks, ops]. checks: [key index, value read or false];
# ops: [command, key index (0: none), args...]. All checks pass, or nothing is
# written and 0 returned. (A script runs alone: nothing can come in between.)
_COMMIT = """
local plan = cmsgpack.unpack(ARGV[1])
for _, c in ipairs(plan[1]) do
  if redis.call('GET', KEYS[c[1]]) ~= c[2] then return 0 end
end
for _, op in ipairs(plan[2]) do
  if op[2] == 0 then
    redis.call(op[1], unpack(op, 3))
  else
    redis.call(op[1], KEYS[op[2]], unpack(op, 3))
  end
end
return 1
"""
# a row, its last access and one producer's state, in one round trip
_READ = """
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]),
        redis.call('HGET', KEYS[3], ARGV[1])}
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _need_driver() -> None:
    if aioredis is None:
        raise errors.MissingExtra(
            "the Redis store needs the 'redis' extra: pip install 'unbroken[redis]'")


@contextlib.contextmanager
def _guard(what: str):
    """Redis connection trouble -> BackendUnavailable (503); WATCH -> Conflict."""
    try:
        yield
    except rex.WatchError:
        raise Conflict() from None
    except (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError,
            asyncio.TimeoutError) as exc:
        raise errors.BackendUnavailable(f"Redis unavailable ({what}): {exc}") from exc
    except rex.ResponseError as exc:
        if "READONLY" in str(exc) or "LOADING" in str(exc) or "MISCONF" in str(exc):
            raise errors.BackendUnavailable(f"Redis refused {what}: {exc}") from exc
        raise


def _pack_rec(rec: Rec) -> bytes:
    return msgpack.packb([rec.offset, rec.type, rec.msg_count, rec.attrs, rec.payload])


def _unpack_rec(raw: bytes) -> Rec:
    off, typ, count, attrs, payload = msgpack.unpackb(raw)
    return Rec(off, typ, count, attrs, payload)


class _RedisTx(Tx):
    """Reads are plain GETs (pipelined); the commit is one Lua script that
    first checks every key read still holds what was read, then applies every
    write: optimistic concurrency in one round trip, without WATCH's dedicated
    connection."""

    def __init__(self, backend: "RedisBackend", hot: bool):
        super().__init__()
        self._k = backend
        self._hot = hot
        self._seen: dict[str, bytes | bool] = {}  # key -> value read (False: absent)

    async def _load(self, path: str, producer: str | None):
        k = self._k
        s, a = k.row_key(path), k.access_key(path)
        if producer is None:
            raw, access = await k.client.mget(s, a)
            prod = None
        else:  # the producer's state in the same round trip
            raw, access, prod = await k.read_script(
                keys=[s, a, k.producers_key(path)], args=[producer])
        self._seen[s] = raw if raw is not None else False
        if not self._hot:  # an expiry decision: a read renewing the TTL meanwhile wins
            self._seen[a] = access if access is not None else False
        state = None if prod is None else ProducerState(*msgpack.unpackb(prod))
        return k.decode_row(path, raw, access), state

    async def _load_producer(self, row: Row, pid: str) -> ProducerState | None:
        raw = await self._k.client.hget(self._k.producers_key(row.path), pid)
        return None if raw is None else ProducerState(*msgpack.unpackb(raw))

    async def commit(self) -> None:
        k = self._k
        keys: list[str] = []
        index: dict[str, int] = {}

        def key(name: str) -> int:
            if name not in index:
                keys.append(name)
                index[name] = len(keys)  # Lua's KEYS is 1-based
            return index[name]

        checks = [[key(name), value] for name, value in self._seen.items()]
        ops: list = []
        for path, row in self.drops.items():
            ops.append(["DEL", key(k.row_key(path))])
            ops.append(["DEL", key(k.access_key(path))])
            ops.append(["DEL", key(k.producers_key(path))])
            ops.append(["UNLINK", key(k.records_key(row.rid))])
            ops.append(["ZREM", key(k.paths_key), path])
        for path, row in self.puts.items():
            ops.append(["SET", key(k.row_key(path)), msgpack.packb(row.to_dict())])
            ops.append(["SET", key(k.access_key(path)), repr(row.last_access)])
            ops.append(["ZADD", key(k.paths_key), 0, path])
        for rid, recs in self.records:
            for r in recs:
                # the score as text: Lua would print a number over 10^14 rounded
                ops.append(["ZADD", key(k.records_key(rid)), str(r.offset), _pack_rec(r)])
        for row, pid, epoch, seq in self.producers:
            ops.append(["HSET", key(k.producers_key(row.path)), pid, msgpack.packb([epoch, seq])])
        for path in dict.fromkeys(self.notices):
            ops.append(["PUBLISH", 0, k.channel, path])
        if not ops:
            return
        if not await k.commit_script(keys=keys, args=[msgpack.packb([checks, ops], use_bin_type=False)]):
            raise Conflict()


class RedisBackend(Backend):
    """Storage in Redis for :class:`~unbroken_engine.stores.shared.store.SharedStreamStore`."""

    def __init__(self, url: str, *, prefix: str = "unbroken:", max_connections: int = 64):
        _need_driver()
        self.url = url
        self.prefix = prefix
        self.paths_key = prefix + "paths"
        self.channel = prefix + "notify"
        self.description = f"Redis store at {_redact(url)} (keys {prefix}*)"
        #: this instance's connections in CLIENT LIST (names allow no spaces)
        self.client_name = f"unbroken-{uuid.uuid4().hex[:12]}"
        # a blocking pool: at its limit a request waits for a connection (up
        # to POOL_TIMEOUT, then 503) instead of failing at once with "Too many
        # connections", as the default pool does under a crowd of live readers
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=POOL_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
            client_name=self.client_name)
        self._r = aioredis.Redis(connection_pool=self._pool)
        self.client = self._r
        self.commit_script = self._r.register_script(_COMMIT)
        self.read_script = self._r.register_script(_READ)
        self._touch = self._r.register_script(_TOUCH)
        self._unlock = self._r.register_script(_UNLOCK)
        self._listener: asyncio.Task | None = None

    # -- keys --
    def row_key(self, path: str) -> str:
        """The key of a stream's row."""
        return f"{self.prefix}s:{path}"

    def access_key(self, path: str) -> str:
        """The key of a stream's last access."""
        return f"{self.prefix}a:{path}"

    def records_key(self, rid: str) -> str:
        """The key of an incarnation's records."""
        return f"{self.prefix}r:{rid}"

    def producers_key(self, path: str) -> str:
        """The key of a stream's producer states."""
        return f"{self.prefix}p:{path}"

    @staticmethod
    def decode_row(path: str, raw, access) -> Row | None:
        """The row stored as ``raw`` (None if there is none)."""
        if raw is None:
            return None
        d = msgpack.unpackb(raw)
        return Row.from_dict(path, d, float(access) if access is not None else d["created"])

    # -- lifecycle --
    async def start(self, on_notify, on_reconnect) -> None:
        with _guard("connect"):
            await self._migrate()
            pubsub = await self._subscribe()
        self._listener = asyncio.get_running_loop().create_task(follow_notifications(
            "Redis", pubsub, self._subscribe, self._paths, lambda p: p.aclose(),
            on_notify, on_reconnect))

    async def _migrate(self) -> None:
        key = self.prefix + "schema"
        await self._r.set(key, SCHEMA_VERSION - len(MIGRATIONS), nx=True)
        version = int(await self._r.get(key))
        if version > SCHEMA_VERSION:
            raise errors.BackendSchemaError(
                f"Redis keys {self.prefix}* are of layout {version}; this Unbroken knows "
                f"up to {SCHEMA_VERSION}: upgrade Unbroken (nothing was changed)")
        while version < SCHEMA_VERSION:
            await MIGRATIONS[version - 1](self._r, self.prefix)
            version += 1
            await self._r.set(key, version)

    async def _subscribe(self):
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        return pubsub

    @staticmethod
    async def _paths(pubsub):
        async for msg in pubsub.listen():
            if msg.get("type") == "message":
                data = msg["data"]
                yield data.decode() if isinstance(data, bytes) else data

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        with contextlib.suppress(Exception):
            await self._r.aclose()
        with contextlib.suppress(Exception):
            await self._pool.aclose()

    # -- transactions and reads --
    @contextlib.asynccontextmanager
    async def transaction(self, hot: bool = False):
        with _guard("transaction"):
            tx = _RedisTx(self, hot)
            yield tx
            await tx.commit()

    async def load(self, path: str) -> Row | None:
        with _guard("read"):
            raw, access = await self._r.mget(self.row_key(path), self.access_key(path))
        return self.decode_row(path, raw, access)

    async def rows(self, prefix: str = "") -> list[Row]:
        with _guard("list"):
            if prefix:
                paths = await self._r.zrangebylex(self.paths_key, b"[" + prefix.encode(),
                                                  b"(" + prefix.encode() + b"\xff")
            else:
                paths = await self._r.zrange(self.paths_key, 0, -1)
            out = []
            for i in range(0, len(paths), 500):
                chunk = [p.decode() for p in paths[i:i + 500]]
                keys = [k for p in chunk for k in (self.row_key(p), self.access_key(p))]
                values = await self._r.mget(keys)
                for j, p in enumerate(chunk):
                    row = self.decode_row(p, values[2 * j], values[2 * j + 1])
                    if row is not None:
                        out.append(row)
        return out

    async def records(self, rid: str, lo: int, hi: int, limit: int) -> list[Rec]:
        with _guard("read"):
            raws = await self._r.zrangebyscore(self.records_key(rid), lo, f"({hi}",
                                               start=0, num=limit)
        return [_unpack_rec(r) for r in raws]

    async def touch(self, path: str, rid: str, when: float) -> None:
        with _guard("touch"):
            await self._touch(keys=[self.row_key(path), self.access_key(path)],
                              args=[repr(when)])

    async def server_time(self) -> float:
        with _guard("time"):
            sec, usec = await self._r.time()
        return sec + usec / 1e6

    @contextlib.asynccontextmanager
    async def sweep_lock(self):
        key, token = self.prefix + "sweep", uuid.uuid4().hex
        with _guard("sweep lock"):
            mine = await self._r.set(key, token, nx=True, px=SWEEP_LOCK_MS)
        try:
            yield bool(mine)
        finally:
            if mine:
                with contextlib.suppress(Exception):
                    await self._unlock(keys=[key], args=[token])

    async def drop_everything(self) -> None:
        """Delete every key under the prefix (tests, and ``--reset`` tooling)."""
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT)
        try:  # its own client: works after close() too
            with _guard("drop"):
                async for key in client.scan_iter(match=_glob_escape(self.prefix) + "*",
                                                  count=1000):
                    await client.unlink(key)
        finally:
            await client.aclose()


class RedisStreamStore(SharedStreamStore):
    """Streams in Redis; several processes may share one. Open with
    ``store = await RedisStreamStore.open("redis://localhost:6379/0")``.

    :param prefix: every key starts with it (several stores in one database)
    """

    kind = "redis"

    @classmethod
    async def open(cls, url: str, *, prefix: str = "unbroken:", clock=None,
                   local_clock=time.time, max_connections: int = 64) -> "RedisStreamStore":
        """Connect, create or check the key layout, subscribe to changes.

        :raises BackendUnavailable: Redis cannot be reached
        :raises BackendSchemaError: the keys are of a newer layout
        :raises MissingExtra: redis-py is not installed
        """
        store = cls(RedisBackend(url, prefix=prefix, max_connections=max_connections),
                    clock=clock, local_clock=local_clock)
        return await store._start()



def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
