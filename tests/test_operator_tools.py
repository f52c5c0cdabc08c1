"""``unbroken verify`` and ``unbroken inspect`` (unbroken_engine/verify.py,
server/operator.py) on real data directories.

Each test copies a data directory written by FileBackedStreamStore (streams,
forks, producers, a closed stream, a TTL), damages it the way a crash or a bad
disk would, and runs the command in-process through ``cli.main`` (one test
runs the installed ``unbroken`` executable). What is asserted is what an
operator relies on: the exit status; the stream, file, byte position and
reason of the damage; that a check without ``--repair`` changes no byte; that
``--repair`` leaves a directory the store opens with every acknowledged record
readable; that damage before valid data is cut only with ``--force``, which
says what it dropped.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from unbroken_engine import _native as nat
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.protocol.offsets import format_offset
from unbroken_engine.stores.file import FileBackedStreamStore, lock_data_dir
from unbroken_engine.stores.interface import AppendOptions, CreateOptions, Producer
from unbroken_engine.stores.sync import SyncStreamStore
from unbroken_server import cli
from unbroken_server import operator as operator_cli

HEADER = nat.SEG_HEADER_SIZE
# small segments and a dense index, so that "orders" has sealed segments
CONFIG = LogConfig(segment_size=1024, index_interval=64, durability=Durability.NEVER)
ORDERS = [b"order-%03d-" % i + b"x" * 40 for i in range(30)]
EVENTS = [b'[{"i":%d},%d]' % (i, i) for i in range(5)]
ORDERS_DIR = "orders"
EVENTS_DIR = layout.stream_dir_name("events/json")


def _build(d: Path) -> dict:
    ends: dict = {}
    with SyncStreamStore(lambda: FileBackedStreamStore(d, CONFIG)) as s:
        s.create("orders", CreateOptions(content_type="text/plain", ttl=3600))
        ends["orders"] = [
            s.append("orders", p, AppendOptions(producer=Producer("w1", 0, i),
                                                seq="%04d" % i)).next_offset
            for i, p in enumerate(ORDERS)]
        s.create("events/json", CreateOptions(content_type="application/json"))
        ends["events/json"] = [s.append("events/json", p).next_offset for p in EVENTS]
        s.create("early-fork", CreateOptions(fork_from="orders", fork_offset=ends["orders"][4]))
        ends["early-fork"] = [s.append("early-fork", b"forked", AppendOptions(
            producer=Producer("f", 3, 0), close=True)).next_offset]
        s.create("tail-fork", CreateOptions(fork_from="orders"))
        s.create("closed", CreateOptions(content_type="text/plain", data=b"bye", closed=True))
    return ends


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine") / "streams"
    return d, _build(d)


@pytest.fixture
def data(pristine, tmp_path):
    """A fresh copy of the data directory, and the end offset of every append."""
    src, ends = pristine
    d = tmp_path / "streams"
    shutil.copytree(src, d)
    return d, ends


# ---- helpers ---------------------------------------------------------------------------------

def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, _ = run(capsys, *argv, "--json")
    return rc, json.loads(out)


def tree_hash(d: Path) -> str:
    """Every path, file size and byte under ``d``."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(d)):
        dirs.sort()
        h.update(root.encode() + b"\0")
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(name.encode() + b"\0")
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def segments(d: Path, folder: str) -> list[Path]:
    return [d / folder / layout.segment_name(b) for b in layout.list_segments(d / folder)]


def record_positions(seg: Path) -> list[int]:
    """Positions of the records of a healthy segment file (up to its zeros)."""
    data = seg.read_bytes()
    pos, out = HEADER, []
    while pos + nat.REC_HEADER_SIZE <= len(data) and any(data[pos:pos + nat.REC_HEADER_SIZE]):
        rec = nat.decode_record(data, pos)
        assert rec is not nat.NEEDMORE
        out.append(pos)
        pos = rec.next
    return out


def line_of(out: str, stream: str) -> str:
    """The line of a stream in a text report (verify: STATUS PATH ..., inspect: PATH ...)."""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 1 and stream in parts[:2]:
            return line
    raise AssertionError(f"no line for {stream!r} in:\n{out}")


