"""What the application side raises. Every class derives from :class:`OnePipeError`."""
from __future__ import annotations

__all__ = ["OnePipeError", "SchemaError", "NotFound", "StreamClosed", "SeqConflict",
           "ProducerFenced", "Unavailable", "NoRuntime", "CallFailed", "DataDirInUse"]


class OnePipeError(Exception):
    """Base class of every error of :mod:`unbroken_server.onepipe`."""


class SchemaError(OnePipeError, ValueError):
    """An event (or a signal value, or a call's arguments) does not fit its
    schema or is not JSON; nothing was written."""


class NotFound(OnePipeError, LookupError):
    """The stream does not exist (it was deleted, or expired)."""


class StreamClosed(OnePipeError):
    """The flow is closed: it takes no more appends."""


class SeqConflict(OnePipeError):
    """Another writer got there first (``Stream-Seq`` was not greater than
    the last one): re-read and try again. :meth:`Signal.update` does this
    for you."""


class ProducerFenced(OnePipeError):
    """The server refused this writer's producer epoch or sequence: another
    writer with the same producer id took over."""


class Unavailable(OnePipeError, ConnectionError):
    """The streams server (or backend) could not be reached, or kept
    answering 503, for longer than the runtime's ``retry_for``. An append
    that raised this may or may not have been written."""


class DataDirInUse(OnePipeError, OSError):
    """The data directory is open in another store (an Unbroken server, or
    another process's in-process runtime): connect to that server instead."""

    def __str__(self):  # OSError would format its args
        return self.args[0]


class NoRuntime(OnePipeError, RuntimeError):
    """``build()`` was called without a runtime and none is current: open
    one with ``async with connect() as rt:``."""


class CallFailed(OnePipeError):
    """A replayed or inspected channel call ended with an error; ``call`` is
    the :class:`~unbroken_server.onepipe.CallRecord`."""

    def __init__(self, message: str, call=None):
        super().__init__(message)
        self.call = call
