"""What the atheris fuzz targets next to this file share.

Coverage. Atheris instruments Python bytecode; to be guided by coverage of
the *C* code it must also run a build of that code compiled with clang's
``-fsanitize=fuzzer-no-link``. :func:`load_native` makes one: it compiles
the C files the targets need (cext/ub_errors.c, ub_crc32c.c, ub_record.c,
ub_json.c -- pure functions, no I/O) into a small cffi module in a cache
directory, with

* ``-fsanitize=fuzzer-no-link``: SanitizerCoverage (edges, comparisons) fed
  to the libFuzzer inside atheris. Atheris loads its libFuzzer when fuzzing
  starts; :func:`main` makes that load ``RTLD_GLOBAL``, and the targets load
  the instrumented module on their first input (:class:`Native`), so its
  ``__sanitizer_cov_*`` calls resolve to that libFuzzer;
* ``-fsanitize=undefined -fsanitize-trap=undefined``: undefined behaviour
  (out-of-bounds index into a fixed array, bad shift, overflow...) traps
  (SIGILL), which libFuzzer reports as a crash -- no sanitizer runtime needed.

Memory safety without ASan (the atheris wheel ships no ``asan_with_fuzzer.so``):
every input is handed to C twice, once ending right before an inaccessible
page and once starting right after one (:class:`GuardedBuffer`), so a read
past either end of the input faults (SIGSEGV), which libFuzzer reports too.

Without clang (or with ``UNBROKEN_FUZZ_PLAIN=1``) the targets fall back to the
installed ``unbroken_engine._cext``: still fuzzed and checked, but blind
inside C (only the Python side is coverage-guided); a line on stderr says so.

Seeds. ``--seeds=DIR`` (a harness option, removed before libFuzzer sees the
arguments) writes the target's seed inputs into DIR and fuzzes with DIR as
the corpus.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import mmap
import os
import shutil
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CEXT = os.path.join(ROOT, "cext")
SOURCES = ["ub_errors.c", "ub_crc32c.c", "ub_record.c", "ub_json.c"]
CDEF = """
typedef struct {
    uint32_t type;
    uint32_t msg_count;
    uint64_t attrs_pos;
    uint32_t attrs_len;
    uint64_t payload_pos;
    uint32_t payload_len;
    uint64_t next;
} ub_record;
int ub_record_decode(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                     const char **reason);
int ub_record_encode(uint8_t *buf, size_t cap, uint32_t type, uint32_t msg_count,
                     const uint8_t *attrs, size_t attrs_len,
                     const uint8_t *payload, size_t payload_len, size_t *written);
int ub_json_flatten(const uint8_t *buf, size_t len, uint8_t *out,
                    size_t *out_len, uint32_t *count, size_t *err_pos);
int ub_json_validate(const uint8_t *buf, size_t len, int *is_array,
                     uint32_t *count, size_t *err_pos);
int ub_json_prefix(const uint8_t *buf, size_t len, uint32_t n, size_t *prefix_len);
"""
FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=fuzzer-no-link", "-fsanitize=undefined", "-fsanitize-trap=undefined"]


def _build_instrumented(clang: str):
    from cffi import FFI

    digest = hashlib.sha256()
    for name in SOURCES + [n for n in sorted(os.listdir(CEXT)) if n.endswith(".h")]:
        with open(os.path.join(CEXT, name), "rb") as f:
            digest.update(name.encode() + f.read())
    digest.update(CDEF.encode() + " ".join(FLAGS).encode() + sys.version.encode())
    cache = os.environ.get("UNBROKEN_FUZZ_BUILD") or os.path.join(
        tempfile.gettempdir(), f"unbroken-fuzz-{digest.hexdigest()[:16]}")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = os.path.join(cache, "_ub_fuzz_native" + suffix)
    if not os.path.exists(target):
        work = tempfile.mkdtemp(prefix="build-", dir=os.path.dirname(cache))
        ffi = FFI()
        ffi.cdef(CDEF)
        ffi.set_source("_ub_fuzz_native",
                       '#include "ub_errors.h"\n#include "ub_record.h"\n#include "ub_json.h"\n',
                       sources=[os.path.join(CEXT, n) for n in SOURCES], include_dirs=[CEXT],
                       extra_compile_args=FLAGS, extra_link_args=FLAGS)
        env = dict(os.environ)
        os.environ.update(CC=clang, LDSHARED=f"{clang} -shared")
        try:
            built = ffi.compile(tmpdir=work, verbose=False)
        finally:
            os.environ.clear()
            os.environ.update(env)
        os.makedirs(cache, exist_ok=True)
        os.replace(built, target)
        shutil.rmtree(work, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("_ub_fuzz_native", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


def load_native():
    """``(ffi, lib, instrumented)``: the instrumented build, or the installed one."""
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang and os.environ.get("UNBROKEN_FUZZ_PLAIN", "") in ("", "0"):
        try:
            ffi, lib = _build_instrumented(clang)
            return ffi, lib, True
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            print(f"fuzz: cannot build the instrumented C ({exc!r}); "
                  f"using the installed module", file=sys.stderr)
    else:
        print("fuzz: no clang (or UNBROKEN_FUZZ_PLAIN=1): using the installed, uninstrumented "
              "module; only the Python side is coverage-guided", file=sys.stderr)
    from unbroken_engine._cext import ffi, lib
    return ffi, lib, False


class Native:
    """The C functions, loaded on first use (see the module docstring)."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.ready = False

    def load(self) -> None:
        self.ffi, self.lib, self.instrumented = load_native()
        self.guarded = GuardedBuffer(self.ffi, self.max_len)
        self.ready = True
        if self.instrumented:
            print("fuzz: the C code is instrumented for coverage (clang build)", file=sys.stderr)


class GuardedBuffer:
    """Room for inputs of up to ``max_len`` bytes between two inaccessible pages."""

    def __init__(self, ffi, max_len: int):
        self.ffi = ffi
        page = mmap.PAGESIZE
        self.data_pages = (max_len + page - 1) // page or 1
        self.size = self.data_pages * page
        self.page = page
        self.map = mmap.mmap(-1, self.size + 2 * page)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        for start in (self.base, self.base + page + self.size):
            if libc.mprotect(ctypes.c_void_p(start), ctypes.c_size_t(page), 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")

    def at_end(self, data: bytes):
        """``data`` ending right before the trailing guard page: a C pointer."""
        off = self.page + self.size - len(data)
        self.map[off:off + len(data)] = data
        return self.ffi.cast("uint8_t *", self.base + off)

    def at_start(self, data: bytes):
        """``data`` starting right after the leading guard page: a C pointer."""
        off = self.page
        self.map[off:off + len(data)] = data
        return self.ffi.cast("uint8_t *", self.base + off)


def main(test_one_input, seeds, max_len: int):
    """Run libFuzzer on ``test_one_input`` (``sys.argv`` holds its options)."""
    import atheris

    argv = []
    for arg in sys.argv:
        if arg.startswith("--seeds="):
            corpus = arg.split("=", 1)[1]
            os.makedirs(corpus, exist_ok=True)
            for i, seed in enumerate(seeds):
                with open(os.path.join(corpus, f"seed-{i:03d}"), "wb") as f:
                    f.write(seed)
            argv.append(corpus)
        else:
            argv.append(arg)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.insert(1, f"-max_len={max_len}")
    atheris.Setup(argv, test_one_input)
    # atheris loads its libFuzzer in Fuzz(): globally, for the instrumented module
    sys.setdlopenflags(sys.getdlopenflags() | os.RTLD_GLOBAL)
    atheris.Fuzz()
