"""Durability policies of SegmentedLog and the file store, and appends from
many threads or tasks.

Flushes of a log are counted by wrapping the log's ``_flush`` (the one place a
flush happens). The wrapper also makes each flush slow, as a real disk is:
group commit then has to show up as a behaviour -- appends that arrive during a
flush share the next one -- whatever the speed of the disk the tests run on.

The store tests (at the end) count the real fdatasync calls of the C layer
(``_native._test_sync_count``) and make them fail (``_test_fail_next_sync``):
what a policy promises is which syncs an acknowledgement waits for.
"""
from __future__ import annotations

import json
import threading
import time

import anyio
import pytest

from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer

SLOW_FLUSH = 0.002  # seconds added to every counted flush (a slow disk)


def config(durability, **kw):
    kw.setdefault("segment_size", 16 * 1024)  # small: concurrent appends cross rolls
    kw.setdefault("index_interval", 256)
    return LogConfig(durability=durability, **kw)


class FlushCounter:
    """Replaces ``log._flush``: counts the flushes and makes each one slow."""

    def __init__(self, log, delay=SLOW_FLUSH):
        self.real = log._flush
        self.delay = delay
        self.count = 0
        self.lock = threading.Lock()
        log._flush = self

    def __call__(self):
        with self.lock:
            self.count += 1
        durable = self.real()
        time.sleep(self.delay)
        return durable


def payload(writer: int, i: int) -> bytes:
    return b"w%02d-%05d;" % (writer, i)


def check_log_holds(log, per_writer: dict[int, list[int]]):
    """Every writer's records are in the log, once each, at the offsets the
    appends returned, and in the order each writer appended them."""
    by_end = {}
    for w, offsets in per_writer.items():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), \
            f"writer {w}: offsets not strictly increasing"
        for i, off in enumerate(offsets):
            assert off not in by_end, f"offset {off} returned twice"
            by_end[off] = payload(w, i)
    records = list(log.records())
    assert len(records) == len(by_end)
    assert {r.next_offset: r.payload for r in records} == by_end
    # offsets only grow along the log, and it reads back whole
    assert [r.next_offset for r in records] == sorted(by_end)
    assert bytes(log.read(log.start_offset, 1 << 22).data) == b"".join(
        by_end[k] for k in sorted(by_end))


def run_threads(n, target):
    errors_seen = []

    def guarded(i):
        try:
            target(i)
        except BaseException as e:  # surfaced in the test thread below
            errors_seen.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "appender threads hung"
    if errors_seen:
        raise errors_seen[0]


# ---- ALWAYS ----------------------------------------------------------------------

def test_always_append_returns_only_once_durable(tmp_path):
    with SegmentedLog.open(tmp_path, config(Durability.ALWAYS, segment_size=4096)) as log:
        assert log.durable_offset == log.end_offset == 0
        for i in range(40):  # small and large records: several rolls
            off = log.append(b"x" * (i * 97 % 3000))
            assert log.durable_offset >= off
        off = log.append_batch([b"a" * 1000] * 9)
        assert log.durable_offset >= off == log.end_offset
        assert len(list(tmp_path.glob("*.seg"))) > 3


@pytest.mark.parametrize("mode", ["append under ALWAYS", "write + sync_to under NEVER"])
def test_group_commit_threads(tmp_path, mode):
    """16 threads x 50 appends: each returns durable, and they share flushes."""
    threads, per_thread = 16, 50
    durability = Durability.ALWAYS if mode.endswith("ALWAYS") else Durability.NEVER
    log = SegmentedLog.open(tmp_path, config(durability))
    counter = FlushCounter(log)
    results: dict[int, list[int]] = {w: [] for w in range(threads)}
    start = threading.Barrier(threads)

    def appender(w):
        start.wait()
        for i in range(per_thread):
            if durability is Durability.ALWAYS:
                off = log.append(payload(w, i))
            else:
                off = log.write(payload(w, i))
                log.sync_to(off)
            assert log.durable_offset >= off
            results[w].append(off)

    run_threads(threads, appender)
    appends = threads * per_thread
    assert log.durable_offset == log.end_offset
    assert 0 < counter.count < appends / 2, f"{counter.count} flushes for {appends} appends"
    check_log_holds(log, results)
    log.close()