def read_stream(d: Path, path: str) -> bytes:
    with SyncStreamStore(lambda: FileBackedStreamStore(d, CONFIG)) as s:
        assert not s.recovery.corrupt, s.recovery.corrupt
        r = s.read(path, None, 1 << 20)
        assert r.up_to_date
        return bytes(r.data)


def lying_index(idx: bytes) -> bytes:
    """An index whose entry 1 points inside a record, with a correct CRC: the
    C loader's checks (order, bounds, CRC) pass, only a rebuild tells."""
    out = bytearray(idx)
    struct.pack_into("<I", out, 64 + 8, HEADER + 2)
    crc = nat.crc32c(bytes(out[64:]), nat.crc32c(bytes(out[:60])))
    struct.pack_into("<I", out, 60, nat.crc_mask(crc))
    return bytes(out)


def flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def zero(path: Path, pos: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes(n))


# ---- verify: a healthy directory ---------------------------------------------------------------

def test_healthy_directory_is_ok_and_untouched(data, capsys):
    d, _ = data
    before = tree_hash(d)
    rc, out, err = run(capsys, "verify", d)
    assert rc == 0, out
    for stream in ("orders", "events/json", "early-fork", "tail-fork", "closed"):
        assert line_of(out, stream).startswith("OK ")
    assert "5 streams checked (7 segments" in out and "healthy" in out
    assert err == ""
    assert tree_hash(d) == before


def test_a_single_stream_folder(data, capsys):
    d, _ = data
    rc, report = run_json(capsys, "verify", d / ORDERS_DIR)
    assert rc == 0 and report["single_stream"] and report["exit_status"] == 0
    [s] = report["streams"]
    assert (s["path"], s["status"], len(s["segments"])) == ("orders", "ok", 3)
    assert [g["index"] for g in s["segments"]] == ["ok", "ok", "-"]


# ---- verify: damage is found, reported precisely, and nothing is changed -----------------------

def test_flipped_byte_in_a_sealed_segment(data, capsys):
    d, _ = data
    seg = segments(d, ORDERS_DIR)[1]  # sealed, with a valid index: the store's open misses it
    bad = record_positions(seg)[2]
    # the valid records after the bad one, in this segment and in the active one
    lost = len(record_positions(seg)) - 3 + len(record_positions(segments(d, ORDERS_DIR)[2]))
    flip(seg, bad + 20)
    before = tree_hash(d)
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    line = line_of(out, "orders")
    assert line.startswith("DAMAGED ")
    assert f"{seg} byte {bad}: checksum mismatch" in line
    assert "valid records" in line and "--repair --force" in line
    # forks read through the damaged source
    assert line_of(out, "tail-fork").startswith("DAMAGED ")
    assert "fork source 'orders' is damaged" in line_of(out, "tail-fork")
    assert line_of(out, "events/json").startswith("OK ")
    assert "DAMAGE FOUND" in out

    rc, report = run_json(capsys, "verify", d)
    assert rc == 1 and report["exit_status"] == 1
    [orders] = [s for s in report["streams"] if s["path"] == "orders"]
    [issue] = [i for i in orders["issues"] if i["severity"] == "damage"]
    assert (issue["file"], issue["position"], issue["repair"]) == (str(seg), bad, "force")
    assert issue["reason"].startswith("checksum mismatch")
    assert issue["drop_records"] == lost
    assert tree_hash(d) == before


def test_verify_and_inspect_change_no_byte(data, capsys):
    """Every kind of damage at once; neither command modifies the directory."""
    d, _ = data
    orders, events = segments(d, ORDERS_DIR), segments(d, EVENTS_DIR)
    os.truncate(events[-1], record_positions(events[-1])[-1] + 7)  # torn active tail
    (d / ORDERS_DIR / layout.index_name(layout.list_segments(d / ORDERS_DIR)[0])).unlink()
    zero(orders[-1], record_positions(orders[-1])[0], 20)  # damage before valid data
    (d / "closed" / layout.META_NAME).write_bytes(b"\x81\xa4junk")
    (d / ".tmp-0123").mkdir()
    (d / ".tmp-0123" / "x").write_bytes(b"y")
    (d / EVENTS_DIR / "00000000000000000000.seg.tmp").write_bytes(b"z" * 10)
    before = tree_hash(d)
    for argv in (["verify", d], ["verify", d, "--json"], ["verify", d / ORDERS_DIR],
                 ["inspect", d], ["inspect", d, "--json"], ["inspect", d, "orders"],
                 ["inspect", d, "events/json", "--json"]):
        run(capsys, *argv)
        assert tree_hash(d) == before, argv
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    assert line_of(out, "events/json").startswith("WARN ")
    assert line_of(out, "orders").startswith("DAMAGED ")
    assert "index file missing" in out and "leftover folder" in out
    assert "leftover temporary file" in out


