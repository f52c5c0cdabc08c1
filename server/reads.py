"""Read responses: the headers and body of a catch-up read (also a long-poll
that found data), its ``ETag`` and ``304``, cache policy and gzip.

Shared by :mod:`.handlers` (catch-up) and :mod:`.live` (long-poll), so
neither imports the other for it.
"""
from __future__ import annotations

import gzip

import xxhash

from unbroken_engine.protocol.offsets import format_offset

from . import cors
from . import headers as h
from .http import Request, Response

#: bodies at least this long are gzipped for clients that accept it
GZIP_MIN = 1024


def etag(path: str, start: str, r) -> str:
    """An ETag for a read: the path, where it started, where it ended, closed."""
    key = f"{path}\0{start}\0{r.next_offset}\0{int(r.closed)}".encode("utf-8", "surrogatepass")
    return f'"{xxhash.xxh3_64_hexdigest(key)}"'


def _matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or tag in candidates or f"W/{tag}" in candidates


def read_response(req: Request, path: str, raw_offset: str | None, r, *, status: int = 200,
                  cache=None, extra=()) -> Response:
    """Headers and body of a read (catch-up and long-poll with data)."""
    headers = [*cors.COMMON, ("Content-Type", r.content_type),
               (h.STREAM_NEXT_OFFSET, format_offset(r.next_offset)), *extra]
    if r.up_to_date:
        headers.append((h.STREAM_UP_TO_DATE, "true"))
    if r.closed:
        headers.append((h.STREAM_CLOSED, "true"))
    if raw_offset != "now":
        tag = etag(path, raw_offset or "-1", r)
        headers.append(("ETag", tag))
        if _matches(req.header("if-none-match"), tag):
            return Response(304, [*cors.COMMON, ("ETag", tag)])
    headers.append(cache or (cors.NO_CACHE if r.up_to_date else cors.IMMUTABLE_CHUNK))
    body = r.data
    if len(body) >= GZIP_MIN and accepts_gzip(req.header("accept-encoding")):
        body = gzip.compress(body, compresslevel=1)
        headers = [(k, v[:-1] + '-gz"' if k == "ETag" else v) for k, v in headers]
        headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
    return Response(status, headers, body)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` does not)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False
