"""The real command, in a subprocess: ``python -m unbroken_server serve``.

* kill -9 at a random moment while clients append: after a restart on the
  same data directory every acknowledged append is there, exactly once, in
  acknowledgement order;
* SIGTERM while clients append and an SSE reader follows: exit 0, "stopped
  cleanly", the reader gets a final control event, nothing acknowledged is lost;
* the command line: --help, ONEPIPE_STREAMS_PORT, the flags that reach the
  server, a port already in use.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

S = "/v1/stream/"
START_LINE = re.compile(r"unbroken: serving http://127\.0\.0\.1:(\d+)/v1/stream/ from ")
STARTUP_TIMEOUT = 30


def _without_shared_store(environ) -> dict:
    """The environment minus REDIS_URL / DATABASE_URL, which would make
    ``unbroken serve`` without ``--store`` open a shared store, not the file store."""
    return {k: v for k, v in environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}


class ServerProcess:
    """``unbroken serve`` in a subprocess; its output is collected by threads."""

    def __init__(self, *args: str, cwd, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unbroken_server", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env={**_without_shared_store(os.environ), **(env or {})})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout,
                                                                    True), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr,
                                                                    False), daemon=True)]
        for t in self._threads:
            t.start()
        self.port = None

    def _pump(self, pipe, sink, announce):
        for line in pipe:
            sink.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def wait_started(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no start-up line; stderr: {''.join(self.stderr)}")
            if line is None:
                raise AssertionError(f"server exited: {self.proc.wait()} "
                                     f"{''.join(self.stdout)} {''.join(self.stderr)}")
            m = START_LINE.search(line)
            if m:
                self.port = int(m.group(1))
                return self.port

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


@pytest.fixture
def servers(tmp_path):
    """Start servers with ``servers(*args)``; every one still running is killed after."""
    started: list[ServerProcess] = []

    def start(*args: str, env=None) -> ServerProcess:
        sp = ServerProcess(*args, cwd=tmp_path, env=env)
        started.append(sp)
        return sp
    yield start
    for sp in started:
        sp.kill()
        for pipe in (sp.proc.stdout, sp.proc.stderr):
            pipe.close()


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
    assert sp.wait(timeout=15) == 0, sp.output()
    writers.join()
    reader.join(timeout=10)
    assert "stopped cleanly" in "".join(sp.stdout), sp.output()
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
    assert "ONEPIPE_STREAMS_PORT" in sp.output()


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
