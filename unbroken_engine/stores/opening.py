"""Opening a store by URL: the one factory the CLI and the OnePipe runtime use.

The shared stores' drivers are optional extras, so each is imported only
when its URL is opened (and a missing one is a :class:`MissingExtra` naming
the extra to install).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable

from .. import errors

if TYPE_CHECKING:
    from .shared.store import SharedStreamStore


def open_store(url: str, **kw) -> Awaitable[SharedStreamStore]:
    """Open the shared store a URL names: ``redis://`` / ``rediss://`` /
    ``unix://`` (Redis) or ``postgresql://`` / ``postgres://`` (PostgreSQL).

    :raises InvalidArgument: another scheme
    :raises MissingExtra: the backend's driver is not installed
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from .shared.redis import RedisStreamStore
        return RedisStreamStore.open(url, **kw)
    if scheme in ("postgresql", "postgres"):
        from .shared.postgres import PostgresStreamStore
        return PostgresStreamStore.open(url, **kw)
    raise errors.InvalidArgument(f"no shared store for {scheme!r} URLs "
                                 "(redis://... or postgresql://...)")
