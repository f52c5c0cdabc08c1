"""Run the coverage-guided fuzz targets of the C core briefly.

The targets live in tests/faults/fuzz_targets/ (``fuzz_record.py``: the
record decoder; ``fuzz_json.py``: the JSON validator, flattener and prefix
splitter); their docstrings say what each checks and how to run them for
longer. Here each runs for a few seconds from its seed corpus: enough to
catch a regression that any mutation of the seeds reaches, and to keep the
harnesses working. A failure shows libFuzzer's report and the crash input.

Skipped when atheris is not installed (it is not a dependency of the
project: ``python -m pip install atheris``). Without clang the targets still
run, against the installed (uninstrumented) C module.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TARGETS = Path(__file__).resolve().parent / "fuzz_targets"
SECONDS = 7  # per target


@pytest.mark.parametrize("target", ["fuzz_record.py", "fuzz_json.py"])
def test_fuzz_target(target, tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (python -m pip install atheris); "
                    "see tests/faults/fuzz_targets/")
    cmd = [sys.executable, str(TARGETS / target), f"--seeds={tmp_path / 'corpus'}",
           f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}{os.sep}",
           "-print_final_stats=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                          timeout=SECONDS + 180)  # the first run also builds the C with clang
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-",
                                                                             "timeout-")))
    report = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0 and not crashes, f"{target} found {crashes}:\n{report}"
    assert "Done " in proc.stderr, report
    if shutil.which("clang"):
        assert "instrumented for coverage" in proc.stderr, report