@pytest.mark.anyio
async def test_group_commit_async(tmp_path):
    """64 tasks appending concurrently: every returned offset is durable, and
    the tasks share flushes (run in worker threads)."""
    tasks, per_task = 64, 4
    log = SegmentedLog.open(tmp_path, config(Durability.ALWAYS))
    counter = FlushCounter(log)
    results: dict[int, list[int]] = {w: [] for w in range(tasks)}

    async def appender(w):
        for i in range(per_task):
            off = await log.append_async(payload(w, i))
            assert log.durable_offset >= off
            results[w].append(off)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for w in range(tasks):
                tg.start_soon(appender, w)
    appends = tasks * per_task
    assert log.durable_offset == log.end_offset
    assert 0 < counter.count < appends / 2, f"{counter.count} flushes for {appends} appends"
    check_log_holds(log, results)
    log.close()


@pytest.mark.anyio
async def test_append_batch_async_returns_durable(tmp_path):
    with SegmentedLog.open(tmp_path, config(Durability.ALWAYS, segment_size=4096)) as log:
        counter = FlushCounter(log, delay=0)
        off = await log.append_batch_async([b"b" * 700] * 12)  # crosses segments
        assert log.durable_offset >= off == log.end_offset
        assert counter.count >= 1
        assert [r.payload for r in log.records()] == [b"b" * 700] * 12


# ---- INTERVAL ----------------------------------------------------------------------

def test_interval_write_becomes_durable_without_a_sync(tmp_path):
    log = SegmentedLog.open(tmp_path, config(Durability.INTERVAL, flush_interval=0.01))
    try:
        off = log.append(b"eventually on disk")
        off = log.append_batch([b"and", b"these"])
        deadline = time.monotonic() + 5.0  # liveness, not speed: generous
        while log.durable_offset < off and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_offset >= off, "the interval flusher never flushed"
    finally:
        log.close()


def test_interval_flusher_serves_logs_opened_after_others_closed(tmp_path):
    """The background flusher keeps working for a log opened after every earlier
    INTERVAL log was closed (its thread may have stopped meanwhile)."""
    first = SegmentedLog.open(tmp_path / "a", config(Durability.INTERVAL, flush_interval=0.01))
    first.write(b"a")
    first.close()
    time.sleep(0.05)  # let the flusher notice it has nothing left to do
    second = SegmentedLog.open(tmp_path / "b", config(Durability.INTERVAL, flush_interval=0.01))
    try:
        off = second.write(b"b")
        deadline = time.monotonic() + 5.0
        while second.durable_offset < off and time.monotonic() < deadline:
            time.sleep(0.005)
        assert second.durable_offset >= off, "no flusher serves the second log"
    finally:
        second.close()


# ---- NEVER ------------------------------------------------------------------------

def test_never_sync_makes_everything_durable(tmp_path):
    with SegmentedLog.open(tmp_path, config(Durability.NEVER, segment_size=4096)) as log:
        for i in range(30):
            log.write(b"n" * (i * 53 % 900))
        end = log.end_offset
        # nobody flushed the active segment: durability is not claimed
        assert log.durable_offset < end
        assert log.sync() == end
        assert log.durable_offset == end


@pytest.mark.parametrize("policy", [Durability.NEVER, Durability.INTERVAL, Durability.ALWAYS])
def test_every_sealed_segment_is_synced(tmp_path, monkeypatch, policy):
    """A roll under NEVER/INTERVAL leaves the sealing flush to the background
    flusher (off the appending thread); under ALWAYS the seal flushes at once.
    Either way every sealed segment is synced, without anyone calling sync()."""
    synced = set()
    real_sync, real_seal = nat.NativeSegment.sync, nat.NativeSegment.seal

    def recording_sync(self):
        real_sync(self)
        synced.add(self.path)

    def recording_seal(self, idx_path, sync=True):
        real_seal(self, idx_path, sync)
        if sync:
            synced.add(self.path)

    monkeypatch.setattr(nat.NativeSegment, "sync", recording_sync)
    monkeypatch.setattr(nat.NativeSegment, "seal", recording_seal)
    log = SegmentedLog.open(tmp_path, config(policy, segment_size=4096, flush_interval=0.01))
    try:
        for i in range(40):
            log.append(b"s" * 500)
        sealed = {s.native.path for s in log._segments[:-1]}
        assert len(sealed) >= 3
        deadline = time.monotonic() + 5.0  # liveness, not speed: generous
        while not sealed <= synced and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sealed <= synced, f"never synced: {sorted(sealed - synced)}"
    finally:
        log.close()


