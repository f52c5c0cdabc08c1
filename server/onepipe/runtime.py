"""The runtime: one connection to streams, in one of three modes.

``async with connect() as rt:`` opens it and makes it *current* (builders
without an explicit runtime use the current one). The mode comes from the
arguments, else from the environment:

==============  ==========================================================
mode            what ``connect()`` does
==============  ==========================================================
``remote``      ``ONEPIPE_STREAMS_URL`` (or ``url=``) is set: an HTTP
                client (httpx) to that server, any Durable Streams server
``embedded``    the default: starts ``unbroken serve`` in a background
                thread on ``ONEPIPE_STREAMS_PORT`` (default 9999) with the
                file store in ``ONEPIPE_STREAMS_DIR`` (default
                ``.onepipe/streams/``), talks HTTP to it, and
                stops it on exit. If the port already has an Unbroken server
                (another process of the same app), it joins that one
``inprocess``   ``mode="inprocess"`` (or ``ONEPIPE_STREAMS_MODE=inprocess``,
                or ``store=``): the store is called directly in this
                process -- no HTTP, no port; one process per data directory
==============  ==========================================================

The same Flow, Channel and Signal code runs in every mode.
"""
from __future__ import annotations

import contextvars
import errno
import logging
import os
import socket
import uuid
from pathlib import Path

import anyio

from unbroken_engine.stores.file import DEFAULT_DATA_DIR
from unbroken_engine.stores.sync import BlockingLoop

from ..context import DEFAULT_HOST, DEFAULT_PORT, env_port
from .errors import DataDirInUse, NoRuntime, OnePipeError
from .transport import HttpTransport, LocalTransport, Retry, Transport

log = logging.getLogger("unbroken.onepipe")

__all__ = ["Runtime", "connect", "current_runtime", "resolve_runtime", "MODES", "DEFAULT_PORT"]

MODES = ("inprocess", "embedded", "remote")

_current: contextvars.ContextVar["Runtime | None"] = contextvars.ContextVar(
    "onepipe_runtime", default=None)


def current_runtime() -> "Runtime":
    """The runtime of the innermost ``async with connect()``.

    :raises NoRuntime: there is none
    """
    rt = _current.get()
    if rt is None or rt.closed:
        raise NoRuntime("no OnePipe runtime is open: use `async with connect() as rt:` "
                        "(or pass the runtime to build())")
    return rt


def resolve_runtime(rt: "Runtime | None") -> "Runtime":
    """``rt`` itself, or the current runtime when it is None (how every
    builder's ``build(rt=None)`` finds its runtime)."""
    return rt if rt is not None else current_runtime()


class Runtime:
    """An open connection to streams (see the module doc). Use :func:`connect`.

    :ivar mode: "inprocess", "embedded" or "remote"
    :ivar url: the server's URL (embedded and remote modes)
    :ivar instance: this runtime's id, recorded as the caller of channel
        calls and the writer of signal values
    :ivar joined: embedded mode found a server already on the port and uses it
    """

    def __init__(self, mode: str, *, url: str | None = None, port: int | None = None,
                 host: str = DEFAULT_HOST, data_dir=None, store=None, retry_for: float = 30.0,
                 instance: str | None = None):
        if mode not in MODES:
            raise OnePipeError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.url = url
        self.port = port
        self.host = host
        self.data_dir = Path(data_dir) if data_dir is not None else Path(DEFAULT_DATA_DIR)
        self.retry = Retry(retry_for)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.joined = False
        self.closed = False
        self.transport: Transport | None = None
        self._store = store
        self._server: _EmbeddedServer | None = None
        self._db: dict[str, LocalTransport] = {}
        self._token = None

    # ---- opening and closing --------------------------------------------------------

    async def open(self) -> "Runtime":
        """Connect (and start the embedded server). Prefer ``async with``."""
        if self.mode == "remote":
            if not self.url:
                raise OnePipeError("remote mode needs a URL (ONEPIPE_STREAMS_URL or url=)")
            self.transport = HttpTransport(self.url, retry=self.retry)
        elif self.mode == "inprocess":
            store, owns = self._store, False
            if store is None:
                store = await anyio.to_thread.run_sync(_open_file_store, self.data_dir)
                owns = True
            self.transport = LocalTransport(store, owns=owns, retry=self.retry)
        else:
            self._server = _EmbeddedServer(self.host, self.port, self.data_dir)
            try:
                self.url = await anyio.to_thread.run_sync(self._server.start)
            except OSError as exc:
                if isinstance(exc, OnePipeError) or exc.errno != errno.EADDRINUSE:
                    raise
                self._server = None
                self.url = f"http://{self.host}:{self.port}"
                if not await _is_unbroken(self.url):
                    raise OnePipeError(
                        f"port {self.port} is in use by something that is not an Unbroken "
                        f"server: set ONEPIPE_STREAMS_PORT to a free port") from exc
                self.joined = True
                log.info("onepipe: joining the Unbroken server already on %s", self.url)
            self.transport = HttpTransport(self.url, retry=self.retry, kind="embedded")
        return self

    async def aclose(self) -> None:
        """Close connections, then stop the embedded server (it flushes its store)."""
        if self.closed:
            return
        self.closed = True
        try:
            for t in self._db.values():
                await t.aclose()
            if self.transport is not None:
                await self.transport.aclose()
        finally:
            if self._server is not None:
                await anyio.to_thread.run_sync(self._server.stop)

    async def __aenter__(self) -> "Runtime":
        await self.open()
        self._token = _current.set(self)
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            _current.reset(self._token)
        except ValueError:  # exited in another context: just clear it
            _current.set(None)
        await self.aclose()

    # ---- what builders use ------------------------------------------------------------

    async def db_transport(self, dsn_or_pool, schema: str = "unbroken") -> LocalTransport:
        """A transport over PostgreSQL for ``Flow.db(...)`` (one per DSN, shared)."""
        dsn = dsn_or_pool if isinstance(dsn_or_pool, str) else getattr(dsn_or_pool, "conninfo",
                                                                         None)
        if not dsn:
            raise OnePipeError(f".db() takes a PostgreSQL URL or a psycopg pool, "
                               f"not {dsn_or_pool!r}")
        key = f"{dsn}\0{schema}"
        if key not in self._db:
            from unbroken_engine.stores.shared.postgres import PostgresStreamStore

            store = await PostgresStreamStore.open(dsn, schema=schema)
            self._db[key] = LocalTransport(store, owns=True, retry=self.retry, kind="postgres")
        return self._db[key]

    def __repr__(self) -> str:
        where = self.url or self.data_dir
        return f"<Runtime {self.mode} {where}{' (joined)' if self.joined else ''}>"


