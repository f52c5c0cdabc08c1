"""A disk that really fills up: a small tmpfs, the file store, the real server.

What these tests prove, on a file system that answers ENOSPC for real:

* the append that finds the disk full raises ``StorageFull`` (HTTP 507 with a
  body saying so) and writes nothing: the tail and the content of the stream
  stay exactly the acknowledged appends, in memory and after a restart;
* reads keep working on a full disk;
* creating a stream on a full disk fails cleanly -- ``StorageFull`` / 507,
  never a 500 -- whichever step meets the full disk (the first segment's
  preallocation or the meta file), and leaves no ``.tmp-*`` folder behind;
* once space comes back (a stream deleted, the file system grown) appends
  and creates resume;
* the server shuts down cleanly on a full disk (exit 0), restarts on it, and
  recovers every acknowledged append.

The mount is 2 MiB: big enough for a few streams (each starts with a 64 KiB
preallocated segment that doubles as it fills), small enough to fill in well
under a second. The fixtures (``tmpfs``, ``server_process``) are in conftest.
"""
from __future__ import annotations

import errno
import http.client
import os

import pytest

from unbroken_engine import FileBackedStreamStore, errors
from unbroken_engine.log.segmented import Durability, LogConfig
from unbroken_engine.stores.interface import AppendOptions, CreateOptions

MiB = 1 << 20
KiB = 1 << 10
TEXT = "text/plain"
S = "/v1/stream/"


def payload(name: str, i: int, size: int = 1000) -> bytes:
    return f"{name}:{i:06d}:".encode().ljust(size, b".")


def leftovers(data_dir) -> list[str]:
    """Temporary or trash folders the store left in its data directory."""
    return sorted(n for n in os.listdir(data_dir) if n.startswith((".tmp-", ".trash-")))


async def read_all(store, path: str) -> bytes:
    """Every byte of a stream, through catch-up reads from the start."""
    out, offset = [], None
    while True:
        r = await store.read(path, offset, 64 * KiB)
        out.append(bytes(r.data))
        offset = r.next_offset
        if r.up_to_date:
            return b"".join(out)


class Acked:
    """The appends a store acknowledged, per stream."""

    def __init__(self):
        self.payloads: dict[str, list[bytes]] = {}
        self.tails: dict[str, int] = {}

    def content(self, path: str) -> bytes:
        return b"".join(self.payloads[path])


async def append_until_full(store, acked: Acked, path: str, size: int = 1000):
    """Append to ``path`` until the disk refuses; check the refused append
    left the stream exactly as acknowledged. :return: the StorageFull raised."""
    tail = (await store.get(path)).next_offset
    while True:
        p = payload(path, len(acked.payloads[path]), size)
        try:
            r = await store.append(path, p, AppendOptions(content_type=TEXT))
        except errors.StorageFull as exc:
            assert (await store.get(path)).next_offset == tail, "a refused append moved the tail"
            return exc
        assert r.next_offset == tail + 16 + len(p)  # one record, no more
        tail = r.next_offset
        acked.payloads[path].append(p)
        acked.tails[path] = tail


