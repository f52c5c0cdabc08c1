"""Appends to a SegmentedLog on real segment files (group "append").

``test_write_*`` time one ``log.write`` per call on one log per test (it grows
across rounds, so segment rolls land in some rounds: watch max, not only
median). ``test_write_batch_*`` time one ``write_batch`` of ``BATCH`` records
per round, each round on an empty log (``setup=logs.fresh``); divide by
``BATCH`` for a record. ``test_append_always_*`` time one ``log.append`` that
returns only once its record is on disk (one fdatasync per call: one writer, so
no group commit). ``unbroken bench engine`` measures concurrent writers.
"""
import random

import pytest

from unbroken_engine import Durability

_random = random.Random(20241009)
DATA_64B = _random.randbytes(64)
DATA_1KB = _random.randbytes(1024)
DATA_64KB = _random.randbytes(64 * 1024)
DATA_1MB = _random.randbytes(1024 * 1024)
BATCH = 1000

append = pytest.mark.benchmark(group="append")


def _write(benchmark, log, payload, iterations, rounds):
    benchmark.extra_info["bytes_per_call"] = len(payload)
    benchmark.pedantic(log.write, args=(payload,), iterations=iterations, rounds=rounds,
                       warmup_rounds=1)
    assert log.end_offset > 0


def _write_batch(benchmark, logs, payload, rounds):
    payloads = [payload] * BATCH
    benchmark.extra_info["records_per_round"] = BATCH
    benchmark.extra_info["bytes_per_round"] = BATCH * len(payload)

    def setup():
        return (logs.fresh(Durability.NEVER), payloads), {}

    benchmark.pedantic(lambda log, p: log.write_batch(p), setup=setup, rounds=rounds,
                       warmup_rounds=1)


def _append_always(benchmark, logs, payload, iterations, rounds):
    log = logs.open(Durability.ALWAYS)
    benchmark.extra_info["bytes_per_call"] = len(payload)
    benchmark.pedantic(log.append, args=(payload,), iterations=iterations, rounds=rounds,
                       warmup_rounds=1)
    assert log.durable_offset == log.end_offset


@append
def test_write_64b(benchmark, logs):
    """One 64-byte record per call, durability NEVER."""
    _write(benchmark, logs.open(), DATA_64B, iterations=1000, rounds=100)


@append
def test_write_1kb(benchmark, logs):
    """One 1 KiB record per call, durability NEVER."""
    _write(benchmark, logs.open(), DATA_1KB, iterations=500, rounds=60)


@append
def test_write_64kb(benchmark, logs):
    """One 64 KiB record per call, durability NEVER."""
    _write(benchmark, logs.open(), DATA_64KB, iterations=64, rounds=32)


@append
def test_write_1mb(benchmark, logs):
    """One 1 MiB record per call, durability NEVER."""
    _write(benchmark, logs.open(), DATA_1MB, iterations=8, rounds=24)


@append
def test_write_batch_64b(benchmark, logs):
    """write_batch of 1000 64-byte records into an empty log, NEVER."""
    _write_batch(benchmark, logs, DATA_64B, rounds=100)


@append
def test_write_batch_1kb(benchmark, logs):
    """write_batch of 1000 1 KiB records into an empty log, NEVER."""
    _write_batch(benchmark, logs, DATA_1KB, rounds=50)


@append
def test_write_batch_64kb(benchmark, logs):
    """write_batch of 1000 64 KiB records (62.5 MiB) into an empty log, NEVER."""
    _write_batch(benchmark, logs, DATA_64KB, rounds=8)


@append
def test_append_always_64b(benchmark, logs):
    """One 64-byte record per call, on disk before it returns (ALWAYS, one writer)."""
    _append_always(benchmark, logs, DATA_64B, iterations=20, rounds=20)


@append
def test_append_always_1kb(benchmark, logs):
    """One 1 KiB record per call, on disk before it returns (ALWAYS, one writer)."""
    _append_always(benchmark, logs, DATA_1KB, iterations=20, rounds=20)


@append
def test_append_always_64kb(benchmark, logs):
    """One 64 KiB record per call, on disk before it returns (ALWAYS, one writer)."""
    _append_always(benchmark, logs, DATA_64KB, iterations=20, rounds=20)
