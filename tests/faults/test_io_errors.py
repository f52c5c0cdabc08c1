"""A failed fsync or a failed allocation is never acknowledged.

The C core has two test switches (cext/ub_segment.c, "test switches"),
reached through ``_native._test_fail_next_sync(n)`` (the next n fdatasync
calls of a segment sync or seal fail with EIO) and
``_native._test_fail_next_alloc(n)`` (the next n posix_fallocate calls fail
with ENOSPC); ``_native._test_sync_count()`` counts the fdatasync calls
made, failed ones included. They are process-wide, so the fixture
``faults_disarmed`` (conftest) disarms them around every test, and a test
counts syncs as the difference of two readings.

What the store does with a stream after a failed fsync -- the rule these
tests pin down:

    The records of a failed flush are WRITTEN BUT UNACKNOWLEDGED. They stay in
    the log (they are in the file's pages, and a process restart finds them);
    the appends that waited for that flush are not acknowledged (the one that
    ran it raises StorageIOError -> 503); readers under ``always`` do not see
    them (they see the durable offset only); the producer state and Stream-Seq
    they carry are already applied. The next flush that succeeds makes them
    durable and visible together with everything written after them.

Why: the alternative -- cutting the records back out -- would need the log
to undo a write other appends may already be stacked on, and would make a
record a client never saw acknowledged disappear or not depending on timing,
while a 503 only ever says "outcome unknown", exactly like a timeout. With
this rule an idempotent producer's retry (same Producer-Id/Epoch/Seq) is
answered DUPLICATE once the original is durable, so it lands exactly once; a
retry without producer headers may land twice (at-least-once), and a retry
repeating its Stream-Seq gets 409 (the first attempt counts as written).

Group commit: an append that waited on a flush that failed is not
acknowledged by that flush; today the log lets it run the next flush itself
(``SegmentedLog.sync_to``/``wait_durable`` loop), so it is acknowledged only
if a later flush succeeds -- never on the strength of the failed one. For that
later flush to mean anything on Linux, where a failed writeback may leave the
pages clean in the page cache ("fsyncgate"), the C core rewrites everything
since its last successful fdatasync before flushing again (tested below with
the process's write counter).
"""
from __future__ import annotations

import errno
import os
import threading
import time

import anyio
import pytest

from support.flushes import WorkerThreadsHeld
from unbroken_engine import FileBackedStreamStore
from unbroken_engine import _native as nat
from unbroken_engine import errors
from unbroken_engine.log.segmented import Durability, LogConfig, SegmentedLog
from unbroken_engine.stores.file import LOCK_NAME
from unbroken_engine.stores.interface import CreateOptions

ALWAYS = LogConfig(durability=Durability.ALWAYS)
TEXT = {"Content-Type": "text/plain"}
S = "/v1/stream/"


def payloads_of(log: SegmentedLog) -> list[bytes]:
    return [r.payload for r in log.records()]


def acked_durable(log: SegmentedLog, off: int) -> int:
    """``off``, after checking the log counted it durable when its append
    returned: the durable offset moves only when a flush succeeds, so this is
    "a good flush covered it"."""
    assert log.durable_offset >= off, f"{off} acknowledged, durable only to {log.durable_offset}"
    return off


# ---- the log --------------------------------------------------------------------------------------

def test_failed_flush_is_not_acknowledged(tmp_path):
    log = SegmentedLog.open(tmp_path, ALWAYS)
    a = log.append(b"a")
    nat._test_fail_next_sync(1)
    with pytest.raises(errors.StorageIOError) as failed:
        log.append(b"b")
    assert failed.value.errno == errno.EIO and failed.value.status_hint == 503
    assert nat._test_fail_next_sync(0) == 0, "the armed failure did not strike"
    assert log.durable_offset == a  # not acknowledged...
    assert log.end_offset == a + 17  # ...but written (the rule above)

    c = log.append(b"c")  # the next flush that succeeds covers b as well
    assert log.durable_offset == c == log.end_offset
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:
        assert payloads_of(log) == [b"a", b"b", b"c"]


