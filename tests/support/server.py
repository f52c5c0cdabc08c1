"""Server processes for tests: ``unbroken serve`` (or another server command)
in a subprocess, and plain HTTP against it.

Owns:

* :class:`ReadyProcess` -- any command in a subprocess whose output threads
  collect (``stdout``, ``stderr``, and both in arrival order in ``lines``);
  it is ready once a stdout line matches a pattern (``match``, ``url``).
  ``stop(sig)`` signals and reaps it (SIGKILL after ``STOP_TIMEOUT``),
  ``kill()`` is ``stop(SIGKILL)``, ``close()`` is the fixtures' teardown.
  The reference server's launcher (tests/onepipe) runs as one.
* :class:`ServerProcess` -- ``python -m unbroken_server serve *args`` as a
  ReadyProcess, in :func:`server_env` (no ``REDIS_URL`` / ``DATABASE_URL`` /
  ``ONEPIPE_STREAMS_*`` from the caller's environment, so it opens what its
  arguments say): ``wait_started()`` gives the port, ``request()`` one HTTP
  request, ``until_parked()`` the parked-reader poll.
* :class:`UnbrokenServer` -- ``unbroken serve`` on the file store that a
  restart brings back on the same port and data directory.
* :func:`http_request` (an :class:`HTTPResult`) and :func:`until_parked`:
  wait until ``GET /health`` reports ``parked_readers`` (the store-level
  poll is :func:`support.stores.until_parked`).

Every wait is bounded; none is a timing assertion.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

#: s, until a server prints its ready line
STARTUP_TIMEOUT = 60.0
#: s, from a signal to the process's exit (then SIGKILL)
STOP_TIMEOUT = 30.0
#: s, one HTTP request
REQUEST_TIMEOUT = 30.0
#: the line ``unbroken serve`` prints once it listens: group 1 the base URL, 2 the port
SERVING = re.compile(r"unbroken: serving (http://127\.0\.0\.1:(\d+))/v1/stream/ ")
#: variables that would make ``unbroken serve`` (or ``connect()``) pick something
#: other than what a test's arguments say
FOREIGN_ENV = ("REDIS_URL", "DATABASE_URL", "ONEPIPE_STREAMS_URL", "ONEPIPE_STREAMS_MODE",
               "ONEPIPE_STREAMS_PORT")


def server_env(**extra: str) -> dict:
    """This environment without :data:`FOREIGN_ENV`, unbuffered, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tail(lines, n: int = 40) -> str:
    """The last ``n`` lines, indented, for a failure message."""
    lines = list(lines)[-n:]
    return "\n".join("    " + line.rstrip("\n") for line in lines) or "    (no output)"


# ---- HTTP ----------------------------------------------------------------------------------

@dataclass
class HTTPResult:
    status: int
    headers: dict  # lower-case names
    body: bytes


def http_request(port: int, method: str, target: str, headers=None, body: bytes = b"",
                 timeout: float = REQUEST_TIMEOUT) -> HTTPResult:
    """One request on a fresh connection (http.client), response read whole."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return HTTPResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def until_parked(port: int, n: int = 1, timeout: float = 30) -> None:
    """Return once the server on ``port`` reports ``n`` live readers parked,
    waiting for data (``parked_readers`` of ``GET /health``); a reader that
    never parks fails the test."""
    deadline = time.monotonic() + timeout
    while json.loads(http_request(port, "GET", "/health").body)["parked_readers"] < n:
        assert time.monotonic() < deadline, f"fewer than {n} live readers parked"
        time.sleep(0.005)


# ---- processes -------------------------------------------------------------------------------

class ReadyProcess:
    """``cmd`` in a subprocess; threads collect its stdout and stderr.
    :attr:`match` is the first stdout line ``ready`` matches, :attr:`url`
    its group 1."""

    def __init__(self, cmd, ready: re.Pattern, *, cwd, env: dict):
        self.cmd = [str(c) for c in cmd]
        self.lines: list[str] = []  # stdout and stderr, as they came
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.match: re.Match | None = None
        self._ready_re = ready
        self._ready = threading.Event()
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False),
                             daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, pipe, sink: list, watch: bool) -> None:
        for line in pipe:
            sink.append(line)
            self.lines.append(line)
            if watch and self.match is None:
                self.match = self._ready_re.search(line)
                if self.match:
                    self._ready.set()
        if watch:
            self._ready.set()  # the output ended: the process is gone

    @property
    def url(self) -> str | None:
        return self.match.group(1) if self.match else None

    @property
    def output(self) -> str:
        """Everything it printed: stdout, then stderr."""
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The URL, once the ready line came. :raises AssertionError: it did
        not within ``timeout`` (with the output)."""
        self._ready.wait(timeout)
        if self.match is None:
            if self.proc.poll() is not None:
                self._join()
            state = "running" if self.proc.poll() is None else f"exit {self.proc.returncode}"
            raise AssertionError(f"`{' '.join(self.cmd)}` printed no ready line within "
                                 f"{timeout} s ({state}):\n{tail(self.lines)}")
        return self.url

    def _join(self) -> None:
        for t in self._threads:
            t.join(timeout=5)

    def wait(self, timeout: float) -> int:
        """Its exit status, once it exits by itself (and its output is in)."""
        rc = self.proc.wait(timeout=timeout)
        self._join()
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal it (SIGTERM: a clean stop; SIGKILL: a crash) and reap it;
        SIGKILL if it has not exited within ``timeout``. Its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()
        return rc

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Kill it if it still runs, reap it, close its pipes (a fixture's teardown)."""
        self.kill()


class ServerProcess(ReadyProcess):
    """``python -m unbroken_server serve *args`` in a subprocess, in
    :func:`server_env` plus ``env``. It does not wait: ``wait_started()``
    (the port) for a server that should start, ``wait(timeout)`` (the exit
    status) for one that should not."""

    def __init__(self, *args: str, cwd, env: dict | None = None):
        super().__init__([sys.executable, "-m", "unbroken_server", "serve", *args], SERVING,
                         cwd=cwd, env=server_env(**(env or {})))

    @property
    def port(self) -> int | None:
        return int(self.match.group(2)) if self.match else None

    def wait_started(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """The port, once it prints ``unbroken: serving http://...``."""
        self.wait_ready(timeout)
        return self.port

    def request(self, method: str, target: str, headers=None, body: bytes = b"",
                timeout: float = REQUEST_TIMEOUT) -> HTTPResult:
        return http_request(self.port, method, target, headers, body, timeout)

    def until_parked(self, n: int = 1, timeout: float = 30) -> None:
        until_parked(self.port, n, timeout)


class UnbrokenServer:
    """``unbroken serve`` on the file store in ``data_dir``; :meth:`start`
    again after :meth:`kill` serves the same port and data."""

    def __init__(self, data_dir, port: int = 0):
        self.data_dir = data_dir
        self.port = port
        self.process: ServerProcess | None = None

    def start(self) -> "UnbrokenServer":
        self.process = ServerProcess("--host", "127.0.0.1", "--port", str(self.port),
                                     "--store", "file", "--data-dir", str(self.data_dir),
                                     cwd=self.data_dir.parent)
        self.port = self.process.wait_started()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[str]:
        return self.process.lines if self.process else []

    def stream_url(self, path: str) -> str:
        return f"{self.url}/v1/stream/{path}"

    def kill(self) -> None:
        """SIGKILL: live responses break mid-stream."""
        if self.process is not None:
            self.process.close()

    def stop(self) -> None:
        """SIGTERM: a clean stop."""
        if self.process is not None:
            self.process.stop()