async def assert_store_holds(store, acked: Acked) -> None:
    for path in acked.payloads:
        assert (await store.get(path)).next_offset == acked.tails[path], path
        assert await read_all(store, path) == acked.content(path), path


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_store_on_a_full_disk(tmpfs, anyio_backend):
    disk = tmpfs(2 * MiB)
    config = LogConfig(durability=Durability.ALWAYS)
    store = FileBackedStreamStore(disk.path, config)
    acked = Acked()
    try:
        # Three streams with a little data, then appends until the disk refuses
        # (a segment grows into whatever space is left, so one stream can fill
        # it), then streams until not even a new one fits.
        for n in range(3):
            path = f"s{n}"
            await store.create(path, CreateOptions(content_type=TEXT))
            acked.payloads[path], acked.tails[path] = [], 0
        n = 3
        for path in ("s0", "s1", "s2"):  # s0 first: the biggest, deleted below
            exc = await append_until_full(store, acked, path)
            assert exc.errno == errno.ENOSPC and "no space" in str(exc).lower()
        while True:
            path = f"s{n}"
            try:
                await store.create(path, CreateOptions(content_type=TEXT))
            except errors.StorageFull as exc:
                assert exc.errno == errno.ENOSPC
                break
            acked.payloads[path], acked.tails[path] = [], 0
            exc = await append_until_full(store, acked, path)
            assert exc.errno == errno.ENOSPC and "no space" in str(exc).lower()
            n += 1
        assert sum(map(len, acked.payloads.values())) > 1000
        with pytest.raises(errors.StreamNotFound):
            await store.get(f"s{n}")  # the refused create left no stream...
        assert leftovers(disk.path) == []  # ...and no temporary folder

        # Full for everyone: another append to any stream is refused, and
        # changes nothing; reads keep working.
        for path in acked.payloads:
            with pytest.raises(errors.StorageFull):
                await store.append(path, payload(path, 10**5), AppendOptions(content_type=TEXT))
        await assert_store_holds(store, acked)

        # Free space by deleting the biggest stream: creates and appends resume.
        await store.delete("s0")
        del acked.payloads["s0"], acked.tails["s0"]
        assert leftovers(disk.path) == []
        await store.create("after-delete", CreateOptions(content_type=TEXT))
        acked.payloads["after-delete"], acked.tails["after-delete"] = [], 0
        for path in ("after-delete", "s1"):
            for _ in range(20):
                p = payload(path, len(acked.payloads[path]))
                acked.tails[path] = (await store.append(path, p,
                                                        AppendOptions(content_type=TEXT))).next_offset
                acked.payloads[path].append(p)

        # Fill it again, then grow the file system: every stream takes appends.
        await append_until_full(store, acked, "after-delete")
        disk.remount(8 * MiB)
        for path in acked.payloads:
            for _ in range(5):
                p = payload(path, len(acked.payloads[path]))
                acked.tails[path] = (await store.append(path, p,
                                                        AppendOptions(content_type=TEXT))).next_offset
                acked.payloads[path].append(p)
        await assert_store_holds(store, acked)
    finally:
        await store.aclose()

    # A restart recovers exactly what was acknowledged: no torn tail to cut
    # (nothing was half-written), nothing damaged, nothing left over.
    store = FileBackedStreamStore(disk.path, config)
    try:
        assert store.recovery.corrupt == {}
        assert store.recovery.bytes_cut == 0
        assert store.recovery.streams == len(acked.payloads)
        await assert_store_holds(store, acked)
        assert leftovers(disk.path) == []
    finally:
        await store.aclose()


#: free bytes to leave before a create: around the 64 KiB first segment and
#: the page of the meta file (64 KiB exactly used to fail in the meta file's
#: write with a bare OSError: a 500 instead of a 507)
LEAVE = [0, 4 * KiB, 60 * KiB, 64 * KiB, 68 * KiB, 72 * KiB, 256 * KiB]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_create_on_a_nearly_full_disk_fails_cleanly(tmpfs, anyio_backend):
    """Whatever step of a create meets the full disk, the create raises
    StorageFull and leaves nothing; with room for it, it succeeds."""
    disk = tmpfs(1 * MiB)
    config = LogConfig(durability=Durability.ALWAYS)
    store = FileBackedStreamStore(disk.path, config)
    outcomes = {}
    try:
        for leave in LEAVE:
            filler = disk.fill(leave)
            path = f"at-{leave}"
            try:
                await store.create(path, CreateOptions(content_type=TEXT, data=b"first"))
            except errors.StorageFull as exc:
                assert exc.errno == errno.ENOSPC
                outcomes[leave] = "full"
                with pytest.raises(errors.StreamNotFound):
                    await store.get(path)
                assert not os.path.exists(os.path.join(disk.path, path))
            else:
                outcomes[leave] = "created"
                assert await read_all(store, path) == b"first"
            assert leftovers(disk.path) == []
            os.unlink(filler)
            if outcomes[leave] == "full":  # with room again, the same create succeeds
                await store.create(path, CreateOptions(content_type=TEXT, data=b"first"))
                assert await read_all(store, path) == b"first"
                await store.delete(path)
            else:
                await store.delete(path)
            assert leftovers(disk.path) == []
    finally:
        await store.aclose()
    assert outcomes[0] == outcomes[64 * KiB] == "full"
    assert outcomes[256 * KiB] == "created"
    # once a create fits, more room never makes it fail
    seen = [outcomes[leave] for leave in LEAVE]
    assert seen == sorted(seen, key=lambda o: o == "created"), outcomes


# ---- the real server ----------------------------------------------------------------------------