def test_appends_after_a_failed_flush_are_durable_once_a_flush_succeeds(tmp_path):
    log = SegmentedLog.open(tmp_path, ALWAYS)
    nat._test_fail_next_sync(3)
    for p in (b"x1", b"x2", b"x3"):
        with pytest.raises(errors.StorageIOError):
            log.append(p)
        assert log.durable_offset == 0
    offs = [log.append(b"y%d" % i) for i in range(3)]
    assert log.durable_offset == offs[-1] == log.end_offset
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:
        assert payloads_of(log) == [b"x1", b"x2", b"x3", b"y0", b"y1", b"y2"]


@pytest.mark.anyio
@pytest.mark.parametrize("failures", [1, 3, 16])
async def test_concurrent_appends_sharing_a_failed_flush(tmp_path, failures):
    """16 tasks append at once and share the first flush, which fails. None
    is acknowledged by it: the task that ran it raises; each of the others
    either raises too (running a flush that also fails) or is acknowledged by
    a later flush that succeeded and covered it. With as many failures as
    tasks, every append fails and nothing becomes durable.

    The first flush is held (no worker thread for it) until all 16 appends
    are written, so it covers every one of them; the real fdatasync calls
    are counted in the C core: each failed flush fails exactly the task
    that ran it, and one good flush then serves all the others."""
    tasks = 16
    log = SegmentedLog.open(tmp_path, ALWAYS)
    acked: dict[int, int] = {}
    failed: list[int] = []
    nat._test_fail_next_sync(failures)
    syncs = nat._test_sync_count()

    async def one(i):
        try:
            acked[i] = acked_durable(log, await log.append_async(b"task-%02d" % i))
        except errors.StorageIOError:
            failed.append(i)

    with anyio.fail_after(30):
        held = await WorkerThreadsHeld().hold()
        try:
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(one, i)
                while len(payloads_of(log)) < tasks:  # every append written...
                    await anyio.sleep(0.001)
                # ...and waiting on the one flush that has not started yet
                assert nat._test_sync_count() == syncs and log.durable_offset == 0
                held.release()
        finally:
            held.release()
    assert nat._test_fail_next_sync(0) == 0, "the armed failures did not all strike"
    assert sorted(failed + list(acked)) == list(range(tasks))
    assert len(failed) == min(failures, tasks)
    if failures >= tasks:
        assert acked == {} and log.durable_offset == 0
        assert nat._test_sync_count() - syncs == tasks  # one failed flush per task
    else:
        # the failed flushes, then one good flush for everyone left
        assert nat._test_sync_count() - syncs == failures + 1
        assert log.durable_offset == log.end_offset
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:  # all written (the rule above)
        assert sorted(payloads_of(log)) == [b"task-%02d" % i for i in range(tasks)]


