"""Fixtures for the fault-injection and fuzzing tests (tests/faults/).

Test files run in importlib mode and cannot import each other, so the shared
helpers live here and reach the tests through fixtures:

* ``tmpfs(size)`` -- mount a fresh tmpfs of ``size`` bytes in the test's temp
  directory and return a :class:`Tmpfs` (``path``, ``free()``, ``fill(leave)``,
  ``remount(size)``); it is unmounted at teardown. Skips (with the reason)
  when not root or when ``mount -t tmpfs`` is refused (a container without
  CAP_SYS_ADMIN, for instance).
* ``server_process(data_dir)`` -- ``python -m unbroken_server serve`` on port 0
  in a subprocess (file store, ``--durability always``), started: a
  :class:`support.server.ServerProcess` with ``port``, ``request()``,
  ``stop()`` and the collected ``output``. Killed at teardown if still running.
* ``inprocess_server(store, **config)`` -- ``unbroken_server.app.serve`` for
  ``store`` on 127.0.0.1, port 0, in an event loop in a helper thread (anyio's
  blocking portal), so blocking code (``http.client``, raw sockets,
  hypothesis) can drive it; an :class:`InProcessServer` with ``port``,
  ``request()``, ``call(fn, *args)`` (run on the server's loop) and
  ``stop()``. Stopped and the store closed at teardown.
* ``faults_disarmed`` (autouse) -- the C test switches
  (``_native._test_fail_next_sync/_alloc``) are process-wide: every test
  starts and ends with none armed.

Every wait is bounded (``TIMEOUT``); no test asserts timing.
"""
from __future__ import annotations

import functools
import os
import subprocess

import anyio
import anyio.from_thread
import pytest

from support.server import HTTPResult, ServerProcess, http_request
from unbroken_engine import _native as nat

#: liveness bound for any single wait (never a timing assertion)
TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def faults_disarmed():
    nat._test_fail_next_sync(0)
    nat._test_fail_next_alloc(0)
    yield
    nat._test_fail_next_sync(0)
    nat._test_fail_next_alloc(0)


# ---- a small tmpfs ---------------------------------------------------------------------

class Tmpfs:
    """A mounted tmpfs: a disk that really fills up (ENOSPC), in memory."""

    def __init__(self, path, size: int):
        self.path = path
        self.size = size
        self._fillers = 0

    def free(self) -> int:
        """Bytes an unprivileged writer could still allocate."""
        v = os.statvfs(self.path)
        return v.f_bavail * v.f_frsize

    def fill(self, leave: int = 0) -> str:
        """Allocate a filler file so that exactly ``leave`` bytes stay free
        (``leave`` a multiple of the page size); returns its path."""
        self._fillers += 1
        path = os.path.join(self.path, f"filler-{self._fillers}")
        size = self.free() - leave
        assert size >= 0, f"only {self.free()} bytes free, cannot leave {leave}"
        with open(path, "wb") as f:
            if size:
                os.posix_fallocate(f.fileno(), 0, size)
        assert self.free() == leave
        return path

    def remount(self, size: int) -> None:
        """Grow (or shrink) the file system in place; files stay."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       capture_output=True, timeout=TIMEOUT)
        self.size = size


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: ``tmpfs(size_bytes)`` -> a mounted :class:`Tmpfs`."""
    mounted = []

    def mount(size: int, name: str = "disk") -> Tmpfs:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (the disk-full tests fill a real "
                        "file system)")
        path = tmp_path / name
        path.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                                   "tmpfs", str(path)], capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot run mount: {exc}")
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs refused here: {done.stderr.strip() or done.returncode}")
        mounted.append(path)
        return Tmpfs(path, size)

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy


# ---- the real command in a subprocess -------------------------------------------------------

@pytest.fixture
def server_process(tmp_path):
    """Factory: ``server_process(data_dir, *extra_args)`` -> a started
    :class:`support.server.ServerProcess` (port 0, ``--durability always``)."""
    started: list[ServerProcess] = []

    def start(data_dir, *extra: str) -> ServerProcess:
        sp = ServerProcess("--port", "0", "--data-dir", str(data_dir), "--durability", "always",
                           *extra, cwd=tmp_path)
        started.append(sp)
        sp.wait_started(TIMEOUT)
        return sp

    yield start
    for sp in started:
        sp.close()


# ---- the server in this process, on a loop in a helper thread --------------------------------

class InProcessServer:
    """``app.serve`` over ``store`` on an event loop in a helper thread."""

    def __init__(self, portal, store, config):
        from unbroken_server.app import serve
        from unbroken_server.context import ServerConfig, ServerContext

        self.portal = portal
        self.store = store
        self.ctx = ServerContext(store, ServerConfig(**config))
        self._future, self.port = portal.start_task(
            functools.partial(serve, handle_signals=False), self.ctx, "127.0.0.1", 0)
        self.stopped = False

    def call(self, fn, *args):
        """Run ``fn(*args)`` (sync or async) on the server's event loop."""
        return self.portal.call(fn, *args)

    def request(self, method: str, target: str, headers=None, body: bytes = b"",
                timeout: float = TIMEOUT) -> HTTPResult:
        return http_request(self.port, method, target, headers, body, timeout)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.portal.call(self.ctx.shutdown)
        self._future.result(timeout=TIMEOUT)
        self.portal.call(self.store.aclose)


@pytest.fixture
def inprocess_server():
    """Factory: ``inprocess_server(store, **server_config)`` -> a running
    :class:`InProcessServer` (stopped, and its store closed, at teardown)."""
    with anyio.from_thread.start_blocking_portal() as portal:
        servers: list[InProcessServer] = []

        def start(store, **config) -> InProcessServer:
            srv = InProcessServer(portal, store, config)
            servers.append(srv)
            return srv

        try:
            yield start
        finally:
            nat._test_fail_next_sync(0)  # a failed test may leave one armed:
            nat._test_fail_next_alloc(0)  # the store's final flush must not meet it
            for srv in servers:
                srv.stop()
