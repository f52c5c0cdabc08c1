"""Shared fixtures and settings for the whole suite.

Every async test runs on both anyio backends (asyncio and trio). Hypothesis
runs without per-example deadlines: the same tests also run under
AddressSanitizer in .ci/run, where every call is several times slower.

``node_toolchain`` (below) provides node with the npm packages of
tests/conformance/package.json installed, for the tests that drive them.

Backends. The tests of the shared stores connect to the Redis named by
``REDIS_URL`` and the PostgreSQL named by ``DATABASE_URL``. When a variable
is unset, ``pytest_configure`` probes the default local port (a short TCP
connect to 127.0.0.1:6379 / 127.0.0.1:5432) and, if something listens, sets
it to ``redis://127.0.0.1:6379/0`` / ``postgresql://127.0.0.1:5432/test``.
Set a variable to the empty string (``REDIS_URL= pytest``) to leave that
backend out: no probe, its tests skip. The terminal summary says which
backends were used and how each was found (env / probed / off / absent),
and whether node and npm were found.

``UNBROKEN_REQUIRE=redis,postgres,node`` (any comma-separated subset) turns
"backend missing, tests skip" into a failed session: at start-up each named
backend must answer (Redis: PING; PostgreSQL: a connection; node: node >= 18
and npm on PATH), else pytest stops with a message saying which backend and
what was tried. CI sets it, so a machine without one cannot go green by
skipping hundreds of tests.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


#: parameter ids of stores whose drivers (redis-py, psycopg) run on asyncio only
ASYNCIO_ONLY_IDS = ("redis", "postgres")


def pytest_collection_modifyitems(config, items):
    """Leave out the trio variants of tests of asyncio-only stores (rather
    than report hundreds of identical skips)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        ids = callspec.id.split("-") if callspec is not None else []
        if "trio" in ids and any(i in ids for i in ASYNCIO_ONLY_IDS):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --------------------------------------------------------------------------- backends
#
# One owner for "which Redis / PostgreSQL / node do the tests use": the tests
# read REDIS_URL / DATABASE_URL when they run, which is after this sets them.

#: kind -> (its URL variable, the local address probed, the URL set when it answers)
BACKENDS = {
    "redis": ("REDIS_URL", ("127.0.0.1", 6379), "redis://127.0.0.1:6379/0"),
    "postgres": ("DATABASE_URL", ("127.0.0.1", 5432), "postgresql://127.0.0.1:5432/test"),
}
REQUIRABLE = (*BACKENDS, "node")
PROBE_TIMEOUT = 0.5  # s, one TCP connect to a local port
CONNECT_TIMEOUT = 5  # s, the UNBROKEN_REQUIRE check's PING / connection
_FOUND = pytest.StashKey[dict]()


