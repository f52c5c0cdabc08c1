"""Channel: calls to a handler, each recorded durably (``channels/{name}/calls``).

::

    email = await Channel.create("email").handler(send_email).build()
    await email.call(to="a@example.com", subject="Hi")   # runs send_email
    for c in await email.calls(status="unfinished"):    # crashed half-way
        await email.replay(c)

Every call writes two records: before the handler runs,
``{"kind": "call", "id", "args", "kwargs", "caller", "at"}``; after it,
``{"kind": "result", "id", "ok", "result" | "error", "at", "seconds"}``. A
call whose process died while the handler ran has the first and not the
second: :meth:`Channel.calls` reports it as ``"unfinished"``. Replaying a call
runs the handler again with the recorded arguments, as a new call that names
the old one in ``replay_of``. Both records are written exactly once
(idempotent producer headers), whatever the retries.
"""
from __future__ import annotations

import inspect
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CallFailed, OnePipeError, SchemaError
from .flow import Writer, check_name
from .runtime import Runtime, resolve_runtime
from .schema import check_json
from .transport import Transport

log = logging.getLogger("unbroken.onepipe")

__all__ = ["Channel", "ChannelBuilder", "CallRecord"]

STATUSES = ("ok", "error", "unfinished", "running")


@dataclass
class CallRecord:
    """One call of a channel, as recorded.

    :ivar status: ``"ok"``, ``"error"``, ``"running"`` (its handler runs in
        this runtime now) or ``"unfinished"`` (started, no outcome recorded:
        running elsewhere, or its process died half-way)
    :ivar error: ``{"type": ..., "message": ...}`` when the handler raised
    :ivar replay_of: the id of the call this one replays
    :ivar offset: read the calls stream from here to see later calls
    """

    id: str
    args: list
    kwargs: dict
    caller: str
    started_at: float
    status: str = "unfinished"
    result: Any = None
    error: dict | None = None
    finished_at: float | None = None
    seconds: float | None = None
    replay_of: str | None = None
    offset: str | None = None
    extra: dict = field(default_factory=dict, repr=False)


