"""A tiny shop on OnePipe: an ``orders`` flow, an ``email`` channel and an
``express-shipping`` feature flag, all kept in Unbroken streams.

Run it (after ``pip install -e .``), from any directory -- the data goes to
``.onepipe/streams/`` under the current directory, so a second run sees the
first run's orders::

    python examples/shop/app.py                                   # embedded server (default)
    ONEPIPE_STREAMS_MODE=inprocess python examples/shop/app.py    # in-process store, no HTTP
    ONEPIPE_STREAMS_URL=http://127.0.0.1:9999 python examples/shop/app.py
                                             # a running `unbroken serve` (remote mode)

The embedded server listens on ``ONEPIPE_STREAMS_PORT`` (default 9999).
"""
from __future__ import annotations

import uuid
from contextlib import aclosing
from dataclasses import dataclass

import anyio

from unbroken_server.onepipe import Channel, Flow, SchemaError, Signal, connect

ORDERS_PER_RUN = 3


@dataclass
class OrderPlaced:
    """The event of the ``orders`` flow. ``__post_init__`` is the schema's
    own check: it runs on append (a rejected event is never written) and on read."""

    order_id: str
    customer: str
    items: list[str]
    total: float

    def __post_init__(self) -> None:
        if "@" not in self.customer:
            raise ValueError(f"customer must be an email address, not {self.customer!r}")
        if not self.items:
            raise ValueError("an order needs at least one item")
        if not isinstance(self.total, (int, float)) or self.total <= 0:
            raise ValueError(f"total must be a positive number, not {self.total!r}")


def send_email(to: str, subject: str, shipping: str) -> str:
    """The ``email`` channel's handler: a stand-in for a mail API."""
    print(f"  [email]    to {to}: {subject!r} ({shipping} shipping)")
    return f"msg-{uuid.uuid4().hex[:8]}"


async def produce(orders: Flow[OrderPlaced], run: str) -> None:
    """Place this run's orders: one with append(), then two in one append_many()."""
    first = OrderPlaced(f"{run}-1", "ada@example.com", ["keyboard"], 49.90)
    await orders.append(first)
    print(f"  [producer] placed {first.order_id}")
    await anyio.sleep(0.05)  # let the consumer react live before the batch arrives
    batch = [OrderPlaced(f"{run}-2", "grace@example.com", ["mouse", "pad"], 25.00),
             OrderPlaced(f"{run}-3", "linus@example.com", ["monitor"], 189.00)]
    await orders.append_many(batch)
    print(f"  [producer] placed {', '.join(o.order_id for o in batch)} (one batch)")


async def consume(orders: Flow[OrderPlaced], email: Channel, express: Signal[bool],
                  start: str) -> None:
    """React to each new order with a confirmation email.

    It subscribes from ``start``, the flow's tail when this run began, so it
    handles only this run's orders however many earlier runs left in the
    flow (a real service would save each handled offset and resume from it).
    ``aclosing`` ends the live subscription cleanly when we stop early.
    """
    handled = 0
    async with aclosing(orders.subscribe(from_=start)) as events:
        async for _offset, order in events:
            shipping = "express" if await express.get() else "standard"
            print(f"  [consumer] {order.order_id}: {len(order.items)} item(s), "
                  f"{order.total:.2f} for {order.customer}")
            await email.call(to=order.customer, subject=f"Order {order.order_id} confirmed",
                             shipping=shipping)
            handled += 1
            if handled == ORDERS_PER_RUN:
                return


async def watch_flag(express: Signal[bool], *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """Report the flag's next change (from this process or any other)."""
    async with aclosing(express.watch()) as values:
        task_status.started(await anext(values))  # the first value is the current one
        async for on in values:
            print(f"  [watch]    express-shipping changed to {on}")
            return


async def main() -> None:
    async with connect() as rt:
        joined = " (joined the server already on that port)" if rt.joined else ""
        print(f"OnePipe runtime: {rt.mode} ({rt.url or rt.data_dir}){joined}")
        orders: Flow[OrderPlaced] = await Flow.create("orders").schema(OrderPlaced).build()
        email = await Channel.create("email").handler(send_email).build()
        express: Signal[bool] = await Signal.create("express-shipping", default=False).build()

        # 1. History: what earlier runs left in the flow.
        earlier = [order async for _offset, order in orders.read()]
        print(f"orders history: {len(earlier)} earlier order(s)")

        # 2. The schema rejects a bad order before anything is written.
        tail = await orders.tail()
        try:
            await orders.append({"order_id": "bad-1", "customer": "nobody", "items": [],
                                 "total": -1})
        except SchemaError as exc:
            print(f"schema error (nothing written: {await orders.tail() == tail}): {exc}")

        # 3. The feature flag: read it, flip it with update(), watch the change arrive.
        print(f"express-shipping is {await express.get()}")
        async with anyio.create_task_group() as tg:
            await tg.start(watch_flag, express)
            flipped = await express.update(lambda on: not on)
            print(f"express-shipping set to {flipped} with update()")

        # 4. Orders: a live consumer (from the current tail) and a producer.
        print(f"placing {ORDERS_PER_RUN} orders:")
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, orders, email, express, tail)
            tg.start_soon(produce, orders, uuid.uuid4().hex[:6])

        # 5. The email channel recorded every call durably, with its outcome.
        calls = await email.calls()
        mine = [c for c in calls if c.caller == rt.instance]
        print(f"email calls: {len(calls)} recorded in all, {len(mine)} from this run, "
              f"{len(await email.calls(status='unfinished'))} unfinished")
        for c in mine:
            print(f"  {c.status:<5} caller={c.caller} args={c.args} kwargs={c.kwargs}")
        total = len([o async for _offset, o in orders.read()])
        print(f"orders history now: {total} order(s); done")


if __name__ == "__main__":
    anyio.run(main)
