"""Hedging: when to send a second copy of a slow idempotent request, and the latency it needs.

The drivers start a hedge when `HedgePolicy.delay_for(tracker)` seconds pass without
a response head; each hedge also spends from the service's `RetryBudget`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy.retry import IDEMPOTENT_METHODS, fail


class LatencyTracker:
    """Quantiles over the last `size` latencies of one service, in fixed memory.

    Sorting on every query would cost ~40 µs per request at 1,000 samples, so the
    sorted view is rebuilt at most once per `refresh` new samples: a quantile may
    lag the newest `refresh - 1` observations, which a hedge delay can afford.
    """

    def __init__(self, size: int = 1000, min_samples: int = 20, refresh: int = 32) -> None:
        if size < 1 or not 1 <= min_samples <= size or refresh < 1:
            raise ValueError(
                "need 1 <= min_samples <= size and refresh >= 1,"
                f" got {size=}, {min_samples=}, {refresh=}"
            )
        self.min_samples = min_samples
        self._refresh = refresh
        self._ring = [0.0] * size
        self._next = 0  # where the next sample goes
        self._held = 0  # samples in the ring, at most `size`
        self._sorted: list[float] = []
        self._unsorted = 0  # samples observed since `_sorted` was built

    def __repr__(self) -> str:
        return f"<LatencyTracker held={self._held}/{len(self._ring)}>"

    def __len__(self) -> int:
        return self._held

    def observe(self, seconds: float) -> None:
        """Record one latency; a negative or non-finite value is ignored."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        self._ring[self._next] = seconds
        self._next = (self._next + 1) % len(self._ring)
        self._held = min(self._held + 1, len(self._ring))
        self._unsorted += 1

    def quantile(self, q: float) -> float | None:
        """The nearest-rank `q` quantile (0 <= q <= 1), or None below `min_samples` samples."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        if self._held < self.min_samples:
            return None
        if not self._sorted or self._unsorted >= self._refresh:
            self._sorted = sorted(self._ring[: self._held])
            self._unsorted = 0
        rank = max(math.ceil(q * len(self._sorted)), 1)
        return self._sorted[rank - 1]


def _delay(_: Any, attribute: attrs.Attribute[Any], value: float | str) -> None:
    if isinstance(value, str):
        if value != "p95":
            raise ValueError(f"{attribute.name} must be seconds or 'p95', got {value!r}")
    else:
        _checks.positive(_, attribute, value)


@attrs.frozen
class HedgePolicy:
    """Send up to `max_hedges` extra copies, each after `delay` without a response head."""

    delay: float | Literal["p95"] = attrs.field(validator=_delay)
    max_hedges: int = attrs.field(default=1, validator=_checks.at_least(1))
    # A floor for the observed p95, so a very fast service is not hedged at once.
    min_delay: float = attrs.field(default=0.005, validator=_checks.at_least(0))

    def delay_for(self, tracker: LatencyTracker) -> float | None:
        """Seconds to wait before hedging, or None: not enough latency seen to hedge yet."""
        if self.delay != "p95":
            return self.delay
        p95 = tracker.quantile(0.95)
        return None if p95 is None else max(p95, self.min_delay)

    def allowed(self, method: bytes, body_replayable: bool) -> bool:
        """Whether this request may be hedged: idempotent, with a replayable body."""
        return body_replayable and method in IDEMPOTENT_METHODS


def parse_hedge(raw: Any, where: str) -> HedgePolicy:
    """The `hedge` block: `{delay: 50ms | p95, max_hedges: 1, min_delay: 5ms}`.

    A bare value is shorthand for `{delay: value}`. Error handling: raises the config
    error naming every bad key by its path.
    """
    if not isinstance(raw, Mapping):
        raw = {"delay": raw}
    problems: list[str] = []
    out = parse.parse_block(raw, where, _CONVERTERS, problems, required=_DELAY_REQUIRED)
    if problems:
        fail(problems)
    return HedgePolicy(**out)


def _delay_value(value: Any) -> float | Literal["p95"]:
    if isinstance(value, str) and value.strip().lower() == "p95":
        return "p95"
    try:
        return parse.duration(value)
    except ValueError:
        raise ValueError(f"expected a duration like 50ms, or p95; got {value!r}") from None


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "delay": _delay_value,
    "max_hedges": parse.positive_int,
    "min_delay": parse.non_negative_duration,
}
_DELAY_REQUIRED = {"delay": "required (a duration like 50ms, or p95)"}
