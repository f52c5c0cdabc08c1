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

The runtime runs on an event loop in a background thread (anyio's blocking
portal); every method of a built object blocks until its coroutine is done,
and async iterators become ordinary iterators. Channel handlers run on that
thread's loop.
"""
from __future__ import annotations

import functools
import inspect

from anyio.from_thread import start_blocking_portal

from .runtime import Runtime, connect as _connect

__all__ = ["connect", "SyncRuntime", "Blocking"]


class Blocking:
    """Wraps an object of the async API: coroutine methods block, async
    generator methods return iterators, other attributes pass through."""

    def __init__(self, portal, target):
        self._portal = portal
        self._target = target

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            @functools.wraps(attr)
            def call(*args, **kwargs):
                return self._portal.call(functools.partial(attr, *args, **kwargs))
            return call
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            def iterate(*args, **kwargs):
                return _iterate(self._portal, attr(*args, **kwargs))
            return iterate
        return attr

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


def _iterate(portal, agen):
    try:
        while True:
            try:
                yield portal.call(agen.__anext__)
            except StopAsyncIteration:
                return
    finally:
        portal.call(agen.aclose)


class SyncRuntime:
    """A :class:`~.runtime.Runtime` on a background event loop (use :func:`connect`)."""

    def __init__(self, **connect_kwargs):
        self._kwargs = connect_kwargs
        self._portal_cm = None
        self.portal = None
        self.runtime: Runtime | None = None

    def __enter__(self) -> "SyncRuntime":
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        try:
            self.runtime = self.portal.call(self._open)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        return self

    async def _open(self) -> Runtime:
        return await _connect(**self._kwargs).open()

    def build(self, builder) -> Blocking:
        """Build a ``Flow``/``Signal``/``Channel`` builder on this runtime;
        :return: its blocking facade."""
        return Blocking(self.portal, self.portal.call(builder.build, self.runtime))

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    def __exit__(self, *exc) -> None:
        try:
            self.portal.call(self.runtime.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)


def connect(**kwargs) -> SyncRuntime:
    """Like :func:`unbroken_server.onepipe.connect` (same arguments), but
    blocking: ``with connect() as rt:``."""
    return SyncRuntime(**kwargs)
