"""What the atheris fuzz targets next to this file share.

Atheris runs libFuzzer on a Python function; libFuzzer keeps the inputs that
reach new *coverage*. Two kinds of coverage feed it here:

* Python: the targets' own functions (the oracles) are instrumented by
  atheris (``atheris.instrument_func``), so inputs that take new paths through
  the reference decoders are kept.
* C, with gcc (no clang needed): :func:`load_native` compiles the project's C
  sources (all of cext/ but the benchmarks) into a cffi module of its own in a
  cache directory, with ``-fsanitize-coverage=trace-pc,trace-cmp``. gcc then
  calls ``__sanitizer_cov_trace_pc`` at every basic block and
  ``__sanitizer_cov_trace_cmp*`` at every comparison; a small shim linked into
  the module (:data:`SHIM`) turns the first into AFL-style edge counters that
  it registers with the libFuzzer inside atheris, and hands the second to
  libFuzzer, which then learns the values the C compares input bytes with
  (magic numbers, CRCs) and writes them into inputs. The shim looks libFuzzer
  up by its file (``dlopen(RTLD_NOLOAD)``), so a preloaded ASan runtime (whose
  no-op ``__sanitizer_cov_*`` would otherwise win the symbol lookup) does not
  blind it. This is not clang's ``-fsanitize=fuzzer``: edges are hashed into
  16384 counters, and what libFuzzer prints as ``cov:`` counts those slots.

Bugs the C may have are caught by

* AddressSanitizer when the run has the ASan runtime loaded (CI preloads gcc's
  ``libasan.so``, see .ci/run): the module is then built with
  ``-fsanitize=address``; a heap or stack overflow aborts with ASan's report;
* undefined behaviour (out-of-bounds index into a fixed array, bad shift,
  signed overflow...) always: ``-fsanitize=undefined
  -fsanitize-undefined-trap-on-error`` makes it trap (SIGILL), which libFuzzer
  reports as a crash and saves -- no UBSan runtime needed. (Replay a crash
  with ``UNBROKEN_FUZZ_PLAIN=1`` against the sanitized installed module of
  .ci/run step 2 to see UBSan's message);
* guard pages: pure functions get every input twice, once ending right before
  an inaccessible page and once starting right after one
  (:class:`GuardedBuffer`), so a read past either end faults (SIGSEGV) with or
  without ASan (ASan cannot see into the mmap'ed buffer otherwise);
* the targets' oracles (independent Python models): an assertion failing is a
  crash like any other.

Without gcc, or with ``UNBROKEN_FUZZ_PLAIN=1``, the targets run against the
installed ``unbroken_engine._cext`` instead: still checked, but blind inside C
(only the Python side guides); a line on stderr says which build runs.

Running a target: ``python fuzz_X.py [libFuzzer options] [CORPUS_DIR...]``.
New inputs go to the first corpus directory; the committed seeds
(``corpus/<target>/``) are always added after it (read only), and when no
directory is given a temporary one takes the new inputs, so the committed
seeds never grow by themselves (it is removed by the next run after this
one). ``python fuzz_X.py crash-...`` replays a file.
``python fuzz_X.py --write-seeds`` rewrites ``corpus/<target>/`` from the
target's ``SEEDS``.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import mmap
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CEXT = os.path.join(ROOT, "cext")
CORPUS = os.path.join(HERE, "corpus")
#: where the Python code atheris instruments lives: the targets, _reference.py
#: and the oracles in tests/support/ (their branches guide the fuzzer too)
INSTRUMENTED = (HERE + os.sep, os.path.join(os.path.dirname(os.path.dirname(HERE)), "support")
                + os.sep)
SOURCES = ["ub_errors.c", "ub_crc32c.c", "ub_record.c", "ub_segment.c", "ub_json.c"]
# the exported functions of cext/ub.cdef, less the benchmarks, plus two extras
EXTRA_CDEF = """
int ub_record_peek(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                   const char **reason);
int ub_fuzz_cov_attach(const char *libfuzzer);
"""
COV_FLAGS = ["-fsanitize-coverage=trace-pc,trace-cmp"]
UB_FLAGS = ["-fsanitize=undefined", "-fsanitize-undefined-trap-on-error"]
BASE_FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-fno-omit-frame-pointer", "-fPIC",
              "-Wall", "-Wextra", "-Werror"]

SHIM = r"""
/* Edge coverage and comparison tracing for gcc's -fsanitize-coverage=trace-pc,
 * trace-cmp, fed to the libFuzzer of atheris (see _harness.py). Hidden: the
 * instrumented objects of this module bind to these, never to another copy. */
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define SLOTS (1u << 14)