def test_corrupt_and_misplaced_meta(data, capsys):
    d, _ = data
    meta = d / EVENTS_DIR / layout.META_NAME
    meta.write_bytes(b"garbage")
    # a meta file copied into the wrong folder names another stream
    shutil.copy(d / ORDERS_DIR / layout.META_NAME, d / "closed" / layout.META_NAME)
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    line = line_of(out, f"[{d / EVENTS_DIR}]")  # no readable path: the folder is shown
    assert line.startswith("DAMAGED ") and f"{meta}: meta file is not valid msgpack" in line
    line = line_of(out, f"[{d / 'closed'}]")
    assert line.startswith("DAMAGED ") and f"{d / 'closed' / layout.META_NAME}: meta file " \
        "names another stream ('orders', whose folder is 'orders')" in line
    assert line_of(out, "orders").startswith("OK ")
    # a repair cannot invent metadata: still damaged, nothing changed
    before = tree_hash(d)
    rc, out, _ = run(capsys, "verify", d, "--repair")
    assert rc == 1 and tree_hash(d) == before


def test_missing_fork_source(data, capsys):
    d, ends = data
    shutil.rmtree(d / ORDERS_DIR)
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    for fork in ("early-fork", "tail-fork"):
        line = line_of(out, fork)
        assert line.startswith("DAMAGED ") and "fork source 'orders' is missing" in line
    assert line_of(out, "events/json").startswith("OK ")


def test_missing_first_segment(data, capsys):
    d, ends = data
    first = segments(d, ORDERS_DIR)[0]
    first.unlink()
    first.with_suffix(".idx").unlink()
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    assert f"{segments(d, ORDERS_DIR)[0]} byte 0: the log starts at offset " \
        f"{ends['orders'][10]}, not 0: segment files before it are missing" in line_of(out, "orders")


def test_segments_that_do_not_line_up(data, capsys):
    d, ends = data
    orders = segments(d, ORDERS_DIR)
    # the middle segment is lost: the first no longer leads to the last
    orders[1].unlink()
    orders[1].with_suffix(".idx").unlink()
    rc, report = run_json(capsys, "verify", d)
    assert rc == 1
    [s] = [s for s in report["streams"] if s["path"] == "orders"]
    [issue] = [i for i in s["issues"] if i["severity"] == "damage"]
    assert issue["file"] == str(orders[0]) and issue["position"] == orders[0].stat().st_size
    assert "segment does not follow the previous one" in issue["reason"]


# ---- repair ----------------------------------------------------------------------------------

def test_repair_refuses_a_directory_a_store_has_open(data, capsys):
    d, _ = data
    events = segments(d, EVENTS_DIR)[-1]
    os.truncate(events, record_positions(events)[-1] + 12)  # something to repair
    before = events.read_bytes()
    fd = lock_data_dir(d)  # what an open store (a running server) holds
    try:
        rc, out, err = run(capsys, "verify", d, "--repair")
        assert rc != 0 and "is in use by another store" in err
        assert events.read_bytes() == before  # nothing changed
        rc, out, _ = run(capsys, "verify", d)  # a check alone still runs
        assert rc == 0 and "torn tail" in out
    finally:
        os.close(fd)
    rc, out, _ = run(capsys, "verify", d, "--repair")
    assert rc == 0 and line_of(out, "events/json").startswith("REPAIRED ")


