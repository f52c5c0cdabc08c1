"""The shop example (``examples/shop/app.py``) runs end to end, as a user runs it.

Each run is a subprocess with its own directory as cwd (the data goes to
``.onepipe/streams/`` there), without the environment variables that would
switch stores or modes, and with ``ONEPIPE_STREAMS_PORT=0`` so the embedded
server takes a free port chosen by the OS: it never collides with a server
on 9999 nor with another test running at the same time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "app.py"
#: variables that would make the app (or the store) use something else
UNSET = ("REDIS_URL", "DATABASE_URL", "ONEPIPE_STREAMS_URL", "ONEPIPE_STREAMS_MODE",
         "ONEPIPE_STREAMS_PORT")


def run_app(cwd: Path, **env: str) -> str:
    """Run the app in ``cwd``; :return: its output (it must exit 0)."""
    environ = {k: v for k, v in os.environ.items() if k not in UNSET}
    environ.update({"ONEPIPE_STREAMS_PORT": "0", "PYTHONUNBUFFERED": "1"}, **env)
    r = subprocess.run([sys.executable, str(APP)], cwd=cwd, env=environ, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def check_run(out: str, *, earlier: int, flag_now: bool) -> None:
    """The key lines of one run that found ``earlier`` orders and left the
    flag at ``flag_now``."""
    assert f"orders history: {earlier} earlier order(s)" in out, out
    # the invalid order was rejected, and nothing was written
    assert "schema error (nothing written: True)" in out, out
    assert "customer must be an email address" in out, out
    # the flag was read, flipped, and the watcher saw the change
    assert f"express-shipping is {not flag_now}" in out, out
    assert f"express-shipping set to {flag_now} with update()" in out, out
    assert f"[watch]    express-shipping changed to {flag_now}" in out, out
    # every order of this run was handled and confirmed by email
    assert out.count("[consumer]") == 3, out
    assert out.count("[email]") == 3, out
    shipping = "express" if flag_now else "standard"
    assert out.count(f"({shipping} shipping)") == 3, out
    # the channel recorded the calls, each finished ok
    assert (f"email calls: {earlier + 3} recorded in all, 3 from this run, 0 unfinished"
            in out), out
    assert out.count("  ok    caller=") == 3, out
    assert f"orders history now: {earlier + 3} order(s); done" in out, out


def test_shop_embedded_twice(tmp_path: Path) -> None:
    out = run_app(tmp_path)
    assert "OnePipe runtime: embedded (http://127.0.0.1:" in out, out
    check_run(out, earlier=0, flag_now=True)
    assert (tmp_path / ".onepipe" / "streams").is_dir()

    # the second run finds the first run's orders, calls and flag value
    out = run_app(tmp_path)
    check_run(out, earlier=3, flag_now=False)


def test_shop_inprocess(tmp_path: Path) -> None:
    out = run_app(tmp_path, ONEPIPE_STREAMS_MODE="inprocess")
    assert "OnePipe runtime: inprocess (.onepipe/streams)" in out, out
    check_run(out, earlier=0, flag_now=True)
