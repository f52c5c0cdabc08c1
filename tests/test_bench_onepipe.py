"""Tests of ``unbroken bench onepipe`` itself (benches/onepipe.py): option
parsing, the pure helpers (the plan, the baselines, history writing, medians
and ratios, the tables), the closed loop and the transports that change one
thing, and a real tiny run of every workload in every mode through the
``unbroken`` command."""
import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from unbroken_benches import onepipe as ob
from unbroken_benches.harness import report
from unbroken_benches.harness.process import Server
from unbroken_benches.harness.results import Run
from unbroken_server import cli
from unbroken_server.onepipe import SeqConflict
from unbroken_server.onepipe.transport import Batch

NS = 1_000_000  # one millisecond in nanoseconds
TINY = ["--quick", "--json", "--rounds", "1", "--duration", "0.1", "--warmup", "0",
        "--tasks", "2", "--updaters", "2", "--batch", "5", "--history", "30"]


def parse(*argv):
    return cli.build_parser().parse_args(["bench", "onepipe", *argv])


def bench(tmp_path, *argv, timeout=180):
    """``unbroken bench onepipe ARGV`` in a subprocess run from ``tmp_path``."""
    return subprocess.run([sys.executable, "-m", "unbroken_server", "bench", "onepipe", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def sample(per_s=None, latencies_ms=(), retries=0, calls=None):
    """A one-second round with ``per_s`` items, or with these call latencies."""
    lat = [int(x * NS) for x in latencies_ms]
    ops = per_s if per_s is not None else len(lat)
    return ob.Sample(Run(1.0, ops, 0, latencies_ns=lat), ops if calls is None else calls,
                     retries)


# ---- options ------------------------------------------------------------------------------

def test_defaults_and_quick():
    full = ob.Settings.from_args(parse())
    assert full.modes == ("inprocess", "embedded", "remote")
    assert full.workloads == ("append", "append_many", "signal_get", "signal_update")
    assert (full.rounds, full.duration, full.warmup) == (ob.FULL.rounds, ob.FULL.duration,
                                                         ob.FULL.warmup)
    assert (full.tasks, full.batch, full.size, full.history, full.updaters) == (
        8, 100, 100, 10_000, 8)
    quick = ob.Settings.from_args(parse("--quick"))
    assert (quick.rounds, quick.duration, quick.warmup) == (ob.QUICK.rounds,
                                                            ob.QUICK.duration, ob.QUICK.warmup)
    mixed = ob.Settings.from_args(parse("--quick", "--rounds", "2", "--warmup", "0"))
    assert (mixed.rounds, mixed.duration, mixed.warmup) == (2, ob.QUICK.duration, 0.0)
    assert json.loads(json.dumps(full.to_json()))["modes"] == list(full.modes)


def test_mode_and_workload_lists():
    assert ob.mode_list("remote, INPROCESS,remote") == ("remote", "inprocess")
    # workloads always run in their own order
    assert ob.workload_list("signal_update,append") == ("append", "signal_update")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mode 'sideways'"):
        ob.mode_list("inprocess,sideways")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown workload 'read'"):
        ob.workload_list("read")
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        ob.mode_list("inprocess,,remote")


def test_bounded_numbers():
    assert ob.task_count("8") == 8
    assert ob.history_length("10_000") == ob.history_length("10,000") == 10_000
    assert ob.batch_size(" 100 ") == 100
    for parse_number, text in [(ob.task_count, "0"), (ob.task_count, "1.5"),
                               (ob.task_count, str(ob.MAX_TASKS + 1)),
                               (ob.history_length, str(ob.SHORT_HISTORY))]:
        with pytest.raises(argparse.ArgumentTypeError, match="is not a whole number"):
            parse_number(text)


def test_bad_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--modes", "inprocess,elsewhere")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: unbroken bench onepipe")
    assert "argument --modes: unknown mode 'elsewhere'" in err


def test_the_description_is_the_module_doc(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert "signal_update" in out and "unbroken bench onepipe --quick" in out


# ---- the plan and the baselines --------------------------------------------------------------

def test_plan():
    steps = ob.plan(ob.Settings())
    labels = [[c.label for c in step] for step in steps]
    assert labels == [
        ["append flow, 1 task", "append raw, 1 task"],
        ["append flow, 8 tasks", "append raw, 8 tasks"],
        ["append_many flow, 8 tasks"],
        ["signal_get get, 10 values", "signal_get scan, 10 values"],
        ["signal_get get, 10,000 values", "signal_get scan, 10,000 values"],
        ["signal_update update, 1 updater"],
        ["signal_update update, 8 updaters"],
    ]
    one = ob.plan(ob.Settings(tasks=1, updaters=1, workloads=("append", "signal_update")))
    assert [[c.label for c in step] for step in one] == [
        ["append flow, 1 task", "append raw, 1 task"], ["signal_update update, 1 updater"]]


def test_step_order_alternates():
    step = (ob.Case("append", "flow", 8), ob.Case("append", "raw", 8))
    assert ob.step_order(step, 1) == step
    assert ob.step_order(step, 2) == step[::-1]
    assert ob.step_order(step, 3) == step


def test_comparisons():
    s = ob.Settings(tasks=4, history=500)
    C = ob.Case
    assert ob.comparisons(C("append", "flow", 4), s) == {"vs_raw": C("append", "raw", 4)}
    assert ob.comparisons(C("append", "raw", 4), s) == {}
    assert ob.comparisons(C("append_many", "flow", 4), s) == {
        "vs_append": C("append", "flow", 4)}
    assert ob.comparisons(C("signal_get", "get", 10), s) == {
        "vs_scan": C("signal_get", "scan", 10)}
    assert ob.comparisons(C("signal_get", "get", 500), s) == {
        "vs_scan": C("signal_get", "scan", 500), "vs_short": C("signal_get", "get", 10)}
    assert ob.comparisons(C("signal_get", "scan", 500), s) == {
        "vs_short": C("signal_get", "scan", 10)}
    assert ob.comparisons(C("signal_update", "update", 8), s) == {
        "vs_one_updater": C("signal_update", "update", 1)}
    assert ob.comparisons(C("signal_update", "update", 1), s) == {}


@pytest.mark.parametrize("values", [1, 10, 11, 1010, 1011, 2505, 10_000])
def test_fill_plan_writes_every_version_once_the_last_ones_alone(values):
    ranges = ob.fill_plan(values)
    covered = [v for first, last in ranges for v in range(first, last + 1)]
    assert covered == list(range(1, values + 1))
    assert all(last - first + 1 <= ob.FILL_BATCH for first, last in ranges)
    singles = min(values, ob.SHORT_HISTORY)
    assert ranges[-singles:] == [(v, v) for v in range(values - singles + 1, values + 1)]


def test_signal_records_are_what_signal_writes():
    records = ob.signal_records(3, 5, "bench", at=12.5)
    assert [(r["value"], r["version"], r["by"], r["at"]) for r in records] == [
        (3, 3, "bench", 12.5), (4, 4, "bench", 12.5), (5, 5, "bench", 12.5)]
    assert len({r["id"] for r in records}) == 3


# ---- figures, ratios and the report --------------------------------------------------------

def _results(settings):
    C = ob.Case
    samples = {
        ("inprocess", C("append", "flow", 1)): [sample(800), sample(1000), sample(900)],
        ("inprocess", C("append", "raw", 1)): [sample(1000), sample(1200), sample(1100)],
        ("inprocess", C("append_many", "flow", 1)): [sample(45_000)],
        ("inprocess", C("signal_get", "get", 10)): [sample(latencies_ms=(1, 2, 3, 4))],
        ("inprocess", C("signal_get", "scan", 10)): [sample(latencies_ms=(2, 4, 6, 8))],
        ("inprocess", C("signal_get", "get", 100)): [sample(latencies_ms=(1, 2, 3, 4))],
        ("inprocess", C("signal_get", "scan", 100)): [sample(latencies_ms=(20, 40, 60, 80))],
        ("inprocess", C("signal_update", "update", 1)): [sample(500)],
        ("inprocess", C("signal_update", "update", 2)): [sample(250, retries=500),
                                                           sample(0, calls=0)],
    }
    return ob.build_results(samples, settings)


def test_medians_and_ratios():
    s = ob.Settings(tasks=1, updaters=2, history=100)
    by = {r.case.label: r for r in _results(s)}
    flow = by["append flow, 1 task"]
    assert flow.figures == {"per_s": 900.0}
    assert flow.ratios == {"vs_raw": {"per_s": 900 / 1100}}
    assert by["append raw, 1 task"].ratios == {}
    assert by["append_many flow, 1 task"].ratios["vs_append"]["per_s"] == 50.0
    get_long = by["signal_get get, 100 values"]
    assert get_long.figures == {"p50_ms": 2.0, "p99_ms": 4.0}
    assert get_long.ratios["vs_scan"] == {"p50_ms": 0.05, "p99_ms": 0.05}
    assert get_long.ratios["vs_short"] == {"p50_ms": 1.0, "p99_ms": 1.0}
    assert by["signal_get scan, 100 values"].ratios["vs_short"] == {"p50_ms": 10.0,
                                                                     "p99_ms": 10.0}
    update = by["signal_update update, 2 updaters"]
    # a round without updates has no retries figure (and 0 updates/s)
    assert update.figures == {"per_s": 125.0, "retries_per_update": 2.0}
    assert update.ratios == {"vs_one_updater": {"per_s": 0.25}}  # retries: no ratio
    assert ob.case_figures("append", []) == {"per_s": None}


def test_formatting():
    assert ob.fmt_x(0.8512) == "0.85x"
    assert ob.fmt_x(0.0031) == "0.0031x"
    assert ob.fmt_x(312.4) == "312x"
    assert ob.fmt_x(None) == "-"
    assert ob.fmt_ms(0.0234) == "0.023"
    assert ob.fmt_ms(12.345) == "12.35"
    assert ob.fmt_ms(None) == "-"
    table = report.render_table(["mode", "value"], [["inprocess", "1"], ["remote", "1,000"]])
    assert table.splitlines() == ["mode       value", "---------  -----",
                                  "inprocess      1", "remote     1,000"]


def _mode(name, failed=None):
    m = ob.Mode(name)
    m.rt, m.description, m.failed = object(), f"{name} (described)", failed
    return m


def test_text_and_json_reports():
    s = ob.Settings(tasks=1, updaters=2, history=100)
    results = _results(s)
    modes = [_mode("inprocess"), _mode("remote", failed="round 1, x: boom")]
    machine = ob.machine_info(modes, None, [0.5, 3.0], None)
    warnings = ob.warnings_for(results, modes, [0.5, 3.0], ["1 lines in its output: hm"])
    assert "remote: round 1, x: boom (its figures cover the rounds before)" in warnings
    assert any("no call completed within the timed window in 1 round" in w
               for w in warnings)
    assert "disk write+fdatasync swung between 0.50 and 3.00 ms" in " ".join(warnings)
    assert warnings[-1] == "remote server output: 1 lines in its output: hm"
    text = ob.render_text(results, s, modes, machine, warnings)
    assert re.search(r"^inprocess\s+1\s+900\s+1,100\s+0\.82x$", text, re.M)
    assert re.search(r"^remote \(!\)\s+1\s+-\s+-\s+-$", text, re.M)
    assert re.search(r"^inprocess\s+1\s+100\s+45,000\s+50\.00x$", text, re.M)
    assert re.search(r"^inprocess\s+100\s+2\.00\s+4\.00\s+40\.00\s+80\.00\s+0\.05x\s+0\.05x$",
                     text, re.M)
    assert re.search(r"^inprocess\s+long/short\s+1\.00x\s+1\.00x\s+10\.00x\s+10\.00x$",
                     text, re.M)
    assert re.search(r"^inprocess\s+2\s+125\s+2\.00\s+0\.25x$", text, re.M)
    doc = json.loads(ob.render_json(results, s, machine, warnings))
    assert doc["machine"]["modes"]["remote"]["failed"] == "round 1, x: boom"
    flow = next(r for r in doc["results"] if r["label"] == "append flow, 1 task")
    assert flow["mode"] == "inprocess" and flow["ratios"]["vs_raw"]["per_s"] == 900 / 1100
    assert len(flow["rounds"]) == 3 and flow["rounds"][0]["calls"] == 800


# ---- the closed loop and the transports ----------------------------------------------------

@pytest.mark.anyio
async def test_closed_loop_counts_calls_items_and_retries():
    count = 0

    async def op():
        nonlocal count
        count += 1
        import anyio
        await anyio.sleep(0)
        return 3

    got = await ob.closed_loop(op, 2, 0.01, 0.05, Server("x", "", ""), lambda: count)
    assert got.calls > 0 and got.run.ops == 3 * got.calls
    assert len(got.run.latencies_ns) == got.calls
    assert got.retries > 0  # the counter moved during the window
    assert got.run.seconds == 0.05 and got.run.server_cpu is None


@pytest.mark.anyio
async def test_a_failing_call_ends_the_loop():
    async def op():
        raise RuntimeError("POST /x: 500 nope")

    with pytest.raises(BaseException) as exc:
        await ob.closed_loop(op, 3, 0, 0.05, Server("x", "", ""))
    # every task failed: the first error is told, and how many others there were
    assert re.fullmatch(r"RuntimeError: POST /x: 500 nope( \(and [12] more\))?",
                        ob.describe(exc.value))
    assert ob.describe(ValueError()) == "ValueError"


class _Fake:
    """A transport of one stream held as pages of values."""

    kind = "fake"

    def __init__(self, pages):
        self.pages = pages
        self.reads = 0
        self.refuse = 0

    async def read(self, path, offset="-1"):
        self.reads += 1
        i = 0 if offset == "-1" else int(offset)
        return Batch(self.pages[i], offset, str(i + 1), i + 1 == len(self.pages), False)

    async def read_last(self, path):
        raise AssertionError("the extension must not be used")

    async def append(self, path, values, *, seq=None, producer=None):
        if self.refuse:
            self.refuse -= 1
            raise SeqConflict("taken")
        return values


@pytest.mark.anyio
async def test_scan_last_reads_everything_and_counting_counts_conflicts():
    fake = _Fake([[1, 2], [3], [4, 5]])
    scan = ob.ScanLast(fake)
    last = await scan.read_last("s")
    assert (last.found, last.value, last.next_offset) == (True, 5, "3")
    assert fake.reads == 3 and scan.kind == "fake"  # the rest is forwarded

    fake.refuse = 2
    counting = ob.CountingAppends(fake)
    for _ in range(2):
        with pytest.raises(SeqConflict):
            await counting.append("s", [1], seq="1")
    assert await counting.append("s", [1], seq="1") == [1]
    assert (counting.appends, counting.conflicts) == (3, 2)


# ---- a real run ------------------------------------------------------------------------------

def test_every_workload_in_every_mode(tmp_path):
    """A tiny run of the real thing: every workload and mode has positive
    figures and its ratios, nothing failed, and the temporary data is gone."""
    proc = bench(tmp_path, *TINY, "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert not [w for w in doc["warnings"] if "failed" in w.lower() or "WRONG" in w], \
        doc["warnings"]
    assert all(m["failed"] is None for m in doc["machine"]["modes"].values())
    results = {(r["mode"], r["workload"], r["variant"], r["n"]): r for r in doc["results"]}
    expected = {(mode, case.workload, case.variant, case.n)
                for mode in ob.MODES
                for step in ob.plan(ob.Settings(tasks=2, updaters=2, history=30))
                for case in step}
    assert set(results) == expected
    for key, r in results.items():
        for name, value in r["figures"].items():
            if name == "retries_per_update":
                assert value >= 0, key
            else:
                assert value > 0, (key, name)
        for ratio, figures in r["ratios"].items():
            assert all(v > 0 for v in figures.values()), (key, ratio)
        assert len(r["rounds"]) == 1 and r["rounds"][0]["calls"] > 0
    assert os.listdir(tmp_path) == []  # data directories and the server's log removed
