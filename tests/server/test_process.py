"""The real command, in a subprocess: ``python -m unbroken_server serve``.

* kill -9 at a random moment while clients append: after a restart on the
  same data directory every acknowledged append is there, exactly once, in
  acknowledgement order;
* SIGTERM while clients append and an SSE reader follows: exit 0, "stopped
  cleanly", the reader gets a final control event, nothing acknowledged is lost;
* the command line: --help, ONEPIPE_STREAMS_PORT, the flags that reach the
  server, a port already in use, the choice of store;
* several instances on one Redis or PostgreSQL store (REDIS_URL /
  DATABASE_URL; skipped without them): writers and live readers on both,
  an idempotent producer moving between them, kill -9 of one instance.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import anyio
import pytest

from support.server import ServerProcess, until_parked

S = "/v1/stream/"


@pytest.fixture
def servers(tmp_path):
    """Start servers with ``servers(*args)`` (a :class:`support.server.ServerProcess`,
    not yet waited for); every one still running is killed after."""
    started: list[ServerProcess] = []

    def start(*args: str, env=None) -> ServerProcess:
        sp = ServerProcess(*args, cwd=tmp_path, env=env)
        started.append(sp)
        return sp
    yield start
    for sp in started:
        sp.close()


def request(port: int, method: str, target: str, headers=None, body: bytes | None = None,
            timeout: float = 10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def read_all(port: int, path: str) -> list:
    """Every value of a JSON stream, following Stream-Next-Offset."""
    values, offset = [], "-1"
    while True:
        status, headers, body = request(port, "GET", f"{S}{path}?offset={offset}")
        assert status == 200, (status, body)
        values += json.loads(body)
        offset = headers["stream-next-offset"]
        if headers.get("stream-up-to-date") == "true":
            return values


class Writers:
    """Threads appending ``{"w": w, "i": i}`` to a JSON stream over keep-alive
    connections, recording each acknowledged append and its Stream-Next-Offset;
    a thread stops at its first failure (the server went away)."""

    def __init__(self, port: int, path: str, n: int, tag: str = ""):
        self.port, self.path, self.tag = port, path, tag
        self.acks: list[tuple] = []  # (offset, writer, i)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(f"{tag}{w}",), daemon=True)
                        for w in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, w: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = 0
        try:
            while not self.stop.is_set():
                body = json.dumps({"w": w, "i": i, "pad": "x" * random.randrange(200)})
                conn.request("POST", S + self.path, body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 204:
                    raise AssertionError(f"append answered {resp.status}")
                offset = resp.getheader("Stream-Next-Offset")
                if offset is None:
                    # http.client accepts a head cut short by the kill (the
                    # server writes it line by line): no offset, no ack
                    return
                with self.lock:
                    self.acks.append((offset, w, i))
                i += 1
        except (OSError, http.client.HTTPException):
            pass  # the server is gone: this append was never acknowledged
        finally:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acks)

    def wait_for(self, n: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} acks"
            time.sleep(0.01)

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
            assert not t.is_alive()


def check_acknowledged(values: list, acks: list) -> None:
    """Every acknowledged append is stored exactly once, in acknowledgement
    (offset) order; unacknowledged ones may be there, at most once each."""
    keys = [(v["w"], v["i"]) for v in values]
    assert len(keys) == len(set(keys)), "an append is stored twice"
    position = {k: n for n, k in enumerate(keys)}
    by_offset = sorted(acks)
    offsets = [o for o, _, _ in by_offset]
    assert len(set(offsets)) == len(offsets), "two appends acknowledged with the same offset"
    missing = [(w, i) for _, w, i in by_offset if (w, i) not in position]
    assert not missing, f"{len(missing)} acknowledged appends lost, e.g. {missing[:5]}"
    order = [position[(w, i)] for _, w, i in by_offset]
    assert order == sorted(order), "acknowledged appends are out of order"
    per_writer: dict = {}
    for w, i in keys:  # each writer's values in its own order, no gaps before an ack
        per_writer.setdefault(w, []).append(i)
    for w, seq in per_writer.items():
        assert seq == list(range(len(seq))), f"writer {w}: {seq[:20]}"


# ---- kill -9 ----------------------------------------------------------------------------------

def test_kill_9_keeps_every_acknowledged_append(servers, tmp_path):
    data = str(tmp_path / "data")
    all_acks: list = []
    rng = random.Random()
    for cycle in range(2):
        sp = servers("--port", "0", "--data-dir", data)
        port = sp.wait_started()
        if cycle == 0:
            status, headers, _ = request(port, "PUT", S + "crash",
                                         {"Content-Type": "application/json"})
            assert status == 201
        else:
            check_acknowledged(read_all(port, "crash"), all_acks)
        writers = Writers(port, "crash", 4, tag=f"c{cycle}-").start()
        writers.wait_for(20)
        time.sleep(rng.uniform(0.0, 0.5))  # a random moment, appends in flight
        os.kill(sp.proc.pid, signal.SIGKILL)
        sp.wait(30)
        writers.join()
        all_acks += writers.acks
    sp = servers("--port", "0", "--data-dir", data)
    port = sp.wait_started()
    check_acknowledged(read_all(port, "crash"), all_acks)
    # and the stream takes appends again
    status, _, _ = request(port, "POST", S + "crash", {"Content-Type": "application/json"},
                           b'{"w":"after","i":0}')
    assert status == 204


# ---- SIGTERM -------------------------------------------------------------------------------------

class SSEThread(threading.Thread):
    """Follows a stream over SSE and keeps the raw body; ``clean_end`` is set
    when the response ended properly (the last chunk arrived)."""

    def __init__(self, port: int, target: str):
        super().__init__(daemon=True)
        self.port, self.target = port, target
        self.raw = b""
        self.started_reading = threading.Event()
        self.clean_end = False
        self.error = None

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", self.target)
            resp = conn.getresponse()
            assert resp.status == 200
            while True:
                piece = resp.read1(65536)
                if not piece:
                    self.clean_end = True
                    return
                self.raw += piece
                self.started_reading.set()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            conn.close()


def test_sigterm_drains_cleanly(servers, tmp_path, sse_parse):
    data = str(tmp_path / "data")
    sp = servers("--port", "0", "--data-dir", data)
    port = sp.wait_started()
    assert request(port, "PUT", S + "term", {"Content-Type": "application/json"})[0] == 201
    reader = SSEThread(port, S + "term?offset=-1&live=sse")
    reader.start()
    assert reader.started_reading.wait(10)
    writers = Writers(port, "term", 3).start()
    writers.wait_for(30)
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.wait(timeout=15) == 0, sp.output
    writers.join()
    reader.join(timeout=10)
    assert "stopped cleanly" in "".join(sp.stdout), sp.output
    assert reader.error is None, reader.error
    assert reader.clean_end, "the SSE response did not end properly"
    events = sse_parse(reader.raw)
    assert events[-1].event == "control", events[-3:]
    final = events[-1].json()
    assert final.get("upToDate") is True and "streamNextOffset" in final
    seen_by_sse = [v for ev in events if ev.event == "data" for v in ev.json()]

    sp2 = servers("--port", "0", "--data-dir", data)
    port = sp2.wait_started()
    values = read_all(port, "term")
    check_acknowledged(values, writers.acks)
    assert seen_by_sse == values[:len(seen_by_sse)]  # the reader saw a prefix, in order


# ---- the command line --------------------------------------------------------------------------------

def test_serve_help_lists_the_options(tmp_path):
    out = subprocess.run([sys.executable, "-m", "unbroken_server", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0
    for option in ("--port", "--data-dir", "--store", "--durability", "--long-poll-timeout",
                   "--max-body", "ONEPIPE_STREAMS_PORT"):
        assert option in out.stdout, option


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_env_port_and_flags_reach_the_server(servers):
    port = _free_port()
    sp = servers("--store", "memory", "--long-poll-timeout", "0.2", "--max-body", "10",
                 env={"ONEPIPE_STREAMS_PORT": str(port)})
    assert sp.wait_started() == port
    status, _, body = request(port, "GET", "/health")
    assert status == 200 and json.loads(body)["store"] == "memory"
    assert request(port, "PUT", S + "f", {"Content-Type": "text/plain"})[0] == 201
    assert request(port, "POST", S + "f", {"Content-Type": "text/plain"}, b"x" * 11)[0] == 413
    assert request(port, "POST", S + "f", {"Content-Type": "text/plain"}, b"x" * 10)[0] == 204
    status, headers, _ = request(port, "GET", S + "f?offset=now&live=long-poll", timeout=10)
    assert status == 204 and headers["stream-up-to-date"] == "true"
    sp.proc.send_signal(signal.SIGINT)
    assert sp.wait(15) == 0
    assert "stopped cleanly" in "".join(sp.stdout)


def test_port_in_use_and_bad_env_port_fail_with_a_message(servers):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sp = servers("--store", "memory", "--port", str(port))
        assert sp.wait(30) == 1
        assert "cannot listen" in "".join(sp.stderr)
    sp = servers("--store", "memory", env={"ONEPIPE_STREAMS_PORT": "http"})
    assert sp.wait(30) != 0
    assert "ONEPIPE_STREAMS_PORT" in sp.output


def test_a_second_server_on_the_same_data_dir_is_refused(servers, tmp_path):
    first = servers("--port", "0", "--data-dir", str(tmp_path / "d"))
    port = first.wait_started()
    second = servers("--port", "0", "--data-dir", str(tmp_path / "d"))
    assert second.wait(30) == 1
    assert "cannot open the store: data directory" in second.output
    assert "is in use by another store" in second.output
    assert request(port, "PUT", "/v1/stream/still-served")[0] == 201


def test_store_is_chosen_by_option_then_redis_url_then_database_url():
    from unbroken_server.cli import choose_store

    env = {"REDIS_URL": "redis://r:6379/0", "DATABASE_URL": "postgresql://p/db"}
    assert choose_store(None, {}) == ("file", None, "")
    assert choose_store(None, env) == ("redis", "redis://r:6379/0", " (from $REDIS_URL)")
    assert choose_store(None, {"DATABASE_URL": "postgresql://p/db"}) == (
        "postgres", "postgresql://p/db", " (from $DATABASE_URL)")
    assert choose_store("memory", env) == ("memory", "memory", "")
    assert choose_store("postgres://p/db", env)[0] == "postgres"
    with pytest.raises(SystemExit, match="--store must be"):
        choose_store("mysql://x/y", {})


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "postgresql://127.0.0.1:1/test"])
def test_unreachable_shared_store_fails_at_start_with_a_message(servers, url):
    sp = servers("--store", url, "--port", "0")
    assert sp.wait(30) == 1
    err = "".join(sp.stderr)
    assert "cannot open the store" in err and "127.0.0.1" in err, err
    assert "Traceback" not in err


# ---- several instances on one shared store (Redis, PostgreSQL) -----------------------------------

SHARED_URL_VARS = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}


@pytest.fixture(params=list(SHARED_URL_VARS))
def shared_store(request):
    """``(url, prefix)`` of a Redis or PostgreSQL store of this test alone;
    its keys or schema are dropped afterwards."""
    kind = request.param
    url = os.environ.get(SHARED_URL_VARS[kind]) or pytest.skip(
        f"{SHARED_URL_VARS[kind]} is not set: no {kind} server to share")
    prefix = f"mi{uuid.uuid4().hex[:10]}" + (":" if kind == "redis" else "")
    yield kind, url, prefix
    asyncio.run(_drop_shared(kind, url, prefix))


async def _drop_shared(kind: str, url: str, prefix: str) -> None:
    if kind == "redis":
        from unbroken_engine.stores.shared.redis import RedisBackend

        await RedisBackend(url, prefix=prefix).drop_everything()
    else:
        from unbroken_engine.stores.shared.postgres import PostgresBackend

        await PostgresBackend(url, schema=prefix).drop_everything()


class LongPollThread(threading.Thread):
    """Follows a JSON stream with live=long-poll until it is closed; keeps the values."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.values: list = []
        self.error = None

    def run(self):
        offset, cursor = "-1", ""
        try:
            while True:
                target = f"{S}{self.path}?offset={offset}&live=long-poll"
                status, headers, body = request(
                    self.port, "GET", target + (f"&cursor={cursor}" if cursor else ""),
                    timeout=90)
                assert status in (200, 204), (status, body)
                if status == 200:
                    self.values += json.loads(body)
                offset = headers["stream-next-offset"]
                cursor = headers.get("stream-cursor", "")
                if headers.get("stream-closed") == "true":
                    return
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _producer_append(port: int, path: str, epoch: int, seq: int, value) -> int:
    status, _, body = request(port, "POST", S + path, {
        "Content-Type": "application/json", "Producer-Id": "P",
        "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}, json.dumps(value).encode())
    assert status in (200, 204), (status, body)
    return status


def test_two_instances_share_streams_readers_see_every_append_once_in_order(
        servers, shared_store, sse_parse):
    """Writers on both instances, SSE and long-poll readers on both, and an
    idempotent producer that moves between them: every reader sees every
    acknowledged append exactly once, in one order, and no retry duplicates."""
    kind, url, prefix = shared_store
    # long-polls wait 60 s: only a notification from the other instance ends them in time
    a = servers("--port", "0", "--store", url, "--store-prefix", prefix,
                "--long-poll-timeout", "60")
    b = servers("--port", "0", "--store", url, "--store-prefix", prefix,
                "--long-poll-timeout", "60")
    pa, pb = a.wait_started(), b.wait_started()
    assert request(pa, "PUT", S + "shared", {"Content-Type": "application/json"})[0] == 201
    assert request(pb, "PUT", S + "shared", {"Content-Type": "application/json"})[0] == 200
    sse = [SSEThread(p, S + "shared?offset=-1&live=sse") for p in (pa, pb)]
    polls = [LongPollThread(p, "shared") for p in (pa, pb)]
    for t in (*sse, *polls):
        t.start()
    writers = [Writers(pa, "shared", 2, tag="a").start(), Writers(pb, "shared", 2, tag="b").start()]
    # the producer sends seq 0..29, alternating instances every 5, and retries
    # each fifth request on the other instance (a client failing over)
    for seq in range(30):
        port = (pa, pb)[(seq // 5) % 2]
        assert _producer_append(port, "shared", 0, seq, {"w": "P", "i": seq}) == 200
        if seq % 5 == 4:
            other = pb if port == pa else pa
            assert _producer_append(other, "shared", 0, seq, {"w": "P", "i": seq}) == 204
    for w in writers:
        w.wait_for(40)
        w.join()
    # close through B: every reader on either instance must end
    assert request(pb, "POST", S + "shared", {"Content-Type": "application/json",
                                               "Stream-Closed": "true"})[0] == 204
    for t in (*sse, *polls):
        t.join(timeout=30)
        assert not t.is_alive(), "a live reader was not woken by the close on the other instance"
    acks = [*writers[0].acks, *writers[1].acks]
    values = read_all(pa, "shared")
    assert read_all(pb, "shared") == values
    check_acknowledged(values, acks)
    assert [v["i"] for v in values if v["w"] == "P"] == list(range(30))
    for t in sse:
        assert t.error is None, t.error
        events = sse_parse(t.raw)
        seen = [v for ev in events if ev.event == "data" for v in ev.json()]
        assert seen == values, f"an SSE reader saw {len(seen)} of {len(values)} values"
        assert events[-1].json().get("streamClosed") is True
    for t in polls:
        assert t.error is None, t.error
        assert t.values == values


def test_kill_9_of_one_instance_loses_nothing_acknowledged(servers, shared_store):
    kind, url, prefix = shared_store
    a = servers("--port", "0", "--store", url, "--store-prefix", prefix)
    b = servers("--port", "0", "--store", url, "--store-prefix", prefix)
    pa, pb = a.wait_started(), b.wait_started()
    assert request(pa, "PUT", S + "k", {"Content-Type": "application/json"})[0] == 201
    wa, wb = Writers(pa, "k", 3, tag="a").start(), Writers(pb, "k", 3, tag="b").start()
    wa.wait_for(30)
    wb.wait_for(30)
    time.sleep(random.uniform(0.0, 0.3))
    os.kill(a.proc.pid, signal.SIGKILL)
    a.wait(30)
    n = wb.count()
    wb.wait_for(n + 30)  # B goes on serving
    wa.join()
    wb.join()
    check_acknowledged(read_all(pb, "k"), [*wa.acks, *wb.acks])
    c = servers("--port", "0", "--store", url, "--store-prefix", prefix)  # A's replacement
    assert read_all(c.wait_started(), "k") == read_all(pb, "k")


def test_append_through_one_instance_wakes_a_long_poll_on_the_other(servers, shared_store):
    """The wake-up crosses instances by notification, not by a poll: the
    long-poll timeout is 60 s, so only a notification answers it with data."""
    kind, url, prefix = shared_store
    a = servers("--port", "0", "--store", url, "--store-prefix", prefix)
    b = servers("--port", "0", "--store", url, "--store-prefix", prefix,
                "--long-poll-timeout", "60")
    pa, pb = a.wait_started(), b.wait_started()
    assert request(pa, "PUT", S + "wake", {"Content-Type": "text/plain"})[0] == 201
    for round_ in range(3):
        tail = request(pb, "HEAD", S + "wake")[1]["stream-next-offset"]
        out = {}

        def poll():
            out["answer"] = request(pb, "GET", f"{S}wake?offset={tail}&live=long-poll",
                                    timeout=90)
            out["at"] = time.monotonic()

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        until_parked(pb)  # the long-poll is waiting on B: only a wake-up can answer it
        sent = time.monotonic()
        assert request(pa, "POST", S + "wake", {"Content-Type": "text/plain"},
                       f"m{round_}".encode())[0] == 204
        t.join(timeout=20)
        assert not t.is_alive(), "the long-poll on B was not woken by the append on A"
        status, _, body = out["answer"]
        assert (status, body) == (200, f"m{round_}".encode())
        print(f"[{kind}] cross-instance wake-up {1000 * (out['at'] - sent):.1f} ms")


# ---- backend outages ------------------------------------------------------------------------------

class TcpProxy:
    """A TCP relay in front of the backend that a test can cut (every
    connection reset, new ones refused) and restore on the same port."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self.lock = threading.Lock()
        self.socks: set = set()
        self.listener = None
        self.restore()

    def restore(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        # shutdown() first: close() alone does not wake a thread blocked in
        # accept() or recv(), and the kernel socket would live on
        for s in (self.listener, *self._take()):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _take(self) -> set:
        with self.lock:
            socks, self.socks = self.socks, set()
        return socks

    def _accept(self, ls) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ProducerWriters:
    """Threads appending to a JSON stream as idempotent producers (one per
    thread, seq = i), retrying a refused append with the same seq, as a
    client that cannot tell whether a failed request landed must. Records
    every answer: ``acks`` as in :class:`Writers`, ``failures`` as
    (status or error, seconds it took, body), and ``refused`` per writer."""

    def __init__(self, port: int, path: str, n: int):
        self.port, self.path = port, path
        self.acks: list[tuple] = []
        self.duplicates: list[tuple] = []  # (writer, i) answered "already stored"
        self.failures: list[tuple] = []
        self.refused: dict[str, int] = {f"p{w}": 0 for w in range(n)}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(f"p{w}",), daemon=True)
                        for w in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, w: str) -> None:
        i = 0
        while not self.stop.is_set():
            body = json.dumps({"w": w, "i": i}).encode()
            t0 = time.monotonic()
            try:
                status, headers, answer = request(self.port, "POST", S + self.path, {
                    "Content-Type": "application/json", "Producer-Id": w,
                    "Producer-Epoch": "0", "Producer-Seq": str(i)}, body, timeout=60)
            except (OSError, http.client.HTTPException) as exc:
                status, headers, answer = type(exc).__name__, {}, b""
            took = time.monotonic() - t0
            with self.lock:
                if status == 200:  # accepted: the offset is this append's own
                    self.acks.append((headers["stream-next-offset"], w, i))
                    i += 1
                elif status == 204:  # a duplicate: a refused attempt had landed
                    self.duplicates.append((w, i))
                    i += 1
                else:
                    self.failures.append((status, took, answer))
                    self.refused[w] += 1
            if status not in (200, 204):
                time.sleep(0.05)

    def count(self) -> int:
        with self.lock:
            return len(self.acks) + len(self.duplicates)

    def wait_for(self, n: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} acks"
            time.sleep(0.02)

    def wait_for_refusals(self, n: int, timeout: float = 60):
        """Wait until every writer has had ``n`` appends refused."""
        deadline = time.monotonic() + timeout
        while min(self.refused.values()) < n:
            assert time.monotonic() < deadline, f"refusals per writer: {self.refused}"
            time.sleep(0.02)

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)
            assert not t.is_alive()

    def check(self, values: list) -> None:
        """Every acknowledged append is stored once, accepted ones in
        acknowledgement order, and nothing else is stored."""
        check_acknowledged(values, self.acks)
        keys = [(v["w"], v["i"]) for v in values]
        assert len(keys) == len(set(keys)), "an append is stored twice"
        assert set(keys) == {(w, i) for _, w, i in self.acks} | set(self.duplicates)


def _via_proxy(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    scheme, rest = url.split("://", 1)
    hostpart, _, tail = rest.partition("/")
    cred = hostpart.rsplit("@", 1)[0] + "@" if "@" in hostpart else ""
    return f"{scheme}://{cred}127.0.0.1:{port}/{tail}"


def _host_port(url: str, default: int) -> tuple[str, int]:
    hostpart = url.split("://", 1)[1].partition("/")[0].rsplit("@", 1)[-1]
    host, _, port = hostpart.partition(":")
    return host or "127.0.0.1", int(port or default)


@pytest.mark.parametrize("bound_latency", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["refusals", "latency"])
def test_backend_outage_fails_fast_ends_live_readers_and_recovers(servers, shared_store, sse_parse,
                                                                   bound_latency):
    """Cut the server's connections to Redis / PostgreSQL during load: appends
    fail with 503 and say why while the backend is still down (each writer is
    refused, retries and is refused again before it comes back), the SSE
    reader's response ends cleanly, the server recovers by itself when the
    backend is back, and every acknowledged append is there exactly once
    (producers retry the refused ones). The slow variant also bounds how
    long a refusal takes (< 5 s), which a loaded machine can stretch."""
    kind, url, prefix = shared_store
    proxy = TcpProxy(*_host_port(url, 6379 if kind == "redis" else 5432))
    sp = servers("--port", "0", "--store", _via_proxy(url, proxy.port), "--store-prefix", prefix)
    port = sp.wait_started()
    assert request(port, "PUT", S + "o", {"Content-Type": "application/json"})[0] == 201
    reader = SSEThread(port, S + "o?offset=-1&live=sse")
    reader.start()
    writers = ProducerWriters(port, "o", 3)
    writers.wait_for(30)
    proxy.cut()
    reader.join(timeout=20)
    assert not reader.is_alive(), "the SSE reader was not ended when the backend went away"
    assert reader.error is None and reader.clean_end, reader.error
    writers.wait_for_refusals(2)  # appends keep coming and keep failing, backend down
    during = len(writers.failures)
    status, _, body = request(port, "GET", S + "o?offset=-1", timeout=30)
    assert status == 503 and b"unavailable" in body, (status, body)
    proxy.restore()
    n = writers.count()
    writers.wait_for(n + 30)  # recovered by itself
    writers.join()
    assert during > 0, "no append failed while the backend was cut"
    statuses = {s for s, _, _ in writers.failures}
    assert statuses <= {503}, statuses
    slowest = max(t for _, t, _ in writers.failures)
    if bound_latency:
        assert slowest < 5, f"a refused append took {slowest:.1f} s: not failing fast"
    assert all(b"unavailable" in body for _, _, body in writers.failures)
    writers.check(read_all(port, "o"))  # a retried append that had landed is deduplicated
    print(f"[{kind}] outage: {len(writers.failures)} appends refused (slowest "
          f"{slowest:.2f} s), {len(writers.acks)} accepted, {len(writers.duplicates)} "
          "found already stored on retry, none lost or doubled")


# ---- the durability the command line asks for, counted in-process ------------------------

def _serve_store(tmp_path, *flags: str):
    """The file store ``unbroken serve FLAGS`` opens (same parser, same config)."""
    from unbroken_engine import FileBackedStreamStore
    from unbroken_server.cli import build_parser, file_store_config

    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "data"), *flags])
    return FileBackedStreamStore(args.data_dir, file_store_config(args))


async def _append_close_and_read(server, n: int) -> list:
    """Over HTTP: ``n`` producer appends, a duplicate, a Stream-Seq conflict,
    a close; every answer checked. :return: what a reader then gets."""
    json_type = {"Content-Type": "application/json"}

    def producer(seq: int) -> dict:
        return {**json_type, "Producer-Id": "p", "Producer-Epoch": "0",
                "Producer-Seq": str(seq), "Stream-Seq": "%04d" % seq}

    async def post(headers: dict, body: bytes = b""):
        return await server.request("POST", S + "d", list(headers.items()), body)

    for i in range(n):
        r = await post(producer(i), b'{"i": %d}' % i)
        assert r.status in (200, 204), r
    r = await post(producer(n - 1), b'{"i": %d}' % (n - 1))
    assert r.status == 204 and r.headers["producer-seq"] == str(n - 1), r  # duplicate
    r = await post({**json_type, "Stream-Seq": "0000"}, b"{}")
    assert r.status == 409, r
    r = await post({"Stream-Closed": "true"})
    assert r.status in (200, 204) and r.headers["stream-closed"] == "true", r
    r = await server.request("GET", S + "d?offset=-1")
    assert r.status == 200 and r.headers["stream-closed"] == "true", r
    return json.loads(r.body)


@pytest.mark.anyio
@pytest.mark.parametrize("durability", ["never", "interval", "always"])
async def test_serve_durability_decides_the_syncs_an_append_waits_for(
        tmp_path, make_ctx, run_server, durability):
    """``unbroken serve --durability X`` over HTTP, counting the real
    fdatasync calls of the C layer (per process, hence the in-process server):
    ``never`` makes none for appends and their answers; ``interval``
    acknowledges them all while every flush fails, and its background flusher
    makes them durable afterwards; ``always`` flushes before each ack."""
    from unbroken_engine import _native as nat

    n = 10
    store = _serve_store(tmp_path, "--durability", durability)
    async with run_server(make_ctx(store)) as server:
        r = await server.request("PUT", S + "d", [("Content-Type", "application/json")])
        assert r.status == 201
        log = store._streams["d"].log
        before = nat._test_sync_count()
        if durability == "interval":
            nat._test_fail_next_sync(1 << 30)  # every flush fails, the flusher's too
        try:
            values = await _append_close_and_read(server, n)
        finally:
            nat._test_fail_next_sync(0)
        assert values == [{"i": i} for i in range(n)]
        synced = nat._test_sync_count() - before
        if durability == "never":
            assert synced == 0, f"{synced} fdatasync calls under --durability never"
            assert log.durable_offset < log.end_offset
        elif durability == "always":
            assert synced >= n + 1  # one per acknowledged append and the close at least
            assert log.durable_offset == log.end_offset
        else:
            with anyio.fail_after(10):  # liveness bound, not a timing assertion
                while log.durable_offset < log.end_offset:
                    await anyio.sleep(0.005)
    await store.aclose()