class Channel:
    """A built channel (see the module doc). Make one with :meth:`Channel.create`."""

    def __init__(self, name: str, transport: Transport, handler: Callable | None,
                 instance: str):
        self.name = name
        self.path = f"channels/{name}/calls"
        self.transport = transport
        self._handler = handler
        self._instance = instance
        self._writer = Writer(transport, self.path, f"channel-{name}")
        self._running: set[str] = set()

    @staticmethod
    def create(name: str) -> "ChannelBuilder":
        """A builder for the channel ``name``."""
        return ChannelBuilder(check_name(name, "channel"))

    def handler(self, fn: Callable) -> Callable:
        """Set (or replace) the handler; usable as a decorator."""
        self._handler = fn
        return fn

    async def call(self, *args, **kwargs) -> Any:
        """Record the call, run the handler, record its outcome, and return
        its result (or raise what it raised).

        :raises SchemaError: an argument is not JSON (nothing recorded)
        """
        return await self._call(self._instance, list(args), kwargs, None)

    async def call_as(self, caller: str, *args, **kwargs) -> Any:
        """:meth:`call`, recording ``caller`` as who called."""
        return await self._call(str(caller), list(args), kwargs, None)

    async def _call(self, caller: str, args: list, kwargs: dict, replay_of: str | None):
        if self._handler is None:
            raise OnePipeError(f"channel {self.name!r} has no handler: set one with "
                               f".handler(fn)")
        check_json(args, f"channel {self.name!r}: positional arguments")
        check_json(kwargs, f"channel {self.name!r}: keyword arguments")
        cid = uuid.uuid4().hex
        record = {"kind": "call", "id": cid, "args": args, "kwargs": kwargs, "caller": caller,
                  "at": time.time()}
        if replay_of is not None:
            record["replay_of"] = replay_of
        await self._writer.append([record])
        self._running.add(cid)
        started = time.monotonic()
        try:
            result = self._handler(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            await self._finish(cid, started, {"ok": False, "error": {
                "type": type(exc).__name__, "message": str(exc)[:2000]}})
            raise
        else:
            outcome: dict = {"ok": True, "result": result}
            try:
                check_json(result, "result")
            except SchemaError:
                outcome = {"ok": True, "result": None, "result_repr": repr(result)[:2000]}
            await self._finish(cid, started, outcome)
            return result
        finally:
            self._running.discard(cid)

    async def _finish(self, cid: str, started: float, outcome: dict) -> None:
        record = {"kind": "result", "id": cid, **outcome, "at": time.time(),
                  "seconds": round(time.monotonic() - started, 6)}
        try:
            await self._writer.append([record])
        except OnePipeError as exc:  # Unavailable included
            # The handler ran; only its record is missing: the call stays
            # visible as unfinished, which is what a crash here would leave.
            log.warning("channel %s: could not record the outcome of call %s: %s",
                        self.name, cid, exc)

    async def calls(self, *, status: str | None = None) -> list[CallRecord]:
        """Every recorded call, oldest first (optionally only those with ``status``)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        found: dict[str, CallRecord] = {}
        offset = "-1"
        while True:
            batch = await self.transport.read(self.path, offset)
            for rec in batch.values:
                self._apply(found, rec, batch.next_offset)
            offset = batch.next_offset
            if batch.up_to_date:
                break
        for c in found.values():
            if c.status == "unfinished" and c.id in self._running:
                c.status = "running"
        out = list(found.values())
        return out if status is None else [c for c in out if c.status == status]

    @staticmethod
    def _apply(found: dict, rec, offset: str) -> None:
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            return  # not a channel record: ignored
        if rec.get("kind") == "call":
            found[rec["id"]] = CallRecord(
                rec["id"], rec.get("args", []), rec.get("kwargs", {}), rec.get("caller", ""),
                rec.get("at", 0.0), replay_of=rec.get("replay_of"), offset=offset)
        elif rec.get("kind") == "result" and rec["id"] in found:
            c = found[rec["id"]]
            c.status = "ok" if rec.get("ok") else "error"
            c.result = rec.get("result")
            c.error = rec.get("error")
            c.finished_at = rec.get("at")
            c.seconds = rec.get("seconds")
            if "result_repr" in rec:
                c.extra["result_repr"] = rec["result_repr"]

    async def get_call(self, call_id: str) -> CallRecord:
        """The call with this id. :raises KeyError: no such call."""
        for c in await self.calls():
            if c.id == call_id:
                return c
        raise KeyError(f"channel {self.name!r} has no call {call_id!r}")

    async def replay(self, call: CallRecord | str) -> Any:
        """Run the handler again with a recorded call's arguments, recorded
        as a new call (``replay_of`` = the old id). :return: its result."""
        if isinstance(call, str):
            call = await self.get_call(call)
        return await self._call(self._instance, list(call.args), dict(call.kwargs), call.id)

    async def result_of(self, call: CallRecord | str) -> Any:
        """A finished call's recorded result. :raises CallFailed: it failed
        or has not finished."""
        if isinstance(call, str):
            call = await self.get_call(call)
        if call.status != "ok":
            raise CallFailed(f"call {call.id} of channel {self.name!r} is {call.status}"
                             + (f": {call.error}" if call.error else ""), call)
        return call.result

    def __repr__(self) -> str:
        return f"<Channel {self.name} via {self.transport.kind}>"


class ChannelBuilder:
    """``Channel.create(name).handler(fn).build()``."""

    def __init__(self, name: str):
        self.name = name
        self._handler = None

    def handler(self, fn: Callable) -> "ChannelBuilder":
        """The function (sync or async) each call runs."""
        self._handler = fn
        return self

    async def build(self, rt: Runtime | None = None) -> Channel:
        """Create ``channels/{name}/calls`` if needed and return the channel."""
        rt = resolve_runtime(rt)
        ch = Channel(self.name, rt.transport, self._handler, rt.instance)
        await rt.transport.ensure(ch.path)
        return ch