def test_threads_sharing_a_failed_flush(tmp_path):
    """The blocking group commit (threads): same guarantee as above. The
    threads append at once (a barrier), so how many share a flush depends on
    timing; what does not: every failed flush fails exactly the thread that
    ran it, no thread is acknowledged before a good flush covered its
    append, and every append is in the log."""
    threads_n = 8
    log = SegmentedLog.open(tmp_path, ALWAYS)
    barrier = threading.Barrier(threads_n)
    acked, failed = {}, []
    nat._test_fail_next_sync(2)
    syncs = nat._test_sync_count()

    def one(i):
        barrier.wait()
        try:
            acked[i] = acked_durable(log, log.append(b"thread-%02d" % i))
        except errors.StorageIOError:
            failed.append(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "appender threads hung"
    assert nat._test_fail_next_sync(0) == 0
    assert len(failed) == 2 and len(acked) == threads_n - 2
    # the two failed flushes, then at least one good one, at most one per thread
    assert 2 < nat._test_sync_count() - syncs <= threads_n
    assert log.durable_offset == log.end_offset
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:
        assert sorted(payloads_of(log)) == [b"thread-%02d" % i for i in range(threads_n)]


def test_failed_flush_pages_are_written_again_before_the_next_flush(tmp_path):
    """After a failed fdatasync the next sync first rewrites everything since
    the last good one (a failed writeback may have left those pages clean in
    the page cache, and a later fdatasync would then skip them). Seen through
    the process's write counter (``wchar`` in /proc/self/io)."""
    if not os.path.exists("/proc/self/io"):
        pytest.skip("/proc/self/io is not available (needs Linux with task I/O accounting)")

    def wchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("wchar:")).split()[1])

    chunk = 256 << 10
    log = SegmentedLog.open(tmp_path, LogConfig(durability=Durability.NEVER))
    log.write(b"a" * chunk)
    log.sync()  # the last good flush
    log.write(b"b" * chunk)
    before = wchar()
    log.sync()  # nothing failed: nothing is rewritten
    assert wchar() - before < chunk

    log.write(b"c" * chunk)
    nat._test_fail_next_sync(1)
    with pytest.raises(errors.StorageIOError):
        log.sync()
    log.write(b"d" * 100)
    before = wchar()
    log.sync()
    rewritten = wchar() - before
    assert chunk <= rewritten < 2 * chunk, rewritten  # c (and d), not a or b
    before = wchar()
    log.sync()  # that flush succeeded: back to normal
    assert wchar() - before < chunk
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:
        assert payloads_of(log) == [b"a" * chunk, b"b" * chunk, b"c" * chunk, b"d" * 100]


def test_failed_seal_flush_fails_the_append_and_leaves_the_log_appendable(tmp_path):
    """A roll whose seal cannot fdatasync the old segment: the append that
    needed the roll raises StorageIOError and writes nothing; no temporary
    file is left; the next append rolls."""
    config = LogConfig(segment_size=4096, index_interval=128, durability=Durability.ALWAYS)
    log = SegmentedLog.open(tmp_path, config)
    acked = [log.append(b"r%d" % i + b"." * 1000) for i in range(3)]
    nat._test_fail_next_sync(1)
    with pytest.raises(errors.StorageIOError):
        log.append(b"roll" + b"." * 1500)  # does not fit: roll, seal, fdatasync fails
    assert nat._test_fail_next_sync(0) == 0
    assert log.end_offset == log.durable_offset == acked[-1]
    assert sorted(os.listdir(tmp_path)) == ["00000000000000000000.seg"]
    off = log.append(b"again" + b"." * 1500)
    assert log.durable_offset == off
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".seg")]) == 2
    log.close()
    with SegmentedLog.open(tmp_path, config) as log:
        assert [p[:5] for p in payloads_of(log)] == [b"r0...", b"r1...", b"r2...", b"again"]


def test_interval_flusher_retries_a_failed_flush(tmp_path):
    """Under ``interval`` nothing waits on a flush; a failed background flush
    is retried on the next period and the durable offset only moves on one
    that succeeds."""
    log = SegmentedLog.open(tmp_path, LogConfig(durability=Durability.INTERVAL,
                                                flush_interval=0.005))
    nat._test_fail_next_sync(3)
    end = log.write(b"x" * 100)
    deadline = time.monotonic() + 10
    while log.durable_offset < end and time.monotonic() < deadline:
        time.sleep(0.005)
    assert log.durable_offset == end
    assert nat._test_fail_next_sync(0) == 0, "the flusher did not meet the failures"
    log.close()


# ---- allocation -------------------------------------------------------------------------------------