def test_close_flushes(tmp_path, monkeypatch):
    synced = []
    real_sync = nat.NativeSegment.sync

    def recording_sync(self):
        real_sync(self)
        synced.append(self.path)

    log = SegmentedLog.open(tmp_path, config(Durability.NEVER))
    for i in range(10):
        end = log.write(b"unflushed %d" % i)
    active_path = log._active.native.path
    monkeypatch.setattr(nat.NativeSegment, "sync", recording_sync)
    log.close()
    monkeypatch.undo()
    assert synced == [active_path]
    log.close()  # idempotent
    with pytest.raises(errors.LogClosedError):
        log.write(b"x")
    with pytest.raises(errors.LogClosedError):
        log.read(0)
    with SegmentedLog.open(tmp_path, config(Durability.NEVER)) as again:
        assert again.end_offset == end
        assert again.durable_offset == end
        assert [r.payload for r in again.records()] == [b"unflushed %d" % i for i in range(10)]


# ---- concurrency ---------------------------------------------------------------------

def test_concurrent_appends_and_readers(tmp_path):
    """Appends from many threads (single and batch) while readers follow the
    log: no record lost, duplicated or reordered, and every reader sees the
    log's bytes in log order."""
    writers, rounds = 8, 150
    log = SegmentedLog.open(tmp_path, config(Durability.NEVER, segment_size=4096))
    results: dict[int, list[int]] = {w: [] for w in range(writers)}
    done = threading.Event()
    seen: list[bytes] = []

    def appender(w):
        i = 0
        while i < rounds:
            if i % 7 == 3 and i + 3 <= rounds:
                batch = [payload(w, i + k) for k in range(3)]
                end = log.write_batch(batch)
                # the batch's records are consecutive: recover their ends
                size = nat.REC_HEADER_SIZE + len(batch[0])
                results[w].extend([end - 2 * size, end - size, end])
                i += 3
            else:
                results[w].append(log.write(payload(w, i)))
                i += 1

    def reader():
        off, parts = 0, []
        while True:
            finished = done.is_set()
            r = log.read(off, 300)
            parts.append(bytes(r.data))
            off = r.next_offset
            if finished and r.at_end:
                break
        seen.append(b"".join(parts))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        run_threads(writers, appender)
    finally:
        done.set()
        for t in readers:
            t.join(60)
    assert len(seen) == 2
    check_log_holds(log, results)
    whole = bytes(log.read(0, 1 << 22).data)
    assert seen == [whole, whole]
    log.close()


def test_close_waits_for_an_interval_flush_in_progress(tmp_path, monkeypatch):
    """Closing an INTERVAL log while the background flusher is flushing it must
    not free the segment under the flusher's feet (a use-after-free in C).

    The flusher is held inside its flush -- after it took the segment's native
    pointer, before the C call -- while close() runs in another thread. The C
    calls are intercepted: a sync on a segment that close() already released is
    recorded and NOT performed, so the test itself never touches freed memory.
    """
    real_lib, real_ffi = nat.lib, nat.ffi
    released: set[int] = set()
    misuse: list[str] = []
    flusher_synced = threading.Event()

    def address(p) -> int:
        return int(real_ffi.cast("uintptr_t", p))

    class Ffi:
        def __getattr__(self, name):
            return getattr(real_ffi, name)

        def release(self, p):
            released.add(address(p))
            return real_ffi.release(p)

    class Lib:
        def __getattr__(self, name):
            return getattr(real_lib, name)

        def ub_segment_sync(self, p):
            ours = threading.current_thread().name == "unbroken-flusher"
            try:
                if address(p) in released:
                    misuse.append("ub_segment_sync on a segment close() released")
                    return 0
                return real_lib.ub_segment_sync(p)
            finally:
                if ours and in_flush.is_set():
                    flusher_synced.set()

    in_flush = threading.Event()
    closed = threading.Event()
    real_p = nat.NativeSegment._p

    def held_p(self):
        p = real_p(self)
        if (threading.current_thread().name == "unbroken-flusher" and not in_flush.is_set()
                and str(self.path).startswith(str(tmp_path))):
            in_flush.set()
            closed.wait(1.0)  # a fixed close() waits for us: then this times out
        return p

    monkeypatch.setattr(nat, "lib", Lib())
    monkeypatch.setattr(nat, "ffi", Ffi())
    monkeypatch.setattr(nat.NativeSegment, "_p", held_p)
    log = SegmentedLog.open(tmp_path, config(Durability.INTERVAL, flush_interval=0.01))
    log.write(b"flush me")
    assert in_flush.wait(5), "the interval flusher never flushed"

    def closer():
        log.close()
        closed.set()

    t = threading.Thread(target=closer)
    t.start()
    t.join(10)
    assert closed.is_set(), "close() hung"
    assert flusher_synced.wait(5)
    assert misuse == []


# ---- the file store: an acknowledgement waits for what its policy says ---------------

