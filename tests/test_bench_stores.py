"""Tests of ``unbroken bench stores`` itself (benches/stores.py): option parsing,
the pure helpers (connection split, prefixes, medians, ratios to the file
store, the table), and real tiny runs through the ``unbroken`` command: the
file store alone, a store whose backend cannot be reached (skipped, not a
crash), and all four stores when REDIS_URL and DATABASE_URL are set."""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import pytest

from unbroken_benches import stores as sb
from unbroken_benches.harness import process
from unbroken_benches.harness.results import Run
from unbroken_server import cli

NS = 1_000_000  # one millisecond in nanoseconds
TINY = ["--quick", "--json", "--rounds", "1", "--connections", "4", "--duration", "0.3",
        "--warmup", "0", "--readers", "3", "--sse-rate", "10", "--sse-duration", "0.5"]


def parse(*argv):
    return cli.build_parser().parse_args(["bench", "stores", *argv])


def bench(tmp_path, *argv, env=None, timeout=120):
    """``unbroken bench stores ARGV`` in a subprocess run from ``tmp_path``."""
    return subprocess.run([sys.executable, "-m", "unbroken_server", "bench", "stores", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env=env)


def lat_run(*samples_ms, missing=0):
    return Run(1.0, len(samples_ms), 0, latencies_ns=[int(x * NS) for x in samples_ms],
               missing=missing)


# ---- options ------------------------------------------------------------------------------

def test_defaults_quick_and_environment():
    env = {"REDIS_URL": "redis://r:6379/2", "DATABASE_URL": "postgresql://p/db"}
    full = sb.Settings.from_args(parse(), env)
    assert full.stores == ("file", "redis", "redis-2", "postgres")
    assert (full.rounds, full.connections, full.readers, full.sse_rate, full.sse_duration) == (
        3, 16, 50, 20.0, 5.0)
    assert full.redis_url == "redis://r:6379/2" and full.database_url == "postgresql://p/db"
    bare = sb.Settings.from_args(parse(), {})
    assert bare.redis_url == sb.DEFAULT_REDIS_URL
    assert bare.database_url == sb.DEFAULT_DATABASE_URL
    quick = sb.Settings.from_args(parse("--quick", "--redis-url", "redis://x/1"), env)
    assert (quick.rounds, quick.duration, quick.readers, quick.sse_duration) == (1, 1.0, 20, 2.0)
    assert quick.redis_url == "redis://x/1"  # the option wins over $REDIS_URL
    assert sb.Settings.from_args(parse("--quick", "--readers", "7"), env).readers == 7


def test_store_list():
    assert sb.store_list("postgres, FILE,redis-2") == ("postgres", "file", "redis-2")
    assert sb.store_list("file,file") == ("file",)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown store 'redis-3'"):
        sb.store_list("file,redis-3")


def test_bad_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--connections", "0")
    assert exc.value.code == 2
    assert "argument --connections" in capsys.readouterr().err


def test_settings_json_hides_passwords():
    s = sb.Settings(redis_url="redis://:secret@h:6379/0",
                    database_url="postgresql://u:pw@db:5432/x")
    doc = s.to_json()
    assert doc["redis_url"] == "redis://:***@h:6379/0"
    assert doc["database_url"] == "postgresql://u:***@db:5432/x"
    assert sb.redact("redis://h:6379/0") == "redis://h:6379/0"


# ---- pure helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("total, parts, expected", [
    (16, 2, (8, 8)), (5, 2, (3, 2)), (1, 2, (1, 0)), (7, 1, (7,))])
def test_split_connections(total, parts, expected):
    assert sb.split_connections(total, parts) == expected


def test_prefixes_are_distinct_and_valid():
    token = "0123abcdef"
    prefixes = {s: sb.store_prefix(s, token) for s in sb.STORES}
    assert prefixes["file"] is None
    assert prefixes["redis"] != prefixes["redis-2"]
    assert all(prefixes[s].endswith(":") for s in ("redis", "redis-2"))
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefixes["postgres"])  # a schema name


def test_serve_command_and_child_env():
    cmd = process.serve_command("redis://h/0", "bench1:", "/d")
    assert cmd[:4] == [sys.executable, "-m", "unbroken_server", "serve"]
    assert cmd[cmd.index("--store") + 1] == "redis://h/0"
    assert cmd[cmd.index("--store-prefix") + 1] == "bench1:"
    assert "--durability" not in cmd
    file_cmd = process.serve_command("file", None, "/d")
    assert "--store-prefix" not in file_cmd
    assert file_cmd[file_cmd.index("--durability") + 1] == "always"
    assert process.child_env({"REDIS_URL": "x", "DATABASE_URL": "y", "PATH": "/bin"}) == {
        "PATH": "/bin"}