def test_failed_growth_writes_nothing(tmp_path):
    log = SegmentedLog.open(tmp_path, ALWAYS)
    a = log.append(b"a" * 1000)
    seg = tmp_path / "00000000000000000000.seg"
    size = seg.stat().st_size
    nat._test_fail_next_alloc(2)  # the doubling, then the exact size
    with pytest.raises(errors.StorageFull) as full:
        log.append(b"b" * 100_000)  # needs the segment to grow past 64 KiB
    assert full.value.errno == errno.ENOSPC and full.value.status_hint == 507
    assert nat._test_fail_next_alloc(0) == 0, "the append did not try to grow the file"
    assert log.end_offset == log.durable_offset == a
    assert seg.stat().st_size == size
    assert payloads_of(log) == [b"a" * 1000]
    c = log.append(b"c" * 100_000)
    assert seg.stat().st_size > size
    log.close()
    with SegmentedLog.open(tmp_path, ALWAYS) as log:
        assert payloads_of(log) == [b"a" * 1000, b"c" * 100_000]
        assert log.end_offset == c


def test_failed_allocation_at_roll_writes_nothing(tmp_path):
    config = LogConfig(segment_size=4096, index_interval=128, durability=Durability.ALWAYS)
    log = SegmentedLog.open(tmp_path, config)
    acked = [log.append(b"r%d" % i + b"." * 1000) for i in range(3)]
    nat._test_fail_next_alloc(1)
    with pytest.raises(errors.StorageFull):
        log.append(b"roll" + b"." * 1500)  # the new segment cannot be preallocated
    assert nat._test_fail_next_alloc(0) == 0
    assert log.end_offset == acked[-1]
    assert sorted(os.listdir(tmp_path)) == ["00000000000000000000.seg"]
    log.append(b"again" + b"." * 1500)
    log.close()
    with SegmentedLog.open(tmp_path, config) as log:
        assert [p[:5] for p in payloads_of(log)] == [b"r0...", b"r1...", b"r2...", b"again"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_store_create_with_failed_allocation_leaves_nothing(tmp_path, anyio_backend):
    store = FileBackedStreamStore(tmp_path, ALWAYS)
    try:
        nat._test_fail_next_alloc(1)
        with pytest.raises(errors.StorageFull):
            await store.create("s", CreateOptions(content_type="text/plain", data=b"x"))
        assert nat._test_fail_next_alloc(0) == 0
        assert os.listdir(tmp_path) == [LOCK_NAME]  # the store's own lock, nothing else
        with pytest.raises(errors.StreamNotFound):
            await store.get("s")
        await store.create("s", CreateOptions(content_type="text/plain", data=b"x"))
        assert (await store.read("s")).data == b"x"
    finally:
        await store.aclose()


# ---- over HTTP ----------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path, inprocess_server):
    return inprocess_server(FileBackedStreamStore(tmp_path / "data", ALWAYS))


def producer(seq: int, pid: str = "p1", epoch: int = 0) -> dict:
    return {"Producer-Id": pid, "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}


def test_http_failed_flush_is_503_and_a_producer_retry_is_a_duplicate(server):
    assert server.request("PUT", S + "s", TEXT).status == 201
    r = server.request("POST", S + "s", {**TEXT, **producer(0)}, b"a")
    assert r.status == 200
    tail_a = r.headers["stream-next-offset"]

    nat._test_fail_next_sync(1)
    r = server.request("POST", S + "s", {**TEXT, **producer(1)}, b"b")
    assert r.status == 503, r
    assert b"input/output error" in r.body.lower()
    assert nat._test_fail_next_sync(0) == 0
    # not acknowledged, so not visible: the tail and the content are as before
    head = server.request("HEAD", S + "s")
    assert head.status == 200 and head.headers["stream-next-offset"] == tail_a
    assert server.request("GET", S + "s?offset=-1").body == b"a"

    # the producer retries: the first attempt was written, so this is a
    # duplicate -- answered once the original is durable, and "b" lands once
    r = server.request("POST", S + "s", {**TEXT, **producer(1)}, b"b")
    assert r.status == 204 and r.headers["producer-seq"] == "1", r
    assert r.headers["stream-next-offset"] > tail_a
    assert server.request("GET", S + "s?offset=-1").body == b"ab"
    assert server.request("POST", S + "s", {**TEXT, **producer(2)}, b"c").status == 200
    assert server.request("GET", S + "s?offset=-1").body == b"abc"


def test_http_retries_without_a_producer_after_a_failed_flush(server):
    """The other side of the rule: a failed append was written, so a plain
    retry lands twice (at-least-once) and a Stream-Seq retry is a conflict."""
    assert server.request("PUT", S + "s", TEXT).status == 201
    nat._test_fail_next_sync(1)
    assert server.request("POST", S + "s", TEXT, b"x").status == 503
    assert server.request("GET", S + "s?offset=-1").body == b""
    assert server.request("POST", S + "s", TEXT, b"x").status == 204
    assert server.request("GET", S + "s?offset=-1").body == b"xx"

    nat._test_fail_next_sync(1)
    assert server.request("POST", S + "s", {**TEXT, "Stream-Seq": "0001"}, b"y").status == 503
    r = server.request("POST", S + "s", {**TEXT, "Stream-Seq": "0001"}, b"y")
    assert r.status == 409, r  # answered once the first attempt is durable...
    assert server.request("GET", S + "s?offset=-1").body == b"xxy"  # ...and visible

    # a conflict is only reported once the record it rests on is on disk: while
    # flushes keep failing, the retry gets 503 too
    nat._test_fail_next_sync(2)
    assert server.request("POST", S + "s", {**TEXT, "Stream-Seq": "0002"}, b"z").status == 503
    assert server.request("POST", S + "s", {**TEXT, "Stream-Seq": "0002"}, b"z").status == 503
    assert server.request("POST", S + "s", {**TEXT, "Stream-Seq": "0002"}, b"z").status == 409
    assert server.request("GET", S + "s?offset=-1").body == b"xxyz"


def test_http_fencing_after_a_failed_flush(server):
    """A producer's new epoch whose first append's flush failed: a zombie of
    the old epoch is fenced (403) only once that append is on disk."""
    assert server.request("PUT", S + "s", TEXT).status == 201
    assert server.request("POST", S + "s", {**TEXT, **producer(0)}, b"a").status == 200
    nat._test_fail_next_sync(2)
    assert server.request("POST", S + "s", {**TEXT, **producer(0, epoch=1)}, b"b").status == 503
    assert server.request("POST", S + "s", {**TEXT, **producer(1)}, b"zombie").status == 503
    r = server.request("POST", S + "s", {**TEXT, **producer(1)}, b"zombie")
    assert r.status == 403 and r.headers["producer-epoch"] == "1", r
    assert server.request("GET", S + "s?offset=-1").body == b"ab"


def test_http_failed_allocation_is_507_and_writes_nothing(server):
    assert server.request("PUT", S + "s", TEXT).status == 201
    r = server.request("POST", S + "s", TEXT, b"a" * 1000)
    assert r.status == 204
    tail = r.headers["stream-next-offset"]

    nat._test_fail_next_alloc(2)  # the doubling, then the exact size
    r = server.request("POST", S + "s", TEXT, b"b" * 100_000)
    assert r.status == 507, r
    assert b"no space left on device" in r.body.lower()
    assert server.request("HEAD", S + "s").headers["stream-next-offset"] == tail
    assert server.request("GET", S + "s?offset=-1").body == b"a" * 1000

    nat._test_fail_next_alloc(1)
    r = server.request("PUT", S + "t", TEXT)
    assert r.status == 507, r
    assert server.request("HEAD", S + "t").status == 404
    assert [n for n in os.listdir(server.store.data_dir) if n.startswith(".")] == [LOCK_NAME]

    assert server.request("POST", S + "s", TEXT, b"c" * 100_000).status == 204
    assert server.request("PUT", S + "t", TEXT).status == 201
    assert server.request("GET", S + "s?offset=-1").body == b"a" * 1000 + b"c" * 100_000
