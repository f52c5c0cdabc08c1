"""Helpers of the store contract suite (tests/engine/contract/).

Owns the short forms its tests are written in (:func:`create`,
:func:`append`, :func:`body`, :func:`jbody`, :func:`read_pages`, :func:`P`,
the content types), the paths that look alike on disk, and the checks more
than one section uses (:func:`last`: ``read_last`` against the default
implementation; :func:`count_record_reads`). The fixtures (``store``,
``clock``, ``open_file_store``) are in tests/engine/contract/conftest.py.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from unbroken_engine.log import layout
from unbroken_engine.log.memory import MemoryLog
from unbroken_engine.log.segmented import SegmentedLog
from unbroken_engine.protocol.media import DEFAULT_CONTENT_TYPE
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.base import BaseStreamStore
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer, StreamStore

ACCEPTED = ProducerOutcome.ACCEPTED
DUPLICATE = ProducerOutcome.DUPLICATE
BIN = DEFAULT_CONTENT_TYPE
TEXT = "text/plain"
JSON = "application/json"

#: distinct paths that a naive on-disk encoding would confuse
LOOKALIKE_PATHS = ["a/b", "a%2Fb", "a%252Fb", "a_b", "a-b", "A/b", "a.b", ".a", ".tmp-x",
                   ".trash-y", "\u00e9", "%C3%A9", "a b", "a~b", "v1/stream/x"]


async def create(store, path, **kw):
    return await store.create(path, CreateOptions(**kw))


async def append(store, path, data, **kw):
    return await store.append(path, data, AppendOptions(**kw))


async def body(store, path, offset=None, **kw) -> bytes:
    return bytes((await store.read(path, offset, **kw)).data)


async def jbody(store, path, offset=None):
    return json.loads(await body(store, path, offset))


async def read_pages(store, path, offset=None, max_bytes=1 << 20):
    """Follow next_offset until up to date. :return: list of ReadResults."""
    pages = []
    while True:
        r = await store.read(path, offset, max_bytes=max_bytes)
        pages.append(r)
        if r.up_to_date:
            return pages
        assert r.next_offset > (offset if isinstance(offset, int) else -1)
        offset = r.next_offset


def P(epoch=0, seq=0, id="p"):
    return Producer(id, epoch, seq)


def folder_of(store, path):
    """The stream's directory for a file store, else None."""
    if isinstance(store, FileBackedStreamStore):
        return store.data_dir / layout.stream_dir_name(path)
    return None


def utc_in(clock, seconds):
    return datetime.fromtimestamp(clock.now + seconds, tz=timezone.utc)


async def last(store, path):
    """``store.read_last(path)``, checked against the default implementation
    of :class:`StreamStore` (which pages through the whole stream with plain
    reads): the fast path of each store must agree with it."""
    got = await store.read_last(path)
    assert await StreamStore.read_last(store, path) == got, path
    return got


def count_record_reads(store, monkeypatch) -> list:
    """From now on, the offsets of the records ``store`` takes from its logs
    (or its backend) are appended to the returned list."""
    seen: list = []
    if isinstance(store, BaseStreamStore):
        for cls in (SegmentedLog, MemoryLog):
            def counting(self, offset=None, _orig=cls.records):
                for rec in _orig(self, offset):
                    seen.append(rec.offset)
                    yield rec
            monkeypatch.setattr(cls, "records", counting)
    else:
        orig = store._b.records

        async def counting_backend(rid, lo, hi, limit):
            recs = await orig(rid, lo, hi, limit)
            seen.extend(r.offset for r in recs)
            return recs
        monkeypatch.setattr(store._b, "records", counting_backend)
    return seen
