"""PostgresStreamStore: streams in PostgreSQL, shared by every instance that uses it.

Needs the ``postgres`` extra (``pip install 'unbroken[postgres]'``: psycopg 3
with its connection pool). Tables live in one schema (default ``unbroken``),
created on first use and versioned in ``{schema}.meta``::

    streams(path PK, rid, last_access, row)     one row per stream (shared.Row, msgpack)
    records(rid, "offset", type, msg_count, attrs, payload)   PK (rid, "offset")
    producers(rid, producer, epoch, seq)                       PK (rid, producer)

An operation runs in one transaction that locks the stream rows it reads
(``SELECT ... FOR UPDATE``): the record, the new tail, the producer's state,
the Stream-Seq and the close commit together or not at all, and a NOTIFY on
channel ``unbroken_{schema}`` carrying the path is delivered to every instance
at commit. A deadlock or a racing create re-runs the operation.

Migrations: ``MIGRATIONS[n]`` takes schema version n to n+1; start-up applies
the missing ones under an advisory lock, and refuses a schema newer than it
knows. Nothing is ever dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import msgpack

from ... import errors
from ...protocol.producers import ProducerState
from .store import Backend, Conflict, Rec, Row, SharedStreamStore, Tx, follow_notifications
from .store import redact_url as _redact

try:
    import psycopg
    from psycopg import errors as pgerr
    from psycopg import sql
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised by the missing-extra test
    psycopg = None

log = logging.getLogger("unbroken")

CONNECT_TIMEOUT = 2  # seconds (libpq's connect_timeout is whole seconds)
POOL_TIMEOUT = 1.0   # how long a request waits for a connection before its 503
#: while the database is known to be down, a request waits only this long (the
#: pool keeps reconnecting in the background; its first success ends the wait)
DOWN_POOL_TIMEOUT = 0.05

#: MIGRATIONS[n] is the SQL taking schema version n to n+1; {s} is the schema
MIGRATIONS = [
    """
    CREATE TABLE {s}.streams (
        path text PRIMARY KEY,
        rid text NOT NULL,
        last_access double precision NOT NULL,
        row bytea NOT NULL
    );
    CREATE TABLE {s}.records (
        rid text NOT NULL,
        "offset" bigint NOT NULL,
        type smallint NOT NULL,
        msg_count integer NOT NULL,
        attrs bytea NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (rid, "offset")
    );
    CREATE TABLE {s}.producers (
        rid text NOT NULL,
        producer text NOT NULL,
        epoch bigint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (rid, producer)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def _need_driver() -> None:
    if psycopg is None:
        raise errors.MissingExtra(
            "the PostgreSQL store needs the 'postgres' extra: pip install 'unbroken[postgres]'")


@contextlib.contextmanager
def _guard(what: str):
    """Lost races -> Conflict; connection trouble -> BackendUnavailable (503)."""
    try:
        yield
    except (pgerr.UniqueViolation, pgerr.DeadlockDetected, pgerr.SerializationFailure):
        raise Conflict() from None
    except (psycopg.OperationalError, PoolTimeout, OSError, asyncio.TimeoutError) as exc:
        raise errors.BackendUnavailable(f"PostgreSQL unavailable ({what}): {exc}") from exc
    except (pgerr.AdminShutdown, pgerr.CannotConnectNow, pgerr.ConnectionException,
            pgerr.ReadOnlySqlTransaction) as exc:
        raise errors.BackendUnavailable(f"PostgreSQL refused {what}: {exc}") from exc


class _PgTx(Tx):
    def __init__(self, backend: "PostgresBackend", conn):
        super().__init__()
        self._k = backend
        self._conn = conn
        self._existed: dict[str, bool] = {}

    async def _load(self, path: str, producer: str | None):
        if producer is None:
            cur = await self._conn.execute(self._k.q_lock, (path,))
            found, prod = await cur.fetchone(), None
        else:
            # The producer's state must be read by a statement of its own,
            # *after* the row lock is granted: a join in the locking statement
            # would return the producer row of that statement's snapshot,
            # taken before a racing transaction committed (READ COMMITTED
            # re-reads only the locked row). Pipelined: still one round trip.
            async with self._conn.pipeline():
                lock = await self._conn.execute(self._k.q_lock_rid, (path,))
                state = await self._conn.execute(self._k.q_producer_of_path,
                                                 (path, producer))
            found, prod = await lock.fetchone(), await state.fetchone()
        self._existed[path] = found is not None
        if found is None:
            return None, None
        state = None if prod is None else ProducerState(prod[0], prod[1])
        return _decode_row(path, found[0], found[1]), state

    async def _load_producer(self, row: Row, pid: str) -> ProducerState | None:
        cur = await self._conn.execute(self._k.q_producer, (row.rid, pid))
        found = await cur.fetchone()
        return None if found is None else ProducerState(found[0], found[1])

    async def commit(self) -> None:
        k, conn = self._k, self._conn
        # pipeline mode: the writes go out together, one round trip, not one each
        async with conn.pipeline(), conn.cursor() as cur:
            for path, row in self.drops.items():
                if self._existed.get(path, True):
                    await cur.execute(k.q_drop_row, (path, row.rid))
                await cur.execute(k.q_drop_records, (row.rid,))
                await cur.execute(k.q_drop_producers, (row.rid,))
            for path, row in self.puts.items():
                blob = msgpack.packb(row.to_dict())
                if self._existed.get(path):
                    await cur.execute(k.q_update, (row.rid, row.last_access, blob, path))
                else:  # a racing create of the same path fails here: Conflict
                    await cur.execute(k.q_insert, (path, row.rid, row.last_access, blob))
            for rid, recs in self.records:
                await cur.executemany(k.q_add_record, [
                    (rid, r.offset, r.type, r.msg_count, r.attrs, r.payload) for r in recs])
            for row, pid, epoch, seq in self.producers:
                await cur.execute(k.q_producer_set, (row.rid, pid, epoch, seq))
            for path in dict.fromkeys(self.notices):
                await cur.execute("SELECT pg_notify(%s, %s)", (k.channel, path))


def _decode_row(path: str, last_access: float, blob: bytes) -> Row:
    return Row.from_dict(path, msgpack.unpackb(blob), last_access)


class PostgresBackend(Backend):
    """Storage in PostgreSQL for :class:`~unbroken_engine.stores.shared.store.SharedStreamStore`."""

    def __init__(self, url: str, *, schema: str = "unbroken", pool_size: int = 10):
        _need_driver()
        if not _SCHEMA_NAME.fullmatch(schema):
            raise errors.InvalidArgument(f"schema name {schema!r}: lower-case letters, "
                                         "digits and '_' only")
        self.url = url
        self.schema = schema
        self.channel = f"unbroken_{schema}"
        self.description = f"PostgreSQL store at {_redact(url)} (schema {schema})"
        s = schema
        self.q_lock = f"SELECT last_access, row FROM {s}.streams WHERE path = %s FOR UPDATE"
        self.q_lock_rid = self.q_lock
        self.q_producer_of_path = (
            f"SELECT p.epoch, p.seq FROM {s}.producers p JOIN {s}.streams t "
            "ON t.rid = p.rid WHERE t.path = %s AND p.producer = %s")
        self.q_load = f"SELECT last_access, row FROM {s}.streams WHERE path = %s"
        self.q_rows = (f"SELECT path, last_access, row FROM {s}.streams "
                       "WHERE starts_with(path, %s) ORDER BY path")
        self.q_producer = f"SELECT epoch, seq FROM {s}.producers WHERE rid = %s AND producer = %s"
        self.q_producer_set = (
            f"INSERT INTO {s}.producers (rid, producer, epoch, seq) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (rid, producer) DO UPDATE SET epoch = EXCLUDED.epoch, seq = EXCLUDED.seq")
        self.q_insert = (f"INSERT INTO {s}.streams (path, rid, last_access, row) "
                         "VALUES (%s, %s, %s, %s)")
        self.q_update = (f"UPDATE {s}.streams SET rid = %s, last_access = %s, row = %s "
                         "WHERE path = %s")
        self.q_drop_row = f"DELETE FROM {s}.streams WHERE path = %s AND rid = %s"
        self.q_drop_records = f"DELETE FROM {s}.records WHERE rid = %s"
        self.q_drop_producers = f"DELETE FROM {s}.producers WHERE rid = %s"
        self.q_add_record = (f'INSERT INTO {s}.records (rid, "offset", type, msg_count, attrs, '
                             "payload) VALUES (%s, %s, %s, %s, %s, %s)")
        self.q_records = (f'SELECT "offset", type, msg_count, attrs, payload FROM {s}.records '
                          'WHERE rid = %s AND "offset" >= %s AND "offset" < %s '
                          'ORDER BY "offset" LIMIT %s')
        self.q_touch = (f"UPDATE {s}.streams SET last_access = greatest(last_access, %s) "
                        "WHERE path = %s AND rid = %s")
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=POOL_TIMEOUT, open=False,
            kwargs={"connect_timeout": CONNECT_TIMEOUT, "autocommit": True},
            reconnect_timeout=0)
        self._listener: asyncio.Task | None = None
        self._listen_conn = None
        self._down = False  # the last attempt to reach the database failed

    @contextlib.asynccontextmanager
    async def _connection(self):
        """A pooled connection; fails at once while the database is down."""
        try:
            async with self._pool.connection(
                    timeout=DOWN_POOL_TIMEOUT if self._down else POOL_TIMEOUT) as conn:
                self._down = False
                yield conn
        except (psycopg.OperationalError, PoolTimeout):
            self._down = True
            raise

    # -- lifecycle --
    async def start(self, on_notify, on_reconnect) -> None:
        with _guard("connect"):
            try:
                await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT + 1)
            except PoolTimeout as exc:
                raise errors.BackendUnavailable(
                    f"PostgreSQL unavailable: cannot connect to {_redact(self.url)}") from exc
            await self._migrate()
            conn = await self._listen_connection()
        self._listener = asyncio.get_running_loop().create_task(follow_notifications(
            "PostgreSQL", conn, self._listen_connection, self._paths, lambda c: c.close(),
            on_notify, on_reconnect))

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"unbroken migrate {self.schema}",))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.schema}.meta "
                               "(key text PRIMARY KEY, value text NOT NULL)")
            cur = await conn.execute(
                f"SELECT value FROM {self.schema}.meta WHERE key = 'schema_version'")
            found = await cur.fetchone()
            version = int(found[0]) if found else 0
            if version > SCHEMA_VERSION:
                raise errors.BackendSchemaError(
                    f"schema {self.schema} is at version {version}; this Unbroken knows up "
                    f"to {SCHEMA_VERSION}: upgrade Unbroken (nothing was changed)")
            for n in range(version, SCHEMA_VERSION):
                await conn.execute(MIGRATIONS[n].format(s=self.schema))
                log.info("unbroken: PostgreSQL schema %s migrated to version %d",
                         self.schema, n + 1)
            await conn.execute(
                f"INSERT INTO {self.schema}.meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))

    async def _listen_connection(self):
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self._listen_conn = conn
        return conn

    @staticmethod
    async def _paths(conn):
        async for note in conn.notifies():
            yield note.payload

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
        with contextlib.suppress(Exception):
            await self._pool.close()

    # -- transactions and reads --
    @contextlib.asynccontextmanager
    async def transaction(self, hot: bool = False):
        with _guard("transaction"):
            # pipeline mode around the transaction: BEGIN travels with the
            # first read, and the writes with COMMIT (two round trips in all)
            async with self._connection() as conn, conn.pipeline(), conn.transaction():
                tx = _PgTx(self, conn)
                yield tx
                await tx.commit()

    async def load(self, path: str) -> Row | None:
        with _guard("read"):
            async with self._connection() as conn:
                cur = await conn.execute(self.q_load, (path,))
                found = await cur.fetchone()
        return None if found is None else _decode_row(path, found[0], found[1])

    async def rows(self, prefix: str = "") -> list[Row]:
        with _guard("list"):
            async with self._connection() as conn:
                cur = await conn.execute(self.q_rows, (prefix,))
                found = await cur.fetchall()
        return [_decode_row(p, a, r) for p, a, r in found]

    async def records(self, rid: str, lo: int, hi: int, limit: int) -> list[Rec]:
        with _guard("read"):
            async with self._connection() as conn:
                cur = await conn.execute(self.q_records, (rid, lo, hi, limit))
                found = await cur.fetchall()
        return [Rec(o, t, c, bytes(a), bytes(p)) for o, t, c, a, p in found]

    async def touch(self, path: str, rid: str, when: float) -> None:
        with _guard("touch"):
            async with self._connection() as conn:
                await conn.execute(self.q_touch, (when, path, rid))

    async def server_time(self) -> float:
        with _guard("time"):
            async with self._connection() as conn:
                cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
                return (await cur.fetchone())[0]

    @contextlib.asynccontextmanager
    async def sweep_lock(self):
        key = f"unbroken sweep {self.schema}"
        with _guard("sweep lock"):
            cm = self._connection()
            conn = await cm.__aenter__()
        try:
            with _guard("sweep lock"):
                cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
                mine = (await cur.fetchone())[0]
            try:
                yield mine
            finally:
                if mine:
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        finally:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def drop_everything(self) -> None:
        """Drop the schema and everything in it (tests only)."""
        with _guard("drop"):  # its own connection: works after close() too
            async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


class PostgresStreamStore(SharedStreamStore):
    """Streams in PostgreSQL; several processes may share one database. Open with
    ``store = await PostgresStreamStore.open("postgresql://localhost/app")``.

    :param schema: where the tables live (several stores in one database)
    """

    kind = "postgres"

    @classmethod
    async def open(cls, url: str, *, schema: str = "unbroken", clock=None,
                   local_clock=time.time, pool_size: int = 10) -> "PostgresStreamStore":
        """Connect, create or migrate the schema, LISTEN for changes.

        :raises BackendUnavailable: the database cannot be reached
        :raises BackendSchemaError: the schema is of a newer version
        :raises MissingExtra: psycopg is not installed
        """
        store = cls(PostgresBackend(url, schema=schema, pool_size=pool_size), clock=clock,
                    local_clock=local_clock)
        return await store._start()
