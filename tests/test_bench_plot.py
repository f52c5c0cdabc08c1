"""``--plot`` of ``unbroken bench engine`` and ``unbroken bench http``: a clear,
early failure without matplotlib (an optional extra), and a real PNG with it."""
from __future__ import annotations

import builtins
import importlib

import pytest

from unbroken_benches import plot
from unbroken_server import cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Every import of matplotlib fails, as when it is not installed."""
    real_import = importlib.import_module
    real_builtin = builtins.__import__

    def fake_import_module(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    def fake_import(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_builtin(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", fake_import_module)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("target", ["engine", "http"])
def test_plot_without_matplotlib_fails_fast(no_matplotlib, target, tmp_path, capsys,
                                            monkeypatch):
    out = tmp_path / "out.png"
    # nothing may be measured (or started) before the check
    if target == "engine":
        from unbroken_benches import engine as mod
        monkeypatch.setattr(mod, "run_all", lambda *a, **k: pytest.fail("measured"))
    else:
        from unbroken_benches import http as mod
        monkeypatch.setattr(mod, "_start_servers", lambda *a, **k: pytest.fail("started"))
    status = cli.main(["bench", target, "--quick", "--plot", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "matplotlib" in err and "pip install 'unbroken[plot]'" in err
    assert not out.exists()


def test_require_names_the_extra(no_matplotlib):
    with pytest.raises(plot.PlotUnavailable, match=r"pip install 'unbroken\[plot\]'"):
        plot.require()


def test_no_plot_option_needs_no_matplotlib(no_matplotlib):
    import argparse
    assert plot.check(argparse.Namespace(plot=None), "engine") is None
    assert plot.check(argparse.Namespace(), "http") is None


def test_engine_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "engine.png"
    status = cli.main(["bench", "engine", "--quick", "--sizes", "64,1KiB",
                       "--durability", "never", "--writers", "2", "--only", "append",
                       "--repeats", "1", "--duration", "0.01", "--records", "2000",
                       "--batch", "100", "--dir", str(tmp_path), "--plot", str(out)])
    assert status == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_http_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from unbroken_benches.harness.results import Run
    from unbroken_benches.http import Result
    ms = 1_000_000
    results = [
        Result("append", "1KiB octet c=1", {"size": 1024, "type": "octet", "connections": 1,
                                            "layout": "shared"}, "appends/s",
               {"unbroken": (Run(1.0, 1000, 1024000),)}),
        Result("append", "1KiB octet c=16", {"size": 1024, "type": "octet", "connections": 16,
                                             "layout": "shared"}, "appends/s",
               {"unbroken": (Run(1.0, 5000, 5120000),)}),
        *[Result("sse", "100 readers", {"readers": 100}, stat,
                 {"unbroken": (Run(1.0, 3, 0, latencies_ns=(1 * ms, 2 * ms, 3 * ms)),)})
          for stat in ("p50", "p90", "p99", "max")],
    ]
    out = tmp_path / "http.png"
    assert plot.plot_http(results, str(out)) == str(out)
    assert out.read_bytes().startswith(PNG_SIGNATURE)
