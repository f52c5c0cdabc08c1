"""A text/event-stream parser for the load generator: ``(event type, data)``
pairs, fed piece by piece."""
from __future__ import annotations


class SSEParser:
    """Splits a text/event-stream into ``(event type, data)`` pairs; comments
    and ids are dropped, several ``data:`` lines are joined with newlines."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data) -> list[tuple[bytes, bytes]]:
        """Consume ``data``; return the events it completed, in order."""
        self._buf += data
        buf = self._buf
        if b"\r" in buf:
            end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # CR LF may be split
            buf[:end] = buf[:end].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = []
        start = 0
        while True:
            i = buf.find(b"\n\n", start)
            if i < 0:
                break
            event = self._event(bytes(buf[start:i]))
            if event is not None:
                out.append(event)
            start = i + 2
        if start:
            del buf[:start]
        return out

    @staticmethod
    def _event(block: bytes) -> tuple[bytes, bytes] | None:
        kind, data, has_data = b"message", [], False
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"event":
                kind = value
            elif name == b"data":
                data.append(value)
                has_data = True
        if not has_data:
            return None
        return kind, b"\n".join(data)
