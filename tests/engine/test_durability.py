"""Durability policies of SegmentedLog and the file store, and appends from
many threads or tasks.

Flushes are the real fdatasync calls of the C layer, counted by
``_native._test_sync_count()`` (process-wide: a test takes the difference of
two readings) and made to fail by ``_test_fail_next_sync``: what a policy
promises is which syncs an acknowledgement waits for. A sealed segment's file
is closed once it is synced, so ``/proc/self/fd`` shows which sealed segments
still wait for their sync.

Group commit is asserted where its count is certain: appends that are all
written before anyone flushes share exactly one fdatasync (the async test
holds the first flush back by holding anyio's worker threads until every
append is written). How much appends share under load depends on the disk and
the scheduler -- a ratio, measured by ``unbroken bench engine`` (``always``
with many writers against one), never asserted in a unit test.

Every wait is bounded; no test asserts timing.
"""
from __future__ import annotations

import gc
import json
import os
import threading
import time

import anyio
import pytest

from support.flushes import WorkerThreadsHeld
from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer

#: liveness bound of any wait below (never a timing assertion)
TIMEOUT = 10.0


def config(durability, **kw):
    kw.setdefault("segment_size", 16 * 1024)  # small: concurrent appends cross rolls
    kw.setdefault("index_interval", 256)
    return LogConfig(durability=durability, **kw)


FLUSHER = "unbroken-flusher"  # the name of the background flusher's thread


def wait_for_no_flusher_thread() -> None:
    """Return once the background flusher's thread has ended, as it does
    when no log is left for it (every earlier INTERVAL log closed, every
    sealed segment synced)."""
    gc.collect()  # a log nobody holds any more leaves the flusher's set
    deadline = time.monotonic() + TIMEOUT
    while any(t.name == FLUSHER for t in threading.enumerate()):
        assert time.monotonic() < deadline, \
            "the background flusher kept running: is a log of an earlier test still open?"
        time.sleep(0.005)


def open_files(paths) -> set[str]:
    """Those of ``paths`` this process has a descriptor open on."""
    wanted = {os.path.realpath(p) for p in paths}
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, for one)
        if target in wanted:
            found.add(target)
    return found


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
    """16 threads x 50 appends, crossing rolls: each returns durable, and the
    log holds every record once, in each thread's order. (That they share
    flushes: the test below, where the count is certain.)"""
    threads, per_thread = 16, 50
    durability = Durability.ALWAYS if mode.endswith("ALWAYS") else Durability.NEVER
    log = SegmentedLog.open(tmp_path, config(durability))
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
    assert log.durable_offset == log.end_offset
    check_log_holds(log, results)
    log.close()


@pytest.mark.parametrize("durability", [Durability.ALWAYS, Durability.NEVER])
def test_threads_waiting_together_share_one_flush(tmp_path, durability):
    """16 threads each write a record, then all wait at once for theirs to be
    durable (``sync_to``: what ``append`` does after its write). Whoever
    flushes first covers everything written, the others ride on that flush:
    one fdatasync for the 16 of them, not 16."""
    threads = 16
    log = SegmentedLog.open(tmp_path, config(durability))  # no roll: no seal to sync
    written = threading.Barrier(threads)
    results: dict[int, list[int]] = {}
    before = nat._test_sync_count()

    def appender(w):
        off = log.write(payload(w, 0))
        written.wait()  # every record is written before anyone waits
        log.sync_to(off)
        assert log.durable_offset >= off
        results[w] = [off]

    run_threads(threads, appender)
    assert nat._test_sync_count() - before == 1, "the waiting threads did not share one flush"
    check_log_holds(log, results)
    log.close()


@pytest.mark.anyio
async def test_group_commit_async(tmp_path):
    """64 tasks x 4 appends concurrently, crossing rolls: every returned
    offset is durable, and the log holds every record once, in each task's
    order. (That they share flushes: the test below.)"""
    tasks, per_task = 64, 4
    log = SegmentedLog.open(tmp_path, config(Durability.ALWAYS))
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
    assert log.durable_offset == log.end_offset
    check_log_holds(log, results)
    log.close()


@pytest.mark.anyio
async def test_async_appends_waiting_together_share_one_flush(tmp_path):
    """64 tasks call ``append_async`` at once while the first flush is held
    back (no worker thread for it yet): all 64 records get written, none
    durable, no fdatasync made; released, that one flush covers them all --
    one fdatasync for 64 appends, each of which returns durable."""
    tasks = 64
    log = SegmentedLog.open(tmp_path, config(Durability.ALWAYS))  # no roll: no seal to sync
    results: dict[int, list[int]] = {}
    before = nat._test_sync_count()

    async def appender(w):
        off = await log.append_async(payload(w, 0))
        assert log.durable_offset >= off
        results[w] = [off]

    with anyio.fail_after(60):
        held = await WorkerThreadsHeld().hold()
        try:
            async with anyio.create_task_group() as tg:
                for w in range(tasks):
                    tg.start_soon(appender, w)
                while len(list(log.records())) < tasks:
                    await anyio.sleep(0.001)
                assert nat._test_sync_count() == before and log.durable_offset == 0
                assert results == {}, "an append returned before any flush"
                held.release()
        finally:
            held.release()
    assert nat._test_sync_count() - before == 1, "the tasks did not share one flush"
    check_log_holds(log, results)
    log.close()