def test_start_failure_and_unusual_lines():
    log = ("Traceback...\nunbroken: cannot open the store: Redis unavailable (connect)\n")
    assert sb.start_failure(log) == "cannot open the store: Redis unavailable (connect)"
    assert sb.start_failure("a\nb\n\n") == "b"
    assert sb.start_failure("", RuntimeError("x did not start\n  tail")) == "x did not start"
    out = ("unbroken: serving http://127.0.0.1:1/v1/stream/ from memory\n"
           "unbroken: Redis notifications lost (boom); reconnecting\n"
           "unbroken: stopped cleanly\n")
    assert sb.unusual_lines(out) == ["unbroken: Redis notifications lost (boom); reconnecting"]
    assert sb.summarise_lines(["a", "b", "a", "a"]) == "3 x a; b"
    assert sb.summarise_lines(["a", "b", "c"], limit=2) == "a; b (and 1 other lines)"


def test_median_figure():
    assert sb.median_figure([]) == (None, False)
    assert sb.median_figure([(3.0, False), (1.0, False), (2.0, False)]) == (2.0, False)
    # a bound above the median cannot move it
    assert sb.median_figure([(3.0, True), (1.0, False), (2.0, False)]) == (2.0, False)
    # a bound below it could be larger than 3.0: the median is only known to be >= 2.0
    assert sb.median_figure([(3.0, False), (1.0, True), (2.0, False)]) == (2.0, True)
    assert sb.median_figure([(1.0, False), (3.0, True)]) == (2.0, True)  # two middles
    assert sb.median_figure([(5.0, True)]) == (5.0, True)


def test_ratio_to_and_formatting():
    assert sb.ratio_to(42.0, False, 100.0, False) == (0.42, "")
    assert sb.ratio_to(42.0, True, 100.0, False) == (0.42, ">")
    assert sb.ratio_to(42.0, False, 100.0, True) == (0.42, "<")
    assert sb.ratio_to(42.0, True, 100.0, True) == (0.42, "?")
    assert sb.ratio_to(None, False, 100.0, False) == (None, "")
    assert sb.ratio_to(1.0, False, 0.0, False) == (None, "")
    assert sb.fmt_ratio(0.4213) == "0.42x"
    assert sb.fmt_ratio(3.0, ">") == ">3.00x"
    assert sb.fmt_ratio(None) == "-"
    assert sb.fmt_figure("appends_per_s", 12345.6) == "12,346"
    assert sb.fmt_figure("sse_p99_ms", 1.234, True) == ">1.23"
    assert sb.fmt_figure("sse_p99_ms", None) == "-"


def _store(name, appends, sse, skipped=None):
    st = sb.Store(name, None if name == "file" else "redis://h/0", sb.store_prefix(name, "ab"))
    st.appends, st.sse, st.skipped = list(appends), list(sse), skipped
    return st


def test_rows_take_medians_and_ratios_to_the_file_store():
    stores = [
        _store("file", [Run(1.0, 1000, 0), Run(1.0, 3000, 0), Run(1.0, 2000, 0)],
               [lat_run(1, 2, 3), lat_run(2, 4, 6), lat_run(3, 6, 9)]),
        _store("redis", [Run(1.0, 500, 0), Run(1.0, 400, 0), Run(1.0, 600, 0)],
               [lat_run(4, 8, 12), lat_run(4, 8, 12), lat_run(4, 8, 12, missing=1)]),
        _store("postgres", [], [], skipped="cannot open the store: down"),
    ]
    rows = sb.build_rows(stores)
    file, redis, pg = rows
    assert file.figures["appends_per_s"] == (2000.0, False)
    assert file.figures["sse_p50_ms"] == (4.0, False)
    assert file.figures["sse_max_ms"] == (6.0, False)
    assert file.ratios["appends_per_s"] == (1.0, "")
    assert redis.figures["appends_per_s"] == (500.0, False)
    assert redis.ratios["appends_per_s"] == (0.25, "")
    assert redis.ratios["sse_p50_ms"] == (2.0, "")
    assert redis.missing == 1
    # the round with a missing delivery has a lower-bound max, but it is not the median
    assert redis.figures["sse_max_ms"] == (12.0, False)
    assert pg.ratios == {} and pg.figures["appends_per_s"] == (None, False)

    table = sb.render_table(rows)
    assert re.search(r"^file\s+1\s+2,000\s+1\.00x\s+4\.00\s+1\.00x", table, re.M)
    assert re.search(r"^redis\s+1\s+500\s+0\.25x\s+8\.00\s+2\.00x", table, re.M)
    assert "postgres" not in table  # skipped stores are listed under the table instead

    machine = sb.machine_info(rows, None, [0.5])
    warnings = sb.warnings_for(rows, [0.5], ["redis: 1 lines in its output: boom"])
    text = sb.render_text(rows, sb.Settings(), machine, warnings)
    assert "skipped (not measured)\n  postgres: cannot open the store: down" in text
    assert "redis: 0 errors, 1 missing SSE deliveries" in text
    assert "server output: redis: 1 lines in its output: boom" in text
    doc = json.loads(sb.render_json(rows, sb.Settings(), machine, warnings))
    by = {r["store"]: r for r in doc["rows"]}
    assert by["redis"]["figures"]["appends_per_s"]["vs_file"] == 0.25
    assert by["postgres"]["skipped"] == "cannot open the store: down"
    assert by["postgres"]["figures"]["sse_p99_ms"]["value"] is None