static uint8_t counters[SLOTS] __attribute__((aligned(64)));
static uintptr_t pcs[2 * SLOTS];
static __thread uintptr_t prev;

HIDDEN void __sanitizer_cov_trace_pc(void)
{
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uintptr_t cur = (uintptr_t)(((uint64_t)pc * 0x9E3779B97F4A7C15ull) >> 50);
    counters[(cur ^ prev) & (SLOTS - 1)]++;
    prev = cur >> 1;
}

#define FWD(name, T)                                                     \
    static void (*p_##name)(T, T);                                       \
    HIDDEN void __sanitizer_cov_trace_##name(T a, T b)                   \
    {                                                                    \
        void (*f)(T, T) = p_##name;                                      \
        if (f)                                                           \
            f(a, b);                                                     \
    }
FWD(cmp1, uint8_t)
FWD(cmp2, uint16_t)
FWD(cmp4, uint32_t)
FWD(cmp8, uint64_t)
FWD(const_cmp1, uint8_t)
FWD(const_cmp2, uint16_t)
FWD(const_cmp4, uint32_t)
FWD(const_cmp8, uint64_t)

static void (*p_switch)(uint64_t, uint64_t *);
HIDDEN void __sanitizer_cov_trace_switch(uint64_t v, uint64_t *cases)
{
    void (*f)(uint64_t, uint64_t *) = p_switch;
    if (f)
        f(v, cases);
}
HIDDEN void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a; (void)b; }
HIDDEN void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a; (void)b; }

#define LOOK(var, name) *(void **)(&var) = dlsym(h, name)

/* Register the counters with libFuzzer (the library at path `libfuzzer`, or
 * whatever the global lookup finds when NULL). Returns the number of counters,
 * or -1 when libFuzzer is not found. Once only. */
