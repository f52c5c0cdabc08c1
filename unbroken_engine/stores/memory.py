"""MemoryStreamStore: the protocol with every stream in memory.

For tests, development and as the reference the stateful model test compares
the file store against. Nothing survives the process; offsets are the same as
the file store's for the same appends (see :mod:`.memory_log`).
"""
from __future__ import annotations

import time

from ..log.memory import MemoryLog
from .base import BaseStreamStore


class MemoryStreamStore(BaseStreamStore):
    """Streams in memory. Call its coroutines from one event loop."""

    kind = "memory"

    def __init__(self, *, clock=time.time):
        super().__init__(clock=clock)

    async def _build(self, path, content_type, base_offset, records, meta):
        log = MemoryLog(base_offset)
        for payload, attrs, kind, count in records:
            log.write(payload, attrs, kind, count)
        return log, None
