"""Retry policy, backoff and the retry budget: pure decisions, no I/O.

Retry indexes count from 0: retry 0 is the second try of a request. Time is
passed in as `now` (seconds, any monotonic origin) and randomness as a
`random.Random`, so every decision here is reproducible in a test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy._window import RollingCounts
from trimesh.policy.match import ConfigProblems

RETRY_ON_KINDS = frozenset({"connect-failure", "reset", "per-try-timeout", "gateway-error"})
# The kinds an attempt can fail with before a response head arrives; any other
# failure (e.g. "protocol": the upstream spoke nonsense) is never retried.
FAILURE_KINDS = frozenset({"connect-failure", "reset", "per-try-timeout"})
GATEWAY_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# 2**60 x any sane base is far past any max; the cap keeps the float finite.
_MAX_EXPONENT = 60


def fail(problems: list[str]) -> NoReturn:
    """Raise `ConfigProblems` for `problems` (each "key.path: what is wrong")."""
    raise ConfigProblems(problems)


@attrs.frozen
class Backoff:
    """Pause before a retry: `constant` (always `base`) or `exponential` with full jitter."""

    kind: Literal["constant", "exponential"] = attrs.field(
        default="exponential", validator=attrs.validators.in_(("constant", "exponential"))
    )
    base: float = attrs.field(default=0.025, validator=_checks.non_negative)
    max: float = attrs.field(default=0.25, validator=_checks.non_negative)

    def delay(self, retry_index: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry_index` (0 = the first retry)."""
        if self.kind == "constant":
            return self.base
        exponent = min(max(retry_index, 0), _MAX_EXPONENT)
        return rng.uniform(0.0, min(self.max, self.base * 2.0**exponent))


def _kinds(_: Any, attribute: attrs.Attribute[Any], value: frozenset[str]) -> None:
    if not value <= RETRY_ON_KINDS:
        raise ValueError(f"{attribute.name}: unknown kinds {sorted(value - RETRY_ON_KINDS)}")


@attrs.frozen
class RetryPolicy:
    """When a failed or refused try of a request is sent again, and to which instance."""

    attempts: int = attrs.field(default=2, validator=_checks.count)  # retries after the first try
    retry_on: frozenset[str] = attrs.field(
        default=frozenset({"connect-failure", "reset"}), validator=_kinds
    )
    statuses: frozenset[int] = attrs.field(default=frozenset(), validator=_checks.error_statuses)
    retry_on_same: int = attrs.field(default=0, validator=_checks.count)
    retry_on_next: int | None = attrs.field(default=None, validator=_checks.count)
    backoff: Backoff = Backoff()
    non_idempotent: bool = False

    def retryable_failure(self, kind: str) -> bool:
        """Whether an attempt that failed with `kind` (no response head) may be retried."""
        return kind in FAILURE_KINDS and kind in self.retry_on

    def retryable_status(self, status: int) -> bool:
        """Whether a response with `status` should be replaced by a retry."""
        if status in self.statuses:
            return True
        return status in GATEWAY_STATUSES and "gateway-error" in self.retry_on

    def allowed(self, method: bytes, body_replayable: bool) -> bool:
        """Whether this request may be retried at all (idempotent method, body still replayable)."""
        return body_replayable and (self.non_idempotent or method in IDEMPOTENT_METHODS)

    @property
    def _mesher(self) -> bool:
        return self.retry_on_same > 0 or self.retry_on_next is not None

    @property
    def max_retries(self) -> int:
        """Retries after the first try: `attempts`, or retry_on_same + retry_on_next."""
        if self._mesher:
            return self.retry_on_same + (self.retry_on_next or 0)
        return self.attempts

    def same_instance(self, retry_index: int) -> bool:
        """Whether retry `retry_index` (0-based) goes to the instance of the previous try."""
        return retry_index < self.retry_on_same


