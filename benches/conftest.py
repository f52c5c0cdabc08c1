"""pytest-benchmark suites of the engine: fixtures and collection.

Run every suite with one command, from the repository root::

    python -m pytest benches -p no:cacheprovider --benchmark-only

or one file, or with pytest's own file pattern::

    python -m pytest benches/bench_log.py -p no:cacheprovider --benchmark-only
    python -m pytest benches -o python_files='bench_*.py' -p no:cacheprovider --benchmark-only

The project's pytest configuration collects ``tests/`` and files named
``test_*.py``; the ``pytest_collect_file`` hook below adds ``bench_*.py`` when
``benches`` is given as a directory (and steps aside when pytest collects them
itself, so nothing is collected twice). Useful extras: ``-k crc32c``,
``--benchmark-columns=min,median,ops,rounds``, ``--benchmark-json=out.json``.
Tables are grouped by the ``group`` of ``@pytest.mark.benchmark``: ``native``,
``append``, ``read``.

Logs live in pytest's ``tmp_path``; every log a fixture opens is closed at
teardown.
"""
from __future__ import annotations

import fnmatch
import shutil

import pytest

from unbroken_engine import Durability, LogConfig, SegmentedLog

BENCH_FILES = "bench_*.py"


def _matches(path, patterns) -> bool:
    """pytest's rule: a pattern without "/" matches the file name."""
    return any(fnmatch.fnmatch(path.name if "/" not in pat else str(path), pat)
               for pat in patterns)


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, BENCH_FILES):
        return None
    if parent.session.isinitpath(file_path) or _matches(
            file_path, parent.config.getini("python_files")):
        return None  # pytest's python plugin collects it already
    ihook = parent.session.gethookproxy(file_path)
    return ihook.pytest_pycollect_makemodule(module_path=file_path, parent=parent)


class LogFactory:
    """Opens logs in fresh directories under ``root``; closes them all at the end."""

    def __init__(self, root):
        self.root = root
        self.logs: list[SegmentedLog] = []
        self._n = 0

    def open(self, durability: Durability = Durability.NEVER, **config) -> SegmentedLog:
        self._n += 1
        log = SegmentedLog.open(self.root / f"log{self._n}",
                                LogConfig(durability=durability, **config))
        self.logs.append(log)
        return log

    def fresh(self, durability: Durability = Durability.NEVER, **config) -> SegmentedLog:
        """Close and delete the logs opened so far, then open a new one (for
        ``benchmark.pedantic(setup=...)``: each round starts on an empty log)."""
        self.close_all()
        return self.open(durability, **config)

    def close_all(self) -> None:
        for log in self.logs:
            log.close()
            shutil.rmtree(log.directory, ignore_errors=True)
        self.logs.clear()


@pytest.fixture
def logs(tmp_path):
    """A :class:`LogFactory` for this test."""
    factory = LogFactory(tmp_path)
    yield factory
    factory.close_all()
