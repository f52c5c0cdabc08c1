"""The Python OnePipe Flow and the official TypeScript client, on one server.

Against a real ``unbroken serve`` subprocess (file store in tmp_path, a free
port: ``--port 0`` and the start-up line it prints), this proves:

* **Python writes, TypeScript reads.** Every event a :class:`Flow` wrote --
  nested objects, unicode (astral characters, RTL, escapes, control
  characters, U+2028, U+2029, U+0085), numbers
  up to 2**53-1 and floats, scalars, ``null``, a JSON array as *one* event,
  a 250 KB event -- with ``append`` and ``append_many``, is read by
  ``@durable-streams/client`` in order with equal JSON values: by a catch-up
  read (``stream({live: false}).json()``) while the flow is open and after it
  is closed, and by a live read (``stream({live: "sse"})`` and
  ``stream({live: "long-poll"})`` with ``subscribeJson``) that catches up,
  gets the rest as Python appends it, and ends at the flow's close.
* **TypeScript writes, Python reads.** The client creates ``flows/<name>``
  (``DurableStream.create``, application/json) and appends with its
  ``IdempotentProducer``; ``Flow.create(name).build()`` accepts that stream,
  and ``Flow.read()`` and ``Flow.subscribe()`` (live: it is caught up before
  the second half is written) get exactly those values in order, the
  subscription ending when the producer closes the stream -- after which a
  Python append is refused with :class:`StreamClosed`.
* Events holding U+2028, U+2029 or U+0085 (which JSON leaves unescaped)
  survive ``Flow.subscribe()``: SSE ends lines at CR, LF and CRLF only, and
  an earlier Python SSE reader also cut lines at these (this test found it).

Equal means equal as canonical JSON (sorted keys), so ``true`` is not ``1``.

The node side is tests/onepipe/interop.mjs (its header says what each
command prints). The client is the one pinned in tests/conformance/package.json
(``@durable-streams/client``), installed by the ``node_toolchain`` fixture of
tests/conftest.py exactly as for the conformance suite: ``npm ci`` once per
session under a lock when the pinned versions are not in
tests/conformance/node_modules; skipped, saying why, without node >= 18 and
npm. How the script finds the package: an ES module resolves a bare import
from its own directory, and tests/onepipe has no node_modules, so the script
resolves the package from the npm project named by
``$DURABLE_STREAMS_NODE_PROJECT`` (set here to tests/conformance; by default
../conformance next to the script) with ``createRequire``, and imports the
ES-module entry that the package's "exports" name. No copy, no NODE_PATH
(which ES modules ignore), nothing installed under tests/onepipe.

Only liveness timeouts (generous), no timing assertions. Runs on asyncio
only: what is under test is the wire, not the event loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import anyio
import pytest

from support.server import tail as _tail
from unbroken_server.onepipe import Flow, StreamClosed, connect

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "interop.mjs"
NODE_PROJECT = HERE.parent / "conformance"  # the npm project holding the client

NODE_TIMEOUT = 180  # s, one run of interop.mjs (its own watchdog fires 30 s before)
WAIT_TIMEOUT = 90  # s, a live reader catching up / ending after the close


@pytest.fixture
def anyio_backend():
    return "asyncio"


# --------------------------------------------------------------------------- the events

NESTED = {"order": {"id": 1,
                    "lines": [{"sku": "A-1", "qty": 2, "price": 9.99},
                              {"sku": "B-2", "qty": 1, "price": 0.1}],
                    "customer": {"name": "Zoë Ångström-Łukasiewicz",
                                 "address": {"city": "Zürich", "country": "CH"},
                                 "tags": ["vip", "日本語", "ελληνικά"]}},
          "paid": True, "coupon": None, "notes": []}
UNICODE = {"emoji": "🚀 🎉 👩🏽‍💻 🇨🇭", "rtl": "שלום مرحبا", "combining": "e\u0301 n\u0303",
           "astral": "𝄞 𝕳", "bom": "\ufeff", "controls": "\x0b \x0c \x1c \x1f \x7f",
           "escapes": "quote \" backslash \\ slash / tab \t newline \n cr \r nul \u0000 bel \u0007",
           "ключ с пробелом": "значение", "": "empty key"}
NUMBERS = {"int": 42, "negative": -7, "zero": 0, "max_safe": 2**53 - 1, "min_safe": -(2**53 - 1),
           "pi": 3.141592653589793, "tiny": 1e-7, "huge": 1.5e300, "quarter": -0.25,
           "third": 1 / 3, "list": [0, 1, -1, 0.5, 1e-300]}
#: characters JSON leaves unescaped that str.splitlines() (so httpx's
#: aiter_lines()) takes for line ends, though SSE does not
LINE_SEPARATORS = {"u2028": "a\u2028b", "u2029": "c\u2029d", "nel": "e\x85f"}
ARRAY_EVENT = [1, "two", {"three": 3}, [4, [5, []]], None, True]  # one event
SCALARS = ["just a string", 7, 2.5, False, None, [], {}, ""]


def _deep(levels: int):
    node = "bottom"
    for i in range(levels):
        node = {"level": i, "next": [node]}
    return node


DEEP = _deep(40)
BIG = {"blob": "ü€𝄞x" * 25_000}  # 250 000 characters, 250 KB of UTF-8
MANY = [{"seq": i, "name": f"event-{i}", "even": i % 2 == 0} for i in range(150)]

#: what Python writes in direction 1: ("one", event) -> append, ("many", [...]) -> append_many
PY_FIRST = [("one", NESTED), ("one", ARRAY_EVENT), ("many", SCALARS), ("one", UNICODE),
            ("one", LINE_SEPARATORS),
            ("one", NUMBERS), ("many", [DEEP, BIG]), ("one", "a plain string")]
PY_SECOND = [("many", MANY), ("one", [["nested", "array"], "as one event"]),
             ("many", [[1, 2], [3], ARRAY_EVENT]), ("one", {"done": True, "note": "the last"})]

#: what TypeScript writes in direction 2 (one IdempotentProducer.append each)
TS_FIRST = [NESTED, ARRAY_EVENT, *SCALARS, UNICODE, LINE_SEPARATORS, NUMBERS, DEEP, BIG,
            "a plain string"]
TS_SECOND = [*MANY, [["nested", "array"], "as one event"], [1, 2], {"done": True}]


def _flatten(writes) -> list:
    out = []
    for kind, what in writes:
        out.extend(what if kind == "many" else [what])
    return out


async def _write(flow: Flow, writes) -> None:
    for kind, what in writes:
        if kind == "many":
            await flow.append_many(what)
        else:
            await flow.append(what)


def _canonical(values: list) -> list[str]:
    return [json.dumps(v, sort_keys=True, ensure_ascii=False, allow_nan=False) for v in values]


def assert_same(got: list, expected: list, what: str) -> None:
    """``got`` holds exactly ``expected``, in order, as JSON (``True`` is not ``1``)."""
    assert isinstance(got, list), f"{what}: not a list: {got!r:.300}"
    g, e = _canonical(got), _canonical(expected)
    if g == e:
        return
    first = next((i for i, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e)))
    raise AssertionError(
        f"{what}: {len(got)} values, expected {len(expected)}; first difference at index "
        f"{first}:\n  got      {g[first][:300] if first < len(g) else '(nothing)'}\n"
        f"  expected {e[first][:300] if first < len(e) else '(nothing)'}")


# --------------------------------------------------------------------------- processes


@pytest.fixture
def server(tmp_path, unbroken_server):
    """``unbroken serve`` on the file store (tests/onepipe/conftest.py)."""
    s = unbroken_server(tmp_path / "data")
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def node(node_toolchain):
    return node_toolchain[0]


class NodeRun:
    """``node interop.mjs ...`` in a subprocess: stdout kept whole (the result),
    stderr line by line (``{"progress": ...}`` lines parsed as they come)."""

    def __init__(self, node: str, server, *args: str):  # server: conftest.UnbrokenServer
        self.server = server
        self.cmd = [node, str(SCRIPT), *args]
        env = dict(os.environ, DURABLE_STREAMS_NODE_PROJECT=str(NODE_PROJECT),
                   INTEROP_TIMEOUT_MS=str((NODE_TIMEOUT - 30) * 1000), NO_COLOR="1")
        self.proc = subprocess.Popen(self.cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8", errors="replace")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.progress: list[dict] = []
        self._stderr_done = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._out, daemon=True),
                         threading.Thread(target=self._err, daemon=True)]
        for t in self._threads:
            t.start()

    def _out(self):
        for chunk in self.proc.stdout:
            self.stdout.append(chunk)

    def _err(self):
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line)
                try:
                    progress = json.loads(line).get("progress")
                except (ValueError, AttributeError):
                    progress = None
                if isinstance(progress, dict):
                    self.progress.append(progress)
                self._cond.notify_all()
        with self._cond:
            self._stderr_done = True
            self._cond.notify_all()

    def _explain(self, why: str) -> str:
        return (f"{why}\n  `{' '.join(self.cmd)}`\n--- its stderr:\n{_tail(self.stderr)}\n"
                f"--- its stdout:\n{_tail(''.join(self.stdout).splitlines())}\n"
                f"--- the server's output:\n{_tail(self.server.lines)}")

    async def until(self, what: str, predicate) -> None:
        """Wait (at most WAIT_TIMEOUT) until ``predicate(progress lines)``."""
        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(
                    lambda: predicate(self.progress) or self._stderr_done, WAIT_TIMEOUT) \
                    and predicate(self.progress)
        if not await anyio.to_thread.run_sync(wait):
            self.kill()
            raise AssertionError(self._explain(f"the node reader never {what} "
                                               f"(progress: {self.progress[-5:]})"))

    async def result(self):
        """Wait for the exit; :return: what it printed on stdout, parsed."""
        try:
            rc = await anyio.to_thread.run_sync(self.proc.wait, NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(self._explain(f"no exit within {NODE_TIMEOUT} s (killed)"))
        for t in self._threads:
            t.join(10)
        if rc != 0:
            raise AssertionError(self._explain(f"exited {rc}"))
        try:
            return json.loads("".join(self.stdout))
        except ValueError:
            raise AssertionError(self._explain("printed no JSON on stdout")) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def node_runs():
    """``node_runs(node, server, *args)`` starts interop.mjs; every run still
    going at the end is killed."""
    runs: list[NodeRun] = []

    def start(*args) -> NodeRun:
        run = NodeRun(*args)
        runs.append(run)
        return run
    yield start
    for run in runs:
        run.kill()


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_the_typescript_client_reads_what_a_python_flow_wrote(live, node, server,
                                                                    node_runs):
    name = f"py-to-ts-{live}"
    url = server.stream_url(f"flows/{name}")
    first, everything = _flatten(PY_FIRST), _flatten(PY_FIRST + PY_SECOND)
    async with connect("remote", url=server.url):
        flow = await Flow.create(name).build()
        await _write(flow, PY_FIRST)

        # catch-up, the flow still open
        got = await node_runs(node, server, "read", url, "catch-up").result()
        assert_same(got, first, "catch-up read of the open flow")

        # live: catch up, then get the rest as it is written, until the close
        reader = node_runs(node, server, "read", url, live)
        await reader.until(f"caught up with the {len(first)} events written so far",
                           lambda ps: any(p["upToDate"] and p["total"] == len(first)
                                          for p in ps))
        caught_up_at = len(reader.progress)
        await _write(flow, PY_SECOND)
        await flow.close()
        got = await reader.result()
        assert_same(got, everything, f"live ({live}) read")
        # the rest came in batches delivered after the catch-up, the last marked closed
        later = reader.progress[caught_up_at:]
        assert sum(p["items"] for p in later) == len(everything) - len(first), later
        assert later[-1]["streamClosed"] and later[-1]["total"] == len(everything), later[-3:]

        # catch-up, the flow closed
        got = await node_runs(node, server, "read", url, "catch-up").result()
        assert_same(got, everything, "catch-up read of the closed flow")


async def test_python_flows_read_what_the_typescript_client_wrote(node, server, node_runs,
                                                                  tmp_path):
    name = "ts-to-py"
    url = server.stream_url(f"flows/{name}")
    everything = TS_FIRST + TS_SECOND
    first_file, second_file = tmp_path / "first.json", tmp_path / "second.json"
    first_file.write_text(json.dumps(TS_FIRST, ensure_ascii=False), encoding="utf-8")
    second_file.write_text(json.dumps(TS_SECOND, ensure_ascii=False), encoding="utf-8")

    # the client creates the stream and writes the first part; its producer detaches
    summary = await node_runs(node, server, "write", url, str(first_file)).result()
    assert summary["epoch"] == 0 and summary["nextSeq"] >= 1, summary

    async with connect("remote", url=server.url):
        flow = await Flow.create(name).build()  # the stream exists: accepted as is
        got = [event async for _, event in flow.read()]
        assert_same(got, TS_FIRST, "Flow.read() of what the client wrote")

        live: list = []
        caught_up, ended = anyio.Event(), anyio.Event()

        async def subscribe():
            async for _, event in flow.subscribe():
                live.append(event)
                if len(live) >= len(TS_FIRST):
                    caught_up.set()
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe)
            with anyio.fail_after(WAIT_TIMEOUT):
                await caught_up.wait()
            assert_same(live, TS_FIRST, "Flow.subscribe() catching up")
            # more from the client, which then closes the stream: the subscription ends
            summary = await node_runs(node, server, "write", url, str(second_file),
                                      "--close").result()
            assert summary["finalOffset"], summary
            with anyio.fail_after(WAIT_TIMEOUT):
                await ended.wait()
        assert_same(live, everything, "Flow.subscribe()")

        got = [event async for _, event in flow.read()]
        assert_same(got, everything, "Flow.read() after the client closed the stream")
        with pytest.raises(StreamClosed):
            await flow.append({"too": "late"})


async def test_flow_subscribe_reads_line_separators_the_client_wrote(node, server, node_runs,
                                                                     tmp_path):
    name = "ts-to-py-separators"
    url = server.stream_url(f"flows/{name}")
    events = [{"before": 1}, LINE_SEPARATORS, {"after": 2}]
    file = tmp_path / "events.json"
    file.write_text(json.dumps(events, ensure_ascii=False), encoding="utf-8")
    await node_runs(node, server, "write", url, str(file), "--close").result()

    async with connect("remote", url=server.url):
        flow = await Flow.create(name).build()
        got = [event async for _, event in flow.read()]
        assert_same(got, events, "Flow.read() of line separators the client wrote")
        with anyio.fail_after(WAIT_TIMEOUT):
            got = [event async for _, event in flow.subscribe()]
        assert_same(got, events, "Flow.subscribe() of line separators the client wrote")
