"""Server processes for the OnePipe tests.

Test files run in importlib mode and cannot import each other, so the two
process helpers reach them as session fixtures that return the classes:

* ``ready_process`` -- :class:`ReadyProcess`: any server command that prints
  a ready line with its URL (``unbroken serve``, the reference server's
  launcher); its output is kept by a thread.
* ``unbroken_server`` -- :class:`UnbrokenServer`: ``unbroken serve`` on the
  file store, restartable on the same port and data directory.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

STARTUP_TIMEOUT = 60  # s, until a server prints its ready line
SHUTDOWN_TIMEOUT = 30  # s, SIGTERM to exit
SERVING = re.compile(r"unbroken: serving (http://127\.0\.0\.1:(\d+))/v1/stream/ ")
#: variables that would make `unbroken serve` or `connect()` pick something else
FOREIGN_ENV = ("REDIS_URL", "DATABASE_URL", "ONEPIPE_STREAMS_URL", "ONEPIPE_STREAMS_MODE",
               "ONEPIPE_STREAMS_PORT")


def clean_env(**extra: str) -> dict:
    """This environment without :data:`FOREIGN_ENV` (so ``unbroken serve``
    opens the file store), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(extra)
    return env


def tail(lines, n: int = 40) -> str:
    """The last ``n`` lines, indented, for a failure message."""
    lines = list(lines)[-n:]
    return "\n".join("    " + line.rstrip("\n") for line in lines) or "    (no output)"


class ReadyProcess:
    """``cmd`` in a subprocess whose stdout (and stderr) a thread keeps in
    :attr:`lines`; :attr:`url` is group 1 of the first line ``ready`` matches."""

    def __init__(self, cmd: list[str], ready: re.Pattern, *, cwd, env: dict):
        self.cmd = cmd
        self.lines: list[str] = []
        self.match: re.Match | None = None
        self._ready_re = ready
        self._ready = threading.Event()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.match is None:
                self.match = self._ready_re.search(line)
                if self.match:
                    self._ready.set()
        self._ready.set()  # the output ended: the server is gone

    @property
    def url(self) -> str | None:
        return self.match.group(1) if self.match else None

    def wait_ready(self) -> str:
        """The URL, once the ready line came. :raises AssertionError: it did
        not within ``STARTUP_TIMEOUT`` (with the output)."""
        self._ready.wait(STARTUP_TIMEOUT)
        if self.match is None:
            state = "running" if self.proc.poll() is None else f"exit {self.proc.returncode}"
            raise AssertionError(f"`{' '.join(map(str, self.cmd))}` printed no ready line "
                                 f"within {STARTUP_TIMEOUT} s ({state}):\n{tail(self.lines)}")
        return self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal it (SIGTERM: a clean stop; SIGKILL: a crash) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self.proc.stdout.close()


class UnbrokenServer:
    """``unbroken serve`` on the file store in ``data_dir``; :meth:`start`
    again after :meth:`kill` serves the same port and data."""

    def __init__(self, data_dir, port: int = 0):
        self.data_dir = data_dir
        self.port = port
        self.process: ReadyProcess | None = None

    def start(self) -> "UnbrokenServer":
        cmd = [sys.executable, "-m", "unbroken_server", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--store", "file", "--data-dir", str(self.data_dir)]
        self.process = ReadyProcess(cmd, SERVING, cwd=self.data_dir.parent,
                                    env=clean_env(PYTHONUNBUFFERED="1"))
        self.process.wait_ready()
        self.port = int(self.process.match.group(2))
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
            self.process.stop(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean stop."""
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="session")
def ready_process():
    return ReadyProcess


@pytest.fixture(scope="session")
def unbroken_server():
    return UnbrokenServer
