"""A blocking facade over the async API, for programs without an event loop.

::

    from unbroken_server.onepipe import Flow, Signal
    from unbroken_server.onepipe.sync import connect

    with connect() as rt:
        orders = rt.build(Flow.create("orders"))
        orders.append({"id": 1})
        for offset, event in orders.read():
            ...
        flag = rt.build(Signal.create("flag", default=False))
        flag.set(True)

The runtime runs on an event loop in a background thread (the engine's
:class:`~unbroken_engine.stores.sync.BlockingLoop`); every method of a built
object blocks until its coroutine is done, and async iterators become
ordinary iterators. Channel handlers run on that thread's loop.
"""
from __future__ import annotations

import functools
import inspect

from unbroken_engine.stores.sync import BlockingLoop

from .runtime import Runtime
from .runtime import connect as _connect

__all__ = ["connect", "SyncRuntime", "Blocking"]


class Blocking:
    """Wraps an object of the async API: coroutine methods block, async
    generator methods return iterators, other attributes pass through.

    :param loop: the :class:`~unbroken_engine.stores.sync.BlockingLoop` the
        object belongs to
    """

    def __init__(self, loop: BlockingLoop, target):
        self._loop = loop
        self._target = target

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return self._loop.blocking(attr)
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            def iterate(*args, **kwargs):
                return self._loop.iterate(attr(*args, **kwargs))
            return iterate
        return attr

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


class SyncRuntime:
    """A :class:`~.runtime.Runtime` on a background event loop (use :func:`connect`).

    :ivar loop: its :class:`~unbroken_engine.stores.sync.BlockingLoop`
    :ivar portal: that loop's anyio blocking portal
    """

    def __init__(self, **connect_kwargs):
        self._kwargs = connect_kwargs
        self.loop: BlockingLoop | None = None
        self.portal = None
        self.runtime: Runtime | None = None

    def __enter__(self) -> "SyncRuntime":
        self.loop = BlockingLoop()
        self.portal = self.loop.portal
        with self.loop.stop_on_error():
            self.runtime = self.loop.call(self._open)
        return self

    async def _open(self) -> Runtime:
        return await _connect(**self._kwargs).open()

    def build(self, builder) -> Blocking:
        """Build a ``Flow``/``Signal``/``Channel`` builder on this runtime;
        :return: its blocking facade."""
        return Blocking(self.loop, self.loop.call(builder.build, self.runtime))

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    def __exit__(self, *exc) -> None:
        try:
            self.loop.call(self.runtime.aclose)
        finally:
            self.loop.stop()


def connect(**kwargs) -> SyncRuntime:
    """Like :func:`unbroken_server.onepipe.connect` (same arguments), but
    blocking: ``with connect() as rt:``."""
    return SyncRuntime(**kwargs)