class RetryBudget:
    """Linkerd's retry budget: retries may add `ratio` of recent requests plus a floor.

    Within the last `window` seconds, at most `ratio x requests + min_per_second x window`
    retries (hedges included) are allowed. Counts live in ten buckets of `window / 10`
    seconds, so every call is O(1) and memory is fixed; a count leaves the window when
    its bucket is reused, between `0.9 x window` and `window` after it was recorded.
    """

    BUCKETS = 10

    def __init__(
        self, ratio: float = 0.2, min_per_second: float = 10.0, window: float = 10.0
    ) -> None:
        if not (math.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"ratio must be a non-negative number, got {ratio!r}")
        if not (math.isfinite(min_per_second) and min_per_second >= 0):
            raise ValueError(
                f"min_per_second must be a non-negative number, got {min_per_second!r}"
            )
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be positive, got {window!r}")
        self.ratio = ratio
        self.floor = min_per_second * window
        self._counts = RollingCounts(window, self.BUCKETS)  # a: requests, b: retries
        self.exhausted = 0  # retries refused, for metrics

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio} floor={self.floor} requests={self._counts.a}"
            f" retries={self._counts.b} exhausted={self.exhausted}>"
        )

    def record_request(self, now: float) -> None:
        """Count one original request (not a retry or hedge) at time `now`."""
        self._counts.add(now, 1, 0)

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if it allows one; count a refusal in `exhausted`."""
        counts = self._counts
        counts.advance(now)
        # The epsilon forgives float rounding such as 0.29 x 100 = 28.999999999999996.
        if counts.b + 1 > self.ratio * counts.a + self.floor + 1e-9:
            self.exhausted += 1
            return False
        counts.add(now, 0, 1)
        return True

    def available(self, now: float) -> float:
        """Retries the budget would still allow at `now` (for metrics and the admin view)."""
        requests, retries = self._counts.totals(now)
        return max(0.0, self.ratio * requests + self.floor - retries)


# --- config ---------------------------------------------------------------------------

_RETRY_KEYS = (
    "attempts",
    "retry_on",
    "retry_on_same",
    "retry_on_next",
    "backoff",
    "non_idempotent",
)


def _optional_count(value: Any) -> int | None:
    """A count of 0 or more; None (YAML's `~`) means not set, the documented default."""
    return None if value is None else parse.non_negative_int(value)


# `retry_on` and `backoff` are blocks of their own, read by `parse_retry`.
_RETRY_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "attempts": parse.non_negative_int,
    "retry_on_same": parse.non_negative_int,
    "retry_on_next": _optional_count,
    "non_idempotent": parse.boolean,
}
_BACKOFF_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "kind": parse.choice("constant", "exponential"),
    "base": parse.non_negative_duration,
    "max": parse.duration,
}
_BUDGET_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "ratio": parse.non_negative_number,
    "min_per_second": parse.non_negative_number,
}


def parse_retry(raw: Any, where: str) -> RetryPolicy:
    """The `retry` block: a mapping, empty for the defaults, or `off` for no retries.

    `retry_on` lists conditions and status codes (400-599) as a list or comma-separated.

    Error handling: raises the config error naming every bad key by its path.
    """
    if raw is None:
        return RetryPolicy()
    if raw is False or raw == "off":
        return RetryPolicy(attempts=0)
    problems: list[str] = []
    out = parse.parse_block(raw, where, _RETRY_CONVERTERS, problems, keys=_RETRY_KEYS)
    values: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if "retry_on" in values:
        out["retry_on"], out["statuses"] = _retry_on(
            values["retry_on"], f"{where}.retry_on", problems
        )
    if "backoff" in values:
        out["backoff"] = _backoff(values["backoff"], f"{where}.backoff", problems)
    # Either Mesher key switches to Mesher's counts, and then `attempts` is unused: not
    # an error, as policy blocks merge key by key (a default's attempts + a service's counts).
    # `retry_on_same: 0` alone is the default, not a switch to counts of zero.
    if out.get("retry_on_same") or out.get("retry_on_next") is not None:
        out["retry_on_next"] = out.get("retry_on_next") or 0
    if problems:
        fail(problems)
    return RetryPolicy(**out)


def parse_budget(raw: Any, where: str) -> tuple[float, float]:
    """The retry budget block → `(ratio, min_per_second)`; empty for the defaults.

    Error handling: raises the config error naming every bad key by its path.
    """
    problems: list[str] = []
    out = {"ratio": 0.2, "min_per_second": 10.0}
    if raw is not None:
        out |= parse.parse_block(raw, where, _BUDGET_CONVERTERS, problems)
    if problems:
        fail(problems)
    return out["ratio"], out["min_per_second"]


def _retry_on(raw: Any, where: str, problems: list[str]) -> tuple[frozenset[str], frozenset[int]]:
    """`[reset, gateway-error, 429]` or `"reset,gateway-error,429"` → (kinds, status codes)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        problems.append(f"{where}: expected a list like [connect-failure, reset], got {raw!r}")
        return frozenset(), frozenset()
    kinds: set[str] = set()
    statuses: set[int] = set()
    for i, item in enumerate(items):
        text = str(item).strip().lower() if not isinstance(item, bool) else repr(item)
        if text in RETRY_ON_KINDS:
            kinds.add(text)
        elif text.isdigit() and text.isascii() and 400 <= int(text) <= 599:
            statuses.add(int(text))
        else:
            problems.append(
                f"{where}[{i}]: unknown condition {item!r} (expected one of"
                f" {', '.join(sorted(RETRY_ON_KINDS))}, or a status code 400-599)"
            )
    return frozenset(kinds), frozenset(statuses)


def _backoff(raw: Any, where: str, problems: list[str]) -> Backoff:
    out = parse.parse_block(raw, where, _BACKOFF_CONVERTERS, problems)
    backoff = Backoff()
    base, top = out.get("base", backoff.base), out.get("max", backoff.max)
    if out.get("kind", backoff.kind) == "exponential" and top < base:
        problems.append(f"{where}.max: must be at least base ({base}s), got {top}s")
    return backoff if problems else Backoff(**out)