APPENDS = 20
#: liveness bound of any wait below (never a timing assertion)
TIMEOUT = 10.0


async def every_answer_that_settles(store, path: str) -> list[int]:
    """Drive ``path`` (an empty JSON stream) through every store answer that
    settles under the policy: APPENDS producer appends, a duplicate, a
    sequence gap, a Stream-Seq conflict, a close and an idempotent close.

    :return: the offsets the appends acknowledged
    """
    acks = []
    for i in range(APPENDS):
        r = await store.append(path, b'{"i": %d}' % i, AppendOptions(
            producer=Producer("p", 0, i), seq="%04d" % i))
        acks.append(r.next_offset)
    dup = await store.append(path, b'{"i": %d}' % (APPENDS - 1), AppendOptions(
        producer=Producer("p", 0, APPENDS - 1), seq="%04d" % (APPENDS - 1)))
    assert dup.outcome is ProducerOutcome.DUPLICATE and dup.next_offset == acks[-1]
    with pytest.raises(errors.ProducerSeqGap):
        await store.append(path, b"{}", AppendOptions(producer=Producer("p", 0, APPENDS + 5)))
    with pytest.raises(errors.SequenceConflict):
        await store.append(path, b"{}", AppendOptions(seq="0000"))
    closed = await store.close_stream(path)
    assert closed.closed and closed.next_offset > acks[-1]
    again = await store.close_stream(path)
    assert again.closed and again.next_offset == closed.next_offset
    return acks + [closed.next_offset]


async def check_readers_see(store, path: str, end: int) -> None:
    """Readers see every acknowledged append and the close (what ``interval``
    and ``never`` acknowledge is visible at once)."""
    meta = await store.get(path)
    assert meta.next_offset == end and meta.closed
    page = await store.read(path)
    assert json.loads(bytes(page.data)) == [{"i": i} for i in range(APPENDS)]
    assert page.closed


async def wait_until(predicate) -> None:
    with anyio.fail_after(TIMEOUT):
        while not predicate():
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_store_never_makes_no_sync_on_the_append_path(tmp_path):
    async with FileBackedStreamStore(tmp_path, LogConfig(durability=Durability.NEVER)) as store:
        await store.create("s", CreateOptions(content_type="application/json"))  # syncs: rare
        before = nat._test_sync_count()
        acks = await every_answer_that_settles(store, "s")
        assert nat._test_sync_count() == before, "an append path flushed under NEVER"
        await check_readers_see(store, "s", acks[-1])
        assert store._streams["s"].log.durable_offset < acks[-1]


@pytest.mark.anyio
async def test_store_interval_acknowledges_before_the_flush_then_flushes(tmp_path):
    """Every flush fails while the appends run: under ALWAYS each append would
    be refused (503); under INTERVAL each is acknowledged, none of it durable
    yet. Once the disk works again, the background flusher makes it all
    durable with no further append."""
    cfg = LogConfig(durability=Durability.INTERVAL, flush_interval=0.01)
    async with FileBackedStreamStore(tmp_path, cfg) as store:
        await store.create("s", CreateOptions(content_type="application/json"))
        log = store._streams["s"].log
        start = log.durable_offset
        nat._test_fail_next_sync(1 << 30)  # every flush fails, the flusher's too
        try:
            acks = await every_answer_that_settles(store, "s")
            assert log.durable_offset == start, "a flush succeeded though all fail"
            await check_readers_see(store, "s", acks[-1])
        finally:
            nat._test_fail_next_sync(0)
        before = nat._test_sync_count()
        await wait_until(lambda: log.durable_offset >= acks[-1])
        assert nat._test_sync_count() > before


@pytest.mark.anyio
async def test_store_always_flushes_before_the_ack(tmp_path):
    async with FileBackedStreamStore(tmp_path, LogConfig(durability=Durability.ALWAYS)) as store:
        await store.create("s", CreateOptions(content_type="application/json"))
        log = store._streams["s"].log
        for i in range(5):
            before = nat._test_sync_count()
            r = await store.append("s", b'{"i": %d}' % i)
            assert nat._test_sync_count() > before
            assert log.durable_offset >= r.next_offset
        nat._test_fail_next_sync(1)
        try:
            with pytest.raises(errors.StorageIOError):
                await store.append("s", b'{"i": 5}')  # its flush failed: not acknowledged
        finally:
            assert nat._test_fail_next_sync(0) == 0, "the armed failure did not strike"
        page = await store.read("s")
        assert json.loads(bytes(page.data)) == [{"i": i} for i in range(5)]
