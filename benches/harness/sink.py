"""The trivial server (the load generator's ceiling): it answers at once.
Run as ``python -m unbroken_benches.harness.sink PORT``."""
from __future__ import annotations

import asyncio
import re
import signal
import sys

from .options import MiB

_SINK_PIECE = b"x" * (1 * MiB)


class _SinkProtocol(asyncio.Protocol):
    """Answers at once: PUT 201, POST 204 (and fans an SSE event out to every
    subscriber of the path), GET ?live=sse subscribes, other GETs return the
    next 1 MiB of a stream of read-<total> bytes, except on a *-longpoll-*
    stream: its POST bodies from the offset as a JSON array (a live=long-poll
    GET with none waits for the next POST)."""

    subscribers: dict = {}
    streams: dict = {}   # *-longpoll-* path -> its POST bodies (offset = their count)
    waiters: dict = {}   # path -> protocols whose long-poll waits for the next POST

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.sse_path: str | None = None

    def connection_lost(self, exc) -> None:
        if self.sse_path is not None:
            self.subscribers.get(self.sse_path, set()).discard(self.transport)
        for waiting in self.waiters.values():
            if self in waiting:
                waiting.remove(self)

    def messages(self, path: bytes, offset: int) -> None:
        msgs = self.streams[path]
        body = b"[" + b",".join(msgs[offset:]) + b"]"
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Stream-Next-Offset: %d\r\nStream-Cursor: 1\r\n"
                             b"Stream-Up-To-Date: true\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(msgs), len(body), body))

    def data_received(self, data: bytes) -> None:
        if self.sse_path is not None:
            return
        buf = self.buf
        buf += data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            n = int(m[1]) if m else 0
            if len(buf) < i + 4 + n:
                return
            body = bytes(buf[i + 4:i + 4 + n])
            del buf[:i + 4 + n]
            self.handle(head, body)
            if self.sse_path is not None:
                return

    def handle(self, head: bytes, body: bytes) -> None:
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        path, _, query = target.partition(b"?")
        w = self.transport.write
        if method == b"PUT":
            if b"-longpoll-" in path:
                self.streams[path] = []
            w(b"HTTP/1.1 201 Created\r\nStream-Next-Offset: 0\r\nContent-Length: 0\r\n\r\n")
        elif method == b"POST":
            if path in self.streams:
                self.streams[path].append(body)
                for proto in self.waiters.pop(path, []):
                    proto.messages(path, len(self.streams[path]) - 1)
            subs = self.subscribers.get(path)
            if subs:
                event = (b"event: data\ndata:" + body + b"\n\nevent: control\n"
                         b'data:{"streamNextOffset":"1"}\n\n')
                chunk = b"%x\r\n%s\r\n" % (len(event), event)
                for t in list(subs):
                    t.write(chunk)
            w(b"HTTP/1.1 204 No Content\r\nStream-Next-Offset: 1\r\n\r\n")
        elif method == b"GET" and b"live=sse" in query:
            self.sse_path = path
            self.subscribers.setdefault(path, set()).add(self.transport)
            event = b'event: control\ndata:{"streamNextOffset":"0","upToDate":true}\n\n'
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event))
        elif method == b"GET" and path in self.streams:
            m = re.search(rb"offset=(\d+)", query)
            offset = int(m[1]) if m else 0
            if offset < len(self.streams[path]) or b"live=long-poll" not in query:
                self.messages(path, offset)
            else:
                self.waiters.setdefault(path, []).append(self)
        elif method == b"GET":
            m = re.search(rb"read-(?:\w+-)?(\d+)", path)
            total = int(m[1]) if m else len(_SINK_PIECE)
            m = re.search(rb"offset=(-1|\d+)", query)
            pos = 0 if not m or m[1] == b"-1" else int(m[1])
            n = max(0, min(len(_SINK_PIECE), total - pos))
            done = b"Stream-Up-To-Date: true\r\n" if pos + n >= total else b""
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Stream-Next-Offset: %d\r\n%sContent-Length: %d\r\n\r\n" % (pos + n, done, n))
            w(memoryview(_SINK_PIECE)[:n])
        else:
            w(b"HTTP/1.1 204 No Content\r\n\r\n")


async def _sink_main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink: ready http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    """``python -m unbroken_benches.harness.sink sink PORT``: serve until SIGTERM or SIGINT."""
    if len(argv) != 2 or argv[0] != "sink" or not argv[1].isdigit():
        print("usage: python -m unbroken_benches.harness.sink sink PORT", file=sys.stderr)
        return 2
    try:
        asyncio.run(_sink_main(int(argv[1])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
