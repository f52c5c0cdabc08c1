"""An independent model of stream semantics, written from the protocol.

Used by tests/engine/test_store_model.py as the oracle every store is judged
against. It imports nothing of the engine's rule code (streams.py, shared.py,
producers.py, the C JSON functions): only the standard library, the public
value types a store speaks (results, options) and its exceptions. The rules
come from the Durable Streams spec (PROTOCOL.md §4-§5, §7.1) and, where the
spec says MAY or is silent, from docs/protocol-choices.md.

Offsets are opaque to the model. It keeps, per stream, the *units* of its
view -- one per append (or create, or close): the list of messages it
carries (a JSON append flattened one level into several, a close none) --
and for every offset a store answer has revealed, the unit index it stands
for. A fork's view is a copy of its source's units below the fork point,
plus the sub-offset's prefix unit, plus its own; it shares the source's
offsets below the fork point. Offsets are compared only for order (the spec
makes them lexicographically sortable; the store API gives them as ints).

Time is the injected clock. Expiry is judged eagerly (an expired stream is
gone, or soft-deleted while forks read through it) where the stores decide
lazily, on lookup; the one place where that shows, ``sweep``'s list of what it
removed, is judged as a subset of what may still have been there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from unbroken_engine import errors
from unbroken_engine.protocol.offsets import NOW, START
from unbroken_engine.stores.interface import AppendResult, CreateResult, ReadResult, StreamMeta

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_WS = b" \t\r\n"


def media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def json_messages(data: bytes) -> list[bytes] | None:
    """The messages a JSON body holds, each value's text exactly as sent
    (surrounding JSON whitespace trimmed): a top-level array flattened one
    level, anything else one message. None: not one valid JSON text."""
    try:
        json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    text = data.strip(_WS)
    if not text.startswith(b"["):
        return [text]
    inner = text[1:-1]
    if not inner.strip(_WS):
        return []
    values, depth, in_str, escaped, start = [], 0, False, False, 0
    for i, c in enumerate(inner):
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in b"[{":
            depth += 1
        elif c in b"]}":
            depth -= 1
        elif c == 0x2C and depth == 0:
            values.append(inner[start:i].strip(_WS))
            start = i + 1
    values.append(inner[start:].strip(_WS))
    return values


def expect_error(outcome, kind, **fields):
    """The store raised ``kind`` (one of them, for a tuple) with ``fields``."""
    assert outcome[0] == "raised", f"expected {kind}, the store answered {outcome!r}"
    exc = outcome[1]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    assert type(exc) in kinds, f"expected {kind}, the store raised {exc!r}"
    for name, value in fields.items():
        assert getattr(exc, name) == value, \
            f"{type(exc).__name__}.{name}: {getattr(exc, name)!r} != {value!r}"


def expect_ok(outcome):
    assert outcome[0] == "ok", f"expected success, the store raised {outcome[1]!r}"
    return outcome[1]


@dataclass(eq=False)
class MStream:
    path: str
    content_type: str
    ttl: int | None
    expires_at: datetime | None
    created_at: float
    requested: tuple  # (media or None, ttl, expires_at, fork_from, fork token, sub-offset)
    units: list = field(default_factory=list)  # list[list[bytes]], messages per unit
    tokens: dict = field(default_factory=dict)  # offset -> frozenset of unit indexes
    tail: int = 0
    closed: bool = False
    last_seq: str | None = None
    producers: dict = field(default_factory=dict)  # id -> (epoch, last_seq)
    source: "MStream | None" = None
    fork_token: int | None = None
    forks: list = field(default_factory=list)
    soft_deleted: bool = False
    last_access: float = 0.0

    @property
    def json(self) -> bool:
        return media(self.content_type) == "application/json"

    def body(self, i: int, j: int) -> bytes:
        msgs = [m for unit in self.units[i:j] for m in unit]
        return b"[" + b",".join(msgs) + b"]" if self.json else b"".join(msgs)

    def meta(self) -> StreamMeta:
        return StreamMeta(self.path, self.content_type, self.tail, self.closed,
                          self.created_at, self.ttl, self.expires_at)

    def learn(self, token: int, units) -> None:
        units = frozenset(units)
        known = self.tokens.get(token)
        if known is not None:
            units &= known
            assert units, f"{self.path}: offset {token} stands for units {set(known)} already"
        self.tokens[token] = units

    def known_unit(self, token: int) -> int | None:
        units = self.tokens.get(token)
        return next(iter(units)) if units is not None and len(units) == 1 else None

    def not_a_boundary(self, token: int) -> bool:
        """Whether ``token`` certainly is no offset of this stream: beyond the
        tail, or strictly between the offsets of two adjacent units."""
        if token > self.tail:
            return True
        below = [(t, u) for t, u in self.tokens.items() if t < token and len(u) == 1]
        above = [(t, u) for t, u in self.tokens.items() if t > token and len(u) == 1]
        hi = min(above)[1] if above else None
        lo = max(below)[1] if below else None
        if lo is None:
            return hi is not None and min(hi) == 0
        return hi is not None and min(hi) == max(lo) + 1


class StreamModel:
    """What every store must answer; see the module docstring.

    :param empty_body_first: the store refuses an append with neither data
        nor close before looking the stream up (so no 404, and no renewal of
        a sliding TTL). The spec orders no checks; the memory and file stores
        look first, the shared stores do not.
    """

    def __init__(self, *, empty_body_first: bool):
        self.streams: dict[str, MStream] = {}
        self.empty_body_first = empty_body_first
        self.may_sweep: set[str] = set()  # what a sweep may still list

    # ---- status -------------------------------------------------------------------

    @staticmethod
    def expired(s: MStream, now: float) -> bool:
        if s.expires_at is not None:
            return now >= s.expires_at.timestamp()
        return s.ttl is not None and now >= s.last_access + s.ttl

    def visible(self, s: MStream, now: float) -> bool:
        return not s.soft_deleted and not self.expired(s, now)

    def needed(self, s: MStream, now: float) -> bool:
        """Visible, or kept for a fork that is."""
        return self.visible(s, now) or any(self.needed(f, now) for f in s.forks)

    def settle(self, now: float) -> None:
        """Forget every stream neither visible nor kept for a fork (the
        stores do it lazily; only ``sweep``'s list can tell)."""
        for path, s in list(self.streams.items()):
            if not self.visible(s, now):
                self.may_sweep.add(path)
            if not self.needed(s, now):
                del self.streams[path]
        for s in self.streams.values():
            s.forks = [f for f in s.forks if self.streams.get(f.path) is f]

    def status(self, path: str, now: float) -> tuple[str, MStream | None]:
        """``("live", s)``, ``("soft", s)`` (410) or ``("missing", None)`` (404)."""
        self.settle(now)
        s = self.streams.get(path)
        if s is None:
            return "missing", None
        return ("live" if self.visible(s, now) else "soft"), s

    def gone_error(self, path: str, state: str):
        if state == "missing":
            return errors.StreamNotFound
        return errors.StreamSoftDeleted

    # ---- create ---------------------------------------------------------------------

    def create(self, path: str, o, now: float, outcome) -> None:
        if o.ttl is not None and o.expires_at is not None:
            return expect_error(outcome, errors.InvalidRequest)
        state, s = self.status(path, now)
        if state == "soft":
            return expect_error(outcome, errors.ConfigMismatch)
        if state == "live":
            if self.same_config(s, o):
                assert expect_ok(outcome) == CreateResult(False, s.meta()), \
                    f"re-create of {path}: {outcome[1]!r} != {s.meta()!r}"
            else:
                expect_error(outcome, errors.ConfigMismatch)
            return
        source, k, prefix, token = None, None, [], None
        if o.fork_from is not None:
            src_state, source = self.status(o.fork_from, now)
            if src_state == "missing":
                return expect_error(outcome, errors.StreamNotFound, path=o.fork_from)
            if src_state == "soft":
                return expect_error(outcome, errors.ConfigMismatch)
        content_type = o.content_type or (source.content_type if source else DEFAULT_CONTENT_TYPE)
        if source is not None and media(content_type) != media(source.content_type):
            return expect_error(outcome, errors.ConfigMismatch)
        if source is not None:
            token = source.tail if o.fork_offset is None else o.fork_offset
            k = source.known_unit(token)
            if k is None:
                assert source.not_a_boundary(token), "the driver forks at offsets the model knows"
                return expect_error(outcome, errors.InvalidOffset)
            if o.fork_sub_offset:
                nxt = next((u for u in source.units[k:] if u), None)
                size = None if nxt is None else len(nxt) if source.json else len(nxt[0])
                if size is None or o.fork_sub_offset > size:
                    return expect_error(outcome, errors.InvalidRequest)
                prefix = [nxt[:o.fork_sub_offset] if source.json
                          else [nxt[0][:o.fork_sub_offset]]]
        initial = []
        if o.data:
            if media(content_type) == "application/json":
                msgs = json_messages(o.data)
                if msgs is None:
                    return expect_error(outcome, errors.InvalidJSON)
            else:
                msgs = [o.data]
            if msgs:
                initial = [msgs]
        if o.closed and not initial:
            initial = [[]]
        ttl, expires_at = o.ttl, o.expires_at
        if source is not None and ttl is None and expires_at is None:
            ttl, expires_at = source.ttl, source.expires_at
        s = MStream(path, content_type, ttl, expires_at, now,
                    (None if o.content_type is None else media(o.content_type), o.ttl,
                     o.expires_at, o.fork_from, token if source else None, o.fork_sub_offset),
                    closed=o.closed, last_access=now, source=source,
                    fork_token=token if source else None)
        if source is not None:
            s.units = source.units[:k] + prefix
            s.tokens = {t: u for t, u in source.tokens.items() if max(u) <= k}
            s.tokens[token] = frozenset([k])
        s.units += initial
        result = expect_ok(outcome)
        tail = result.meta.next_offset
        if source is not None:
            assert (tail > token) if (prefix or initial) else (tail == token), \
                f"fork {path}: tail {tail} against fork offset {token}"
        s.tail = tail
        s.learn(tail, [len(s.units)])
        if not s.units:
            s.learn(tail, [0])
        assert result == CreateResult(True, s.meta()), f"create {path}: {result!r} != {s.meta()!r}"
        self.streams[path] = s
        self.may_sweep.discard(path)
        if source is not None:
            source.forks.append(s)

    def same_config(self, s: MStream, o) -> bool:
        """protocol-choices.md, Creating: media type, TTL, expiry and the
        fork headers given; Stream-Closed against the stream's closure (§5.1)."""
        r_media, r_ttl, r_exp, r_from, r_token, r_sub = s.requested
        if o.content_type is not None:
            wanted = media(o.content_type)
        elif o.fork_from is not None and r_from is not None:
            wanted = media(s.content_type)
        else:
            wanted = DEFAULT_CONTENT_TYPE
        return (wanted == media(s.content_type) and o.ttl == r_ttl and o.expires_at == r_exp
                and o.fork_from == r_from and o.fork_sub_offset == r_sub
                and (o.fork_offset is None or o.fork_offset == r_token)
                and o.closed == s.closed)

    # ---- append ---------------------------------------------------------------------

    def append(self, path: str, data: bytes, o, now: float, outcome) -> None:
        if not data and not o.close and self.empty_body_first:
            return expect_error(outcome, errors.EmptyBody)
        state, s = self.status(path, now)
        if state != "live":
            return expect_error(outcome, self.gone_error(path, state), path=path)
        s.last_access = now  # every append that reaches a live stream renews it
        if not data and not o.close:
            return expect_error(outcome, errors.EmptyBody)
        p = o.producer
        pstate = s.producers.get(p.id) if p is not None else None
        if s.closed:
            if p is not None and self.producer_verdict(pstate, p) == "duplicate":
                assert expect_ok(outcome) == AppendResult(s.tail, outcome[1].outcome, p.epoch,
                                                          pstate[1], True)
                assert outcome[1].outcome.value == "duplicate"
                return
            if p is None and not data:
                assert expect_ok(outcome) == AppendResult(s.tail, closed=True)
                return
            # a stale epoch may be fenced (403) or refused as closed (409):
            # the spec orders neither check first
            if p is not None and self.producer_verdict(pstate, p) == "stale" and \
                    outcome[0] == "raised" and type(outcome[1]) is errors.StaleEpoch:
                return expect_error(outcome, errors.StaleEpoch, current_epoch=pstate[0])
            return expect_error(outcome, errors.StreamClosed, path=path, next_offset=s.tail)
        if data and o.content_type is not None and media(o.content_type) != media(s.content_type):
            return expect_error(outcome, errors.ContentTypeMismatch, expected=s.content_type,
                                received=o.content_type)
        if p is not None:
            verdict = self.producer_verdict(pstate, p)
            if verdict == "stale":
                return expect_error(outcome, errors.StaleEpoch, current_epoch=pstate[0])
            if verdict == "new epoch, bad seq":
                return expect_error(outcome, errors.InvalidEpochSeq, epoch=p.epoch, seq=p.seq)
            if verdict == "gap":
                expected = 0 if pstate is None else pstate[1] + 1
                return expect_error(outcome, errors.ProducerSeqGap, expected=expected,
                                    received=p.seq)
            if verdict == "duplicate":
                result = expect_ok(outcome)
                assert result.outcome is not None and result.outcome.value == "duplicate"
                assert result == AppendResult(s.tail, result.outcome, p.epoch, pstate[1], False)
                return
        if o.seq is not None and s.last_seq is not None and \
                o.seq.encode() <= s.last_seq.encode():
            return expect_error(outcome, errors.SequenceConflict, last=s.last_seq,
                                received=o.seq)
        msgs = []
        if data:
            if s.json:
                msgs = json_messages(data)
                if msgs is None:
                    return expect_error(outcome, errors.InvalidJSON)
                if not msgs:
                    return expect_error(outcome, errors.EmptyJSONArray)
            else:
                msgs = [data]
        result = expect_ok(outcome)
        assert result.next_offset > s.tail, \
            f"append to {path}: offset {result.next_offset} not after the tail {s.tail}"
        s.units.append(msgs)
        s.tail = result.next_offset
        s.learn(s.tail, [len(s.units)])
        s.closed = s.closed or o.close
        if o.seq is not None:
            s.last_seq = o.seq
        if p is not None:
            s.producers[p.id] = (p.epoch, p.seq)
            assert result.outcome is not None and result.outcome.value == "accepted"
        expected = AppendResult(s.tail, result.outcome if p else None, p.epoch if p else None,
                                p.seq if p else None, s.closed)
        assert result == expected, f"append to {path}: {result!r} != {expected!r}"

    @staticmethod
    def producer_verdict(state, p) -> str:
        """§5.2.1's validation table (a new producer must start at seq 0)."""
        if state is None:
            return "accepted" if p.seq == 0 else "gap"
        epoch, last = state
        if p.epoch < epoch:
            return "stale"
        if p.epoch > epoch:
            return "accepted" if p.seq == 0 else "new epoch, bad seq"
        if p.seq <= last:
            return "duplicate"
        return "accepted" if p.seq == last + 1 else "gap"

    # ---- reads, metadata ---------------------------------------------------------------

    def get(self, path: str, now: float, outcome) -> None:
        state, s = self.status(path, now)
        if state != "live":
            return expect_error(outcome, self.gone_error(path, state), path=path)
        assert expect_ok(outcome) == s.meta(), f"HEAD {path}: {outcome[1]!r} != {s.meta()!r}"

    def read(self, path: str, offset, max_bytes: int, now: float, outcome) -> None:
        state, s = self.status(path, now)
        if state != "live":
            return expect_error(outcome, self.gone_error(path, state), path=path)
        s.last_access = now
        if offset is NOW:
            expected = ReadResult(b"[]" if s.json else b"", s.tail, True, s.closed,
                                  s.content_type)
            r = expect_ok(outcome)
            assert (bytes(r.data), r.next_offset, r.up_to_date, r.closed, r.content_type) == (
                expected.data, s.tail, True, s.closed, s.content_type), f"read now: {r!r}"
            return
        if offset is START:
            starts = {0}
        elif offset in s.tokens:
            starts = s.tokens[offset]
        elif s.not_a_boundary(offset):
            return expect_error(outcome, errors.InvalidOffset)
        elif outcome[0] == "raised":  # an offset this stream never returned
            return expect_error(outcome, errors.InvalidOffset)
        else:
            starts = range(len(s.units) + 1)  # judged weakly: some run of whole appends
        self.judge_read(s, offset, starts, max_bytes, expect_ok(outcome))

    def judge_read(self, s: MStream, offset, starts, max_bytes: int, r) -> None:
        data, nxt = bytes(r.data), r.next_offset
        where = f"read {s.path} at {offset!r} ({max_bytes} bytes): {r!r}"
        assert r.content_type == s.content_type, where
        assert r.up_to_date == (nxt == s.tail), where + f" (tail {s.tail})"
        assert r.closed == (r.up_to_date and s.closed), where
        assert nxt <= s.tail, where
        ends = s.tokens.get(nxt)
        pairs = []
        for i in starts:
            at_tail = i == len(s.units)
            for j in range(i, len(s.units) + 1):
                if j == i and not at_tail:
                    continue  # a read below the tail returns at least one append
                if ends is not None and j not in ends:
                    continue
                if ends is None and j == len(s.units):
                    continue  # the tail's offset is known
                if s.body(i, j) != data:
                    continue
                full = len(s.body(i, len(s.units)))
                if max_bytes > full and j != len(s.units):
                    continue  # everything fits with room to spare: it reaches the tail
                with_msgs = sum(1 for u in s.units[i:j] if u)
                if len(data) - (2 if s.json else 0) > max_bytes and with_msgs > 1:
                    continue  # over the budget only for one whole append
                pairs.append((i, j))
        assert pairs, where + " is no run of whole appends the model allows; units " + \
            repr(s.units)
        if offset is not START and offset in s.tokens:
            if min(starts) < len(s.units):
                assert nxt > offset, where + " does not move on"
            s.learn(offset, {i for i, _ in pairs})
        s.learn(nxt, {j for _, j in pairs})

    # ---- delete, list, sweep -----------------------------------------------------------

    def delete(self, path: str, now: float, outcome) -> None:
        state, s = self.status(path, now)
        if state != "live":
            return expect_error(outcome, self.gone_error(path, state), path=path)
        assert expect_ok(outcome) is None
        if any(self.needed(f, now) for f in s.forks):
            s.soft_deleted = True  # kept for its forks
            self.may_sweep.add(path)
        else:
            del self.streams[path]
        self.settle(now)

    def live(self, now: float) -> list[MStream]:
        self.settle(now)
        return [s for _, s in sorted(self.streams.items()) if self.visible(s, now)]

    def list_streams(self, now: float, outcome) -> None:
        expected = [s.meta() for s in self.live(now)]
        got = expect_ok(outcome)
        assert got == expected, f"list_streams:\n  store: {got!r}\n  model: {expected!r}"

    def sweep(self, now: float, outcome) -> None:
        self.settle(now)
        got = expect_ok(outcome)
        assert got == sorted(set(got)), f"sweep lists {got!r}"
        assert set(got) <= self.may_sweep, \
            f"sweep removed {sorted(set(got) - self.may_sweep)}, which were live or long gone"
        self.may_sweep = {p for p, s in self.streams.items() if not self.visible(s, now)}
