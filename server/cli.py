"""The ``unbroken`` command: ``serve`` (the bundled server) and ``bench``."""
from __future__ import annotations

import argparse
import logging
import os
import sys

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

SERVE_DESCRIPTION = """\
Serve streams over HTTP with the Unbroken (Durable Streams) protocol.

Streams live under http://HOST:PORT/v1/stream/{path}; GET /health answers with
the server's status. With no options the server keeps its data in
.onepipe/streams/ under the current directory, listens on 127.0.0.1:9999 and
acknowledges an append only once it is on disk.

Examples:
  unbroken serve                                  the embedded default
  unbroken serve --port 0 --store memory          throwaway, any free port
  unbroken serve --durability interval            faster, may lose ~10 ms of
                                                  appends on a machine crash
  curl -X PUT localhost:9999/v1/stream/demo -H 'Content-Type: text/plain'
  curl -X POST localhost:9999/v1/stream/demo -H 'Content-Type: text/plain' -d hi
  curl 'localhost:9999/v1/stream/demo?offset=-1'

Stop it with Ctrl-C or SIGTERM: it stops accepting, lets appends in flight
finish, ends live readers with a final event, flushes, and exits 0.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unbroken`` command."""
    parser = argparse.ArgumentParser(
        prog="unbroken",
        description="Unbroken: a durable event-stream store (Durable Streams protocol).")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_arguments(sub.add_parser(
        "serve", help="run the HTTP server (default: file store in .onepipe/streams, port 9999)",
        description=SERVE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench_sub = bench.add_subparsers(dest="target", required=True)
    from unbroken_benches import engine as engine_bench

    engine_bench.add_arguments(bench_sub.add_parser(
        "engine", help="in-process engine benchmarks (appends, reads, recovery)",
        description=engine_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    from unbroken_benches import http as http_bench

    http_bench.add_arguments(bench_sub.add_parser(
        "http", help="HTTP server benchmarks (appends, catch-up reads, SSE latency), "
                     "optionally against the reference server",
        description=http_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    from . import operator as operator_tools

    operator_tools.add_verify_arguments(sub.add_parser(
        "verify", help="check a data directory offline (--repair fixes torn tails and indexes)",
        description=operator_tools.VERIFY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    operator_tools.add_inspect_arguments(sub.add_parser(
        "inspect", help="list the streams of a data directory, or show one in detail",
        description=operator_tools.INSPECT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _env_port() -> int:
    value = os.environ.get("ONEPIPE_STREAMS_PORT", "9999")
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"unbroken: ONEPIPE_STREAMS_PORT must be a port number, not {value!r}")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $ONEPIPE_STREAMS_PORT or 9999; 0 picks a free one)")
    p.add_argument("--data-dir", default=".onepipe/streams",
                   help="where the file store keeps its streams (default: %(default)s)")
    p.add_argument("--store", default="file", choices=["file", "memory"],
                   help="file: durable, in --data-dir (default); memory: nothing survives")
    p.add_argument("--durability", default="always", choices=["always", "interval", "never"],
                   help="always: ack after fdatasync, shared by concurrent appends (default); "
                        "interval: flush every 10 ms, ack before; never: the OS decides")
    p.add_argument("--long-poll-timeout", type=float, default=2.0, metavar="SECONDS",
                   help="how long a long-poll waits before 204 (default: %(default)s)")
    p.add_argument("--max-body", type=int, default=16 << 20, metavar="BYTES",
                   help="largest request body; larger gets 413 (default: %(default)s = 16 MiB)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


class _ListenError(Exception):
    """The server could not bind its address (its cause is the OSError)."""


def serve_main(args) -> int:
    """``unbroken serve``: open the store, serve until signalled, flush, exit 0."""
    import anyio

    from unbroken_engine import FileBackedStreamStore, MemoryStreamStore
    from unbroken_engine.log import Durability, LogConfig

    from .app import serve
    from .handlers import ServerConfig, ServerContext

    port = _env_port() if args.port is None else args.port
    if args.store == "memory":
        store, where = MemoryStreamStore(), "memory store (nothing is kept)"
    else:
        config = LogConfig(durability=Durability(args.durability))
        store = FileBackedStreamStore(args.data_dir, config)
        where = (f"file store in {os.path.abspath(args.data_dir)} "
                 f"(durability {args.durability}; {store.recovery.summary()})")
    # configured after opening the store: its recovery line is part of ours
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    ctx = ServerContext(store, ServerConfig(long_poll_timeout=args.long_poll_timeout,
                                            max_body=args.max_body))

    async def run():
        async with anyio.create_task_group() as tg:
            try:
                bound = await tg.start(serve, ctx, args.host, port)
            except OSError as exc:
                raise _ListenError(exc) from exc
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"unbroken: serving http://{host}:{bound}/v1/stream/ from {where}",
                  flush=True)
        await store.aclose()

    try:
        anyio.run(run)
    except (_ListenError, BaseExceptionGroup) as exc:
        failure = exc
        while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
            failure = failure.exceptions[0]  # unwrap the task groups' wrapping
        if not isinstance(failure, _ListenError):
            raise
        cause = failure.__cause__
        print(f"unbroken: cannot listen on {args.host}:{port}: {cause.strerror or cause}",
              file=sys.stderr)
        return 1
    print("unbroken: stopped cleanly", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``unbroken`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve_main(args)
    if args.command == "bench" and args.target == "engine":
        from unbroken_benches import engine as engine_bench

        return engine_bench.run(args)
    if args.command == "bench" and args.target == "http":
        from unbroken_benches import http as http_bench

        return http_bench.run(args)
    if args.command in ("verify", "inspect"):
        from . import operator as operator_tools

        return operator_tools.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
