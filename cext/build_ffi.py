"""cffi build script: compiles cext/*.c into ``unbroken_engine._cext``.

Switches, read from the environment at build time:

* ``UNBROKEN_CEXT_SANITIZE=1`` -- AddressSanitizer + UndefinedBehaviorSanitizer
  build (run Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``).
* ``UNBROKEN_CEXT_DEBUG=1`` -- ``-O0 -g``.
* ``UNBROKEN_CEXT_NO_SSE42=1`` -- leave out the SSE4.2 CRC32C path (table only).
* ``UNBROKEN_CEXT_NO_WERROR=1`` -- keep warnings as warnings (for a compiler
  newer than the one we test with; CI never sets it).

Everything, cffi's generated glue included, compiles with
``-Wall -Wextra -Werror``.
"""
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["ub_errors.c", "ub_crc32c.c", "ub_record.c", "ub_segment.c",
           "ub_json.c", "ub_bench.c"]


def _flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def compile_args():
    """Flags for our C sources (also used by the standalone warning test)."""
    args = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
            "-Wshadow", "-Wstrict-prototypes", "-Wno-unused-function"]
    if _flag("UNBROKEN_CEXT_DEBUG") or _flag("UNBROKEN_CEXT_SANITIZE"):
        args += ["-O0", "-g", "-fno-omit-frame-pointer"]
    else:
        args += ["-O2"]
    if _flag("UNBROKEN_CEXT_SANITIZE"):
        args += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    if _flag("UNBROKEN_CEXT_NO_SSE42"):
        args += ["-DUB_NO_SSE42"]
    if _flag("UNBROKEN_CEXT_NO_WERROR"):
        args.remove("-Werror")
    return args


ffibuilder = FFI()
ffibuilder.cdef((HERE / "ub.cdef").read_text())
ffibuilder.set_source(
    "unbroken_engine._cext",
    '#include "ub.h"',
    # Paths relative to the project root, where setup.py runs; absolute paths
    # would leak the build machine's layout into the wheel's build metadata.
    sources=[os.path.join("cext", name) for name in SOURCES],
    include_dirs=["cext"],
    extra_compile_args=compile_args(),
    extra_link_args=(["-fsanitize=address,undefined"]
                     if _flag("UNBROKEN_CEXT_SANITIZE") else []),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