@pytest.mark.anyio
async def test_append_batch_async_returns_durable(tmp_path):
    """A batch crossing segments returns once all of it is on disk: one
    fdatasync per segment it sealed (under ALWAYS a seal syncs at once) and
    one for the active segment."""
    with SegmentedLog.open(tmp_path, config(Durability.ALWAYS, segment_size=4096)) as log:
        before = nat._test_sync_count()
        off = await log.append_batch_async([b"b" * 700] * 12)  # crosses segments
        assert log.durable_offset >= off == log.end_offset
        segments = len(list(tmp_path.glob("*.seg")))
        assert segments >= 3
        assert nat._test_sync_count() - before == segments
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
    wait_for_no_flusher_thread()  # it noticed it has nothing left to do, and ended
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
def test_every_sealed_segment_is_synced(tmp_path, policy):
    """A roll under NEVER/INTERVAL leaves the sealing flush to the background
    flusher (off the appending thread); under ALWAYS the seal flushes at once.
    Either way every sealed segment is synced, without anyone calling sync().

    Seen from outside the log: the C core closes a sealed segment's file
    once, and only once, an fdatasync of it succeeded, so a sealed segment
    still open in /proc/self/fd is one not synced yet; and the fdatasync
    calls are counted."""
    before = nat._test_sync_count()
    log = SegmentedLog.open(tmp_path, config(policy, segment_size=4096, flush_interval=0.01))
    try:
        for i in range(40):
            log.append(b"s" * 500)
        sealed = sorted(tmp_path.glob("*.seg"))[:-1]
        assert len(sealed) >= 3
        deadline = time.monotonic() + TIMEOUT  # liveness, not speed: generous
        while open_files(sealed) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not open_files(sealed), f"never synced: {sorted(open_files(sealed))}"
        assert nat._test_sync_count() - before >= len(sealed)
        assert open_files(sorted(tmp_path.glob("*.seg"))[-1:]), "the active segment is not open"
    finally:
        log.close()


def test_close_flushes(tmp_path):
    log = SegmentedLog.open(tmp_path, config(Durability.NEVER))
    for i in range(10):
        end = log.write(b"unflushed %d" % i)
    assert log.durable_offset < end
    before = nat._test_sync_count()
    log.close()
    assert nat._test_sync_count() - before == 1  # the active segment (nothing sealed)
    log.close()  # idempotent
    assert nat._test_sync_count() - before == 1
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


def test_close_waits_for_an_interval_flush_in_progress(tmp_path):
    """Closing an INTERVAL log while the background flusher is flushing it must
    not free the segment under the flusher's feet (a use-after-free in C):
    close() waits for the flush in progress.

    Nothing is replaced. A trace function (``threading.settrace``, so it
    reaches the flusher's thread, started afresh) pauses the flusher as it
    enters ``NativeSegment.sync`` for this log -- inside its flush -- while
    close() runs in another thread. The pause ends when close() returns, or
    after a second. The flusher's sync must complete, without an error,
    before close() returns; a close() that does not wait returns during the
    pause, and the sync then finds its segment closed."""
    sync_code = nat.NativeSegment.sync.__code__
    paused, closed = threading.Event(), threading.Event()
    order: list[str] = []

    def after_pause(frame, event, arg):
        if event == "exception":
            order.append(f"sync raised {arg[0].__name__}")
        elif event == "return" and not (order and order[-1].startswith("sync raised")):
            order.append("synced")
        return after_pause

    def tracer(frame, event, arg):
        if (event != "call" or frame.f_code is not sync_code or paused.is_set()
                or threading.current_thread().name != FLUSHER
                or not str(frame.f_locals["self"].path).startswith(str(tmp_path))):
            return None
        paused.set()
        closed.wait(1.0)  # a close() that waits for us cannot return meanwhile
        return after_pause

    wait_for_no_flusher_thread()  # the next one starts with the trace function
    threading.settrace(tracer)
    try:
        log = SegmentedLog.open(tmp_path, config(Durability.INTERVAL, flush_interval=0.01))
        log.write(b"flush me")
        assert paused.wait(TIMEOUT), "the interval flusher never flushed"

        def closer():
            log.close()
            order.append("closed")
            closed.set()

        t = threading.Thread(target=closer)
        t.start()
        t.join(TIMEOUT)
        assert closed.is_set(), "close() hung"
    finally:
        threading.settrace(None)
    assert order == ["synced", "closed"]
    with SegmentedLog.open(tmp_path, config(Durability.NEVER)) as again:
        assert [r.payload for r in again.records()] == [b"flush me"]


# ---- the file store: an acknowledgement waits for what its policy says ---------------

APPENDS = 20
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
