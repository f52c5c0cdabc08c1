"""The server's own request and response values: handlers never see h11 or sockets.

A handler is ``async def handler(ctx, request) -> Response | StreamingResponse``;
tests call handlers with these values directly, the connection loop
(:mod:`.connection`) translates them to and from h11 events.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import parse_qsl

from .headers import HeaderError


@dataclass(frozen=True)
class Request:
    """One HTTP request, head and whole body.

    :ivar path: the raw (still percent-encoded) path, without the query
    :ivar query: every ``(name, value)`` pair, decoded, in order
    :ivar headers: lower-cased names, values as str (latin-1), in order
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    scheme: str = "http"

    def header(self, name: str) -> str | None:
        """The value of a header sent once, or None.

        :raises HeaderError: the header was sent more than once
        """
        values = [v for k, v in self.headers if k == name]
        if len(values) > 1:
            raise HeaderError(f"{name} sent more than once")
        return values[0] if values else None

    def param(self, name: str) -> str | None:
        """A query parameter sent at most once, or None.

        :raises HeaderError: sent more than once
        """
        values = [v for k, v in self.query if k == name]
        if len(values) > 1:
            raise HeaderError(f"query parameter {name!r} given more than once")
        return values[0] if values else None

    @classmethod
    def from_target(cls, method: str, target: str, headers=(), body: bytes = b"",
                    scheme: str = "http") -> "Request":
        """Build from a request target such as ``/v1/stream/a?offset=-1``."""
        path, _, qs = target.partition("?")
        query = tuple(parse_qsl(qs, keep_blank_values=True)) if qs else ()
        return cls(method, path, query, tuple(headers), body, scheme)


@dataclass(frozen=True)
class Response:
    """A complete response; ``body`` may be a memoryview (sent without a copy)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | memoryview = b""


@dataclass(frozen=True)
class StreamingResponse:
    """A response whose body is produced over time (SSE): each chunk is sent
    as it comes; the connection closes when a send stalls past its timeout."""

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
