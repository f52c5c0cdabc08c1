"""Benchmarks: pytest-benchmark suites (``bench_*.py``) and the workloads behind
``unbroken bench`` (import name ``unbroken_benches``)."""
