"""The governance chain around `exchange.forward`: rate limit, bulkhead, fault, breaker.

Per target service, in the order Mesher's consumer chain runs them:

1. the token bucket (`rate_limit`) → 429 `rate-limited` with Retry-After;
2. the bulkhead (`max_concurrent`) → 503 `max-concurrency`, at once, no queue;
3. fault injection (`fault`): a delay (a sleep a client disconnect cancels),
   then maybe an abort with the configured status (`fault-abort`); injected
   aborts never count against the breaker;
4. the circuit breaker (`circuit_breaker`) → 503 `circuit-open` with
   Retry-After, no upstream call; otherwise the request's outcome is recorded:
   connect failures, timeouts, resets and `failure_statuses` are errors.

Outlier ejection is per instance, so it lives in the attempt loop
(`exchange`) and the router's pick; its detector is kept here with the rest
of the service's state. All decisions are the sans-IO modules in
`trimesh/policy/`; this module only calls them with the time and does the I/O.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import h11
import trio

from trimesh.config.policies import ServicePolicy
from trimesh.errors import (
    CircuitOpen,
    DownstreamGone,
    FaultAbort,
    MaxConcurrency,
    ProxyError,
    RateLimited,
)
from trimesh.http.downstream import Downstream
from trimesh.http.exchange import Policy, forward
from trimesh.http.pool import UpstreamPool
from trimesh.http.relay import Tunnel
from trimesh.http.route import Route, Router
from trimesh.observe.accesslog import AccessRecord
from trimesh.policy.breaker import CircuitBreaker
from trimesh.policy.outlier import OutlierDetector
from trimesh.policy.ratelimit import RateLimit, TokenBucket

# Proxy errors that are the upstream's failure (the breaker counts them).
UPSTREAM_FAILURES = frozenset({"upstream-connect", "upstream-timeout", "upstream-protocol"})

_rng = random.Random()


@attrs.define(eq=False)
class ServiceGuards:
    """One target service's governance state, shared by all its requests."""

    policy: ServicePolicy
    breaker: CircuitBreaker
    outlier: OutlierDetector
    bucket: TokenBucket | None
    active: int = 0
    # What each guard refused or injected, for the admin API and metrics.
    rate_limited: int = 0
    over_concurrency: int = 0
    circuit_rejected: int = 0
    faults: dict[str, int] = attrs.Factory(lambda: {"abort": 0, "delay": 0})

    @classmethod
    def build(cls, policy: ServicePolicy, now: float) -> ServiceGuards:
        breaker = CircuitBreaker(policy.circuit_breaker)
        outlier = OutlierDetector(policy.outlier)
        return cls(policy, breaker, outlier, _bucket(policy.rate_limit, now))

    def reconfigure(self, policy: ServicePolicy, now: float) -> None:
        """A reloaded policy: keep each part's state (windows, ejections, tokens) it still fits."""
        if policy.circuit_breaker != self.policy.circuit_breaker:
            self.breaker = CircuitBreaker(policy.circuit_breaker)
        if policy.outlier != self.policy.outlier:
            self.outlier = OutlierDetector(policy.outlier)
        if policy.rate_limit != self.policy.rate_limit:
            self.bucket = _bucket(policy.rate_limit, now)
        self.policy = policy

    def admit(self, now: float) -> None:
        """Rate limit, then bulkhead. Raises `RateLimited` or `MaxConcurrency`."""
        if self.bucket is not None:
            wait = self.bucket.try_take(now)
            if wait:
                self.rate_limited += 1
                raise RateLimited(
                    f"over the rate limit of {self.bucket.rate:g}/s", retry_after=wait
                )
        limit = self.policy.max_concurrent
        if limit is not None and self.active >= limit:
            self.over_concurrency += 1
            raise MaxConcurrency(f"{limit} requests to this service already in flight")

    def snapshot(self, now: float) -> dict[str, Any]:
        limit = self.policy.rate_limit
        return {
            "circuit_breaker": self.breaker.snapshot(now),
            "circuit_rejected": self.circuit_rejected,
            "outlier": self.outlier.snapshot(now),
            "ejections": self.outlier.ejections,
            "in_flight": self.active,
            "max_concurrent": self.policy.max_concurrent,
            "over_concurrency": self.over_concurrency,
            "rate_limit": None if limit is None else {"qps": limit.qps, "burst": limit.burst},
            "rate_limited": self.rate_limited,
            "faults_injected": dict(self.faults),
        }


def _bucket(limit: RateLimit | None, now: float) -> TokenBucket | None:
    return None if limit is None else TokenBucket(limit.qps, limit.burst, now)


async def governed(
    down: Downstream,
    request: h11.Request,
    route: Route,
    router: Router,
    pool: UpstreamPool,
    policy: Policy,
    rec: AccessRecord,
) -> bool | Tunnel:
    """`forward`, behind the target service's guards (none: forward as is)."""
    guards = route.guards
    if guards is None:
        return await forward(down, request, route, router, pool, policy, rec)
    guards.admit(trio.current_time())
    guards.active += 1
    try:
        if route.policy.fault is not None:
            await _inject(route, guards)
        _close_circuit_or_refuse(guards, route.service)
        try:
            outcome = await forward(down, request, route, router, pool, policy, rec)
        except BaseException as exc:
            # Recorded here, not from a saved reference: a kept exception would hold
            # its traceback's frames (and the request's buffers) in a cycle.
            _record(guards.breaker, rec, exc)
            raise
        _record(guards.breaker, rec, None)
        return outcome
    finally:
        guards.active -= 1


async def _inject(route: Route, guards: ServiceGuards) -> None:
    """Delay and/or abort, as the request's fault policy draws. Raises `FaultAbort`."""
    assert route.policy.fault is not None
    delay, status = route.policy.fault.decide(_rng)
    if delay:
        guards.faults["delay"] += 1
        await trio.sleep(delay)  # inside the request scope: a disconnect cancels it
    if status is not None:
        guards.faults["abort"] += 1
        raise FaultAbort("injected by the fault policy", status=status)


def _close_circuit_or_refuse(guards: ServiceGuards, service: str | None) -> None:
    """Raise `CircuitOpen` (no upstream call) unless the breaker lets this request go."""
    now = trio.current_time()
    if not guards.breaker.allow(now):
        guards.circuit_rejected += 1
        retry_after = guards.breaker.retry_after(now)
        raise CircuitOpen(f"the circuit for {service!r} is open", retry_after=retry_after)


def _record(breaker: CircuitBreaker, rec: AccessRecord, failure: BaseException | None) -> None:
    """The request's outcome for the breaker, or none (`abandon`) when it had none.

    Upstream failures (connect, timeout, protocol) count as errors; a response
    counts by its status, also when the client left mid-body; anything else
    (a refused request, a cancellation) frees the slot without an outcome.
    """
    ok: bool | None = None
    if isinstance(failure, ProxyError):
        ok = False if failure.kind in UPSTREAM_FAILURES else None
    elif (failure is None or isinstance(failure, DownstreamGone)) and rec.status is not None:
        ok = not breaker.is_failure_status(rec.status)
    if ok is None:
        breaker.abandon(trio.current_time())
    else:
        breaker.record(trio.current_time(), ok)
