"""The test suite's own set-up, as a developer and CI meet it.

* Importing the package from a source tree without the built C extension
  says what happened and how to fix it.

Each check runs a separate Python (``import unbroken_engine``) and compares
it with a control run that differs in one thing, so the assertion cannot pass
for an unrelated reason.
"""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
