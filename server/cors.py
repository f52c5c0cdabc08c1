"""Headers every response carries (CORS, browser security) and the caching
policy, in one place. See docs/protocol-choices.md for the reasons."""
from __future__ import annotations

from . import headers as h

ALLOW_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
ALLOW_HEADERS = ", ".join([
    "Content-Type", "Authorization", "If-None-Match", "Last-Event-ID", "Accept",
    h.STREAM_SEQ, h.STREAM_TTL, h.STREAM_EXPIRES_AT, h.STREAM_CLOSED,
    h.PRODUCER_ID, h.PRODUCER_EPOCH, h.PRODUCER_SEQ,
    h.STREAM_FORKED_FROM, h.STREAM_FORK_OFFSET, h.STREAM_FORK_SUB_OFFSET])
EXPOSE_HEADERS = ", ".join([
    h.STREAM_NEXT_OFFSET, h.STREAM_CURSOR, h.STREAM_UP_TO_DATE, h.STREAM_CLOSED,
    h.STREAM_TTL, h.STREAM_EXPIRES_AT, h.STREAM_SSE_DATA_ENCODING,
    h.STREAM_READ, h.STREAM_LAST_OFFSET,
    h.PRODUCER_EPOCH, h.PRODUCER_SEQ, h.PRODUCER_EXPECTED_SEQ, h.PRODUCER_RECEIVED_SEQ,
    "ETag", "Content-Type", "Content-Encoding", "Vary", "Location", "Retry-After"])

#: on every response, errors and SSE included
COMMON = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", ALLOW_METHODS),
    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
    ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Resource-Policy", "cross-origin"),
]

NO_STORE = ("Cache-Control", "no-store")
NO_CACHE = ("Cache-Control", "no-cache")
#: a chunk that does not reach the tail never changes: caches may keep it
IMMUTABLE_CHUNK = ("Cache-Control", "public, max-age=60, stale-while-revalidate=300")
PREFLIGHT_MAX_AGE = ("Access-Control-Max-Age", "86400")
