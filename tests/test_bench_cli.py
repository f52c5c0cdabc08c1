"""Tests of ``unbroken bench engine`` itself (benches/engine.py): option parsing,
the result and ratio maths on known numbers, the text and JSON output, and
real tiny runs through the ``unbroken`` command."""
import argparse
import json
import math
import subprocess
import sys

import pytest

from unbroken_benches import engine
from unbroken_benches.engine import KiB, MiB, Result, Sample, Settings
from unbroken_benches.harness import options, stats
from unbroken_engine import Durability
from unbroken_server import cli

TINY = ["--quick", "--sizes", "64", "--writers", "1,4", "--durability", "never,always",
        "--read-mib", "1", "--segment-size", "256KiB", "--repeats", "1",
        "--duration", "0.01", "--records", "400", "--round-mib", "1"]


def parse(*argv):
    return cli.build_parser().parse_args(["bench", "engine", *argv])


def parse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def result(workload, label="x", seconds=(1.0,), ops=1000, nbytes=1_000_000, **params):
    return Result(workload, label, params, tuple(Sample(s, ops, nbytes) for s in seconds))


# ---- option parsing -----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("64", 64), ("1024", 1024), ("1KiB", 1024), ("1k", 1024), ("64kb", 65536),
    ("64KiB", 65536), ("1MiB", MiB), ("2 M", 2 * MiB), ("100B", 100),
])
def test_parse_size(text, expected):
    assert options.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5k", "-1", "1GiB", "k", "64 KiB extra"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        options.parse_size(text)


def test_sizes_list():
    assert engine.size_list("64,1024,65536") == (64, 1024, 65536)
    assert engine.size_list(" 64 , 1KiB,64KiB ") == (64, 1024, 65536)
    assert engine.size_list("1KiB,1024,64") == (1024, 64)  # duplicates dropped, order kept


