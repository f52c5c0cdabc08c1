"""The official Durable Streams conformance suite against ``unbroken serve``.

For each store (file, memory, and Redis and PostgreSQL when ``REDIS_URL`` /
``DATABASE_URL`` name one) this starts ``unbroken serve --port 0`` in a
subprocess, runs ``@durable-streams/server-conformance-tests`` (pinned in
package.json / package-lock.json beside this file) with vitest, and asserts:

* no test failed (the message names every failing test and shows the tails of
  the vitest log and of the server's output);
* the suite has its 338 tests and at least 332 passed (6 are skipped unless
  subscriptions are enabled), so a suite that silently shrank fails;
* SIGTERM stops the server with exit status 0 within 15 s.

Needs node >= 18 and npm; skipped without them. The npm packages are installed
once per session with ``npm ci`` into tests/conformance/node_modules unless
they are already there at the pinned versions (registry access needed then);
UNBROKEN_CONFORMANCE_SKIP_INSTALL=1 skips that step. (That is the
``node_toolchain`` fixture of tests/conftest.py.)

Run it:  pytest tests/conformance        (or: pytest -m conformance)
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.conformance

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
EXPECTED_TOTAL = 338  # tests in the suite at 0.3.6
EXPECTED_RUN = 332  # all but the 6 "Reserved subscription APIs" tests

STARTUP_TIMEOUT = 60  # s, until the server prints where it listens
SUITE_TIMEOUT = 1800  # s, one vitest run (about a minute normally)
SHUTDOWN_TIMEOUT = 15  # s, SIGTERM to exit
TAIL_LINES = 60

SERVING = re.compile(r"unbroken: serving (http://\S+?)/v1/stream/")


# --------------------------------------------------------------------------- node / npm
#
# The ``node_toolchain`` fixture (tests/conftest.py, shared with the other
# node tests) skips without node/npm and runs ``npm ci`` here when needed.


# --------------------------------------------------------------------------- the server


def _server_command() -> list[str]:
    exe = Path(sys.executable).with_name("unbroken")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "unbroken_server"]


class Server:
    """``unbroken serve`` in a subprocess; its output is kept, the pipe drained."""

    def __init__(self, store: str, data_dir: Path, cwd: Path, extra: tuple = ()):
        self.cmd = _server_command() + ["serve", "--host", "127.0.0.1", "--port", "0",
                                        "--store", store, "--data-dir", str(data_dir),
                                        *extra]
        self.lines: collections.deque[str] = collections.deque(maxlen=2000)
        self.base_url: str | None = None
        self._ready = threading.Event()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("ONEPIPE_STREAMS_PORT", None)
        self.proc = subprocess.Popen(
            self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.base_url is None:
                m = SERVING.search(line)
                if m:
                    self.base_url = m.group(1)
                    self._ready.set()
        self._ready.set()  # output ended: the server is gone

    def wait_ready(self, timeout: float) -> str:
        self._ready.wait(timeout)
        if self.base_url is None:
            state = ("still running" if self.proc.poll() is None
                     else f"exited with {self.proc.returncode}")
            raise AssertionError(
                f"`{' '.join(self.cmd)}` printed no 'unbroken: serving http://...' line "
                f"within {timeout} s ({state}); its output:\n{self.tail()}")
        return self.base_url

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, then wait; returns (exit status or None if it hung, seconds)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            self.proc.kill()
            self.proc.wait()
        elapsed = time.monotonic() - t0
        self._reader.join(5)
        return rc, elapsed

    def tail(self, n: int = TAIL_LINES) -> str:
        lines = list(self.lines)[-n:]
        return "\n".join("    " + line for line in lines) or "    (no output)"


# --------------------------------------------------------------------------- vitest


def _tail(text: str, n: int = TAIL_LINES) -> str:
    lines = text.splitlines()[-n:]
    return "\n".join("    " + line for line in lines) or "    (no output)"


def _run_vitest(node: str, base_url: str, results: Path, log: Path) -> tuple[int | None, float]:
    """Runs the suite; returns (vitest's exit status or None on timeout, seconds)."""
    env = dict(os.environ, STREAM_URL=base_url, UNBROKEN_CONFORMANCE_JSON=str(results),
               NODE_ENV="test", NO_COLOR="1", FORCE_COLOR="0")
    cmd = [node, str(NODE_MODULES / ".bin" / "vitest"), "run", "--config", "vitest.config.mjs"]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(SUITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
            try:  # vitest and its workers
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return rc, time.monotonic() - t0


def _first_lines(message: str, n: int = 3, width: int = 400) -> str:
    """The gist of a failure message: its first lines, without stack frames."""
    lines = [line.strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith("at ")]
    return " / ".join(lines[:n])[:width]


def _failures(report: dict) -> list[str]:
    """Every failing test (full name and first lines of its message), and
    every test file that failed outside a test (e.g. could not load)."""
    found = []
    for f in report.get("testResults", []):
        failing = [a for a in f.get("assertionResults", []) if a.get("status") == "failed"]
        for a in failing:
            name = a.get("fullName") or " > ".join([*a.get("ancestorTitles", []), a.get("title", "?")])
            why = " | ".join(_first_lines(m) for m in a.get("failureMessages", []))
            found.append(f"{name}\n        {why}" if why else name)
        if f.get("status") == "failed" and not failing:
            found.append(f"(file {f.get('name')}) {f.get('message', '').strip()[:500]}")
    return found


# --------------------------------------------------------------------------- the test


SHARED = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}


def _shared_store(store: str) -> tuple[str, tuple, str]:
    """``(--store value, extra arguments, prefix)`` for a shared backend: the
    URL from the environment and a key prefix / schema of this run alone."""
    url = os.environ.get(SHARED[store]) or pytest.skip(
        f"{SHARED[store]} is not set: no {store} server to run the suite against")
    prefix = f"conf{uuid.uuid4().hex[:10]}" + (":" if store == "redis" else "")
    return url, ("--store-prefix", prefix), prefix


def _drop_shared(store: str, url: str, prefix: str) -> None:
    import asyncio

    if store == "redis":
        from unbroken_engine.stores.shared.redis import RedisBackend as backend

        b = backend(url, prefix=prefix)
    else:
        from unbroken_engine.stores.shared.postgres import PostgresBackend as backend

        b = backend(url, schema=prefix)
    asyncio.run(b.drop_everything())


@pytest.mark.parametrize("store", ["file", "memory", "redis", "postgres"])
def test_conformance(store, node_toolchain, tmp_path, record_property):
    node, _ = node_toolchain
    results, log = tmp_path / "results.json", tmp_path / "vitest.log"
    arg, extra, prefix = (store, (), None) if store not in SHARED else _shared_store(store)
    server = Server(arg, tmp_path / "data", cwd=tmp_path, extra=extra)
    problems: list[str] = []
    suite_rc = suite_seconds = None
    try:
        base_url = server.wait_ready(STARTUP_TIMEOUT)
        suite_rc, suite_seconds = _run_vitest(node, base_url, results, log)
    finally:
        server_rc, stop_seconds = server.stop(SHUTDOWN_TIMEOUT)
        if prefix is not None:
            _drop_shared(store, arg, prefix)

    vitest_log = log.read_text(errors="replace") if log.exists() else ""
    tails = (f"--- tail of the vitest log ({log}):\n{_tail(vitest_log)}\n"
             f"--- tail of the server's output (`{' '.join(server.cmd)}`):\n{server.tail()}")

    report = None
    if suite_rc is None:
        problems.append(f"vitest did not finish within {SUITE_TIMEOUT} s (killed)")
    if results.exists():
        try:
            report = json.loads(results.read_text())
        except ValueError as exc:
            problems.append(f"unreadable vitest JSON report {results}: {exc}")
    elif suite_rc is not None:
        problems.append(f"vitest (exit {suite_rc}) wrote no JSON report to {results}")

    if report is not None:
        total, passed = report.get("numTotalTests"), report.get("numPassedTests")
        failed, skipped = report.get("numFailedTests"), report.get("numPendingTests")
        summary = (f"[conformance] store={store}: total {total}, passed {passed}, "
                   f"failed {failed}, skipped {skipped}; suite {suite_seconds:.1f} s, "
                   f"shutdown {stop_seconds:.1f} s")
        print("\n" + summary)
        for key, value in [("total", total), ("passed", passed), ("failed", failed),
                           ("skipped", skipped), ("suite_seconds", round(suite_seconds, 1))]:
            record_property(f"conformance_{key}", value)
        failing = _failures(report)
        if failed or failing:
            problems.append(f"{failed} conformance test(s) failed against --store {store}:\n"
                            + "\n".join(f"  - {name}" for name in failing))
        if total != EXPECTED_TOTAL or (passed or 0) < EXPECTED_RUN:
            problems.append(f"expected {EXPECTED_TOTAL} tests with >= {EXPECTED_RUN} passed, "
                            f"got total {total}, passed {passed}, skipped {skipped} "
                            "(did the suite or its pin change?)")
        if suite_rc not in (0, None) and not problems:
            problems.append(f"vitest exited {suite_rc} although no test failed")

    if server_rc is None:
        problems.append(f"the server did not exit within {SHUTDOWN_TIMEOUT} s of SIGTERM (killed)")
    elif server_rc != 0:
        problems.append(f"the server exited {server_rc} after SIGTERM, not 0 (graceful shutdown)")

    if problems:
        pytest.fail("\n\n".join(problems) + "\n\n" + tails, pytrace=False)
