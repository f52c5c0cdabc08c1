"""Process crashes of the file-backed *stream store* (test_crash.py does the log).

A child process opens FileBackedStreamStore(dir) under Durability.ALWAYS and
runs concurrent writers on one event loop (anyio tasks) against one stream:
plain writers appending self-identifying payloads (writer id + counter), and
one idempotent producer (``Producer("prod", epoch, seq)``). After an append
returns, the child writes an acknowledgement line to stdout (one ``os.write``
per line: atomic on a pipe) with the writer, counter and returned
``next_offset``; before the producer sends a request it also writes an
``inflight`` line with that seq and payload.

The parent SIGKILLs the child after a random number of acknowledgements,
reopens the store in-process and checks what users rely on:

* every acknowledged append is in the stream exactly once, at the offset its
  acknowledgement gave; no payload appears twice; each writer's counters run
  0, 1, 2, ... in stream order (at most one unacknowledged append each, its
  last); what an earlier cycle left is unchanged; the producer's seqs run
  0, 1, 2, ... across all cycles;
* retrying the producer's last in-flight request (same epoch, seq, payload)
  is a DUPLICATE if that request reached the stream before the kill, else it
  is ACCEPTED -- and either way the payload is then present exactly once;
* a new plain append is accepted at the tail and reads back.

Several kill cycles run on the same directory; each child continues the
producer's seqs from the parent's state (passed on the command line). A JSON
variant appends JSON arrays of 1-3 values and checks the stream with
``json.loads`` of its reads.

The kill points come from a seed printed at the start of each test (shown on
failure); set ``UNBROKEN_CRASH_SEED`` to replay one.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.protocol.offsets import START
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import AppendOptions, Producer
from unbroken_engine.stores.sync import SyncStreamStore

# Shared by the child (prepended to its script) and the parent (exec'd below):
# the one definition of the store's configuration and of every payload.
COMMON = r'''
import json
from unbroken_engine.log.segmented import Durability, LogConfig

# small segments: records average ~300 bytes, so a cycle rolls a few times
CONFIG = LogConfig(segment_size=16 * 1024, index_interval=512, durability=Durability.ALWAYS)
PRODUCER_ID = "prod"
EPOCH = 1
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def filler(writer, i):
    n = (sum(map(ord, writer)) * 7919 + i * 104729) % 600
    return "".join(LETTERS[(i + j) % 26] for j in range(n))


def body(writer, i, json_mode):
    """The payload writer ``writer`` appends as its ``i``-th (the producer: seq i)."""
    if json_mode:
        n = 1 + (i + len(writer)) % 3
        values = [{"w": writer, "i": i, "k": k, "pad": filler(writer, i)[:100 * (k + 1)]}
                  for k in range(n)]
        return json.dumps(values, separators=(",", ":")).encode()
    return ("<%s:%d:%s>" % (writer, i, filler(writer, i))).encode()
'''

CHILD = COMMON + r'''
import os, sys
import anyio
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.protocol.producers import ProducerOutcome
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer

directory, path, ctype = sys.argv[1], sys.argv[2], sys.argv[3]
cycle, writers, first_seq = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
json_mode = ctype == "application/json"


def out(line):
    os.write(1, line.encode() + b"\n")  # one write per line: atomic on a pipe


async def writer(store, w):
    i = 0
    while True:
        r = await store.append(path, body(w, i, json_mode), AppendOptions(content_type=ctype))
        out("ack %s %d %d" % (w, i, r.next_offset))
        i += 1


async def producer(store):
    seq = first_seq
    while True:
        data = body(PRODUCER_ID, seq, json_mode)
        out("inflight %d %s" % (seq, data.decode()))
        # the request is on its way (for a while, at times): other tasks run meanwhile,
        # so a kill can come before it reaches the store as well as after
        await anyio.sleep(0.001 * (seq % 3))
        r = await store.append(path, data, AppendOptions(
            content_type=ctype, producer=Producer(PRODUCER_ID, EPOCH, seq)))
        if r.outcome is not ProducerOutcome.ACCEPTED or r.producer_seq != seq:
            out("error producer seq %d answered %r" % (seq, r))
            os._exit(3)
        out("pack %d %d" % (seq, r.next_offset))
        seq += 1


async def main():
    store = FileBackedStreamStore(directory, CONFIG)
    await store.create(path, CreateOptions(content_type=ctype))
    out("ready %d" % (await store.get(path)).next_offset)
    async with anyio.create_task_group() as tg:
        for k in range(writers):
            tg.start_soon(writer, store, "c%dw%d" % (cycle, k))
        tg.start_soon(producer, store)


try:
    anyio.run(main)
except BaseException as exc:
    out("error %r" % (exc,))
    raise
'''

_common: dict = {}
exec(COMMON, _common)
CONFIG: LogConfig = _common["CONFIG"]
PRODUCER_ID: str = _common["PRODUCER_ID"]
EPOCH: int = _common["EPOCH"]
body = _common["body"]
assert CONFIG.durability is Durability.ALWAYS


def new_seed(name: str) -> random.Random:
    seed = int(os.environ.get("UNBROKEN_CRASH_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"{name}: kill points drawn with random.Random({seed}) "
          f"(UNBROKEN_CRASH_SEED={seed} replays them)")  # shown on failure
    return random.Random(seed)


class Child:
    """The child process; a thread collects its stdout lines."""

    def __init__(self, directory, path, ctype, cycle, writers, first_seq):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), path, ctype, str(cycle),
             str(writers), str(first_seq)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # not the repository root: "-c" puts the working directory first
            # on sys.path, where the uncompiled source tree would shadow the
            # installed package
            cwd=os.path.dirname(os.path.abspath(directory)))
        self.lines: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def acks(self) -> int:
        return sum(1 for ln in list(self.lines) if ln.startswith((b"ack ", b"pack ")))

    def kill_after(self, acks: int, timeout: float = 30.0) -> list[list[str]]:
        """SIGKILL once ``acks`` appends are acknowledged; return every line, split."""
        deadline = time.monotonic() + timeout
        while self.acks() < acks and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)  # every line written before the kill
        stderr = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        self.proc.stdout.close()
        text = b"".join(self.lines).decode(errors="replace")
        assert self.proc.returncode == -signal.SIGKILL, \
            f"child died on its own ({self.proc.returncode}):\n{text[-2000:]}\n{stderr}"
        assert all(ln.endswith(b"\n") for ln in self.lines), "torn acknowledgement line"
        assert self.acks() >= acks, f"only {self.acks()} acknowledgements in {timeout} s"
        lines = [ln.decode().split() for ln in self.lines]  # payloads hold no spaces
        assert lines and lines[0][0] == "ready", text[:2000]
        return lines


def parse_record(data: bytes, json_mode: bool) -> tuple[str, int]:
    """(writer, counter) of one record, checking every byte against ``body``."""
    if json_mode:
        values = json.loads(data)
        assert isinstance(values, list) and values, data[:200]
        key = (values[0]["w"], values[0]["i"])
        assert values == json.loads(body(*key, True)), f"record {key} is damaged"
        return key
    assert data.startswith(b"<") and data.endswith(b">"), data[:200]
    writer, counter, _ = data[1:-1].decode().split(":", 2)
    key = (writer, int(counter))
    assert data == body(*key, False), f"record {key} is damaged"
    return key


def walk(store, path: str, json_mode: bool) -> list[tuple[tuple[str, int], int]]:
    """Every record of the stream as ((writer, counter), next_offset), read one
    record at a time (``max_bytes=1``: a read returns at least one whole record,
    and no record here is shorter than two bytes)."""
    records, offset = [], START
    while True:
        r = store.read(path, offset, max_bytes=1)
        data = bytes(r.data)
        if data not in (b"", b"[]"):
            records.append((parse_record(data, json_mode), r.next_offset))
        else:
            assert r.up_to_date, f"an empty read before the tail at {offset}"
        if r.up_to_date:
            return records
        offset = r.next_offset


def run_cycles(tmp_path, *, json_mode: bool, cycles: int, name: str):
    rnd = new_seed(name)
    path = "crash/j" if json_mode else "crash/s"
    ctype = "application/json" if json_mode else "application/octet-stream"
    directory = tmp_path / "streams"
    acked: dict[tuple[str, int], int] = {}  # (writer, counter) -> next_offset, all cycles
    before: list[tuple[tuple[str, int], int]] = []  # the stream as the last cycle left it
    next_seq = 0  # the producer's next seq
    last_request: tuple[int, bytes] | None = None  # the producer's last request (seq, payload)
    tail = 0
    for cycle in range(cycles):
        writers = rnd.choice([2, 3])
        kill_at = rnd.randint(5, 500)
        lines = Child(directory, path, ctype, cycle, writers, next_seq).kill_after(kill_at)
        acks = sum(1 for line in lines if line[0] in ("ack", "pack"))
        context = f"cycle {cycle}, {writers} writers, killed after {acks} acks (>= {kill_at})"

        assert int(lines[0][1]) == tail, context  # the child found the stream we left
        per_writer: dict[str, list[tuple[int, int]]] = {}
        inflight: list[tuple[int, bytes]] = []
        for line in lines[1:]:
            if line[0] == "ack":
                w, i, off = line[1], int(line[2]), int(line[3])
                per_writer.setdefault(w, []).append((i, off))
                acked[(w, i)] = off
            elif line[0] == "inflight":
                inflight.append((int(line[1]), line[2].encode()))
            elif line[0] == "pack":
                seq, off = int(line[1]), int(line[2])
                assert inflight and inflight[-1][0] == seq, (context, line)
                acked[(PRODUCER_ID, seq)] = off
            else:
                raise AssertionError(f"{context}: unexpected line {line}")
        for w, seq in per_writer.items():  # a writer's acks come in its order
            assert [i for i, _ in seq] == list(range(len(seq))), (context, w)
            assert [off for _, off in seq] == sorted(off for _, off in seq), (context, w)
        assert [s for s, _ in inflight] == list(range(next_seq, next_seq + len(inflight))), \
            context
        for seq, payload in inflight:
            assert payload == body(PRODUCER_ID, seq, json_mode), context
        if inflight:
            last_request = inflight[-1]

        with SyncStreamStore(lambda: FileBackedStreamStore(directory, CONFIG)) as store:
            assert store.recovery.corrupt == {}, store.recovery.summary()
            records = walk(store, path, json_mode)
            found: dict[tuple[str, int], int] = {}
            order: dict[str, list[int]] = {}
            for key, off in records:
                assert key not in found, f"{context}: {key} is in the stream twice"
                found[key] = off
                order.setdefault(key[0], []).append(key[1])
            assert records[:len(before)] == before, f"{context}: earlier records changed"
            missing = sorted(k for k in acked if k not in found)
            assert not missing, f"{context}: acknowledged appends lost: {missing[:10]}"
            moved = sorted(k for k, off in acked.items() if found[k] != off)
            assert not moved, f"{context}: records not at their acknowledged offsets: {moved[:10]}"
            for w, counters in order.items():
                assert counters == list(range(len(counters))), f"{context}: {w} out of order"
            for w, seq in per_writer.items():  # at most the one in flight is unacknowledged
                assert len(order[w]) in (len(seq), len(seq) + 1), (context, w)
            stream_tail = store.get(path).next_offset
            assert stream_tail == (records[-1][1] if records else 0), context

            # the producer retries its last request, as a client does after a crash
            if last_request is not None:
                seq, payload = last_request
                present = (PRODUCER_ID, seq) in found
                r = store.append(path, payload, AppendOptions(
                    content_type=ctype, producer=Producer(PRODUCER_ID, EPOCH, seq)))
                expected = ProducerOutcome.DUPLICATE if present else ProducerOutcome.ACCEPTED
                assert r.outcome is expected, f"{context}: retry of seq {seq}: {r}"
                print(f"{context}: {len(records)} records; the retry of seq {seq} "
                      f"({'acknowledged' if (PRODUCER_ID, seq) in acked else 'in flight'}) "
                      f"was {r.outcome.value}")
                assert (r.producer_epoch, r.producer_seq) == (EPOCH, seq), (context, r)
                if present:
                    assert r.next_offset == stream_tail, (context, r)
                else:
                    acked[(PRODUCER_ID, seq)] = r.next_offset
                records = walk(store, path, json_mode)
                assert [k for k, _ in records].count((PRODUCER_ID, seq)) == 1, context
                assert records[-1][1] == r.next_offset == store.get(path).next_offset, context
                next_seq = seq + 1
            prod = [k[1] for k, _ in records if k[0] == PRODUCER_ID]
            assert prod == list(range(next_seq)), f"{context}: producer seqs {prod[-5:]}"

            # and the stream takes a new plain append
            start = store.get(path).next_offset
            mine = body(f"parent{cycle}", 0, json_mode)
            r = store.append(path, mine, AppendOptions(content_type=ctype))
            assert r.outcome is None and not r.closed
            assert r.next_offset == store.get(path).next_offset > start
            back = store.read(path, start)
            assert back.next_offset == r.next_offset and back.up_to_date
            if json_mode:
                assert json.loads(bytes(back.data)) == json.loads(mine)
            else:
                assert bytes(back.data) == mine
            acked[(f"parent{cycle}", 0)] = r.next_offset
            before = walk(store, path, json_mode)
            tail = r.next_offset
            if json_mode:  # the whole stream in one read is the records' values, in order
                everything = store.read(path, START, max_bytes=1 << 30)
                assert everything.up_to_date
                values = json.loads(bytes(everything.data))
                assert values == [v for key, _ in before for v in json.loads(body(*key, True))]
    segments = list(directory.glob("*/*.seg"))
    return segments


def test_sigkill_keeps_every_acknowledged_append_and_producer_retries(tmp_path):
    segments = run_cycles(tmp_path, json_mode=False, cycles=4, name="plain")
    assert len(segments) > 1, "no segment roll happened"


def test_sigkill_json_stream(tmp_path):
    run_cycles(tmp_path, json_mode=True, cycles=1, name="json")