int ub_fuzz_cov_attach(const char *libfuzzer)
{
    static int attached;
    void (*init8)(uint8_t *, uint8_t *);
    void (*initpcs)(const uintptr_t *, const uintptr_t *);
    void *h = libfuzzer ? dlopen(libfuzzer, RTLD_LAZY | RTLD_NOLOAD) : RTLD_DEFAULT;

    if (attached)
        return (int)SLOTS;
    if (!h)
        return -1;
    LOOK(init8, "__sanitizer_cov_8bit_counters_init");
    LOOK(initpcs, "__sanitizer_cov_pcs_init");
    if (!init8 || !initpcs || !dlsym(h, "LLVMFuzzerRunDriver"))
        return -1;
    for (size_t i = 0; i < SLOTS; i++) {
        pcs[2 * i] = (uintptr_t)&counters[i]; /* a distinct fake "PC" per slot */
        pcs[2 * i + 1] = 0;
    }
    init8(counters, counters + SLOTS);
    initpcs(pcs, pcs + 2 * SLOTS);
    LOOK(p_cmp1, "__sanitizer_cov_trace_cmp1");
    LOOK(p_cmp2, "__sanitizer_cov_trace_cmp2");
    LOOK(p_cmp4, "__sanitizer_cov_trace_cmp4");
    LOOK(p_cmp8, "__sanitizer_cov_trace_cmp8");
    LOOK(p_const_cmp1, "__sanitizer_cov_trace_const_cmp1");
    LOOK(p_const_cmp2, "__sanitizer_cov_trace_const_cmp2");
    LOOK(p_const_cmp4, "__sanitizer_cov_trace_const_cmp4");
    LOOK(p_const_cmp8, "__sanitizer_cov_trace_const_cmp8");
    LOOK(p_switch, "__sanitizer_cov_trace_switch");
    attached = 1;
    return (int)SLOTS;
}
"""


def asan_loaded() -> bool:
    """Whether an AddressSanitizer runtime is in this process (LD_PRELOAD)."""
    return hasattr(ctypes.CDLL(None), "__asan_init")


def _build_instrumented(cc: str, asan: bool):
    from cffi import FFI

    flags = BASE_FLAGS + COV_FLAGS + UB_FLAGS + (["-fsanitize=address"] if asan else [])
    with open(os.path.join(CEXT, "ub.cdef")) as f:
        cdef = f.read()
    cdef = cdef[:cdef.index("int ub_bench_mmap_copy")] + EXTRA_CDEF
    digest = hashlib.sha256()
    for name in sorted(os.listdir(CEXT)):
        if name.endswith((".c", ".h", ".cdef")):
            with open(os.path.join(CEXT, name), "rb") as f:
                digest.update(name.encode() + f.read())
    digest.update("\0".join([cc, SHIM, cdef, sys.version] + flags).encode())
    cache = os.environ.get("UNBROKEN_FUZZ_BUILD") or os.path.join(
        tempfile.gettempdir(), f"unbroken-fuzz-{digest.hexdigest()[:16]}")
    target = os.path.join(cache, "_ub_fuzz_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        work = tempfile.mkdtemp(prefix="unbroken-fuzz-build-", dir=os.path.dirname(cache))
        # the compiler must not run with the sanitizer runtime preloaded
        preload = os.environ.pop("LD_PRELOAD", None)
        try:
            objects = []
            with open(os.path.join(work, "ub_fuzz_cov.c"), "w") as f:
                f.write(SHIM)
            jobs = [(os.path.join(work, "ub_fuzz_cov.c"),
                     ["-std=c11", "-D_GNU_SOURCE", "-O2", "-fPIC"])]
            jobs += [(os.path.join(CEXT, n), flags) for n in SOURCES]
            for src, args in jobs:
                obj = os.path.join(work, os.path.basename(src)[:-2] + ".o")
                subprocess.run([cc, *args, "-I", CEXT, "-c", src, "-o", obj], check=True,
                               capture_output=True, text=True)
                objects.append(obj)
            ffi = FFI()
            ffi.cdef(cdef)
            ffi.set_source("_ub_fuzz_native", '#include "ub.h"\n'
                           "int ub_fuzz_cov_attach(const char *libfuzzer);\n",
                           include_dirs=[CEXT], extra_objects=objects,
                           extra_link_args=["-fsanitize=address"] if asan else [],
                           libraries=["dl"])
            built = ffi.compile(tmpdir=work, verbose=False)
            os.makedirs(cache, exist_ok=True)
            os.replace(built, target)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stderr.strip()}") from None
        finally:
            if preload is not None:
                os.environ["LD_PRELOAD"] = preload
            shutil.rmtree(work, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("_ub_fuzz_native", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


def _libfuzzer_path():
    core = sys.modules.get("atheris.core_with_libfuzzer")
    return getattr(core, "__file__", None)


def load_native():
    """``(ffi, lib, description)``: the coverage build, or the installed module
    (``description`` is None for the latter)."""
    cc = shutil.which(os.environ.get("CC", "gcc") or "gcc")
    asan = asan_loaded()
    if cc and os.environ.get("UNBROKEN_FUZZ_PLAIN", "") in ("", "0"):
        try:
            ffi, lib = _build_instrumented(cc, asan)
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            print(f"fuzz: cannot build the coverage-instrumented C ({exc}); "
                  f"using the installed module", file=sys.stderr)
        else:
            path = _libfuzzer_path()
            slots = lib.ub_fuzz_cov_attach(path.encode() if path else ffi.NULL)
            what = (f"the C code is coverage-instrumented (gcc trace-pc/trace-cmp, "
                    f"{slots} edge counters{'' if slots > 0 else ': libFuzzer NOT FOUND'}), "
                    f"UB traps, ASan {'on' if asan else 'off (no runtime loaded)'}")
            print(f"fuzz: {what}", file=sys.stderr)
            return ffi, lib, what
    else:
        print("fuzz: no gcc (or UNBROKEN_FUZZ_PLAIN=1): the installed, uninstrumented "
              "module; only the Python side is coverage-guided", file=sys.stderr)
    from unbroken_engine._cext import ffi, lib
    return ffi, lib, None


class Native:
    """The C functions, loaded on the first input (libFuzzer is loaded by then)."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.ready = False

    def load(self) -> None:
        self.ffi, self.lib, self.instrumented = load_native()
        self.guarded = GuardedBuffer(self.ffi, self.max_len)
        self.has_peek = hasattr(self.lib, "ub_record_peek")
        self.ready = True


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