def _listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _shown(url: str) -> str:
    """``url`` without its password, for the terminal."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _find_backends(environ) -> dict[str, str]:
    """Set each unset URL variable whose local default port answers; returns
    ``kind -> how its URL was found`` (env / probed / off / absent)."""
    found = {}
    for kind, (var, (host, port), url) in BACKENDS.items():
        if var in environ:
            found[kind] = (f"env ({var}={_shown(environ[var])})" if environ[var]
                           else f"off ({var} is empty); its tests skip")
        elif _listening((host, port)):
            environ[var] = url
            found[kind] = f"probed ({host}:{port} answered; {var}={url})"
        else:
            found[kind] = f"absent ({var} unset, nothing listens on {host}:{port}); its tests skip"
    return found


def _required(environ) -> list[str]:
    """The backends UNBROKEN_REQUIRE names."""
    names = [n.strip() for n in environ.get("UNBROKEN_REQUIRE", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in REQUIRABLE]
    if unknown:
        raise pytest.UsageError(f"UNBROKEN_REQUIRE names {', '.join(unknown)}; "
                                f"it takes a comma-separated list of {', '.join(REQUIRABLE)}")
    return names


def _backend_problem(kind: str, environ) -> str | None:
    """Why the tests of ``kind`` cannot run against it, or None when they can:
    what was tried and what came back."""
    if kind == "node":
        return node_problem()
    var, (host, port), _ = BACKENDS[kind]
    url = environ.get(var)
    if not url:
        return (f"{var} is empty (left out on purpose)" if var in environ
                else f"{var} is unset and nothing listens on {host}:{port}")
    tried = f"{var}={_shown(url)}"
    if kind == "redis":
        try:
            import redis
        except ImportError as exc:
            return f"the redis driver is not installed ({exc}): pip install '.[test]'"
        client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT,
                                      socket_timeout=CONNECT_TIMEOUT)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return f"PING to {tried} failed: {type(exc).__name__}: {exc}"
        finally:
            client.close()
        return None
    try:
        import psycopg
    except ImportError as exc:
        return f"the psycopg driver is not installed ({exc}): pip install '.[test]'"
    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
    except psycopg.Error as exc:
        return f"connecting to {tried} failed: {type(exc).__name__}: {str(exc).strip()}"
    return None


def pytest_configure(config):
    """Find Redis and PostgreSQL (before any test reads REDIS_URL /
    DATABASE_URL), then stop unless every backend UNBROKEN_REQUIRE names is there."""
    required = _required(os.environ)
    config.stash[_FOUND] = _find_backends(os.environ)
    problems = [(kind, _backend_problem(kind, os.environ)) for kind in required]
    problems = [f"  {kind}: {problem}" for kind, problem in problems if problem is not None]
    if problems:
        raise pytest.UsageError(
            f"UNBROKEN_REQUIRE={os.environ['UNBROKEN_REQUIRE']}, but the tests of these "
            "backends would skip:\n" + "\n".join(problems)
            + "\n(start them, or leave them out of UNBROKEN_REQUIRE to let their tests skip)")


def pytest_terminal_summary(terminalreporter, config):
    """Which backends the session used and how each was found."""
    found = config.stash.get(_FOUND, None)
    if found is None:
        return
    problem = node_problem()
    found = {**found, "node": f"found ({shutil.which('node')}, npm {shutil.which('npm')})"
             if problem is None else f"absent; its tests skip: {problem}"}
    terminalreporter.write_sep("-", "backends")
    for kind, how in found.items():
        terminalreporter.write_line(f"{kind}: {how}")


# --------------------------------------------------------------------------- node / npm
#
# The tests that drive the official TypeScript packages (tests/conformance:
# the conformance suite; tests/onepipe/test_interop_node.py: the client) share
# one npm project, tests/conformance/package.json, whose devDependencies are
# pinned to exact versions (package-lock.json beside it).

NODE_PROJECT = Path(__file__).resolve().parent / "conformance"
NODE_MODULES = NODE_PROJECT / "node_modules"
MIN_NODE = 18
NPM_INSTALL_TIMEOUT = 900  # s, npm ci


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"v?(\d+)\.", out)
    return int(m.group(1)) if m else None


@cache
def node_problem() -> str | None:
    """Why the node tests cannot run here (node >= 18 and npm on PATH), or
    None when they can."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return ("the node tests (conformance suite, TypeScript client and reference server interop) need "
                f"node and npm on PATH (node: {node or 'missing'}, npm: {npm or 'missing'})")
    major = _node_major(node)
    if major is None or major < MIN_NODE:
        return (f"the node tests (conformance suite, TypeScript client and reference server interop) need "
                f"node >= {MIN_NODE}; {node} is "
                f"{'of unknown version' if major is None else f'version {major}'}")
    return None


def _node_pins() -> dict[str, str]:
    """The packages package.json pins, with their versions."""
    return json.loads((NODE_PROJECT / "package.json").read_text())["devDependencies"]


def _installed_version(package: str) -> str | None:
    try:
        meta = json.loads((NODE_MODULES / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("version")


def _pinned_installed() -> bool:
    return (all(_installed_version(p) == v for p, v in _node_pins().items())
            and (NODE_MODULES / ".bin" / "vitest").exists())


class _NpmInstallLock:
    """Serialises ``npm ci`` between concurrent pytest processes on this tree."""

    def __init__(self):
        digest = hashlib.sha1(str(NODE_PROJECT).encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"unbroken-conformance-{digest}.lock"
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def _output_tail(text: str, n: int = 60) -> str:
    lines = text.splitlines()[-n:]
    return "\n".join("    " + line for line in lines) or "    (no output)"


@pytest.fixture(scope="session")
def node_toolchain():
    """``(node, seconds npm ci took or None)`` once the packages pinned in
    tests/conformance/package.json are in tests/conformance/node_modules.

    Skips without node >= 18 and npm. Runs ``npm ci`` there (once per
    session, under a lock shared with concurrent pytest processes) unless the
    pinned versions are installed already; UNBROKEN_CONFORMANCE_SKIP_INSTALL=1
    skips that step (and fails if they are not installed).
    """
    problem = node_problem()
    if problem is not None:
        pytest.skip(problem)
    node, npm = shutil.which("node"), shutil.which("npm")

    install_seconds = None
    if os.environ.get("UNBROKEN_CONFORMANCE_SKIP_INSTALL") == "1":
        if not _pinned_installed():
            pytest.fail("UNBROKEN_CONFORMANCE_SKIP_INSTALL=1 but "
                        f"{NODE_MODULES} does not hold {_node_pins()}; "
                        f"run `npm ci` in {NODE_PROJECT}", pytrace=False)
        return node, install_seconds
    with _NpmInstallLock():
        if not _pinned_installed():
            t0 = time.monotonic()
            try:
                proc = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=NODE_PROJECT, capture_output=True, text=True,
                    timeout=NPM_INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pytest.fail(f"`npm ci` in {NODE_PROJECT} did not finish in "
                            f"{NPM_INSTALL_TIMEOUT} s", pytrace=False)
            install_seconds = time.monotonic() - t0
            if proc.returncode != 0 or not _pinned_installed():
                pytest.fail(f"`npm ci` in {NODE_PROJECT} failed (exit {proc.returncode}):\n"
                            + _output_tail(proc.stdout + proc.stderr), pytrace=False)
            print(f"\n[node] npm ci: {install_seconds:.1f} s")
    return node, install_seconds
