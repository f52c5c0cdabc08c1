"""The test suite's SSE parser: the WHATWG event-stream rules, so a test
sees exactly what a browser's EventSource would.

Owns :class:`SSEParser` (incremental: bytes in, whole events out),
:class:`SSEEvent` and :func:`parse_sse` (a whole body). Lines end at CRLF,
CR or LF (a CR at the end of a piece waits for the next one: it may be half
a CRLF); one space after the colon is stripped; ``:`` lines are comments
(counted); an event is dispatched at a blank line, so a body cut short
leaves its last, incomplete event out.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass
class SSEEvent:
    """One dispatched SSE event: ``chunk`` is the index of the HTTP chunk in
    which its terminating blank line arrived."""

    event: str
    data: str
    chunk: int = -1

    def json(self):
        return json.loads(self.data)


class SSEParser:
    """Incremental WHATWG event-stream parser (lines end at CRLF, CR or LF;
    one leading space after the colon is stripped; ``:`` lines are comments)."""

    _LINE = re.compile(rb"\r\n|\r|\n")

    def __init__(self):
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self.comments = 0

    def feed(self, data: bytes, chunk: int = -1, eof: bool = False) -> list[SSEEvent]:
        buf = self._buf + data
        events = []
        at = 0  # where the next line starts (the buffer is cut once, at the end)
        while True:
            m = self._LINE.search(buf, at)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf) and not eof:
                break  # a CR at the end may be the first half of a CRLF
            ev = self._line(buf[at:m.start()].decode("utf-8"), chunk)
            at = m.end()
            if ev is not None:
                events.append(ev)
        self._buf = buf[at:]
        return events

    def _line(self, line: str, chunk: int):
        if line == "":
            if not self._data and not self._event:
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), chunk)
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def parse_sse(raw: bytes) -> list[SSEEvent]:
    """Every event in ``raw`` (a whole event-stream body)."""
    return SSEParser().feed(raw, eof=True)
