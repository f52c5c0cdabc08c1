"""State snapshots only ever speed up a restart: they never change its answer."""
from __future__ import annotations

import glob
import os

import pytest

from unbroken_engine import AppendOptions, CreateOptions, FileBackedStreamStore, Producer, errors
from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.stores.file import SNAPSHOT_NAME

pytestmark = pytest.mark.anyio
CONFIG = LogConfig(segment_size=64 * 1024, durability=Durability.NEVER)


def _zero_last_record(folder, size):
    seg = sorted(glob.glob(os.path.join(folder, "*.seg")))[-1]
    with open(seg, "r+b") as f:
        data = f.read()
        end = len(data.rstrip(b"\0"))
        f.seek(end - size)
        f.write(b"\0" * size)


async def test_a_snapshot_that_outlived_its_records_is_never_restored(tmp_path):
    """Closed by a record that a crash then lost; the snapshot said "closed".
    A same-sized append later lands on the same boundary: a second restart
    must not take the old snapshot for the new log."""
    store = FileBackedStreamStore(tmp_path, CONFIG)
    await store.create("s", CreateOptions(content_type="text/plain"))
    await store.append("s", b"first")
    await store.append("s", b"abcde", AppendOptions(close=True))
    folder = store._streams["s"].handle
    await store.aclose()
    assert (folder / SNAPSHOT_NAME).exists()
    _zero_last_record(folder, 16 + 5)  # the closing record is gone

    store = FileBackedStreamStore(tmp_path, CONFIG)
    assert not (await store.get("s")).closed
    await store.append("s", b"vwxyz")  # same size: same boundary as before
    store._streams["s"].log.sync()
    store._unlock()  # no aclose(): the process dies here (and its lock with it)
    again = FileBackedStreamStore(tmp_path, CONFIG)
    assert not (await again.get("s")).closed
    assert bytes((await again.read("s")).data) == b"firstvwxyz"
    await again.append("s", b"!")
    await again.aclose()
    await store.aclose()


async def test_restart_from_a_snapshot_keeps_producer_state(tmp_path, monkeypatch):
    monkeypatch.setattr(FileBackedStreamStore, "SNAPSHOT_EVERY", 3)
    store = FileBackedStreamStore(tmp_path, LogConfig(durability=Durability.ALWAYS))
    await store.create("p", CreateOptions(content_type="text/plain"))
    for seq in range(7):
        await store.append("p", b"m%d" % seq, AppendOptions(producer=Producer("w", 0, seq)))
    folder = store._streams["p"].handle
    assert (folder / SNAPSHOT_NAME).exists()  # written by the periodic snapshot
    store._unlock()  # no aclose(): the process dies here (and its lock with it)
    again = FileBackedStreamStore(tmp_path, LogConfig(durability=Durability.ALWAYS))
    retry = await again.append("p", b"m6", AppendOptions(producer=Producer("w", 0, 6)))
    assert retry.outcome.value == "duplicate" and retry.producer_seq == 6
    nxt = await again.append("p", b"m7", AppendOptions(producer=Producer("w", 0, 7)))
    assert nxt.outcome.value == "accepted"
    assert bytes((await again.read("p")).data) == b"".join(b"m%d" % i for i in range(8))
    await again.aclose()
    await store.aclose()


async def test_a_damaged_sealed_segment_refuses_only_its_stream(tmp_path):
    """A flipped byte in a sealed segment (whose saved index is fine) is found
    when the store replays the stream at start-up: that stream is refused with
    the damage, every other stream is served."""
    config = LogConfig(segment_size=4096, durability=Durability.ALWAYS)
    store = FileBackedStreamStore(tmp_path, config)
    for path in ("good", "bad"):
        await store.create(path, CreateOptions(content_type="text/plain"))
        for i in range(40):
            await store.append(path, b"record %03d " % i + b"x" * 100)
    bad = store._streams["bad"].handle
    await store.aclose()
    for snap in tmp_path.glob("*/" + SNAPSHOT_NAME):
        snap.unlink()  # no snapshot: the whole log is replayed
    first = sorted(bad.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[64 + 16 + 3] ^= 0x40  # a payload byte of the first record
    first.write_bytes(bytes(data))

    again = FileBackedStreamStore(tmp_path, config)
    assert "bad" in again.recovery.corrupt
    from unbroken_engine.errors import CorruptSegment
    with pytest.raises(CorruptSegment):
        await again.get("bad")
    assert (await again.read("good")).data[:10] == b"record 000"
    await again.aclose()


async def test_a_second_store_on_the_same_directory_is_refused(tmp_path):
    """Two stores recovering and appending in one directory would cut each
    other's unflushed tails: the second is refused, naming the holder's pid,
    until the first closes."""
    first = FileBackedStreamStore(tmp_path)
    await first.create("s", CreateOptions(content_type="text/plain"))
    with pytest.raises(errors.DataDirInUse, match=rf"in use by another store \(pid {os.getpid()}\)"):
        FileBackedStreamStore(tmp_path)
    await first.append("s", b"still mine")  # the refused one touched nothing
    await first.aclose()
    second = FileBackedStreamStore(tmp_path)
    assert bytes((await second.read("s")).data) == b"still mine"
    await second.aclose()