def connect(mode: str | None = None, *, url: str | None = None, port: int | None = None,
            data_dir=None, store=None, host: str = DEFAULT_HOST, retry_for: float = 30.0,
            instance: str | None = None, environ=None) -> Runtime:
    """A :class:`Runtime`, to open with ``async with``.

    :param mode: "inprocess", "embedded" or "remote"; default: ``store`` given
        → inprocess; ``url`` or ``$ONEPIPE_STREAMS_URL`` → remote;
        ``$ONEPIPE_STREAMS_MODE``; else embedded
    :param url: the remote server (default ``$ONEPIPE_STREAMS_URL``)
    :param port: the embedded server's port (default ``$ONEPIPE_STREAMS_PORT``
        or 9999; 0 picks a free one)
    :param data_dir: the file store's directory (default
        ``$ONEPIPE_STREAMS_DIR``, else ``.onepipe/streams`` in the working directory)
    :param store: a StreamStore to use in-process (not closed on exit)
    :param retry_for: seconds to keep retrying an unreachable server (or a
        503) before raising :class:`~.errors.Unavailable`
    :param instance: this runtime's name in channel calls and signal writes
    """
    env = os.environ if environ is None else environ
    url = url or env.get("ONEPIPE_STREAMS_URL") or None
    if data_dir is None:
        data_dir = env.get("ONEPIPE_STREAMS_DIR") or None
    if mode is None:
        if store is not None:
            mode = "inprocess"
        elif url:
            mode = "remote"
        else:
            mode = env.get("ONEPIPE_STREAMS_MODE") or "embedded"
    if port is None:
        try:
            port = env_port(env)
        except ValueError as exc:
            raise OnePipeError(str(exc)) from None
    return Runtime(mode, url=url, port=port, host=host, data_dir=data_dir, store=store,
                   retry_for=retry_for, instance=instance)


def _open_file_store(data_dir: Path):
    """The file store on ``data_dir``; a directory another store has open is
    a :class:`DataDirInUse` that says what to do instead."""
    from unbroken_engine import errors
    from unbroken_engine.stores.file import FileBackedStreamStore

    try:
        return FileBackedStreamStore(data_dir)
    except errors.DataDirInUse as exc:
        raise DataDirInUse(f"{exc}. If an Unbroken server has it open, connect to that "
                           f"server (ONEPIPE_STREAMS_URL, or the embedded mode on its "
                           f"port) instead of opening its directory") from exc


async def _is_unbroken(url: str) -> bool:
    """Whether ``url`` answers ``/health`` like an Unbroken server."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            r = await client.get(url + "/health")
            body = r.json()
    except (httpx.HTTPError, ValueError):
        return False
    return r.status_code == 200 and isinstance(body, dict) and "store" in body


class _EmbeddedServer:
    """``unbroken serve`` on the file store, in a thread with its own event loop."""

    def __init__(self, host: str, port: int, data_dir: Path):
        self.host, self.port, self.data_dir = host, port, data_dir
        self._loop = None
        self._ctx = None
        self._done = None

    def start(self) -> str:
        """Open the store and bind; :return: the server's URL.
        :raises OSError: the port is taken (errno EADDRINUSE)"""
        if self.port:  # taken? then find out before opening the store another may serve
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host, self.port))
        loop = BlockingLoop()
        with loop.stop_on_error():
            self._done, port = loop.start_task(self._run)
        self._loop = loop
        self.port = port
        return f"http://{self.host}:{port}"

    async def _run(self, *, task_status) -> None:
        from ..app import serve
        from ..context import ServerConfig, ServerContext

        store = await anyio.to_thread.run_sync(_open_file_store, self.data_dir)
        try:
            self._ctx = ServerContext(store, ServerConfig())
            log.info("onepipe: embedded Unbroken server on %s:%s, data in %s (%s)", self.host,
                     self.port, self.data_dir, store.recovery.summary())
            await serve(self._ctx, self.host, self.port, handle_signals=False,
                        task_status=task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await store.aclose()

    def stop(self) -> None:
        """Shut the server down gracefully and close its store."""
        if self._loop is None:
            return
        try:
            self._loop.call(self._ctx.shutdown)
            self._done.result(timeout=30)
        finally:
            self._loop.stop()
            self._loop = None