class Client:
    """A keep-alive HTTP client on one connection (reconnects when closed)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def __call__(self, method, path, body=b"", headers=None):
        hdrs = dict(headers or {})
        if body and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = TEXT
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body or None, headers=hdrs)
                resp = self.conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def read_all(self, path: str) -> bytes:
        out, offset = [], "-1"
        while True:
            status, headers, body = self("GET", f"{S}{path}?offset={offset}")
            assert status == 200, (status, body)
            out.append(body)
            offset = headers["stream-next-offset"]
            if headers.get("stream-up-to-date") == "true":
                return b"".join(out)

    def close(self):
        self.conn.close()


def test_server_on_a_full_disk(tmpfs, server_process):
    disk = tmpfs(2 * MiB)
    srv = server_process(disk.path)
    client = Client(srv.port)
    acked: dict[str, list[bytes]] = {"big": [], "spare": [], "ttl": []}
    tails: dict[str, str] = {}

    def post(path: str, size: int = 4000):
        p = payload(path, len(acked[path]), size)
        status, headers, body = client("POST", S + path, p)
        if status == 204:
            acked[path].append(p)
            tails[path] = headers["stream-next-offset"]
        return status, headers, body

    def assert_holds():
        for path, payloads in acked.items():
            status, headers, _ = client("HEAD", S + path)
            assert status == 200 and headers["stream-next-offset"] == tails[path], path
            assert client.read_all(path) == b"".join(payloads), path

    try:
        assert client("PUT", S + "big", headers={"Content-Type": TEXT})[0] == 201
        assert client("PUT", S + "spare", headers={"Content-Type": TEXT})[0] == 201
        assert client("PUT", S + "ttl", headers={"Content-Type": TEXT,
                                                 "Stream-TTL": "3600"})[0] == 201
        for _ in range(30):  # spare: 120 KB, a 128 KiB segment to give back later
            assert post("spare")[0] == 204
        for _ in range(3):
            assert post("ttl", 100)[0] == 204
        for _ in range(2000):
            status, headers, body = post("big")
            if status != 204:
                break
        assert status == 507, (status, body)
        assert headers["content-type"].startswith("text/plain")
        assert b"no space left on device" in body.lower()
        assert len(acked["big"]) > 100
        assert_holds()  # the refused append changed nothing; reads work

        # Creating a stream when exactly its first segment fits (the meta
        # file then meets the full disk): 507, not 500, and nothing left.
        if disk.free() < 64 * KiB:  # a segment grows into every last page
            disk.remount(2 * MiB + 256 * KiB)
        filler = disk.fill(64 * KiB)
        status, _, body = client("PUT", S + "new", headers={"Content-Type": TEXT})
        assert status == 507 and b"no space left on device" in body.lower(), (status, body)
        assert client("HEAD", S + "new")[0] == 404
        assert leftovers(disk.path) == []
        os.unlink(filler)
        disk.fill(0)
        status, _, body = client("PUT", S + "new", headers={"Content-Type": TEXT})
        assert status == 507, (status, body)
        assert leftovers(disk.path) == []

        # Shut down on a full disk (the TTL stream's meta cannot be saved):
        # still a clean exit, and a restart on the full disk recovers it all.
        client.close()
        assert srv.stop() == 0, srv.output
        assert "stopped cleanly" in srv.output and "Traceback" not in srv.output, srv.output
        srv = server_process(disk.path)
        assert "0 bytes of torn tails cut" in srv.output and "DAMAGED" not in srv.output
        client = Client(srv.port)
        assert_holds()
        assert post("big")[0] == 507

        # Deleting a stream gives its space back: a create and appends fit.
        assert client("DELETE", S + "spare")[0] == 204
        del acked["spare"], tails["spare"]
        assert client("PUT", S + "fresh", headers={"Content-Type": TEXT})[0] == 201
        acked["fresh"], tails["fresh"] = [], "0000000000000000_0000000000000000"
        for _ in range(5):
            assert post("fresh", 1000)[0] == 204

        # Growing the file system: the stream that hit the wall takes appends again.
        disk.remount(8 * MiB)
        for _ in range(5):
            assert post("big")[0] == 204
        assert_holds()
        client.close()
        assert srv.stop() == 0, srv.output

        srv = server_process(disk.path)
        client = Client(srv.port)
        assert_holds()
        assert leftovers(disk.path) == []
    finally:
        client.close()
        srv.stop()
