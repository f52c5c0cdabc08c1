"""OnePipe's application side for Python: flows, channels and signals.

Applications declare *flows* (event streams), *channels* (calls recorded
durably) and *signals* (persisted values); the runtime keeps them in Unbroken
streams -- ``flows/{name}``, ``channels/{name}/calls``, ``signals/{name}`` --
in this process, through an embedded server it starts, or on a remote server
(see :mod:`.runtime`)::

    from unbroken_server.onepipe import Channel, Flow, Signal, connect

    async with connect() as rt:
        orders = await Flow.create("orders").schema(Order).build()
        await orders.append(Order(id=1, total=9.5))
        async for offset, order in orders.read():
            ...
        flag = await Signal.create("new-checkout", default=False).build()
        await flag.set(True)

Async first; :mod:`.sync` is the blocking facade. Errors are in :mod:`.errors`.
"""
from .channel import CallRecord, Channel
from .errors import (
    CallFailed,
    DataDirInUse,
    NoRuntime,
    NotFound,
    OnePipeError,
    ProducerFenced,
    SchemaError,
    SeqConflict,
    StreamClosed,
    Unavailable,
)
from .flow import Flow
from .runtime import Runtime, connect, current_runtime
from .schema import Schema
from .signal import Signal, SignalState

__all__ = ["Flow", "Channel", "Signal", "connect", "Runtime", "current_runtime", "Schema",
           "SignalState", "CallRecord", "OnePipeError", "SchemaError", "NotFound",
           "StreamClosed", "SeqConflict", "ProducerFenced", "Unavailable", "NoRuntime",
           "CallFailed", "DataDirInUse"]
