"""Stores for tests: every kind, fresh, cleaned up afterwards.

Owns:

* the store kinds (:data:`STORE_KINDS`: memory, file, file-never, redis,
  postgres) and :func:`open_test_store` (one fresh, empty store of a kind)
  with :func:`close_test_store` (drops a shared backend's keys or schema,
  then closes);
* the shared backends' plumbing: :func:`backend_url` (the URL from
  ``REDIS_URL`` / ``DATABASE_URL``, or ``pytest.skip`` with the reason),
  :func:`unique_prefix`, :func:`open_shared_store`, :func:`shared_backend`;
* :class:`FakeClock`, the wall clock a test moves by hand;
* :func:`until_parked`: wait until ``store.waiting(path)`` reports a parked
  ``wait_for_messages`` (the HTTP equivalent is in :mod:`support.server`).

tests/conftest.py finds the backends (and sets the URL variables) before
any test reads them.
"""
from __future__ import annotations

import inspect
import os
import uuid

import anyio
import pytest

from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.memory import MemoryStreamStore

#: shared store kind -> the variable naming its server
URL_VARS = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}
#: stores whose drivers (redis-py, psycopg) run on asyncio only
ASYNCIO_ONLY = frozenset(URL_VARS)
#: every kind :func:`open_test_store` opens
STORE_KINDS = ("memory", "file", "file-never", "redis", "postgres")
#: a parked-waiter poll's bound: only a waiter that never parks (a bug) reaches it
PARK_TIMEOUT = 30.0


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def file_config(durability: Durability = Durability.ALWAYS) -> LogConfig:
    """The file store's log configuration in tests: small (64 KiB) segments,
    so that a few appends span several."""
    return LogConfig(segment_size=64 * 1024, durability=durability)


def backend_url(kind: str) -> str:
    """The URL of the ``kind`` server (redis, postgres); skips the test, with
    the reason, when its variable is unset or empty."""
    var = URL_VARS[kind]
    return os.environ.get(var) or pytest.skip(f"{var} is not set: no {kind} server to test")


def skip_unless_runs_on(kind: str, anyio_backend: str) -> None:
    """Skip a ``kind`` store on an event loop its driver does not run on."""
    if kind in ASYNCIO_ONLY and anyio_backend != "asyncio":
        pytest.skip(f"the {kind} store's driver runs on asyncio only")


def unique_prefix(kind: str, tag: str = "t") -> str:
    """A fresh key prefix (Redis, ends with ``:``) or schema name (PostgreSQL)."""
    return f"{tag}{uuid.uuid4().hex[:12]}" + (":" if kind == "redis" else "")


async def open_shared_store(kind: str, url: str, prefix: str, **kw):
    """A Redis or PostgreSQL store on ``prefix`` (key prefix / schema);
    ``kw`` goes to ``open`` (``clock=``, ...)."""
    if kind == "redis":
        from unbroken_engine.stores.shared.redis import RedisStreamStore

        return await RedisStreamStore.open(url, prefix=prefix, **kw)
    from unbroken_engine.stores.shared.postgres import PostgresStreamStore

    return await PostgresStreamStore.open(url, schema=prefix, **kw)


def shared_backend(kind: str, url: str, prefix: str):
    """The backend object alone (no store), e.g. to ``drop_everything()``."""
    if kind == "redis":
        from unbroken_engine.stores.shared.redis import RedisBackend

        return RedisBackend(url, prefix=prefix)
    from unbroken_engine.stores.shared.postgres import PostgresBackend

    return PostgresBackend(url, schema=prefix)


async def open_test_store(kind: str, tmp_path, clock=None, *, config: LogConfig | None = None):
    """A fresh, empty store of ``kind`` (:data:`STORE_KINDS`): in memory, in
    ``tmp_path / "data"`` (``config``, else :func:`file_config` -- with
    ``Durability.NEVER`` for file-never), or on a unique prefix of the shared
    backend (skipped, with the reason, without one). ``clock`` as the
    store's clock when given. Close it with :func:`close_test_store`."""
    kw = {} if clock is None else {"clock": clock}
    if kind == "memory":
        return MemoryStreamStore(**kw)
    if kind in ("file", "file-never"):
        if config is None:
            config = file_config(Durability.NEVER if kind == "file-never" else Durability.ALWAYS)
        return FileBackedStreamStore(tmp_path / "data", config, **kw)
    if kind in URL_VARS:
        return await open_shared_store(kind, backend_url(kind), unique_prefix(kind), **kw)
    raise ValueError(f"no store kind {kind!r}; the kinds are {', '.join(STORE_KINDS)}")


async def close_test_store(store) -> None:
    """Close ``store``; a shared backend outlives the test, so its keys or
    schema are dropped first."""
    try:
        drop = getattr(store, "drop_everything", None)
        if drop is not None:
            result = drop()
            if inspect.isawaitable(result):
                await result
    finally:
        await store.aclose()


async def until_parked(store, path: str, n: int = 1, timeout: float = PARK_TIMEOUT) -> None:
    """Return once ``n`` ``wait_for_messages`` calls on ``path`` are parked in
    ``store`` (checked the stream, found nothing, waiting for a notification):
    what a test appends, closes or deletes after this reaches them through
    the wake-up, not their first check. The shared stores load the row over
    the network first, so this polls; a waiter that never parks fails the
    test (TimeoutError) rather than letting it pass without having waited."""
    with anyio.fail_after(timeout):
        while store.waiting(path) < n:
            await anyio.sleep(0.001)
