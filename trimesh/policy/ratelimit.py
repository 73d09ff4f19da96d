"""Rate limits: token buckets for a consumer's calls and a provider's callers. Sans-IO.

A bucket holds at most `burst` tokens and gains `qps` per second; a request
takes one or is told how long until one is there (its Retry-After). Time is
passed in as `now`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy.match import ConfigProblems
from trimesh.policy.retry import fail

# Forgives float rounding (0.1 x 10 refills = 0.9999999999999999 tokens); the debt a
# grant leaves is carried, so the grants never run ahead by more than this in total.
_EPSILON = 1e-9


@attrs.frozen
class RateLimit:
    """`qps` requests a second on average, at most `burst` at once."""

    qps: float = attrs.field(validator=_checks.positive)
    burst: int = attrs.field(validator=_checks.positive)


class TokenBucket:
    """Tokens refilled at `rate` per second up to `burst`; full at creation."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate=}, {burst=}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate} burst={self.burst} tokens={self._tokens:.3f}>"

    def try_take(self, now: float) -> float:
        """Take a token: 0.0 if granted, else the seconds until one will be there."""
        # A clock that steps back (it should not) refills nothing.
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@attrs.frozen
class InboundLimits:
    """The provider side: one limit over all callers and one per calling service."""

    overall: RateLimit | None = None
    per_source: Mapping[str, RateLimit] = attrs.field(factory=dict)


class InboundLimiter:
    """The buckets of `InboundLimits`; `check` once per inbound request.

    A request takes from its caller's bucket first, then from the overall one, so a
    caller over its own limit spends nothing of the others' share. The caller's token
    is not given back when the overall bucket then refuses.
    """

    def __init__(self, limits: InboundLimits, now: float) -> None:
        self.limits = limits
        overall = limits.overall
        self._overall = None if overall is None else TokenBucket(overall.qps, overall.burst, now)
        self._per_source = {
            source: TokenBucket(limit.qps, limit.burst, now)
            for source, limit in limits.per_source.items()
        }
        self.refused = 0  # for metrics

    def __repr__(self) -> str:
        return f"<InboundLimiter sources={len(self._per_source)} refused={self.refused}>"

    def check(self, source: str | None, now: float) -> float:
        """0.0 if the request from `source` (None: unknown) may go, else its Retry-After."""
        if source is not None:
            bucket = self._per_source.get(source)
            if bucket is not None:
                wait = bucket.try_take(now)
                if wait:
                    self.refused += 1
                    return wait
        if self._overall is not None:
            wait = self._overall.try_take(now)
            if wait:
                self.refused += 1
                return wait
        return 0.0


# --- config ---------------------------------------------------------------------------

_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "qps": functools.partial(parse.positive_number, expected="requests per second"),
    "burst": parse.positive_int,
}
_QPS_REQUIRED = {"qps": "required (requests per second, like 100)"}


def parse_rate_limit(raw: Any, where: str) -> RateLimit:
    """`{qps: 100, burst: 100}`; `burst` defaults to max(1, ceil(qps)).

    Error handling: raises the config error naming every bad key by its path.
    """
    problems: list[str] = []
    limit = _rate_limit(raw, where, ("qps", "burst"), problems, required=True)
    if limit is None:
        fail(problems)
    return limit


def parse_inbound_rate_limit(raw: Any, where: str) -> InboundLimits:
    """`inbound.rate_limit`: `{qps, burst, per_source: {<service>: {qps, burst}}}`.

    Without `qps` there is no overall limit; empty or absent: no limits at all.
    Error handling: raises the config error naming every bad key by its path.
    """
    if raw is None:
        return InboundLimits()
    problems: list[str] = []
    overall = _rate_limit(raw, where, ("qps", "burst", "per_source"), problems, required=False)
    per_source: dict[str, RateLimit] = {}
    sources = raw.get("per_source") if isinstance(raw, Mapping) else None
    if sources is not None and not isinstance(sources, Mapping):
        problems.append(f"{where}.per_source: expected a mapping of service to limit")
        sources = None
    for name, block in (sources or {}).items():
        try:
            source = parse.name(name)
            per_source[source] = parse_rate_limit(block, f"{where}.per_source.{source}")
        except ConfigProblems as exc:
            problems.extend(exc.problems)
        except ValueError as exc:
            problems.append(f"{where}.per_source.{name}: {exc}")
    if problems:
        fail(problems)
    return InboundLimits(overall, per_source)


def _rate_limit(
    raw: Any, where: str, keys: tuple[str, ...], problems: list[str], *, required: bool
) -> RateLimit | None:
    """The `qps`/`burst` of `raw`, or None (no qps, or a problem added to `problems`)."""
    known = len(problems)
    # A burst without a qps is a mistake even where the whole limit is optional.
    required = required or (isinstance(raw, Mapping) and "burst" in raw)
    needed = _QPS_REQUIRED if required else None
    out = parse.parse_block(raw, where, _CONVERTERS, problems, keys=keys, required=needed)
    if "qps" not in out or len(problems) > known:
        return None
    out.setdefault("burst", max(1, math.ceil(out["qps"])))
    return RateLimit(**out)
