"""Flow: a named, append-only stream of events (``flows/{name}``).

::

    async with connect() as rt:
        orders = await Flow.create("orders").schema(OrderEvent).build()
        await orders.append(OrderEvent(id=1, total=9.5))
        async for offset, event in orders.read():
            ...
        async for offset, event in orders.subscribe(from_=offset):
            ...   # live, resumes after a dropped connection, ends at close

Every event is checked against the schema before anything is written, and
written exactly once: appends carry idempotent-producer headers, so a retry
after a lost answer is recognised by the server as a duplicate.

Offsets are the protocol's opaque strings. Events read in one response share
a resume point: ``(offset, event)`` gives, for each event, an offset from
which reading again misses nothing after that event -- the batch's start for
every event but the last, the batch's end for the last. So a reader that
saves the offset of each event it has handled and resumes from it never
skips an event (it may see the rest of a batch again).
"""
from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any, AsyncIterator, Callable, Generic, Iterable, TypeVar

import anyio

from unbroken_engine.stores.interface import Producer

from .errors import OnePipeError
from .runtime import Runtime, resolve_runtime
from .schema import Schema
from .transport import START, Batch, Transport

__all__ = ["Flow", "FlowBuilder", "check_name"]

T = TypeVar("T")
S = TypeVar("S")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_name(name: str, what: str) -> str:
    """``name`` if it is a valid flow/channel/signal name: 1-128 characters
    of letters, digits, ``_ . -``, not starting with ``.`` or ``-``.

    :raises ValueError: anything else (slashes, ``..``, NUL, spaces, ...)
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name must be 1-128 letters, digits, '_', '.' or '-' "
                         f"(not starting with '.' or '-'): {name!r}")
    return name


def pairs(batch: Batch, decode) -> list[tuple[str, Any]]:
    """``(offset, value)`` for each value of a batch (see the module doc)."""
    n = len(batch.values)
    return [(batch.next_offset if i == n - 1 else batch.start, decode(v))
            for i, v in enumerate(batch.values)]


class _Producer:
    """One idempotent producer: id, epoch and next seq; one request at a time."""

    def __init__(self, prefix: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.epoch = 0
        self.seq = 0


class Writer:
    """Appends to one stream as idempotent producers, so that a retry after a
    lost answer is recognised by the server as a duplicate (written once).

    A producer's requests must reach the server in seq order, so each sends
    one request at a time; the writer keeps up to ``width`` producers (new
    ids, made as concurrent appends need them) so that appends from several
    tasks still travel together (and the store commits them together).
    Appends awaited one after another keep their order. A request that
    fails ambiguously (:class:`Unavailable`: it may or may not have been
    written) moves its producer to a new epoch, so its next append can never
    be mistaken for a duplicate of it.
    """

    def __init__(self, transport: Transport, path: str, prefix: str, width: int = 8):
        self.transport = transport
        self.path = path
        self._prefix = prefix
        self._idle: list[_Producer] = []
        self._slots = anyio.Semaphore(width)

    async def append(self, values: list):
        async with self._slots:
            p = self._idle.pop() if self._idle else _Producer(self._prefix)
            try:
                ack = await self.transport.append(self.path, values,
                                                  producer=Producer(p.id, p.epoch, p.seq))
            except BaseException:
                # Unavailable or cancelled mid-request: maybe written, maybe
                # not; refused (closed, fenced): not. A new epoch is right
                # either way.
                p.epoch += 1
                p.seq = 0
                raise
            else:
                p.seq += 1
                return ack
            finally:
                self._idle.append(p)


class Flow(Generic[T]):
    """A built flow (see the module doc). Make one with :meth:`Flow.create`.

    :ivar name: the flow's name; its stream is ``flows/{name}``
    :ivar path: the stream path
    """

    def __init__(self, name: str, transport: Transport, schema: Schema):
        self.name = name
        self.path = f"flows/{name}"
        self.transport = transport
        self._schema = schema
        self._writer = Writer(transport, self.path, f"flow-{name}")

    @staticmethod
    def create(name: str) -> "FlowBuilder[Any]":
        """A builder for the flow ``name`` (validated: see :func:`check_name`)."""
        return FlowBuilder(check_name(name, "flow"))

    def _encode(self, events: Iterable) -> list:
        out = []
        for i, event in enumerate(events):
            out.append(self._schema.encode(event, f"flow {self.name!r}: event {i}"))
        return out

    async def append(self, event: T) -> str:
        """Validate ``event`` and append it. :return: the offset after it.

        :raises SchemaError: rejected by the schema (nothing written)
        :raises StreamClosed: the flow is closed
        :raises Unavailable: the server stayed unreachable (it may or may not
            have been written)
        """
        ack = await self._writer.append(self._encode([event]))
        return ack.next_offset

    async def append_many(self, events: Iterable[T]) -> str:
        """Validate every event, then append them all in one request (all or
        none). :return: the offset after the last. An empty list writes nothing."""
        values = self._encode(list(events))
        if not values:
            return (await self.transport.read(self.path, "now")).next_offset
        ack = await self._writer.append(values)
        return ack.next_offset

    async def read(self, from_: str = START) -> AsyncIterator[tuple[str, T]]:
        """``(offset, event)`` from ``from_`` (default: the beginning) up to
        the tail as of each read. Does not wait for new events."""
        offset = from_
        while True:
            batch = await self.transport.read(self.path, offset)
            for pair in pairs(batch, self._decode):
                yield pair
            offset = batch.next_offset
            if batch.up_to_date:
                return

    async def subscribe(self, from_: str = START) -> AsyncIterator[tuple[str, T]]:
        """``(offset, event)`` from ``from_``, then live as events arrive.

        Over HTTP this is SSE; a dropped connection (a server restart, say)
        is resumed from the last offset delivered, for up to the runtime's
        ``retry_for`` per outage. Ends when the flow is closed and every
        event has been delivered. To stop early and release the connection
        at once, iterate inside ``contextlib.aclosing(flow.subscribe())``.
        """
        async with contextlib.aclosing(self.transport.live(self.path, from_)) as batches:
            async for batch in batches:
                for pair in pairs(batch, self._decode):
                    yield pair

    def _decode(self, value):
        return self._schema.decode(value, f"flow {self.name!r}: stored event")

    async def tail(self) -> str:
        """The offset after the last event (read from here to see only new ones)."""
        return (await self.transport.read(self.path, "now")).next_offset

    async def close(self) -> None:
        """Close the flow: no more appends; subscribers end after the last event."""
        await self.transport.close(self.path)

    async def delete(self) -> None:
        """Delete the flow's stream and its events."""
        await self.transport.delete(self.path)

    def __repr__(self) -> str:
        return f"<Flow {self.name} via {self.transport.kind}>"