@pytest.mark.parametrize("text, message", [
    ("64,,1024", "comma-separated list"),
    ("0", "out of range"),
    ("512MiB", "out of range"),
    ("64,abc", "'abc' is not a size"),
])
def test_sizes_list_rejects(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        engine.size_list(text)


def test_bad_sizes_give_an_argparse_error(capsys):
    err = parse_error(capsys, "--sizes", "64,abc")
    assert "argument --sizes: 'abc' is not a size" in err
    assert err.startswith("usage: unbroken bench engine")


def test_durability_list():
    assert engine.durability_list("never,ALWAYS") == (Durability.NEVER, Durability.ALWAYS)


def test_bad_durability_names_the_choices(capsys):
    err = parse_error(capsys, "--durability", "never,sometimes")
    assert "unknown durability 'sometimes' (choose from always, interval, never)" in err


@pytest.mark.parametrize("text", ["0", "x", "1,-2", "2000", "1,,2"])
def test_bad_writers(capsys, text):
    assert "argument --writers" in parse_error(capsys, "--writers", text)


def test_only_selects_workloads(capsys):
    s = Settings.from_args(parse("--only", "read, Recover"))
    assert s.only == ("read", "recover")
    assert {j.workload for j in engine.plan(s)} == {"read", "recover"}
    assert "unknown workload 'reads' (choose from ceiling, append, read, recover)" in (
        parse_error(capsys, "--only", "reads"))


@pytest.mark.parametrize("option, value", [
    ("--repeats", "0"), ("--duration", "-1"), ("--duration", "nan"), ("--records", "many"),
    ("--segment-size", "1KiB"), ("--read-mib", "0"), ("--dir", "/no/such/dir"),
])
def test_bad_numbers(capsys, option, value):
    assert f"argument {option}" in parse_error(capsys, option, value)


def test_defaults_are_the_full_run():
    s = Settings.from_args(parse())
    assert s.sizes == (64, 1024, 65536)
    assert s.durabilities == (Durability.NEVER, Durability.INTERVAL, Durability.ALWAYS)
    assert s.writers == (1, 16, 64)
    assert (s.repeats, s.duration, s.read_mib) == (engine.FULL.repeats, engine.FULL.duration, 256)
    assert s.segment_size == s.recovery_segment == 64 * MiB
    assert not s.quick and not s.as_json and s.directory is None


def test_quick_shrinks_and_explicit_options_win():
    s = Settings.from_args(parse("--quick"))
    assert (s.repeats, s.read_mib) == (engine.QUICK.repeats, 64)
    assert s.recovery_segment == 16 * MiB and s.segment_size == 64 * MiB
    s = Settings.from_args(parse("--quick", "--repeats", "7", "--segment-size", "1MiB"))
    assert s.repeats == 7 and s.segment_size == s.recovery_segment == MiB


def test_help_is_the_module_docstring(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "How figures are taken" in out and "--sizes LIST" in out


# ---- result and ratio maths ---------------------------------------------------------------

def test_result_takes_the_median_round():
    r = result("append", seconds=(1.0, 0.5, 2.0), ops=1000, nbytes=4_000_000)
    assert r.seconds == 1.0
    assert r.ops_per_s == 1000.0
    assert r.mb_per_s == 4.0
    assert r.us_per_op == 1000.0


def test_ratio():
    assert stats.ratio(50, 100) == 0.5
    assert stats.ratio(1, 0) is None
    assert stats.ratio(1, math.inf) is None


def test_next_count_aims_at_the_duration():
    assert engine.next_count(1000, 0.01, 10**9, 0.5) == 50_000
    assert engine.next_count(1000, 0.01, 20_000, 0.5) == 20_000  # capped
    assert engine.next_count(10, 5.0, 100, 0.5) == 1  # never zero
    assert engine.next_count(10, 0.0, 100, 0.5) == 100


@pytest.mark.parametrize("n, text", [(64, "64B"), (1024, "1KiB"), (65536, "64KiB"),
                                     (MiB, "1MiB"), (1000, "1000B"), (1536, "1536B")])
def test_fmt_size(n, text):
    assert options.fmt_size(n) == text


def known_results():
    """A run's results with round numbers (seconds per round of 1000 records)."""
    return [
        result("ceiling", "mmap-copy 64KiB", (0.010,), 1000, 64 * KiB * 1000,
               kind="mmap-copy", size=64 * KiB),
        result("ceiling", "memcpy 1MiB", (0.010,), 100, 100 * MiB, kind="memcpy", size=MiB),
        result("ceiling", "fdatasync 64B", (0.100,), 1000, 64_000, kind="fdatasync", size=64),
        result("append", "64KiB never single", (0.0120,), 1000, 64 * KiB * 1000,
               size=64 * KiB, durability="never", mode="single"),
        result("append", "64B never single", (0.004,), 1000, 64_000,
               size=64, durability="never", mode="single"),
        result("append", "64B never batch", (0.0004,), 1000, 64_000,
               size=64, durability="never", mode="batch", batch=1000),
        result("append", "64B never async w=64", (0.002,), 1000, 64_000,
               size=64, durability="never", mode="async", writers=64),
        result("append", "64B always single", (0.125,), 1000, 64_000,
               size=64, durability="always", mode="single"),
        result("append", "64B always batch", (0.01,), 1000, 64_000,
               size=64, durability="always", mode="batch", batch=1000),
        result("append", "64B always async w=1", (0.2,), 1000, 64_000,
               size=64, durability="always", mode="async", writers=1),
        result("append", "64B always async w=64", (0.008,), 1000, 64_000,
               size=64, durability="always", mode="async", writers=64),
        result("read", "octet", (0.05,), 1000, 100 * MiB, mode="octet"),
        result("recover", "64MiB", (0.15,), 578_524, 57_852_400, segment_size=64 * MiB),
    ]


def by_label(results):
    return {r.label: r for r in results}


def test_attach_ceilings():
    r = by_label(engine.attach_ceilings(known_results()))
    assert r["64KiB never single"].ceiling == "mmap-copy 64KiB"
    assert r["64KiB never single"].ceiling_unit == "MB/s"
    assert r["64KiB never single"].ratio == pytest.approx(0.010 / 0.012)
    assert r["64B always async w=64"].ceiling == "never w=64"
    assert r["64B always async w=64"].ratio == pytest.approx(0.25)  # 125k/s over 500k/s
    assert r["64B always async w=1"].ceiling == "fdatasync 64B"
    assert r["64B always async w=1"].ratio == pytest.approx(0.5)  # 5k/s over 10k/s
    assert r["64B always single"].ratio == pytest.approx(0.8)
    assert r["octet"].ceiling == "memcpy 1MiB" and r["octet"].ratio == pytest.approx(0.2)
    assert r["64B always batch"].ceiling is None and r["64B always batch"].ratio is None
    assert r["64MiB"].ratio is None


def test_a_missing_ceiling_leaves_no_ratio():
    alone = [r for r in known_results() if r.workload != "ceiling"]
    assert all(r.ratio is None or r.ceiling.startswith("never")
               for r in engine.attach_ceilings(alone))


def test_targets_on_known_results():
    results = engine.attach_ceilings(known_results())
    targets = engine.evaluate_targets(results, Settings(sizes=(64,)))
    status = {t.label: (t.status, t.value) for t in targets}
    assert status["append 64KiB never single vs mmap-copy 64KiB (MB/s)"] == (
        "PASS", pytest.approx(0.010 / 0.012))
    assert status["append 64B never single (records/s)"] == ("MISS", pytest.approx(250_000))
    assert status["append 64B never batch=1000 (records/s)"] == ("MISS", pytest.approx(2_500_000))
    assert status["64B: always w=64 / never w=64 (records/s)"] == ("MISS", pytest.approx(0.25))
    assert status["64B: always w=64 / always w=1 (records/s)"] == ("PASS", pytest.approx(25))
    assert status["read octet vs memcpy (MB/s)"] == ("MISS", pytest.approx(0.2))
    recovery = targets[-1]
    assert recovery.status == "PASS" and recovery.threshold == 0.2 and recovery.below
    assert "578,524 x 100B" in recovery.label and recovery.note == ""


def test_targets_without_their_workloads_are_not_applicable():
    targets = engine.evaluate_targets([], Settings(sizes=(1024,), writers=(16,)))
    assert {t.status for t in targets} == {"n/a"}
    assert "not measured" in engine.render_targets(targets)


def test_quick_recovery_limit_is_scaled_and_says_so():
    t = engine.recovery_target([], Settings(quick=True, recovery_segment=16 * MiB))
    assert t.threshold == pytest.approx(0.05)
    assert t.note.startswith("--quick: 16MiB segment")


def test_plan_covers_every_workload_once():
    jobs = engine.plan(Settings())
    names = [f"{j.workload} {j.label}" for j in jobs]
    assert len(names) == len(set(names)) == 7 + 33 + 2 + 1
    asyncs = [(j.params["durability"], j.params["writers"]) for j in jobs
              if j.workload == "append" and j.params["mode"] == "async"]
    assert sorted(set(asyncs)) == [("always", 1), ("always", 16), ("always", 64),
                                   ("never", 16), ("never", 64)]
    assert all(1 <= j.start <= j.cap for j in jobs)


# ---- output ---------------------------------------------------------------------------

def test_table_columns_line_up():
    table = engine.render_table(engine.attach_ceilings(known_results()))
    lines = table.splitlines()
    assert lines[0].split() == engine.TABLE_HEADER
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 2 + len(known_results())
    end = lines[0].index("ops/s") + len("ops/s")  # numbers are right-aligned under it
    assert all(line[end - 1].isdigit() for line in lines[2:])


def test_json_document_on_known_results():
    results = engine.attach_ceilings(known_results())
    doc = json.loads(engine.render_json(results, engine.evaluate_targets(results, Settings()),
                                        Settings(), engine.machine_info()))
    assert doc["statistic"] == "median"
    first = doc["results"][3]
    assert first["name"] == "append 64KiB never single"
    assert first["ratio"] == pytest.approx(0.010 / 0.012)
    assert first["ceiling"] == "mmap-copy 64KiB"


# ---- real runs ------------------------------------------------------------------------------

def test_tiny_json_run(tmp_path, capsys):
    assert cli.main(["bench", "engine", *TINY, "--json", "--dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert {"python", "cpu_count", "crc32c_hardware"} <= set(doc["machine"])
    assert isinstance(doc["machine"]["crc32c_hardware"], bool)
    for r in doc["results"]:
        assert {"name", "params", "ops_per_s", "mb_per_s", "seconds", "ceiling",
                "ratio"} <= set(r)
        assert r["ops_per_s"] > 0 and r["seconds"] > 0
    names = {r["name"] for r in doc["results"]}
    assert {"append 64B always async w=4", "append 64B never async w=4",
            "read json 1MiB log, 1KiB records", "recover 256KiB segment, 100B records",
            "ceiling fdatasync 64B"} <= names
    assert any(r["ratio"] is not None for r in doc["results"])
    assert {t["status"] for t in doc["targets"]} <= {"PASS", "MISS", "n/a"}
    assert "[1/" in err
    assert list(tmp_path.iterdir()) == []  # scratch directories removed


def test_tiny_text_run(tmp_path, capsys):
    argv = [*TINY, "--durability", "never", "--writers", "2", "--dir", str(tmp_path)]
    assert cli.main(["bench", "engine", *argv]) == 0
    out = capsys.readouterr().out
    assert "median of 1 timed rounds" in out
    assert "\nworkload  params" in out
    assert "targets (reporting only" in out
    assert list(tmp_path.iterdir()) == []


# ---- the bench sub-commands are loaded only when chosen ------------------------------------

def test_serve_does_not_import_the_benchmarks(tmp_path):
    code = """
import sys
from unbroken_server import cli
try:
    cli.build_parser().parse_args(["serve", "--help"])
except SystemExit:
    pass
cli.build_parser().parse_args(["serve", "--port", "0"])
loaded = sorted(m for m in sys.modules if m.startswith("unbroken_benches"))
assert not loaded, loaded
"""
    # run outside the repository root: its source tree would shadow the install
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_bench_help_is_the_benchmark_s_full_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "http", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unbroken bench http")
    assert "How figures are taken" in out and "--compare-reference" in out
