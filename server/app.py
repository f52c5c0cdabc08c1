"""serve(): the listener, one task per connection, the expiry sweeper, and a
graceful shutdown, all children of one task group.

Shutdown (SIGTERM/SIGINT, or :meth:`ServerContext.shutdown`): stop accepting;
idle keep-alive connections close; live readers end with a final control
event (SSE) or a 204 (long-poll); in-flight requests -- appends included --
finish within ``shutdown_grace``; then everything left is cancelled. The
caller closes the store afterwards (which flushes it).

Overload: the accept loop counts connections; one over the cap
(:func:`connection_cap`) is answered with a complete 503 and closed by a
separate task (:func:`~.connection.refuse_connection`), at most
``REFUSE_CONCURRENCY`` at a time -- beyond that the loop waits for one to
finish, so further connections queue in the listen backlog, never dropped.
"""
from __future__ import annotations

import errno
import functools
import logging
import resource
import signal

import anyio
import anyio.abc

from .connection import refuse_connection, serve_connection
from .context import ServerContext

log = logging.getLogger("unbroken.server")
ACCEPT_RETRY_SLEEP = 0.1  # after EMFILE and friends
SWEEP_EVERY = 1.0
_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
#: connections being refused (503) at once; they need file descriptors too
REFUSE_CONCURRENCY = 64
#: file descriptors kept free besides connections and refusals: the listeners,
#: the store's files, the event loop, logging
FD_RESERVE = 128


def fds_needed(max_connections: int) -> int:
    """The RLIMIT_NOFILE that lets ``max_connections`` connections be served."""
    return max_connections + REFUSE_CONCURRENCY + FD_RESERVE


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to what the process's RLIMIT_NOFILE soft
    limit allows after ``REFUSE_CONCURRENCY + FD_RESERVE`` descriptors (at
    least 1)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - REFUSE_CONCURRENCY - FD_RESERVE))


async def serve(ctx: ServerContext, host: str = "127.0.0.1", port: int = 9999, *,
                handle_signals: bool = True,
                task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``ctx.store`` over HTTP until shut down.

    :param port: 0 picks a free port; the bound port is reported through
        ``task_status`` (``await tg.start(serve, ctx, host, 0)``)
    """
    ctx.shutdown_event = anyio.Event()
    ctx.connection_limit = connection_cap(ctx.config.max_connections)
    if ctx.connection_limit < ctx.config.max_connections:
        log.warning("unbroken: serving at most %d connections, not %d: the open-file limit "
                    "(ulimit -n) is %d", ctx.connection_limit, ctx.config.max_connections,
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        accepting = anyio.CancelScope()
        tg.start_soon(_accept, listener, ctx, tg, accepting)
        tg.start_soon(_sweep, ctx)
        if handle_signals:
            tg.start_soon(_signals, ctx)
        task_status.started(bound)
        await ctx.shutdown_event.wait()
        accepting.cancel()
        ctx.shutdown()  # again: closes connections that went idle meanwhile
        with anyio.move_on_after(ctx.config.shutdown_grace):
            while ctx.connections:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


async def _accept(listener, ctx: ServerContext, tg, scope: anyio.CancelScope) -> None:
    refusals = anyio.Semaphore(REFUSE_CONCURRENCY)
    with scope:
        async with listener, anyio.create_task_group() as accepting:
            for one in listener.listeners:  # one per address family
                accepting.start_soon(_accept_one, one, ctx, tg, refusals)


async def _accept_one(listener, ctx: ServerContext, tg, refusals: anyio.Semaphore) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_ERRORS:
                raise
            log.warning("accept failed (%s); retrying", exc)
            await anyio.sleep(ACCEPT_RETRY_SLEEP)
            continue
        hold_reads(stream)
        if ctx.admit_connection():
            tg.start_soon(functools.partial(serve_connection, stream, ctx, admitted=True))
        else:
            try:
                await refusals.acquire()  # enough refusals under way: stop accepting a moment
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise
            tg.start_soon(_refuse, stream, refusals)


def hold_reads(stream) -> None:
    """Pause reading on a socket just accepted on asyncio, as anyio does for
    the sockets it connects (``connect_tcp``) but not for accepted ones.

    anyio's asyncio stream pauses its transport only after a ``receive()``
    that had to wait; a transport that starts out reading, with a peer that
    sends faster than the server consumes (a body being refused and drained,
    a pipelining flood), never waits, so every byte that arrives piles up in
    the stream's queue -- unbounded memory per connection. Paused, the
    transport reads only while a ``receive()`` waits: a few hundred KiB at
    most, the rest stays in the kernel and TCP pushes back on the sender.
    No-op on trio (no transport: it reads only when asked).
    """
    pause = getattr(getattr(stream, "_transport", None), "pause_reading", None)
    if pause is not None:
        pause()


async def _refuse(stream, refusals: anyio.Semaphore) -> None:
    try:
        await refuse_connection(stream)
    finally:
        refusals.release()


async def _sweep(ctx: ServerContext) -> None:
    """Remove expired streams in the background (access checks expiry too)."""
    while True:
        await anyio.sleep(SWEEP_EVERY)
        try:
            await ctx.store.sweep()
        except Exception:  # noqa: BLE001 - a failed sweep must not stop the server
            log.exception("expiry sweep failed")


async def _signals(ctx: ServerContext) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("unbroken: %s received, shutting down", signal.Signals(signum).name)
            ctx.shutdown()
            return