class FlowBuilder(Generic[T]):
    """``Flow.create(name).schema(...).db(...).build()``; typed by the schema
    (``Flow.create("o").schema(Order)`` builds a ``Flow[Order]``)."""

    def __init__(self, name: str):
        self.name = name
        self._schema = Schema.of(None)
        self._db = None
        self._db_schema = "unbroken"

    def schema(self, spec: "type[S] | Callable[[Any], S]") -> "FlowBuilder[S]":
        """Check events on append and decode them on read: a dataclass, a
        pydantic model, a TypedDict or a validator (see :mod:`.schema`)."""
        self._schema = Schema.of(spec)
        return self  # type: ignore[return-value]

    def db(self, dsn_or_pool, *, schema: str = "unbroken") -> "FlowBuilder[T]":
        """Keep this flow in PostgreSQL (a URL, or a psycopg pool whose
        ``conninfo`` is used) instead of the streams server. Several
        processes with the same DSN share the flow, live reads included.
        Needs the ``unbroken[postgres]`` extra."""
        if dsn_or_pool is None:
            raise OnePipeError(".db() needs a PostgreSQL URL or pool")
        self._db = dsn_or_pool
        self._db_schema = schema
        return self

    async def build(self, rt: Runtime | None = None) -> Flow[T]:
        """Create ``flows/{name}`` if needed (idempotent) and return the flow.

        :param rt: the runtime (default: the current one)
        """
        rt = resolve_runtime(rt)
        transport = rt.transport
        if self._db is not None:
            transport = await rt.db_transport(self._db, self._db_schema)
        flow = Flow(self.name, transport, self._schema)
        await transport.ensure(flow.path)
        return flow
