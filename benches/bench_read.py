"""Catch-up reads of a prebuilt 32 MiB log of 1 KiB records (group "read").

Each call is one ``log.read(offset, max_bytes=1 MiB)``, every record's CRC
verified in C while its payload is copied out; successive calls walk the log
chunk by chunk and wrap around, so every chunk is read the same number of
times. The log was closed and reopened (recovered) after it was written; its
pages are in the page cache (warm segments).
"""
import itertools

import pytest

from unbroken_engine import Durability, LogConfig, SegmentedLog

DATA_1KB = b'{"pad":"' + b"x" * (1024 - 10) + b'"}'  # one record: a 1 KiB JSON object
CHUNK_1MB = 1024 * 1024  # max_bytes of one read
LOG_BYTES = 32 * 1024 * 1024
PASSES = 4

read = pytest.mark.benchmark(group="read")


@pytest.fixture(scope="module")
def catch_up_log(tmp_path_factory):
    """The 32 MiB log, and the offsets where its 1 MiB reads start."""
    path = tmp_path_factory.mktemp("read") / "log"
    config = LogConfig(durability=Durability.NEVER)
    with SegmentedLog.open(path, config) as log:
        payloads = [DATA_1KB] * 4096
        for _ in range(LOG_BYTES // len(DATA_1KB) // len(payloads)):
            log.write_batch(payloads)
    log = SegmentedLog.open(path, config)
    offsets, offset = [], log.start_offset
    while offset < log.end_offset:
        offsets.append(offset)
        offset = log.read(offset, CHUNK_1MB).next_offset
    yield log, offsets
    log.close()


def _read_chunks(benchmark, catch_up_log, json_mode):
    log, offsets = catch_up_log
    starts = itertools.cycle(offsets)
    benchmark.extra_info["max_bytes"] = CHUNK_1MB
    benchmark.extra_info["log_bytes"] = log.end_offset

    def one_read():
        return log.read(next(starts), CHUNK_1MB, json=json_mode)

    result = benchmark.pedantic(one_read, rounds=PASSES * len(offsets),
                                warmup_rounds=len(offsets))
    assert result.records > 0


@read
def test_read_octet_1mb(benchmark, catch_up_log):
    """One 1 MiB catch-up read in octet mode (payloads back to back)."""
    _read_chunks(benchmark, catch_up_log, json_mode=False)


@read
def test_read_json_1mb(benchmark, catch_up_log):
    """One 1 MiB catch-up read in JSON mode (payloads joined into one array)."""
    _read_chunks(benchmark, catch_up_log, json_mode=True)
