"""What every request may use: the store, the HTTP layer's tunables, and the
bookkeeping that load shedding and graceful shutdown need (open connections,
idle ones, live readers, request bytes in flight, refusals).

The CLI's defaults are this module's :class:`ServerConfig` defaults: change
one here and ``unbroken serve --help`` says so. So are the address a server
listens on by default (:data:`DEFAULT_HOST`, :data:`DEFAULT_PORT`) and the
one reading of ``$ONEPIPE_STREAMS_PORT`` (:func:`env_port`), which
``unbroken serve`` and OnePipe's embedded server share.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

from unbroken_engine.stores.interface import StreamStore

#: the address ``unbroken serve`` and OnePipe's embedded server listen on by default
DEFAULT_HOST = "127.0.0.1"
#: their port unless ``$ONEPIPE_STREAMS_PORT`` (:data:`PORT_ENV`) names another
DEFAULT_PORT = 9999
PORT_ENV = "ONEPIPE_STREAMS_PORT"


def env_port(environ=os.environ) -> int:
    """The port ``$ONEPIPE_STREAMS_PORT`` names, or :data:`DEFAULT_PORT` when
    it is unset or empty (0 asks for any free port).

    :param environ: the environment to read (default: the process's)
    :raises ValueError: it is not a port number (decimal digits, 0 to 65535)
    """
    raw = environ.get(PORT_ENV, "")
    if not raw:
        return DEFAULT_PORT
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 65535:
        raise ValueError(f"{PORT_ENV} must be a port number, not {raw!r}")
    return int(raw)


@dataclass
class ServerConfig:
    """Tunables of the HTTP layer (see ``unbroken serve --help``)."""

    long_poll_timeout: float = 2.0
    sse_max_duration: float = 60.0
    sse_send_timeout: float = 10.0
    max_body: int = 16 << 20
    max_header_bytes: int = 64 << 10
    read_chunk: int = 1 << 20
    request_timeout: float = 30.0
    idle_timeout: float = 75.0
    shutdown_grace: float = 10.0
    max_connections: int = 4096
    """Open connections served at once (``--max-connections``). One more gets
    a complete ``503`` with ``Retry-After`` and is closed. ``serve()`` lowers
    it to fit the process's ``RLIMIT_NOFILE`` (see :func:`.app.connection_cap`)."""
    max_live_readers: int = 2048
    """SSE responses and long-polls open at once, together
    (``--max-live-readers``). One more live request gets ``429`` with
    ``Retry-After``; catch-up reads and appends are not counted."""
    max_inflight_bytes: int = 256 << 20
    """Bytes of request bodies being received or awaiting the store, over all
    connections (``--max-inflight-bytes``). A body that would go over gets
    ``503`` with ``Retry-After`` (the connection is closed) instead of being
    buffered; a body is always admitted when no other is in flight, so one
    body up to ``max_body`` can always get through."""


#: seconds a shed client is asked to wait (``Retry-After``) before trying again
RETRY_AFTER = "1"


@dataclass
class ServerContext:
    """What every handler may use: the store, the config, the shutdown signal,
    and the bookkeeping graceful shutdown and load shedding need (open
    connections, idle ones, live readers, request bytes in flight, refusals)."""

    store: StreamStore
    config: ServerConfig = field(default_factory=ServerConfig)
    started: float = field(default_factory=time.monotonic)
    shutting_down: bool = False
    shutdown_event: anyio.Event | None = None
    connections: int = 0
    idle_scopes: set = field(default_factory=set)
    #: the connection cap in force (``serve()`` sets it; 0: ``config.max_connections``)
    connection_limit: int = 0
    live_readers: int = 0
    inflight_bytes: int = 0
    refused_connections: int = 0
    refused_live_readers: int = 0
    refused_bodies: int = 0

    def shutdown(self) -> None:
        """Stop: live readers finish, idle connections close."""
        self.shutting_down = True
        if self.shutdown_event is not None:
            self.shutdown_event.set()
        for scope in list(self.idle_scopes):
            scope.cancel()
        self.store.notify_all()

    def connection_opened(self) -> None:
        """Count a connection being served (unconditionally)."""
        self.connections += 1

    def connection_closed(self) -> None:
        """Count a served connection as closed."""
        self.connections -= 1

    def admit_connection(self) -> bool:
        """Count a new connection if it fits under the cap; False (and counted
        as refused) if it does not."""
        limit = self.connection_limit or self.config.max_connections
        if self.connections >= limit:
            self.refused_connections += 1
            return False
        self.connections += 1
        return True

    def admit_live_reader(self) -> bool:
        """Take a live-reader slot (SSE or long-poll); False (and counted as
        refused) when they are all taken. Give it back with
        :meth:`live_reader_done`."""
        if self.live_readers >= self.config.max_live_readers:
            self.refused_live_readers += 1
            return False
        self.live_readers += 1
        return True

    def live_reader_done(self) -> None:
        """Give back a slot taken by :meth:`admit_live_reader`."""
        self.live_readers -= 1

    def reserve_body(self, held: int, more: int) -> bool:
        """Reserve ``more`` bytes for a request body that already holds ``held``.

        Admitted when the total stays within ``max_inflight_bytes``, or when
        no other body is in flight (so one body up to ``max_body`` always gets
        through). False (counted as refused) otherwise; the caller then owns
        ``held`` bytes still, to give back with :meth:`release_body`.
        """
        if (self.inflight_bytes + more > self.config.max_inflight_bytes
                and self.inflight_bytes > held):
            self.refused_bodies += 1
            return False
        self.inflight_bytes += more
        return True

    def release_body(self, held: int) -> None:
        """Give back bytes reserved with :meth:`reserve_body`."""
        self.inflight_bytes -= held

    @contextmanager
    def idle(self, scope: anyio.CancelScope):
        """Run the wait for a connection's next request in ``scope``, which
        shutdown cancels."""
        if self.shutting_down:
            scope.cancel()
        self.idle_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self.idle_scopes.discard(scope)
