"""Holding a log's async flush back without replacing any of the log.

Owns :class:`WorkerThreadsHeld`: the log's async flush runs in a worker
thread, so holding every token of anyio's default worker-thread limiter
keeps its first flush from starting until the test lets go -- how the tests
of group commit and of failed shared flushes see every append written first.
"""
from __future__ import annotations

import anyio
import anyio.to_thread


class WorkerThreadsHeld:
    """Every token of anyio's default worker-thread limiter, held: a task
    that wants a worker thread -- the log's async flush runs in one -- waits
    until :meth:`release`. Nothing of the log is replaced; its first flush is
    just not started until the test has seen every append written."""

    async def hold(self) -> "WorkerThreadsHeld":
        self.limiter = anyio.to_thread.current_default_thread_limiter()
        self.borrowers = [object() for _ in range(int(self.limiter.total_tokens))]
        for b in self.borrowers:
            await self.limiter.acquire_on_behalf_of(b)
        return self

    def release(self) -> None:
        for b in self.borrowers:
            self.limiter.release_on_behalf_of(b)
        self.borrowers = []
