"""Servers under test: starting a server subprocess and waiting for its
ready line, stopping it, its CPU use; the launchers of ``unbroken serve``'s
peers (the reference server, the trivial sink)."""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .options import base_url, split_url

# where `npm install @durable-streams/server@0.3.7` puts it, run in the current directory
DEFAULT_REFERENCE_MODULE = os.path.join("node_modules", "@durable-streams", "server")
REFERENCE_ENV = "UNBROKEN_BENCH_REFERENCE"
LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "reference_server.mjs")


@dataclass
class Server:
    """A server to measure: a URL, and our child process when we started it."""

    name: str
    url: str
    description: str
    proc: subprocess.Popen | None = None
    log_path: str | None = None
    _drain: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The host part of ``url``."""
        return split_url(self.url)[0]

    @property
    def port(self) -> int:
        """The port of ``url``."""
        return split_url(self.url)[1]

    @property
    def pid(self) -> int | None:
        """Our child process's pid, None when we did not start it."""
        return self.proc.pid if self.proc else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of our child process so far (Linux), else None."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        """:raises RuntimeError: our child process has exited (with its last output)"""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} server exited with status {self.proc.returncode}"
                               f"{log_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM our child process (SIGKILL after 15 s) and wait until its
        output is in the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._drain is not None:
            self._drain.join(5)


def log_tail(path: str | None, lines: int = 15) -> str:
    """The last ``lines`` lines of the log at ``path``, for an error message."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        tail = f.readlines()[-lines:]
    return "\n  ... last lines of its output (" + path + "):\n  " + "  ".join(tail)


def start_process(name: str, description: str, cmd: list[str], ready: re.Pattern,
                  log_path: str, timeout: float = 60.0, env: dict | None = None) -> Server:
    """Start ``cmd``; its stdout and stderr go to ``log_path``; returns once a
    stdout line matches ``ready`` (whose group 1 is the base URL)."""
    log = open(log_path, "w", buffering=1)
    # run beside its log, not in the caller's directory: "python -m" puts the
    # working directory first on sys.path, and a source checkout there would
    # shadow the installed (compiled) package
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1, env=env, start_new_session=True,
                            cwd=os.path.dirname(os.path.abspath(log_path)))
    found: queue.Queue = queue.Queue()

    def drain():
        matched = False
        for line in proc.stdout:
            log.write(line)
            if not matched:
                m = ready.search(line)
                if m:
                    matched = True
                    found.put(m.group(1))
        found.put(None)
        log.close()

    thread = threading.Thread(target=drain, name=f"{name}-stdout", daemon=True)
    thread.start()
    try:
        url = found.get(timeout=timeout)
    except queue.Empty:
        url = None
    if url is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        thread.join(5)
        raise RuntimeError(f"{name} server did not start (no ready line within {timeout:g} s)"
                           f"{log_tail(log_path)}")
    return Server(name, base_url(url), description, proc, log_path, thread)


UNBROKEN_READY = re.compile(r"serving (http://\S+?)/v1/stream/")   # `unbroken serve` is up
_REFERENCE_READY = re.compile(r"reference: ready (http://\S+)")
_SINK_READY = re.compile(r"sink: ready (http://\S+)")


def reference_entry(module: str | None) -> str:
    """The reference package's ESM entry file, from a package dir or a file path."""
    path = module or os.environ.get(REFERENCE_ENV) or DEFAULT_REFERENCE_MODULE
    if os.path.isdir(path):
        path = os.path.join(path, "dist", "index.js")
    if not os.path.isfile(path):
        raise RuntimeError(f"reference server package not found at {path}: install it with "
                           f"`npm install @durable-streams/server@0.3.7` in this directory, "
                           f"or give --reference-module or set ${REFERENCE_ENV}")
    return os.path.abspath(path)


def reference_version(entry: str) -> str | None:
    """The reference package's version (its package.json), None when unknown."""
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(entry)), "package.json")) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


def start_reference(node: str, module: str | None, data_dir: str, log_path: str) -> Server:
    """Start the reference server (@durable-streams/server, file-backed in
    ``data_dir``) with ``node`` through LAUNCHER, on a free port.

    :param module: its package directory or entry file (see :func:`reference_entry`)
    """
    if shutil.which(node) is None:
        raise RuntimeError(f"--compare-reference needs node ({node!r} is not on PATH)")
    entry = reference_entry(module)
    version = reference_version(entry) or "?"
    cmd = [node, LAUNCHER, "0", data_dir, entry]
    return start_process("reference", f"@durable-streams/server {version} (file-backed, "
                         f"fsync per append)", cmd, _REFERENCE_READY, log_path)


def start_sink(log_path: str) -> Server:
    """Start the trivial server (:mod:`.sink`) on a free port."""
    cmd = [sys.executable, "-m", "unbroken_benches.harness.sink", "sink", "0"]
    return start_process("ceiling", "trivial server (answers at once)", cmd, _SINK_READY,
                         log_path)


class CpuMeter:
    """CPU use of the server processes (added up) and of this process over a window."""

    def __init__(self, *servers: Server):
        self.servers = list({id(s): s for s in servers}.values())  # Server is not hashable
        self.wall = time.perf_counter()
        self.client = time.process_time()
        self.srv = [s.cpu_seconds() for s in self.servers]

    def stop(self) -> tuple[float, float | None, float]:
        """``(seconds, servers' cpu share, client cpu share)`` since construction;
        the servers' share is None unless every one is our child process."""
        seconds = time.perf_counter() - self.wall
        client = (time.process_time() - self.client) / seconds if seconds > 0 else None
        now = [s.cpu_seconds() for s in self.servers]
        srv = None
        if seconds > 0 and None not in now and None not in self.srv:
            srv = sum(n - b for n, b in zip(now, self.srv)) / seconds
        return seconds, srv, client


def child_env(environ=os.environ) -> dict:
    """The servers' environment: ours minus REDIS_URL and DATABASE_URL (which
    would pick a store when --store is absent; here it never is, but a server
    must not be told two things)."""
    return {k: v for k, v in environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}


def serve_command(store_arg: str, prefix: str | None, data_dir: str,
                  durability: str = "always") -> list[str]:
    """The ``unbroken serve`` command line of one instance on a free port.

    :param store_arg: ``--store``: ``file`` or a shared store's URL
    :param prefix: ``--store-prefix`` of a shared store, or None
    :param durability: ``--durability`` of the file store
    """
    cmd = [sys.executable, "-m", "unbroken_server", "serve", "--host", "127.0.0.1",
           "--port", "0", "--store", store_arg]
    if prefix is not None:
        cmd += ["--store-prefix", prefix]
    cmd += ["--data-dir", data_dir, "--log-level", "warning"]
    if store_arg == "file":
        cmd += ["--durability", durability]
    return cmd