def test_repair_cuts_torn_tails_and_rebuilds_indexes(data, capsys):
    d, ends = data
    events = segments(d, EVENTS_DIR)[-1]
    last = record_positions(events)[-1]
    os.truncate(events, last + 12)  # the last append was cut mid-record: never acknowledged
    torn = len(events.read_bytes()[last:].rstrip(b"\0"))  # what recovery counts as cut
    orders = segments(d, ORDERS_DIR)
    idx0 = orders[0].with_suffix(".idx")
    idx0.unlink()
    idx1 = orders[1].with_suffix(".idx")
    saved_idx1 = idx1.read_bytes()
    idx1.write_bytes(lying_index(saved_idx1))
    (d / ".trash-42").mkdir()
    zero_seg = d / EVENTS_DIR / layout.segment_name(10**9)
    zero_seg.write_bytes(bytes(4096))  # a roll whose header never reached the disk

    rc, out, _ = run(capsys, "verify", d)
    assert rc == 0  # warnings only: nothing acknowledged is at risk
    assert line_of(out, "events/json").startswith("WARN ")
    assert f"{events} byte {last}: torn tail of {torn} bytes" in out
    assert f"{zero_seg} byte 0: segment file never written" in out
    assert f"{idx0}: index file missing" in out
    assert f"{idx1}: index does not match its segment: index entry 1 (byte {HEADER + 2}) " \
        "is not a record boundary" in out
    assert line_of(out, "orders").startswith("WARN ")

    rc, out, _ = run(capsys, "verify", d, "--repair")
    assert rc == 0, out
    assert line_of(out, "events/json").startswith("REPAIRED ")
    assert f"cut torn tail: {events} at byte {last} ({torn} bytes cut)" in out
    assert f"rebuilt index: {idx0}" in out and f"rebuilt index: {idx1}" in out
    assert "removed leftover folder" in out
    # rebuilt with the default interval (the store's may differ): valid, maybe sparser
    assert idx0.exists() and idx1.read_bytes() != lying_index(saved_idx1)
    assert not zero_seg.exists() and not (d / ".trash-42").exists()

    rc, out, _ = run(capsys, "verify", d)
    assert rc == 0 and "WARN" not in out and "REPAIRED" not in out
    with SyncStreamStore(lambda: FileBackedStreamStore(d, CONFIG)) as s:
        # nothing left for the store's own recovery to do
        assert (s.recovery.bytes_cut, s.recovery.indexes_rebuilt, s.recovery.corrupt) == (0, 0, {})
        assert bytes(s.read("orders", None, 1 << 20).data) == b"".join(ORDERS)
        assert json.loads(bytes(s.read("events/json", None, 1 << 20).data)) == \
            [v for p in EVENTS[:-1] for v in json.loads(p)]
        assert s.read("events/json", None, 1 << 20).next_offset == ends["events/json"][-2]


def test_an_index_written_with_another_interval_is_fine(data, capsys, tmp_path):
    d, _ = data
    seg = segments(d, ORDERS_DIR)[0]
    other = tmp_path / "other.idx"
    native, rep = nat.NativeSegment.open(str(seg), str(other), nat.OPEN_SEALED,
                                         seg.stat().st_size, 256)
    native.close()
    assert rep.index_rebuilt and other.read_bytes() != seg.with_suffix(".idx").read_bytes()
    shutil.copy(other, seg.with_suffix(".idx"))
    rc, out, _ = run(capsys, "verify", d)
    assert rc == 0 and line_of(out, "orders").startswith("OK ")


