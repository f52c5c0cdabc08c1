"""serve(): the listener, one task per connection, the expiry sweeper, and a
graceful shutdown, all children of one task group.

Shutdown (SIGTERM/SIGINT, or :meth:`ServerContext.shutdown`): stop accepting;
idle keep-alive connections close; live readers end with a final control
event (SSE) or a 204 (long-poll); in-flight requests -- appends included --
finish within ``shutdown_grace``; then everything left is cancelled. The
caller closes the store afterwards (which flushes it).
"""
from __future__ import annotations

import errno
import logging
import signal

import anyio
import anyio.abc

from .connection import serve_connection
from .handlers import ServerContext

log = logging.getLogger("unbroken.server")
ACCEPT_RETRY_SLEEP = 0.1  # after EMFILE and friends
SWEEP_EVERY = 1.0
_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}


async def serve(ctx: ServerContext, host: str = "127.0.0.1", port: int = 9999, *,
                handle_signals: bool = True,
                task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``ctx.store`` over HTTP until shut down.

    :param port: 0 picks a free port; the bound port is reported through
        ``task_status`` (``await tg.start(serve, ctx, host, 0)``)
    """
    ctx.shutdown_event = anyio.Event()
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
    with scope:
        async with listener, anyio.create_task_group() as accepting:
            for one in listener.listeners:  # one per address family
                accepting.start_soon(_accept_one, one, ctx, tg)


async def _accept_one(listener, ctx: ServerContext, tg) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_ERRORS:
                raise
            log.warning("accept failed (%s); retrying", exc)
            await anyio.sleep(ACCEPT_RETRY_SLEEP)
            continue
        tg.start_soon(serve_connection, stream, ctx)


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
