"""One table from engine exceptions to HTTP responses.

Every exception a client can cause carries ``status_hint`` (see
:mod:`unbroken_engine.errors`); the few that need extra headers get them here.
Anything else is a 500 with a generic body: no traceback reaches a client.
"""
from __future__ import annotations

import errno
import logging

from unbroken_engine import errors as e
from unbroken_engine.protocol.offsets import format_offset

from . import cors
from . import headers as h
from .http import Response

log = logging.getLogger("unbroken.server")


def _extra_headers(exc: Exception) -> list[tuple[str, str]]:
    if isinstance(exc, e.StreamClosed):
        return [(h.STREAM_CLOSED, "true"),
                (h.STREAM_NEXT_OFFSET, format_offset(exc.next_offset))]
    if isinstance(exc, e.StaleEpoch):
        return [(h.PRODUCER_EPOCH, str(exc.current_epoch))]
    if isinstance(exc, e.BackendUnavailable):
        return [("Retry-After", "1")]
    if isinstance(exc, e.ProducerSeqGap):
        return [(h.PRODUCER_EXPECTED_SEQ, str(exc.expected)),
                (h.PRODUCER_RECEIVED_SEQ, str(exc.received))]
    return []


def error_response(exc: Exception) -> Response:
    """The response for an exception raised while handling a request."""
    status = getattr(exc, "status_hint", 500)
    if status == 500 and isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # a full disk the engine did not wrap in StorageFull is still a full disk
        exc = e.StorageFull(exc.errno, f"storage full: {exc.strerror or exc}")
        status = exc.status_hint
    if status >= 500:
        if isinstance(exc, e.CorruptSegment):
            # the operator gets the file and the byte; the client the reason only
            log.error("unbroken: damaged data: %s", exc)
            message = (f"the stream's stored data is damaged ({exc.reason}); none of it "
                       "is served; the operator can check it with `unbroken verify`")
        elif isinstance(exc, e.BackendUnavailable):
            log.warning("unbroken: %s", exc)  # one line: an outage is not a bug
            message = str(exc)
        elif isinstance(exc, (e.StorageFull, e.StorageIOError, e.LogClosedError)):
            message = str(exc)
        else:
            log.exception("internal error", exc_info=exc)
            message = "internal server error"
    else:
        message = str(exc)
    return text_response(status, message, _extra_headers(exc))


def text_response(status: int, message: str, extra=()) -> Response:
    """A short plain-text response (errors, health)."""
    body = (message.strip() + "\n").encode("utf-8", "replace") if message else b""
    return Response(status, [*cors.COMMON, ("Content-Type", "text/plain; charset=utf-8"),
                             *extra], body)
