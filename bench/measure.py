"""One measurement of one path: warm up, run the load generator, read the process's CPU time."""

from __future__ import annotations

import os
import statistics

import attrs

from bench.load import Endpoint, LoadGenerator, LoadResult

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of `pid` so far, from /proc; None where unavailable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of stat(5); [0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / _TICK


@attrs.frozen
class Measured:
    """A path's result over one or more rounds; figures are medians across rounds."""

    endpoint: Endpoint
    rounds: tuple[LoadResult, ...]
    cpu_us_per_request: float | None

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors + r.non_2xx for r in self.rounds)

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.endpoint.label,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "cpu_us_per_request": None
            if self.cpu_us_per_request is None
            else round(self.cpu_us_per_request, 1),
            "rounds": [r.as_dict() for r in self.rounds],
        }


def measure_paths(
    gen: LoadGenerator,
    endpoints: list[Endpoint],
    connections: int,
    seconds: float,
    warmup: float,
    rounds: int,
) -> dict[str, Measured]:
    """Each round runs every path in turn (so drift hits all paths alike)."""
    results: dict[str, list[LoadResult]] = {ep.name: [] for ep in endpoints}
    cpu: dict[str, list[float]] = {ep.name: [] for ep in endpoints}
    for _ in range(rounds):
        for ep in endpoints:
            if warmup > 0:
                gen.run(ep, connections, warmup)
            before = cpu_seconds(ep.pid)
            result = gen.run(ep, connections, seconds)
            after = cpu_seconds(ep.pid)
            results[ep.name].append(result)
            if before is not None and after is not None and result.requests:
                cpu[ep.name].append((after - before) / result.requests * 1e6)
    return {
        ep.name: Measured(
            ep, tuple(results[ep.name]), statistics.median(cpu[ep.name]) if cpu[ep.name] else None
        )
        for ep in endpoints
    }
