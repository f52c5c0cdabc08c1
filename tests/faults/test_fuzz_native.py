"""Coverage-guided fuzzing of the C core for a fixed budget (atheris/libFuzzer).

The targets live in tests/faults/fuzz_targets/ (their docstrings say what
each feeds to C and what it checks against an independent Python oracle):

* ``record``: ``ub_record_decode`` / ``ub_record_peek`` / ``ub_record_encode``
  on arbitrary bytes as a record region;
* ``json``: ``ub_json_validate`` / ``ub_json_flatten`` / ``ub_json_prefix``
  against Python's json module in its strict RFC 8259 form (NaN/Infinity
  refused), the flattening compared byte for byte;
* ``segment``: ``ub_segment_open`` (the recovery scan, torn-tail cutting,
  index rebuild and reload) on arbitrary segment files, then the reads.

Each target runs in a subprocess from its seed corpus
(``fuzz_targets/corpus/<target>/``), so that a sanitizer abort or a signal
fails the test instead of killing pytest. A failure shows the exit status,
the last lines of the fuzzer's output (the Python exception or the sanitizer's
report) and the path of the saved input; replay it with
``python tests/faults/fuzz_targets/fuzz_<target>.py <path>``. At the end of
each run the figures are printed: inputs executed, libFuzzer's coverage
(``cov``: edges of the C plus lines of the oracles; ``ft``: features),
seconds, crashes.

Budget (per target), from the environment:

* ``UNBROKEN_FUZZ_SECONDS`` -- seconds of fuzzing (default 20);
* ``UNBROKEN_FUZZ_RUNS`` -- a number of inputs instead (wins over seconds);
* ``UNBROKEN_FUZZ_CORPUS`` -- a directory to keep the corpus in between runs
  (one subdirectory per target; default: a fresh temporary one);
* ``UNBROKEN_FUZZ_ARTIFACTS`` -- where crashing inputs are written (default:
  a ``crashes`` directory in the test's temporary directory, reported).

Run it longer on demand, e.g. an hour per target, keeping the corpus::

    pip install '.[test,fuzz]'
    UNBROKEN_FUZZ_SECONDS=3600 UNBROKEN_FUZZ_CORPUS=~/fuzz-corpus \\
        pytest tests/faults/test_fuzz_native.py
    # or one target, directly, with any libFuzzer option (-jobs=, -workers=...):
    python tests/faults/fuzz_targets/fuzz_segment.py -max_total_time=3600 ~/seg-corpus

and under AddressSanitizer as CI does (.ci/run step 2: a venv installed with
``UNBROKEN_CEXT_SANITIZE=1``, gcc's ASan runtime preloaded)::

    PYTHONMALLOC=malloc LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \\
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \\
        UNBROKEN_FUZZ_SECONDS=600 .venv-asan/bin/pytest tests/faults/test_fuzz_native.py

What guides it, honestly: there is no clang here, so the C is not built with
``-fsanitize=fuzzer``. The harness compiles cext/ with gcc's
``-fsanitize-coverage=trace-pc,trace-cmp`` and a small shim that feeds hashed
edge counters and comparison operands to atheris's libFuzzer (see
fuzz_targets/_harness.py), plus ``-fsanitize=address`` when the ASan runtime
is loaded and trapping UBSan always. atheris adds the coverage of the Python
oracles -- except under the preloaded gcc ASan runtime, whose no-op coverage
hooks shadow libFuzzer's for atheris (it warns so); the C's edge counters are
looked up past them and still guide. Without gcc the targets fall back to the
installed module, uninstrumented.

Skipped when atheris is not installed (the ``fuzz`` extra; wheels exist for
CPython 3.10-3.14 on Linux x86-64). ``test_seeds_pass_the_oracles`` runs
without atheris: every committed seed through every target once.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TARGETS_DIR = Path(__file__).resolve().parent / "fuzz_targets"
TARGETS = ["record", "json", "segment"]
DEFAULT_SECONDS = 20
INPUT_TIMEOUT = 60  # seconds for one input before libFuzzer calls it a hang
TAIL = 60  # lines of output shown on failure


def _budget():
    """``(libFuzzer flag, seconds or None, what)`` from the environment."""
    runs = os.environ.get("UNBROKEN_FUZZ_RUNS", "").strip()
    if runs:
        return f"-runs={int(runs)}", None, f"{int(runs)} inputs"
    seconds = int(float(os.environ.get("UNBROKEN_FUZZ_SECONDS", "") or DEFAULT_SECONDS))
    return f"-max_total_time={seconds}", seconds, f"{seconds} s"


def _figures(log: str) -> dict:
    def last(pattern, default=None):
        found = re.findall(pattern, log, re.M)
        return found[-1] if found else default

    return {
        "execs": int(last(r"stat::number_of_executed_units:\s*(\d+)", 0)),
        "rate": int(last(r"stat::average_exec_per_sec:\s*(\d+)", 0)),
        "new": int(last(r"stat::new_units_added:\s*(\d+)", 0)),
        "cov": last(r"cov: (\d+)", "?"),
        "ft": last(r"ft: (\d+)", "?"),
        "corp": last(r"corp: (\d+)", "?"),
        "build": last(r"^fuzz: (.*)$", "?"),
    }


def _signal_name(rc: int) -> str:
    if rc >= 0:
        return f"exit status {rc}"
    try:
        return f"killed by {signal.Signals(-rc).name}"
    except ValueError:
        return f"killed by signal {-rc}"


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target, tmp_path, capsys):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed: pip install '.[fuzz]' (wheels for CPython "
                    "3.10-3.14 on Linux x86-64); see tests/faults/test_fuzz_native.py")
    flag, seconds, what = _budget()
    crashes = Path(os.environ.get("UNBROKEN_FUZZ_ARTIFACTS") or tmp_path / "crashes") / target
    crashes.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("UNBROKEN_FUZZ_CORPUS")
    corpus = Path(keep).expanduser() / target if keep else tmp_path / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    script = TARGETS_DIR / f"fuzz_{target}.py"
    # -rss_limit_mb: under ASan with PYTHONMALLOC=malloc a target's RSS reaches
    # ~1.2 GB within a minute (quarantine, shadow), ~60 MB without
    cmd = [sys.executable, str(script), flag, "-print_final_stats=1",
           f"-timeout={INPUT_TIMEOUT}", "-rss_limit_mb=8192",
           f"-artifact_prefix={crashes}{os.sep}", str(corpus)]
    env = dict(os.environ, UNBROKEN_FUZZ_WORKDIR=str(tmp_path / "work"),
               PYTHONDONTWRITEBYTECODE="1")
    log_path = tmp_path / f"{target}.log"
    # the first target also builds the instrumented C (cached in the temp dir)
    limit = seconds * 2 + 600 if seconds is not None else None
    started = time.monotonic()
    with open(log_path, "w") as log_file:
        try:
            proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                  cwd=tmp_path, env=env, timeout=limit)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    found = sorted(p for p in crashes.iterdir() if p.name.startswith(
        ("crash-", "oom-", "timeout-", "leak-")))
    tail = "\n".join(log.splitlines()[-TAIL:])
    if rc != 0 or found:
        status = "no exit after the budget (killed)" if rc is None else _signal_name(rc)
        saved = "\n".join(f"  {p}\n  replay: python {script} {p}" for p in found) or \
            f"  none saved (see the output; the log is {log_path})"
        pytest.fail(f"fuzz target {target}: {status}; crashing inputs:\n{saved}\n"
                    f"--- last {TAIL} lines of the fuzzer's output ---\n{tail}",
                    pytrace=False)
    assert re.search(r"^Done \d+ runs", log, re.M), f"the fuzzer did not finish:\n{tail}"
    f = _figures(log)
    assert f["execs"] > 0, tail
    with capsys.disabled():
        print(f"\nfuzz {target}: {f['execs']} inputs in {elapsed:.0f} s ({f['rate']}/s; "
              f"budget {what}), coverage cov={f['cov']} ft={f['ft']}, corpus {f['corp']} "
              f"({f['new']} new), crashes 0\n  [{f['build']}]")


REPLAY = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import importlib
for name in sys.argv[2:]:
    mod = importlib.import_module("fuzz_" + name)
    folder = os.path.join(sys.argv[1], "corpus", name)
    files = sorted(os.listdir(folder))
    seeds = [open(os.path.join(folder, f), "rb").read() for f in files]
    assert seeds == list(mod.SEEDS), f"corpus/{name}/ differs from SEEDS: --write-seeds"
    for f, data in zip(files, seeds):
        print(f"seed corpus/{name}/{f}", file=sys.stderr, flush=True)  # (a signal kills)
        mod.test_one_input(data)
    print(name, len(seeds), "seeds ok")
"""


def test_seeds_pass_the_oracles(tmp_path):
    """Every committed seed through its target once, with the installed
    module and without atheris: keeps the oracles and the corpus honest in
    every test run."""
    env = dict(os.environ, UNBROKEN_FUZZ_PLAIN="1", UNBROKEN_FUZZ_WORKDIR=str(tmp_path),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", REPLAY, str(TARGETS_DIR), *TARGETS],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    tail = "\n".join(proc.stderr.splitlines()[-TAIL:])
    assert proc.returncode == 0, f"{_signal_name(proc.returncode)}:\n{proc.stdout}{tail}"
    assert proc.stdout.count("seeds ok") == len(TARGETS), proc.stdout