def test_damage_before_valid_data_is_cut_only_with_force(data, capsys):
    d, ends = data
    active = segments(d, ORDERS_DIR)[-1]
    positions = record_positions(active)
    zero(active, positions[0], positions[1] - positions[0])  # a whole record zeroed
    after = len(positions) - 1
    before = tree_hash(d)

    rc, out, _ = run(capsys, "verify", d)
    assert rc == 1
    line = line_of(out, "orders")
    assert line.startswith("DAMAGED ") and f"{active} byte {positions[0]}: zero header" in line
    assert f"{after} valid records ({after} messages) follow it" in line

    rc, out, _ = run(capsys, "verify", d, "--repair")
    assert rc == 1
    assert "not cut: the damage at byte" in out and f"lies before {after} valid records" in out
    assert "Rerun with --repair --force" in out
    assert tree_hash(d) == before  # refused: nothing touched

    damaged_bytes = active.read_bytes()
    rc, report = run_json(capsys, "verify", d, "--repair", "--force")
    [orders] = [s for s in report["streams"] if s["path"] == "orders"]
    [action] = orders["actions"]
    assert action["action"] == "cut damaged log" and action["position"] == positions[0]
    assert (action["records_dropped"], action["messages_dropped"]) == (after, after)
    assert action["bytes_dropped"] == ends["orders"][-1] - (ends["orders"][-1 - len(positions)])
    saved = Path(action["saved_to"])
    assert saved.parent == d / ORDERS_DIR and saved.name.startswith("repair-dropped-")
    assert (saved / active.name).read_bytes() == damaged_bytes  # the cut bytes are kept
    assert not any(active.read_bytes()[positions[0]:])  # and cut from the segment
    assert orders["status"] == "repaired"
    statuses = {s["path"]: s["status"] for s in report["streams"]}
    # the fork made at the old tail now starts beyond its source's end
    assert statuses["tail-fork"] == "damaged"
    [fork] = [s for s in report["streams"] if s["path"] == "tail-fork"]
    assert "lies beyond the end of its source 'orders'" in fork["issues"][0]["reason"]
    assert statuses["early-fork"] == "ok"
    assert rc == 1

    kept = len(ORDERS) - len(positions)  # the records of the sealed segments
    assert read_stream(d, "orders") == b"".join(ORDERS[:kept])
    rc, out, _ = run(capsys, "verify", d / ORDERS_DIR)
    assert rc == 0 and "repair-dropped-" in out  # noted, not a problem


def test_forced_cut_in_a_sealed_segment(data, capsys):
    d, ends = data
    orders = segments(d, ORDERS_DIR)
    positions = record_positions(orders[0])
    flip(orders[0], positions[3] + 1)  # inside the length field: CRC catches it
    rc, out, _ = run(capsys, "verify", d, "--repair", "--force")
    assert f"cut damaged log: {orders[0]} at byte {positions[3]}" in out
    lost = len(ORDERS) - 4  # the valid records after the bad one
    assert f"({lost} valid records ({lost} messages) dropped" in out
    # the cut segment is the active one now; the later ones were moved aside
    assert segments(d, ORDERS_DIR) == [orders[0]]
    assert orders[0].stat().st_size == positions[3]
    saved = next((d / ORDERS_DIR).glob("repair-dropped-*"))
    assert sorted(p.name for p in saved.iterdir() if p.suffix == ".seg") == \
        [p.name for p in orders]
    assert "early-fork" in out and line_of(out, "early-fork").startswith("DAMAGED ")
    assert read_stream(d, "orders") == b"".join(ORDERS[:3])


# ---- inspect ---------------------------------------------------------------------------------

def test_inspect_lists_streams(data, capsys):
    d, ends = data
    rc, out, _ = run(capsys, "inspect", d)
    assert rc == 0
    line = line_of(out, "orders")
    assert line.split()[1] == "text/plain"
    assert format_offset(0) in line and format_offset(ends["orders"][-1]) in line
    assert " 30 " in line and "ttl 3600s" in line
    fork = line_of(out, "early-fork")
    assert f"orders @ {format_offset(ends['orders'][4])}" in fork
    assert "5 streams in" in out

    rc, report = run_json(capsys, "inspect", d)
    assert rc == 0
    by = {s["path"]: s for s in report["streams"]}
    assert set(by) == {"orders", "events/json", "early-fork", "tail-fork", "closed"}
    o = by["orders"]
    assert (o["content_type"], o["segments"], o["messages"], o["closed"]) == \
        ("text/plain", 3, 30, False)
    assert (o["start_offset"], o["end_offset"]) == (format_offset(0),
                                                    format_offset(ends["orders"][-1]))
    assert o["ttl"] == 3600 and o["expires"] and not o["expired"]
    assert o["size"] == sum(p.stat().st_size for p in (d / ORDERS_DIR).iterdir())
    e = by["events/json"]
    assert (e["messages"], e["end_offset"]) == (10, format_offset(ends["events/json"][-1]))
    f = by["early-fork"]
    assert (f["fork_from"], f["fork_offset"], f["start_offset"], f["closed"], f["messages"]) == (
        "orders", format_offset(ends["orders"][4]), format_offset(ends["orders"][4]), True, 1)
    assert f["end_offset"] == format_offset(ends["early-fork"][0])
    assert by["closed"]["closed"] is True and by["closed"]["messages"] == 1
    assert not any(s["soft_deleted"] or s["damaged"] for s in by.values())

    # a deleted stream with forks is kept, soft-deleted, for them
    with SyncStreamStore(lambda: FileBackedStreamStore(d, CONFIG)) as s:
        s.delete("orders")
    rc, out, _ = run(capsys, "inspect", d)
    assert line_of(out, "orders").endswith("soft-deleted")
    assert line_of(out, "events/json").endswith(" -")


