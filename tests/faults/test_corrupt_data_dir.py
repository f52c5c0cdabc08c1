"""``unbroken serve`` on a damaged data directory.

A data directory written by FileBackedStreamStore (small segments, so some
are sealed) is damaged the way a bad disk or an operator would: a flipped
byte in a sealed segment, deleted index files, a meta file overwritten with
garbage. The real command must still start, say at start-up which streams
are damaged and why (file and byte), serve every healthy stream in full
(rebuilding missing indexes), answer for a damaged stream with an error that
names the damage -- never with bytes that fail their CRC -- and leave the
files as they were (repair is the operator's decision: ``unbroken verify
--repair``).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unbroken_engine import _native as nat
from unbroken_engine.log import layout
from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.stores.file import FileBackedStreamStore
from unbroken_engine.stores.interface import CreateOptions
from unbroken_engine.stores.sync import SyncStreamStore

S = "/v1/stream/"
CONFIG = LogConfig(segment_size=1024, index_interval=64, durability=Durability.NEVER)
GOOD = [b"good-%03d-" % i + b"g" * 40 for i in range(40)]
BAD = [b"bad-%03d-" % i + b"b" * 40 for i in range(40)]
NOIDX = [b"noidx-%03d-" % i + b"n" * 40 for i in range(40)]


def _build(d: Path) -> None:
    with SyncStreamStore(lambda: FileBackedStreamStore(d, CONFIG)) as s:
        for path, values in (("good", GOOD), ("bad", BAD), ("noidx", NOIDX)):
            s.create(path, CreateOptions(content_type="text/plain"))
            for v in values:
                s.append(path, v)
        s.create("meta/broken", CreateOptions(content_type="text/plain", data=b"x"))


def _segments(folder: Path) -> list[Path]:
    return [folder / layout.segment_name(base) for base in layout.list_segments(folder)]


def _tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def _get(port: int, target: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _read_all(port: int, path: str) -> bytes:
    out, offset = b"", "-1"
    while True:
        status, headers, body = _get(port, f"{S}{path}?offset={offset}")
        assert status == 200, (path, status, body)
        out += body
        offset = headers["Stream-Next-Offset"]
        if headers.get("Stream-Up-To-Date") == "true":
            return out


def test_server_starts_on_a_damaged_directory_and_serves_every_healthy_stream(tmp_path):
    d = tmp_path / "streams"
    _build(d)
    bad_seg = _segments(d / "bad")[1]  # sealed, not the active one
    with open(bad_seg, "r+b") as f:  # one byte inside the second record's payload
        f.seek(nat.SEG_HEADER_SIZE + 2 * nat.REC_HEADER_SIZE + len(BAD[0]) + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    for seg in _segments(d / "noidx"):  # every index of a healthy stream
        idx = d / "noidx" / layout.index_name(layout.parse_segment_name(seg.name))
        if idx.exists():
            idx.unlink()
    meta_folder = d / layout.stream_dir_name("meta/broken")
    (meta_folder / layout.META_NAME).write_bytes(b"\xc1 not msgpack")
    before = {"bad": _tree_hash(d / "bad"), "meta": _tree_hash(meta_folder)}

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    proc = subprocess.Popen([sys.executable, "-m", "unbroken_server", "serve", "--port", "0",
                             "--data-dir", str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the server exited: {''.join(lines)}"
            lines.append(line)
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        else:
            pytest.fail("no start-up line")
        start = "".join(lines)
        # the start-up report names the stream it could not open and why (a
        # flipped byte inside a sealed, indexed segment is found by the read
        # that meets it, or by `unbroken verify`, not by opening)
        assert "1 DAMAGED" in start, start
        assert "meta file is not valid msgpack" in start, start

        # healthy streams in full; the one without indexes too (rebuilt)
        assert _read_all(port, "good") == b"".join(GOOD)
        assert _read_all(port, "noidx") == b"".join(NOIDX)
        # the damaged stream: an error that names the damage, never its bytes
        for target in (f"{S}bad?offset=-1", f"{S}bad?offset=-1&live=long-poll"):
            status, _, body = _get(port, target)
            assert status == 500, (status, body)
            assert b"damaged (checksum mismatch" in body and b"unbroken verify" in body, body
            assert BAD[1] not in body and str(d).encode() not in body  # no server paths
        status, _, body = _get(port, f"{S}meta/broken?offset=-1")
        assert status == 500 and b"meta file is not valid msgpack" in body, body
        status, _, body = _get(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    # the operator's log names the file and the byte
    assert f"damaged data: corrupt segment {bad_seg} at byte" in out, out
    # nothing of a damaged stream was changed behind the operator's back
    # (repair is `unbroken verify --repair`); the healthy stream's indexes
    # were rebuilt
    assert {"bad": _tree_hash(d / "bad"), "meta": _tree_hash(meta_folder)} == before
    assert any(p.suffix != ".seg" and p.name != layout.META_NAME
               for p in (d / "noidx").iterdir()), "no index was rebuilt"
