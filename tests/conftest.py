"""Shared fixtures and settings for the whole suite.

Every async test runs on both anyio backends (asyncio and trio). Hypothesis
runs without per-example deadlines: the same tests also run under
AddressSanitizer in .ci/run, where every call is several times slower.

``node_toolchain`` (below) provides node with the npm packages of
tests/conformance/package.json installed, for the tests that drive them.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
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
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the node tests (conformance suite, TypeScript client and reference server interop) need "
                    f"node and npm on PATH (node: {node or 'missing'}, npm: {npm or 'missing'})")
    major = _node_major(node)
    if major is None or major < MIN_NODE:
        pytest.skip(f"the node tests (conformance suite, TypeScript client and reference server interop) need "
                    f"node >= {MIN_NODE}; {node} is "
                    f"{'of unknown version' if major is None else f'version {major}'}")

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
