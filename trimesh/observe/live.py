"""Per-service figures over the last minute, from the records the metrics count.

Pure: no clock, no I/O. `LiveStats.observe(rec)` files a finished request
under its end time (``rec.started + rec.duration``, monotonic seconds) and
`view(now)` reads the window that ends at `now`; the admin API and the
dashboard show what it returns. The Mesher-named latency quantiles in
`trimesh.observe.metrics` use the same `LatencyWindow`.

Memory is bounded whatever the traffic: service names pass through the same
folding as the metrics labels (`service_label`), each service keeps a fixed
ring of slots, and the recent-error list has a fixed length.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

UNKNOWN = "unknown"
OTHER = "other"
# Error kinds of a request whose target never resolved to a service we know:
# the name is the client's choice, so it must not become a label value.
UNRESOLVED = frozenset(
    {"service-not-found", "egress-denied", "misdirected", "forbidden", "registry-unavailable"}
)
# A label value longer than this is folded like one over the cap.
MAX_LABEL_LEN = 128

WINDOW = 60.0
SLOT = 5.0
# Latency buckets for quantile estimates: 0.1 ms to ~70 s, each 25 % wider
# than the last, so an interpolated quantile is off by well under 25 %.
QUANTILE_BOUNDS: tuple[float, ...] = tuple(1e-4 * 1.25**k for k in range(62))
RECENT_ERRORS = 100
_TEXT_CAP = 200  # characters of a path or name kept in the recent-error list


class Finished(Protocol):
    """What the observers read from a finished request (an `AccessRecord`)."""

    @property
    def direction(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def service(self) -> str | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def hedges(self) -> int: ...
    @property
    def started(self) -> float: ...
    @property
    def start_wall(self) -> float: ...
    @property
    def duration(self) -> float | None: ...


class LabelCap:
    """Admits up to `limit` distinct values; any later new value reads as "other"."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"<LabelCap {len(self._seen)}/{self.limit}>"

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit or len(value) > MAX_LABEL_LEN:
            return OTHER
        self._seen.add(value)
        return value


def service_label(rec: Finished, cap: LabelCap) -> str:
    """The `service` label of `rec`: "unknown" if it never resolved, capped otherwise."""
    service = rec.service
    if service is None or rec.error in UNRESOLVED:
        return UNKNOWN
    return cap(service)


def succeeded(rec: Finished) -> bool:
    """Success as the mesh sees it: an answer below 500 and no proxy error."""
    return rec.error is None and rec.status is not None and rec.status < 500


class LatencyWindow:
    """Latency bucket counts and failures over a sliding window of `slots` slots of `width` s.

    Each slot holds the requests that ended in one `width`-second interval; a
    slot is cleared when time comes round to it again, so memory is fixed.
    """

    __slots__ = ("_ids", "_rows", "bounds", "width")

    def __init__(self, width: float, slots: int, bounds: Sequence[float] = QUANTILE_BOUNDS):
        self.width = width
        self.bounds = bounds
        # Per slot: one count per bucket, the overflow bucket, then failures.
        self._rows = [[0] * (len(bounds) + 2) for _ in range(slots)]
        self._ids = [-1] * slots

    def observe(self, seconds: float, now: float, failed: bool = False) -> None:
        sid = int(now // self.width)
        i = sid % len(self._ids)
        row = self._rows[i]
        if self._ids[i] != sid:
            row[:] = [0] * len(row)
            self._ids[i] = sid
        row[bisect.bisect_left(self.bounds, seconds)] += 1
        if failed:
            row[-1] += 1

    def read(self, now: float) -> tuple[list[int], int, list[int]]:
        """(bucket counts, failures, requests per slot oldest first) in the window at `now`."""
        sid = int(now // self.width)
        slots = len(self._ids)
        counts = [0] * (len(self.bounds) + 1)
        failures = 0
        per_slot = [0] * slots
        for ident, row in zip(self._ids, self._rows, strict=True):
            age = sid - ident
            if 0 <= age < slots:
                buckets = row[:-1]
                counts = [a + b for a, b in zip(counts, buckets, strict=True)]
                failures += row[-1]
                per_slot[slots - 1 - age] = sum(buckets)
        return counts, failures, per_slot

    def quantile(self, q: float, counts: Sequence[int]) -> float | None:
        """The `q` quantile (seconds) estimated from `counts`, or None when empty."""
        return estimate_quantile(q, counts, self.bounds)


def estimate_quantile(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float | None:
    """Interpolate the `q` quantile within the bucket that holds it (geometric spacing)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]  # beyond the last bound: report the bound
            upper = bounds[i]
            lower = bounds[i - 1] if i else upper / 1.25
            return float(lower * (upper / lower) ** ((rank - seen) / count))
        seen += count
    return bounds[-1]


class LiveStats:
    """Rolling per-service figures and the last errors, for the admin API and dashboard.

    Resource handling: at most `max_services` services (plus "unknown" and
    "other") each keep ``WINDOW / SLOT`` slots; errors keep the last
    `RECENT_ERRORS` records.
    """

    def __init__(self, *, max_services: int = 500) -> None:
        self._cap = LabelCap(max_services)
        self._windows: dict[str, LatencyWindow] = {}
        self._born: dict[str, float] = {}
        self._errors: deque[tuple[float, str, str | None, int | None, str, str]] = deque(
            maxlen=RECENT_ERRORS
        )

    def __repr__(self) -> str:
        return f"<LiveStats services={len(self._windows)} errors={len(self._errors)}>"

    def observe(self, rec: Finished) -> None:
        service = service_label(rec, self._cap)
        duration = rec.duration or 0.0
        ended = rec.started + duration
        window = self._windows.get(service)
        if window is None:
            window = self._windows[service] = LatencyWindow(SLOT, int(WINDOW // SLOT))
            self._born[service] = ended
        window.observe(duration, ended, not succeeded(rec))
        if rec.error is not None:
            name = None if rec.service is None else rec.service[:_TEXT_CAP]
            self._errors.append(
                (rec.start_wall, rec.direction, name, rec.status, rec.error, rec.path[:_TEXT_CAP])
            )

    def view(self, now: float) -> dict[str, dict[str, Any]]:
        """Per service: rps, success_rate, p50_ms, p99_ms and requests over the last minute.

        Also `rate_history`: requests per second in each `SLOT`, oldest first
        (for sparklines). Rates and latencies are None when nothing was seen.
        """
        return {name: self._figures(name, window, now) for name, window in self._windows.items()}

    def _figures(self, name: str, window: LatencyWindow, now: float) -> dict[str, Any]:
        counts, failures, per_slot = window.read(now)
        requests = sum(counts)
        # A service seen for the first time 3 s ago has 3 s of traffic, not 60.
        covered = max(1.0, min(WINDOW, now - self._born[name]))
        p50 = window.quantile(0.5, counts)
        p99 = window.quantile(0.99, counts)
        return {
            "requests": requests,
            "rps": round(requests / covered, 3),
            "success_rate": round(1 - failures / requests, 4) if requests else None,
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "rate_history": [round(n / SLOT, 3) for n in per_slot],
        }

    def recent_errors(self, n: int) -> list[dict[str, Any]]:
        """The last `n` (at most `RECENT_ERRORS`) requests with an error kind, newest first."""
        picked = list(self._errors)[-n:] if n > 0 else []
        keys = ("ts", "direction", "service", "status", "error", "path")
        return [dict(zip(keys, entry, strict=True)) for entry in reversed(picked)]
