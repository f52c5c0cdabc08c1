"""Blocking calls into the async stores, for programs without an event loop.

:class:`BlockingLoop` is the one mechanism: an event loop in a background
thread (anyio's blocking portal) and the calls into it. :class:`SyncStreamStore`
forwards each store call through one; the OnePipe blocking runtime
(``unbroken_server.onepipe.sync``) and its embedded server use it too::

    from unbroken_engine import FileBackedStreamStore, SyncStreamStore

    with SyncStreamStore(lambda: FileBackedStreamStore("data")) as store:
        store.create("orders")
        store.append("orders", b"hello")
        print(bytes(store.read("orders").data))
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

from anyio.from_thread import start_blocking_portal


class BlockingLoop:
    """An event loop running in a background thread, and blocking calls into it.

    :param backend: the anyio backend of the loop
    :ivar portal: the anyio ``BlockingPortal`` (None once stopped)
    """

    def __init__(self, backend: str = "asyncio"):
        self._cm = start_blocking_portal(backend)
        self.portal = self._cm.__enter__()

    def call(self, func, *args, **kwargs):
        """Run ``func(*args, **kwargs)`` on the loop (awaited if it is a
        coroutine function) and return its result or raise its exception."""
        return self.portal.call(functools.partial(func, *args, **kwargs))

    def blocking(self, func):
        """``func`` as a plain callable that blocks on :meth:`call`."""
        @functools.wraps(func)
        def call(*args, **kwargs):
            return self.call(func, *args, **kwargs)

        return call

    def iterate(self, agen) -> Iterator:
        """An async iterator (of the loop) as an ordinary iterator; closed
        on the loop when the iteration ends or is abandoned."""
        try:
            while True:
                try:
                    yield self.portal.call(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self.portal.call(agen.aclose)

    def start_task(self, func):
        """Start ``func(task_status=...)`` on the loop and wait until it
        reports started. :return: ``(future of its end, the started value)``"""
        return self.portal.start_task(func)

    @contextlib.contextmanager
    def stop_on_error(self):
        """Stop the loop if the block raises (for the call that opens what
        the loop is for: without it, nothing would stop the thread)."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread (waits for its tasks); idempotent."""
        if self._cm is not None:
            cm, self._cm, self.portal = self._cm, None, None
            cm.__exit__(None, None, None)

    @property
    def running(self) -> bool:
        """Whether the loop is still running (:meth:`stop` not called)."""
        return self._cm is not None


class SyncStreamStore:
    """Blocking facade over a :class:`~unbroken_engine.stores.interface.StreamStore`.

    :param factory: a callable that builds the store; it is called inside the
        loop, so the store belongs to that loop
    :param backend: the anyio backend of the loop
    """

    def __init__(self, factory, backend: str = "asyncio"):
        self._loop = BlockingLoop(backend)
        with self._loop.stop_on_error():
            self._store = self._loop.call(_build, factory)

    @property
    def store(self):
        """The wrapped async store (use it only from its own loop)."""
        return self._store

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        return self._loop.blocking(attr)

    def close(self) -> None:
        """Close the store and stop the background loop."""
        if self._loop.running:
            try:
                self._loop.call(self._store.aclose)
            finally:
                self._loop.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


async def _build(factory):
    return factory()
