"""The StreamStore contract: PART A of the conformance rule book, once, for every store.

One file per section of docs/conformance-rules.md (test_offsets.py: A1,
test_create.py: A2, test_append.py: A3, test_producers.py: A4,
test_close.py: A5, test_reads.py: A6, test_wait.py: A7, test_ttl.py: A8,
test_delete.py: A9, test_forks.py: A10), then test_listing.py
(list_streams, has, current_offset), test_read_last.py (an extension,
docs/protocol-choices.md) and test_restart.py (the file-backed store only:
it closes a store and opens a new one on the same directory).

Each test taking ``store`` runs against every kind of
:data:`support.stores.STORE_KINDS` (and on both anyio backends; the shared
stores on asyncio only, skipped with the reason without their server).
``Lnnnn`` in a docstring is the line of the conformance test
(``@durable-streams/server-conformance-tests`` ``src/index.ts``) that pins the
rule; ``A<n>.<m>`` is the section of docs/conformance-rules.md.

Time is a :class:`~support.stores.FakeClock` handed to the store
(``clock=``): TTL tests advance it instead of sleeping. ``wait_for_messages``
tests act once the waiter is parked (``store.waiting``), never after a sleep;
the only real wait is the timeout test's 50 ms.

The helpers the tests are written in (``create``, ``append``, ``body``, ...)
are in tests/support/contract.py.
"""
from __future__ import annotations

import time

import pytest

from support.stores import (
    STORE_KINDS,
    FakeClock,
    close_test_store,
    file_config,
    open_test_store,
    skip_unless_runs_on,
)
from unbroken_engine.log.segmented import Durability
from unbroken_engine.stores.file import FileBackedStreamStore


@pytest.fixture
def clock():
    # starts at the real time: the file store's recovery compares its clock
    # with segment mtimes (the last write it can prove, for sliding TTLs)
    return FakeClock(float(int(time.time())))


@pytest.fixture(params=list(STORE_KINDS))
async def store(request, tmp_path, clock, anyio_backend):
    """A fresh, empty store owned by the test's event loop; closed afterwards."""
    skip_unless_runs_on(request.param, anyio_backend)
    s = await open_test_store(request.param, tmp_path, clock)
    try:
        yield s
    finally:
        await close_test_store(s)  # a shared backend outlives the test: leave it clean


@pytest.fixture(params=[Durability.ALWAYS, Durability.NEVER], ids=["always", "never"])
def open_file_store(request, tmp_path, clock, anyio_backend):
    """Opens a FileBackedStreamStore on one data directory, as often as called."""
    config = file_config(request.param)
    return lambda: FileBackedStreamStore(tmp_path / "data", config, clock=clock)
