"""Routing: ``(method, path)`` to a handler, ``/health``, CORS preflight, and
the reserved ``__ds`` prefix; stream paths decoded strictly.
"""
from __future__ import annotations

import json
import time

from unbroken_engine import __version__

from . import cors
from .context import ServerContext
from .errors import text_response
from .handlers import handle_append, handle_create, handle_delete, handle_head, handle_read
from .headers import STREAM_PREFIX, stream_path
from .http import Request, Response

RESERVED_PREFIX = "__ds"


async def handle(ctx: ServerContext, req: Request):
    """Route a request to its handler; errors become responses in :mod:`.errors`."""
    if req.method == "OPTIONS":
        return Response(204, [*cors.COMMON, cors.PREFLIGHT_MAX_AGE])
    if req.path == "/health":
        if req.method in ("GET", "HEAD"):
            return health(ctx, req)
        return _method_not_allowed("GET, HEAD, OPTIONS")
    if not req.path.startswith(STREAM_PREFIX):
        return text_response(404, "not found: streams live under /v1/stream/{path}")
    path = stream_path(req.path[len(STREAM_PREFIX):])
    if path.startswith(RESERVED_PREFIX):
        return text_response(404, f"paths starting with {RESERVED_PREFIX} are reserved")
    handler = _HANDLERS.get(req.method)
    if handler is None:
        return _method_not_allowed("GET, HEAD, PUT, POST, DELETE, OPTIONS")
    return await handler(ctx, req, path)


def _method_not_allowed(allow: str) -> Response:
    return text_response(405, "method not allowed", [("Allow", allow)])


def health(ctx: ServerContext, req: Request) -> Response:
    """``GET /health``: status, store kind, uptime, version, and the load:
    open connections, live readers (and how many of them are parked, waiting
    for data), request-body bytes in flight, and how many of each were
    refused since start-up."""
    body = json.dumps({"status": "shutting-down" if ctx.shutting_down else "ok",
                       "store": ctx.store.kind,
                       "uptime": round(time.monotonic() - ctx.started, 3),
                       "version": __version__,
                       "connections": ctx.connections,
                       "live_readers": ctx.live_readers,
                       "parked_readers": ctx.store.waiting(),
                       "inflight_bytes": ctx.inflight_bytes,
                       "refused": {"connections": ctx.refused_connections,
                                   "live_readers": ctx.refused_live_readers,
                                   "bodies": ctx.refused_bodies}}).encode()
    return Response(200, [*cors.COMMON, cors.NO_STORE, ("Content-Type", "application/json")],
                    b"" if req.method == "HEAD" else body)


_HANDLERS = {
    "PUT": handle_create,
    "POST": handle_append,
    "GET": handle_read,
    "HEAD": handle_head,
    "DELETE": handle_delete,
}
