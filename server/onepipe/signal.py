"""Signal: a named, persisted value (``signals/{name}``) with its history.

::

    flag = await Signal.create("new-checkout", default=False).build()
    await flag.set(True)
    await flag.get()                          # True, from the latest record only
    await flag.update(lambda on: not on)      # optimistic concurrency
    async for value in flag.watch(): ...      # every change, in every instance

Each change is one record ``{"value", "version", "id", "by", "at"}`` sent
with ``Stream-Seq`` = the zero-padded version. The server accepts a
``Stream-Seq`` only if it is greater than the last one, so of two writers that
read version *n*, exactly one writes *n + 1*; the other gets a conflict,
re-reads and tries again (:meth:`Signal.update`). ``get()`` reads only the
latest record, through Unbroken's ``?last=true`` read (documented in
docs/protocol-choices.md); against a server without it, it reads the history.
"""
from __future__ import annotations

import contextlib
import inspect
import random
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

import anyio

from .errors import OnePipeError, SeqConflict
from .flow import check_name
from .runtime import Runtime, resolve_runtime
from .schema import Schema
from .transport import Transport

__all__ = ["Signal", "SignalBuilder", "SignalState"]

T = TypeVar("T")
#: width of the zero-padded version in ``Stream-Seq``
SEQ_WIDTH = 20

#: per transport, per signal path: the lock that queues this process's updates
_UPDATE_LOCKS: "weakref.WeakKeyDictionary[Transport, dict[str, anyio.Lock]]" = \
    weakref.WeakKeyDictionary()


def _update_lock(transport: Transport, path: str) -> anyio.Lock:
    locks = _UPDATE_LOCKS.setdefault(transport, {})
    lock = locks.get(path)
    if lock is None:
        lock = locks[path] = anyio.Lock()
    return lock


@dataclass(frozen=True)
class SignalState(Generic[T]):
    """A signal's value and where it came from.

    :ivar version: 0 for the default (nothing written yet), then 1, 2, ...
    :ivar by: the runtime instance that wrote it (None for the default)
    :ivar at: when it was written (Unix seconds; None for the default)
    :ivar next_offset: read the stream from here to see later changes
    """

    value: T
    version: int
    by: str | None
    at: float | None
    next_offset: str
    id: str | None = None


class Signal(Generic[T]):
    """A built signal (see the module doc). Make one with :meth:`Signal.create`."""

    def __init__(self, name: str, transport: Transport, default: T, schema: Schema,
                 instance: str, retry_for: float):
        self.name = name
        self.path = f"signals/{name}"
        self.transport = transport
        self.default = default
        self._schema = schema
        self._instance = instance
        self._retry_for = retry_for

    @staticmethod
    def create(name: str, default: T = None) -> "SignalBuilder[T]":
        """A builder for the signal ``name`` whose value is ``default`` until set."""
        return SignalBuilder(check_name(name, "signal"), default)

    def _state(self, record, next_offset: str) -> SignalState:
        if not (isinstance(record, dict) and isinstance(record.get("version"), int)
                and "value" in record):
            raise OnePipeError(f"signal {self.name!r}: the latest record was not written by "
                               f"a Signal: {str(record)[:100]}")
        value = self._schema.decode(record["value"], f"signal {self.name!r}: stored value")
        return SignalState(value, record["version"], record.get("by"), record.get("at"),
                           next_offset, record.get("id"))

    async def state(self) -> SignalState[T]:
        """The latest value with its version, writer and time."""
        last = await self.transport.read_last(self.path)
        if not last.found:
            return SignalState(self.default, 0, None, None, last.next_offset)
        return self._state(last.value, last.next_offset)

    async def get(self) -> T:
        """The latest value (the default until one is set)."""
        return (await self.state()).value

    async def set(self, value: T) -> T:
        """Make ``value`` the signal's value (retries a lost race; see :meth:`update`)."""
        return await self.update(lambda _old: value)

    async def update(self, fn: Callable[[T], T], *, retry_for: float | None = None) -> T:
        """Apply ``fn`` (sync or async) to the latest value and write the
        result, if no other writer wrote in between; otherwise read again and
        re-apply ``fn`` -- so concurrent updates from any number of processes
        each apply exactly once.

        :return: the value written
        :raises SchemaError: ``fn``'s result does not fit (nothing written)
        :raises SeqConflict: still losing races after ``retry_for`` seconds
        :raises Unavailable: the server stayed unreachable (the write may or
            may not have happened; :meth:`state` tells)
        """
        # Updates from this process (any Signal object on this runtime) take
        # turns: racing each other they would only conflict and retry; the
        # optimistic check still settles races with other processes.
        async with _update_lock(self.transport, self.path):
            return await self._update(fn, retry_for)

    async def _update(self, fn, retry_for: float | None):
        deadline = time.monotonic() + (self._retry_for if retry_for is None else retry_for)
        wid = uuid.uuid4().hex
        pause = 0.001
        while True:
            st = await self.state()
            if st.id == wid:  # our earlier attempt was written after all
                return st.value
            new = fn(st.value)
            if inspect.isawaitable(new):
                new = await new
            record = {"value": self._schema.encode(new, f"signal {self.name!r}: value"),
                      "version": st.version + 1, "id": wid, "by": self._instance,
                      "at": time.time()}
            try:
                await self.transport.append(self.path, [record],
                                            seq=f"{st.version + 1:0{SEQ_WIDTH}d}")
                return new
            except SeqConflict as exc:  # another writer got there first (or we did)
                if time.monotonic() >= deadline:
                    raise SeqConflict(f"signal {self.name!r}: still conflicting after "
                                      f"retrying: {exc}") from exc
            await anyio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.05)

    async def watch(self, *, current: bool = True) -> AsyncIterator[T]:
        """The value now (unless ``current=False``), then every change as
        it is written, by any instance. Runs until cancelled (or closed:
        ``contextlib.aclosing(sig.watch())`` releases the connection at once)."""
        async with contextlib.aclosing(self.watch_states(current=current)) as states:
            async for st in states:
                yield st.value

    async def watch_states(self, *, current: bool = True) -> AsyncIterator[SignalState[T]]:
        """Like :meth:`watch`, with each change's :class:`SignalState`."""
        st = await self.state()
        if current:
            yield st
        async with contextlib.aclosing(self.transport.live(self.path, st.next_offset)) as live:
            async for batch in live:
                for record in batch.values:
                    yield self._state(record, batch.next_offset)

    async def history(self) -> list[SignalState[T]]:
        """Every value the signal has had, oldest first."""
        out, offset = [], "-1"
        while True:
            batch = await self.transport.read(self.path, offset)
            out.extend(self._state(r, batch.next_offset) for r in batch.values)
            offset = batch.next_offset
            if batch.up_to_date:
                return out

    def __repr__(self) -> str:
        return f"<Signal {self.name} via {self.transport.kind}>"


class SignalBuilder(Generic[T]):
    """``Signal.create(name, default).schema(...).build()``."""

    def __init__(self, name: str, default: Any):
        self.name = name
        self.default = default
        self._schema = Schema.of(None)

    def schema(self, spec) -> "SignalBuilder[T]":
        """Check values on write and decode them on read (see :mod:`.schema`)."""
        self._schema = Schema.of(spec)
        return self

    async def build(self, rt: Runtime | None = None) -> Signal[T]:
        """Create ``signals/{name}`` if needed and return the signal."""
        rt = resolve_runtime(rt)
        sig = Signal(self.name, rt.transport, self.default, self._schema, rt.instance,
                     rt.retry.retry_for)
        await rt.transport.ensure(sig.path)
        return sig
