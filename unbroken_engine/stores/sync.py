"""SyncStreamStore: the async stores for programs without an event loop.

It runs an event loop in a background thread (anyio's blocking portal) and
forwards each call to the store there::

    from unbroken_engine import FileBackedStreamStore, SyncStreamStore

    with SyncStreamStore(lambda: FileBackedStreamStore("data")) as store:
        store.create("orders")
        store.append("orders", b"hello")
        print(bytes(store.read("orders").data))
"""
from __future__ import annotations

import functools

from anyio.from_thread import start_blocking_portal


class SyncStreamStore:
    """Blocking facade over a :class:`~unbroken_engine.stores.interface.StreamStore`.

    :param factory: a callable that builds the store; it is called inside the
        portal's event loop, so the store belongs to that loop
    """

    def __init__(self, factory, backend: str = "asyncio"):
        self._cm = start_blocking_portal(backend)
        self._portal = self._cm.__enter__()
        try:
            self._store = self._portal.call(_build, factory)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise

    @property
    def store(self):
        """The wrapped async store (use it only from its own loop)."""
        return self._store

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return self._portal.call(functools.partial(attr, *args, **kwargs))

        return call

    def close(self) -> None:
        """Close the store and stop the background loop."""
        if self._cm is not None:
            try:
                self._portal.call(self._store.aclose)
            finally:
                self._cm.__exit__(None, None, None)
                self._cm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


async def _build(factory):
    return factory()