def private_dir(kind: str, base: str | None = None) -> str:
    """A directory of this process's own, ``<base>/unbroken-fuzz-<kind>-<pid>``.
    libFuzzer ends the process with exit(), so Python's atexit never runs:
    instead, the directories of processes that are gone are removed here."""
    base = base or tempfile.gettempdir()
    prefix = f"unbroken-fuzz-{kind}-"
    for entry in os.listdir(base):
        pid = entry[len(prefix):]
        if entry.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
            except OSError:
                pass
    path = os.path.join(base, f"{prefix}{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    return path


def _instrument(module_globals, skip) -> int:
    """Let atheris trace the Python functions defined in the target, in
    _reference.py and in the oracles of tests/support/ the target imported
    (their branches guide the fuzzer too); each function once."""
    import atheris

    import _reference

    spaces = [module_globals, vars(_reference)]
    spaces += [vars(m) for name, m in list(sys.modules.items()) if name.startswith("support.")]
    seen = set()
    for space in spaces:
        for name, obj in list(space.items()):
            if isinstance(obj, types.FunctionType) and name not in skip and \
                    id(obj) not in seen and obj.__code__.co_filename.startswith(INSTRUMENTED):
                seen.add(id(obj))
                atheris.instrument_func(obj)
    return len(seen)


def main(test_one_input, seeds, max_len: int, name: str, skip=("crc32c",)) -> None:
    """Run libFuzzer on ``test_one_input`` (``sys.argv`` holds its options)."""
    seed_dir = os.path.join(CORPUS, name)
    if "--write-seeds" in sys.argv:
        shutil.rmtree(seed_dir, ignore_errors=True)
        os.makedirs(seed_dir)
        for i, seed in enumerate(seeds):
            with open(os.path.join(seed_dir, f"seed-{i:03d}"), "wb") as f:
                f.write(seed)
        print(f"wrote {len(seeds)} seeds to {seed_dir}")
        return
    import atheris

    argv = list(sys.argv)
    paths = [a for a in argv[1:] if not a.startswith("-")]
    if not any(os.path.isfile(p) for p in paths):  # fuzzing, not replaying files
        if not paths:  # new inputs go to a scratch directory, not to the seeds
            argv.append(private_dir(f"corpus-{name}"))
        if os.path.isdir(seed_dir) and os.path.abspath(seed_dir) not in map(os.path.abspath,
                                                                             paths):
            argv.append(seed_dir)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.insert(1, f"-max_len={max_len}")
    _instrument(test_one_input.__globals__, skip)
    atheris.Setup(argv, test_one_input)
    # atheris loads its libFuzzer in Fuzz(): globally, so the shim can find it
    sys.setdlopenflags(sys.getdlopenflags() | os.RTLD_GLOBAL)
    atheris.Fuzz()