def test_no_ratios_without_the_file_store():
    rows = sb.build_rows([_store("redis", [Run(1.0, 500, 0)], [lat_run(1, 2)])])
    assert rows[0].ratios == {}
    cells = sb.table_rows(rows)[0]
    assert cells[2] == "500" and cells[3] == cells[5] == cells[7] == cells[9] == "-"


# ---- real runs ------------------------------------------------------------------------------

def test_file_store_alone_and_an_unreachable_backend_is_skipped(tmp_path):
    """No Redis needed: a Redis on a closed port is skipped with the server's
    reason, the file store is measured, and the exit status is 0."""
    proc = bench(tmp_path, *TINY, "--stores", "file,redis",
                 "--redis-url", "redis://127.0.0.1:1/0", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    file, redis = doc["rows"]
    assert file["store"] == "file" and file["skipped"] is None
    assert file["figures"]["appends_per_s"]["value"] > 0
    assert file["figures"]["appends_per_s"]["vs_file"] == 1.0
    assert file["figures"]["sse_p99_ms"]["value"] > 0
    assert redis["store"] == "redis" and "cannot open the store" in redis["skipped"]
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []  # the data directories and logs are removed


def test_nothing_reachable_is_an_error(tmp_path):
    proc = bench(tmp_path, *TINY, "--stores", "redis", "--redis-url", "redis://127.0.0.1:1/0")
    assert proc.returncode == 1
    assert "no store could be started" in proc.stderr


def test_all_four_stores(tmp_path):
    """One tiny run over file, redis, redis-2 and postgres; the prefixes are
    dropped at the end."""
    missing = [v for v in ("REDIS_URL", "DATABASE_URL") if not os.environ.get(v)]
    if missing:
        pytest.skip(f"needs a Redis and a PostgreSQL server: set {' and '.join(missing)} "
                    f"(e.g. REDIS_URL=redis://127.0.0.1:6379/0 "
                    f"DATABASE_URL=postgresql://127.0.0.1:5432/test)")
    proc = bench(tmp_path, *TINY)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["store"]: r for r in doc["rows"]}
    assert list(rows) == ["file", "redis", "redis-2", "postgres"]
    for name, row in rows.items():
        assert row["skipped"] is None and row["failed"] is None, (name, row)
        assert row["instances"] == (2 if name == "redis-2" else 1)
        assert len(row["servers"]) == row["instances"]
        figs = row["figures"]
        assert figs["appends_per_s"]["value"] > 0, name
        for f in ("sse_p50_ms", "sse_p99_ms", "sse_max_ms"):
            assert figs[f]["value"] > 0 and math.isfinite(figs[f]["value"]), (name, f)
            assert figs[f]["vs_file"] > 0, (name, f)
        assert row["rounds"]["sse"][0]["ops"] > 0
    assert len(set(rows["redis-2"]["servers"])) == 2
    token = re.search(r"bench([0-9a-f]+)r1:", rows["redis"]["what"]).group(1)
    _assert_dropped(token)


def _assert_dropped(token):
    """The run's Redis keys and PostgreSQL schema are gone."""
    try:
        import psycopg
        import redis
    except ImportError:  # pragma: no cover - the test extra installs both
        return
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        assert list(r.scan_iter(match=f"bench{token}*")) == []
    finally:
        r.close()
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        found = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = %s",
                             (f"bench{token}",)).fetchall()
    assert found == []
