"""One measured round of an HTTP workload (:class:`Run`): what the HTTP,
stores and OnePipe benchmarks record per round and pool into figures."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .stats import Latency


@dataclass(frozen=True)
class Run:
    """One round of one workload against one server.

    :ivar ops: appends acknowledged, GETs of a read pass, or SSE deliveries
    :ivar nbytes: payload bytes (appended or read)
    :ivar latencies_ns: per-append round trips, or per-delivery SSE latencies
    :ivar missing: SSE deliveries that never arrived
    :ivar server_cpu: the server process's CPU time over ``seconds`` (1.0 = one
        core busy), None when it is not our child process
    :ivar client_cpu: the load generator's, likewise
    """

    seconds: float
    ops: int
    nbytes: int
    errors: int = 0
    latencies_ns: Sequence[int] = ()
    missing: int = 0
    server_cpu: float | None = None
    client_cpu: float | None = None
    note: str = ""

    @property
    def ops_per_s(self) -> float:
        """``ops`` per second (infinite for a zero-length round)."""
        return self.ops / self.seconds if self.seconds > 0 else math.inf

    @property
    def mb_per_s(self) -> float:
        """Payload MB (10^6 bytes) per second."""
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else math.inf

    def to_json(self) -> dict:
        """The round as JSON, its latency summarised."""
        lat = Latency.of_ns(self.latencies_ns, self.missing)
        return {"seconds": self.seconds, "ops": self.ops, "bytes": self.nbytes,
                "ops_per_s": self.ops_per_s, "mb_per_s": self.mb_per_s,
                "errors": self.errors, "missing": self.missing,
                "latency": lat.to_json() if lat else None,
                "server_cpu": self.server_cpu, "client_cpu": self.client_cpu,
                "note": self.note}
