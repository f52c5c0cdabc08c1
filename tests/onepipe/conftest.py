"""Server processes for the OnePipe tests.

Test files run in importlib mode and cannot import each other; the process
helpers live in tests/support/server.py and reach these tests as session
fixtures that return the classes:

* ``ready_process`` -- :class:`support.server.ReadyProcess`: any server
  command that prints a ready line with its URL (the reference server's
  launcher); its output is kept by threads.
* ``unbroken_server`` -- :class:`support.server.UnbrokenServer`: ``unbroken
  serve`` on the file store, restartable on the same port and data directory.
"""
from __future__ import annotations

import pytest

from support.server import ReadyProcess, UnbrokenServer


@pytest.fixture(scope="session")
def ready_process():
    return ReadyProcess


@pytest.fixture(scope="session")
def unbroken_server():
    return UnbrokenServer
