"""Content types: how streams compare them and which ones get JSON semantics.

A stream keeps the content type it was created with, verbatim (it is echoed on
reads). Comparisons -- an append's type against the stream's, an idempotent
create's against the existing one -- use the *media type*: the part before
``;``, trimmed and lower-cased, so ``APPLICATION/JSON`` matches
``application/json; charset=utf-8``.
"""
from __future__ import annotations

#: A stream created without a content type has this one.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def media_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    """Whether a stream of this type has JSON semantics (validate, flatten, arrays)."""
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Whether SSE may carry this type as text (``text/*`` or JSON)."""
    media = media_type(content_type)
    return media.startswith("text/") or media == "application/json"
