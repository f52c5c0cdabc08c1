"""The ``unbroken`` command: ``serve`` (the bundled server) and ``bench``."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from unbroken_engine.log import Durability, LogConfig
from unbroken_engine.stores.file import DEFAULT_DATA_DIR

from .context import DEFAULT_HOST, DEFAULT_PORT, PORT_ENV, ServerConfig, env_port

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

SERVE_DESCRIPTION = """\
Serve streams over HTTP with the Unbroken (Durable Streams) protocol.

Streams live under http://HOST:PORT/v1/stream/{{path}}; GET /health answers with
the server's status. With no options the server keeps its data in
{data_dir}/ under the current directory, listens on {host}:{port} and
acknowledges an append only once it is on disk.

Examples:
  unbroken serve                                  the embedded default
  unbroken serve --port 0 --store memory          throwaway, any free port
  unbroken serve --durability interval            faster, may lose ~{flush} of
                                                  appends on a machine crash
  curl -X PUT localhost:{port}/v1/stream/demo -H 'Content-Type: text/plain'
  curl -X POST localhost:{port}/v1/stream/demo -H 'Content-Type: text/plain' -d hi
  curl 'localhost:{port}/v1/stream/demo?offset=-1'

Stop it with Ctrl-C or SIGTERM: it stops accepting, lets appends in flight
finish, ends live readers with a final event, flushes, and exits 0.
"""


#: ``unbroken bench KIND``: the module ``unbroken_benches.KIND`` and its one-line help
BENCHMARKS = {
    "engine": "in-process engine benchmarks (appends, reads, recovery)",
    "http": "HTTP server benchmarks (appends, catch-up reads, SSE latency), "
            "optionally against the reference server",
    "stores": "the HTTP server on each store side by side (file, Redis, two "
              "instances on one Redis, PostgreSQL): appends/s and SSE latency",
    "onepipe": "the OnePipe layer (Flow, Signal) in each mode of connect(), "
               "each figure beside a baseline without it",
}


def bench_module(kind: str):
    """The module of ``unbroken bench KIND`` (imported on first use)."""
    import importlib

    return importlib.import_module(f"unbroken_benches.{kind}")


class _BenchParser(argparse.ArgumentParser):
    """The parser of one ``unbroken bench KIND``: empty until it parses or
    shows its help, when the benchmark module is imported and adds its
    options and description. So ``unbroken serve`` never imports a
    benchmark, and a benchmark that fails to import breaks only itself."""

    def _load(self) -> None:
        if getattr(self, "_loaded", False):
            return
        self._loaded = True
        module = bench_module(self.prog.rsplit(" ", 1)[-1])
        self.description = module.__doc__
        module.add_arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unbroken`` command."""
    parser = argparse.ArgumentParser(
        prog="unbroken",
        description="Unbroken: a durable event-stream store (Durable Streams protocol).")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_arguments(sub.add_parser(
        "serve", help=f"run the HTTP server (default: file store in {DEFAULT_DATA_DIR}, "
                      f"port {DEFAULT_PORT})",
        description=SERVE_DESCRIPTION.format(data_dir=DEFAULT_DATA_DIR, host=DEFAULT_HOST,
                                             port=DEFAULT_PORT,
                                             flush=_ms(LOG_DEFAULTS.flush_interval)),
        formatter_class=argparse.RawDescriptionHelpFormatter))
    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench_sub = bench.add_subparsers(dest="target", required=True, parser_class=_BenchParser)
    for kind, help_text in BENCHMARKS.items():
        bench_sub.add_parser(kind, help=help_text,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
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


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port (default: ${PORT_ENV} or {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="where the file store keeps its streams (default: %(default)s)")
    p.add_argument("--store", default=None, metavar="file|memory|URL",
                   help="file: durable, in --data-dir (the default); memory: nothing "
                        "survives; redis://HOST:PORT/DB or postgresql://USER@HOST/DB: a "
                        "store several instances share (default: $REDIS_URL, else "
                        "$DATABASE_URL, else file)")
    p.add_argument("--store-prefix", default=None, metavar="NAME",
                   help="Redis key prefix (default 'unbroken:') or PostgreSQL schema "
                        "(default 'unbroken') of a shared store")
    p.add_argument("--durability", default=LOG_DEFAULTS.durability.value,
                   choices=[d.value for d in Durability],
                   help=f"always: ack after fdatasync, shared by concurrent appends; "
                        f"interval: flush every {_ms(LOG_DEFAULTS.flush_interval)}, ack before; "
                        f"never: the OS decides (default: %(default)s)")
    p.add_argument("--long-poll-timeout", type=float, default=SERVER_DEFAULTS.long_poll_timeout,
                   metavar="SECONDS",
                   help="how long a long-poll waits before 204 (default: %(default)s)")
    p.add_argument("--max-body", type=int, default=SERVER_DEFAULTS.max_body, metavar="BYTES",
                   help=f"largest request body; larger gets 413 (default: %(default)s = "
                        f"{_mib(SERVER_DEFAULTS.max_body)})")
    p.add_argument("--max-connections", type=_positive_int,
                   default=SERVER_DEFAULTS.max_connections, metavar="N",
                   help="open connections served at once; one more gets 503 with Retry-After "
                        "and is closed (default: %(default)s; lowered to fit the open-file "
                        "limit, which is raised as far as the hard limit allows)")
    p.add_argument("--max-live-readers", type=_positive_int,
                   default=SERVER_DEFAULTS.max_live_readers, metavar="N",
                   help="SSE and long-poll requests open at once; one more gets 429 with "
                        "Retry-After, plain reads and appends still work (default: %(default)s)")
    p.add_argument("--max-inflight-bytes", type=_positive_int,
                   default=SERVER_DEFAULTS.max_inflight_bytes, metavar="BYTES",
                   help=f"request-body bytes being received or waiting for the store, over all "
                        f"connections; a body that would go over gets 503 with Retry-After "
                        f"(default: %(default)s = {_mib(SERVER_DEFAULTS.max_inflight_bytes)})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # hidden, for the crash tests: small segments make the file store roll often
    p.add_argument("--segment-size", type=int, default=None, help=argparse.SUPPRESS)


#: the defaults ``unbroken serve`` shows and uses: the library's own
SERVER_DEFAULTS = ServerConfig()
LOG_DEFAULTS = LogConfig()
#: the ServerConfig fields ``unbroken serve`` sets from its options (same names)
CONFIG_OPTIONS = ("long_poll_timeout", "max_body", "max_connections", "max_live_readers",
                  "max_inflight_bytes")


def server_config(args) -> ServerConfig:
    """The :class:`~unbroken_server.context.ServerConfig` ``unbroken serve``
    runs with: its options in :data:`CONFIG_OPTIONS`, the rest defaults.

    :param args: the parsed ``serve`` command line
    """
    return ServerConfig(**{name: getattr(args, name) for name in CONFIG_OPTIONS})


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (never above the hard
    limit, never lower); the server then serves as many connections as it
    allows (:func:`unbroken_server.app.connection_cap`)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # connection_cap() works with what there is


class _ListenError(Exception):
    """The server could not bind its address (its cause is the OSError)."""


class _StoreError(Exception):
    """The shared store could not be opened (its cause says why)."""


SHARED_SCHEMES = ("redis://", "rediss://", "unix://", "postgresql://", "postgres://")


def choose_store(option: str | None, environ=os.environ) -> tuple[str, str | None, str]:
    """Which store ``unbroken serve`` opens: ``(kind, url, why)``.

    ``--store`` wins; without it ``$REDIS_URL``, then ``$DATABASE_URL``, then
    the file store. ``why`` is appended to the start-up line.
    """
    if option is None:
        for var in ("REDIS_URL", "DATABASE_URL"):
            if environ.get(var):
                option = environ[var]
                return _kind(option), option, f" (from ${var})"
        return "file", None, ""
    return _kind(option), option, ""


def _kind(option: str) -> str:
    if option in ("file", "memory"):
        return option
    low = option.lower()
    if low.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if low.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise SystemExit(f"unbroken: --store must be file, memory, redis://... or "
                     f"postgresql://..., not {option!r}")


async def _open_shared(url: str, prefix: str | None):
    from unbroken_engine.stores.opening import open_store

    if prefix is None:
        return await open_store(url)
    key = "prefix" if _kind(url) == "redis" else "schema"
    return await open_store(url, **{key: prefix})


def file_store_config(args):
    """The :class:`~unbroken_engine.log.segmented.LogConfig` ``unbroken serve`` opens the
    file store with: ``--durability`` and the hidden ``--segment-size``.

    :param args: the parsed ``serve`` command line
    """
    config = LogConfig(durability=Durability(args.durability))
    if args.segment_size is not None:
        config = LogConfig(segment_size=args.segment_size, durability=config.durability,
                           index_interval=min(config.index_interval, args.segment_size))
    return config


def serve_main(args) -> int:
    """``unbroken serve``: open the store, serve until signalled, flush, exit 0."""
    import anyio

    from unbroken_engine import FileBackedStreamStore, MemoryStreamStore
    from unbroken_engine import errors as e

    from .app import fds_needed, serve
    from .context import ServerContext

    raise_fd_limit(fds_needed(args.max_connections))
    try:
        port = env_port() if args.port is None else args.port
    except ValueError as exc:
        raise SystemExit(f"unbroken: {exc}") from None
    kind, url, why = choose_store(args.store)
    shared = None
    if kind == "memory":
        store, where = MemoryStreamStore(), "memory store (nothing is kept)"
    elif kind == "file":
        try:
            store = FileBackedStreamStore(args.data_dir, file_store_config(args))
        except e.DataDirInUse as exc:
            print(f"unbroken: cannot open the store: {exc}", file=sys.stderr)
            return 1
        where = (f"file store in {os.path.abspath(args.data_dir)} "
                 f"(durability {args.durability}; {store.recovery.summary()})")
    else:
        store, shared = None, url  # opened inside the event loop (its drivers need one)
        where = ""
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")

    async def run():
        nonlocal store, where
        if shared is not None:
            try:
                store = await _open_shared(shared, args.store_prefix)
            except (e.BackendUnavailable, e.BackendSchemaError, e.MissingExtra,
                    e.InvalidArgument) as exc:
                raise _StoreError(exc) from exc
            where = f"{store.description}{why}"
        ctx = ServerContext(store, server_config(args))
        try:
            async with anyio.create_task_group() as tg:
                try:
                    bound = await tg.start(serve, ctx, args.host, port)
                except OSError as exc:
                    raise _ListenError(exc) from exc
                host = f"[{args.host}]" if ":" in args.host else args.host
                print(f"unbroken: serving http://{host}:{bound}/v1/stream/ from {where}",
                      flush=True)
        finally:
            await store.aclose()

    try:
        anyio.run(run)
    except _StoreError as exc:
        print(f"unbroken: cannot open the store: {exc.__cause__}", file=sys.stderr)
        return 1
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
    if args.command == "bench":
        return bench_module(args.target).run(args)
    if args.command in ("verify", "inspect"):
        from . import operator as operator_tools

        return operator_tools.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
