"""The test suite's own set-up, as a developer and CI meet it.

* tests/conftest.py finds Redis and PostgreSQL on their local default ports
  when REDIS_URL / DATABASE_URL are unset, says in the summary how it found
  each backend, and with UNBROKEN_REQUIRE stops a session whose required
  backend is not there instead of letting its tests skip.
* Importing the package from a source tree without the built C extension
  says what happened and how to fix it.

Each check runs a separate Python (a tiny ``pytest --collect-only`` of this
file, or ``import unbroken_engine``) and compares it with a control run that
differs in one thing, so the assertion cannot pass for an unrelated reason.
"""
import os
import shutil
import site
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def closed_port():
    """A local port nothing listens on (bound, not listening: connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def collect(tmp_path, **env) -> subprocess.CompletedProcess:
    """``pytest --collect-only`` of this file in a fresh process; ``env``
    overrides the environment (None removes a variable)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "UNBROKEN_REQUIRE")}
    for k, v in env.items():
        if v is not None:
            environ[k] = v
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)


def test_unbroken_require_fails_the_session_when_the_backend_is_unreachable(tmp_path, closed_port):
    url = f"redis://127.0.0.1:{closed_port}/0"
    control = collect(tmp_path, REDIS_URL=url, DATABASE_URL="")
    assert control.returncode == 0, control.stdout + control.stderr
    assert f"redis: env (REDIS_URL={url})" in control.stdout
    assert "postgres: off (DATABASE_URL is empty)" in control.stdout

    required = collect(tmp_path, REDIS_URL=url, DATABASE_URL="", UNBROKEN_REQUIRE="redis")
    assert required.returncode == pytest.ExitCode.USAGE_ERROR, required.stdout + required.stderr
    assert "UNBROKEN_REQUIRE=redis, but the tests of these backends would skip" in required.stderr
    assert f"redis: PING to REDIS_URL={url} failed" in required.stderr
    assert "Connection refused" in required.stderr


def test_unbroken_require_rejects_an_unknown_name(tmp_path):
    proc = collect(tmp_path, REDIS_URL="", DATABASE_URL="", UNBROKEN_REQUIRE="redis,postgre")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "UNBROKEN_REQUIRE names postgre" in proc.stderr


def test_unset_urls_are_found_on_the_local_default_ports(tmp_path):
    proc = collect(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind, var, port, url in [("redis", "REDIS_URL", 6379, "redis://127.0.0.1:6379/0"),
                                 ("postgres", "DATABASE_URL", 5432,
                                  "postgresql://127.0.0.1:5432/test")]:
        if _listening(port):
            assert f"{kind}: probed (127.0.0.1:{port} answered; {var}={url})" in proc.stdout
        else:
            assert f"{kind}: absent ({var} unset, nothing listens on 127.0.0.1:{port})" in proc.stdout


def test_a_source_tree_without_the_extension_says_how_to_build_it(tmp_path):
    import unbroken_engine._cext as cext

    checkout = tmp_path / "checkout"
    package = checkout / "unbroken_engine"
    shutil.copytree(ROOT / "unbroken_engine", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    # As after `pip install .` from the repository root: the source tree first
    # on sys.path, the dependencies from site-packages. (-S: without the .pth
    # files of an editable install, whose finder would supply the extension.)
    code = (f"import sys; sys.path[:0] = [{str(checkout)!r}]; "
            f"sys.path += {site.getsitepackages()!r}; "
            "import unbroken_engine; print(unbroken_engine.__file__)")

    def run():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)

    missing = run()
    assert missing.returncode == 1
    assert (f"ImportError: the C extension unbroken_engine._cext is not built in {package}: "
            f"Python is importing the source tree at {package}") in missing.stderr
    assert "run `pip install -e .` to build it in place" in missing.stderr
    # the original error stays chained
    assert "ModuleNotFoundError: No module named 'unbroken_engine._cext'" in missing.stderr

    shutil.copy2(cext.__file__, package)  # control: the same tree with the extension imports
    built = run()
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(package / "__init__.py")
