"""StreamNotifier: wakes live readers (long-poll, SSE) when a stream changes.

One anyio Event per stream path that somebody waits on; ``notify`` sets it and
forgets it, so the next waiter gets a fresh one. Waiters re-check the stream
after waking: a notification says "look again", never what changed. No
polling anywhere. Every store owns one; the Redis and PostgreSQL stores feed
it from their cross-process channels.

Not thread-safe: call it from the event loop that owns the store.
"""
from __future__ import annotations

import anyio


class StreamNotifier:
    """Per-path change notification for tasks of one event loop."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}
        self._parked: dict[str, int] = {}  # path -> tasks inside wait()/wait_event()
        #: bumped by :meth:`notify_all`, so a waiter can tell "everybody, stop"
        #: from "your stream changed"
        self.generation = 0

    def notify(self, path: str) -> None:
        """Wake every task waiting on ``path`` (an append, a close, a delete)."""
        event = self._events.pop(path, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every waiter (shutdown: live readers end cleanly)."""
        self.generation += 1
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def wake_waiters(self) -> None:
        """Wake every waiter to look again, without meaning "stop" (the
        generation stays): a shared store calls this after its notification
        channel reconnects, since notifications may have been missed."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def event(self, path: str) -> anyio.Event:
        """The event the next notification on ``path`` sets. A caller that must
        await between its check and its wait (a shared store reads the backend)
        takes the event *before* the check and waits on it with
        :meth:`wait_event`, so no notification falls in between."""
        event = self._events.get(path)
        if event is None:
            event = self._events[path] = anyio.Event()
        return event

    async def wait_event(self, path: str, event: anyio.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``event`` (taken with
        :meth:`event` for ``path``); :return: True when set."""
        return await self._parked_wait(path, event, timeout)

    async def wait(self, path: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification on ``path``.

        Callers check the stream, then call this without awaiting anything in
        between, so no notification can fall between the check and the wait.

        :return: True when notified, False on timeout
        """
        return await self._parked_wait(path, self.event(path), timeout)

    async def _parked_wait(self, path: str, event: anyio.Event, timeout: float) -> bool:
        self._parked[path] = self._parked.get(path, 0) + 1
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
                return True
            return False
        finally:
            left = self._parked[path] - 1
            if left:
                self._parked[path] = left
            else:
                del self._parked[path]

    def waiting(self, path: str | None = None) -> int:
        """How many tasks are parked in :meth:`wait` or :meth:`wait_event`
        right now, on ``path`` or (``None``) on any path.

        A parked task has checked its stream and found nothing to return:
        only a notification (or its timeout) moves it. Tests wait for this
        count before they append, to prove a reader was woken rather than
        served by its first look; ``/health`` reports the total.
        """
        if path is None:
            return sum(self._parked.values())
        return self._parked.get(path, 0)