def test_inspect_one_stream_shows_producers_and_segments(data, capsys):
    d, ends = data
    rc, out, _ = run(capsys, "inspect", d, "orders")
    assert rc == 0
    assert "Stream-Seq    0029" in out
    assert "forks         early-fork, tail-fork" in out
    prod = [line.split() for line in out.split("producers", 1)[1].splitlines() if line.strip()]
    assert prod == [["ID", "EPOCH", "LAST", "SEQ"], ["w1", "0", "29"]]
    rows = [line.split() for line in out.split("\nsegments", 1)[1].split("producers")[0]
            .splitlines() if line.strip()][1:]
    bases = layout.list_segments(d / ORDERS_DIR)
    assert [r[0] for r in rows] == [layout.segment_name(b) for b in bases]
    assert [r[1] for r in rows] == [format_offset(b) for b in bases]
    assert sum(int(r[3]) for r in rows) == 30 and rows[-1][-1] == "active"

    rc, detail = run_json(capsys, "inspect", d, "early-fork")
    assert rc == 0
    assert detail["producers"] == [{"id": "f", "epoch": 3, "last_seq": 0}]
    assert detail["closed_at"] == format_offset(ends["early-fork"][0])
    assert detail["info"]["closed"] is True and detail["last_seq"] is None
    rc, detail = run_json(capsys, "inspect", d / ORDERS_DIR)  # a stream folder alone
    assert rc == 0 and [s["path"] for s in detail["streams"]] == ["orders"]


def test_inspect_flags_damage_and_unknown_paths(data, capsys):
    d, _ = data
    active = segments(d, ORDERS_DIR)[-1]
    zero(active, record_positions(active)[0], 16)
    rc, report = run_json(capsys, "inspect", d)
    assert rc == 0
    [o] = [s for s in report["streams"] if s["path"] == "orders"]
    assert o["damaged"] == f"{active} byte {HEADER}: zero header" and o["end_offset"] is None
    rc, out, err = run(capsys, "inspect", d, "no/such/stream")
    assert rc == 1 and "no stream 'no/such/stream'" in err


# ---- usage, progress, the installed command ------------------------------------------------

def test_usage_errors(data, capsys, tmp_path):
    d, _ = data
    rc, out, err = run(capsys, "verify", d, "--force")
    assert rc == 2 and "--force only applies with --repair" in err
    rc, out, err = run(capsys, "verify", tmp_path / "nowhere")
    assert rc == 2 and "no such directory" in err
    rc, out, err = run(capsys, "inspect", tmp_path / "nowhere")
    assert rc == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", str(d), "--bogus"])
    assert exc.value.code == 2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_for_large_directories(data, capsys, monkeypatch):
    d, _ = data
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert cli.main(["verify", str(d)]) == 0
    assert term.getvalue() == ""  # a few KiB: no bar
    monkeypatch.setattr(operator_cli, "PROGRESS_THRESHOLD", 0)
    assert cli.main(["verify", str(d)]) == 0
    drawn = term.getvalue()
    assert "\rverifying [" in drawn and "100%" in drawn and drawn.endswith("\r")
    not_a_terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", not_a_terminal)
    assert cli.main(["verify", str(d)]) == 0
    assert not_a_terminal.getvalue() == ""
    capsys.readouterr()


def test_installed_command(data):
    d, _ = data
    exe = Path(sys.executable).with_name("unbroken")
    if not exe.exists():
        exe = shutil.which("unbroken")
    assert exe, "the unbroken command is not installed"
    seg = segments(d, ORDERS_DIR)[0]
    bad = record_positions(seg)[1]
    flip(seg, bad + 18)
    p = subprocess.run([str(exe), "verify", str(d)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert f"{seg} byte {bad}: checksum mismatch" in line_of(p.stdout, "orders")
    p = subprocess.run([str(exe), "inspect", str(d), "events/json", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["info"]["messages"] == 10
