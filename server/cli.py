"""The ``unbroken`` command: ``unbroken bench engine`` today, ``serve``,
``verify`` and ``inspect`` as their issues land."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unbroken`` command."""
    parser = argparse.ArgumentParser(
        prog="unbroken",
        description="Unbroken: a durable event-stream store (Durable Streams protocol).")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench_sub = bench.add_subparsers(dest="target", required=True)
    from unbroken_benches import engine as engine_bench

    engine_bench.add_arguments(bench_sub.add_parser(
        "engine", help="in-process engine benchmarks (appends, reads, recovery)",
        description=engine_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``unbroken`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.target == "engine":
        from unbroken_benches import engine as engine_bench

        return engine_bench.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
