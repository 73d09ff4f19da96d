"""Load balancers: pick one endpoint among a request's candidates. Sans-IO.

A balancer is a plain object over whatever candidates it is handed: it never
does I/O, reads time from `PickContext.now` and randomness from an injected
`random.Random`. What it learns about endpoints lives in their
`EndpointState` (looked up by endpoint through `states`), never by position,
so instances may come and go between picks without the others losing what is
known about them. Make one balancer per service with `make_balancer`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

from trimesh.http.endpoint import MIN_RTT, EndpointState

if TYPE_CHECKING:
    from trimesh.http.stream import Endpoint

STRATEGIES = ("round_robin", "random", "weighted_response", "session_sticky", "least_request")

# Default name of the session cookie that names the sticky endpoint.
COOKIE = "trimesh-sticky"

# A cookie value longer than this is junk: a host name is at most 253 bytes.
_MAX_COOKIE = 400
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> Endpoint: ...


C = TypeVar("C", bound=HasEndpoint)
States = Callable[["Endpoint"], EndpointState]


@attrs.frozen
class PickContext:
    """What a pick may depend on besides the candidates."""

    now: float
    # The endpoint named by the request's session cookie, if any.
    sticky: Endpoint | None = None


class Balancer(Protocol):
    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        """One of `candidates` (non-empty)."""
        ...


class RoundRobinBalancer:
    """Cycles through the candidates in the order given."""

    def __init__(self) -> None:
        self._count = itertools.count()

    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        return candidates[next(self._count) % len(candidates)]


class RandomBalancer:
    """Uniformly at random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        return candidates[self._rng.randrange(len(candidates))]


class WeightedResponseBalancer:
    """At random, weighted by the inverse of each endpoint's latency estimate.

    A candidate with no estimate yet gets the average weight of the others, so
    a new instance is tried at once without being flooded. The estimate is the
    peak EWMA as stored (failures count as slow); every endpoint keeps a
    non-zero chance, so a slow one is still sampled and can recover.
    """

    def __init__(self, states: States, rng: random.Random) -> None:
        self._states = states
        self._rng = rng

    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        if len(candidates) == 1:
            return candidates[0]
        weights = self._weights(candidates)
        point = self._rng.random() * weights[-1]
        return candidates[min(bisect.bisect_right(weights, point), len(candidates) - 1)]

    def _weights(self, candidates: Sequence[C]) -> list[float]:
        """Cumulative weights, in the order of `candidates`."""
        known = [self._states(c.endpoint).peak_ewma for c in candidates]
        weights = [None if k is None else 1.0 / max(k, MIN_RTT) for k in known]
        seen = [w for w in weights if w is not None]
        fill = sum(seen) / len(seen) if seen else 1.0
        return list(itertools.accumulate(fill if w is None else w for w in weights))


class SessionStickyBalancer:
    """The endpoint the session cookie names while it is a candidate; round robin otherwise."""

    def __init__(self) -> None:
        self._fallback = RoundRobinBalancer()

    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        if ctx.sticky is not None:
            for candidate in candidates:
                if candidate.endpoint == ctx.sticky:
                    return candidate
        return self._fallback.pick(candidates, ctx)


class LeastRequestBalancer:
    """Power of two choices: two distinct candidates at random, the lower `cost` wins."""

    def __init__(self, states: States, rng: random.Random) -> None:
        self._states = states
        self._rng = rng

    def pick(self, candidates: Sequence[C], ctx: PickContext) -> C:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        # Draw the second from the n - 1 others so the pair is always distinct.
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        cost_a = self._states(a.endpoint).cost(ctx.now)
        cost_b = self._states(b.endpoint).cost(ctx.now)
        return b if cost_b < cost_a else a


def make_balancer(strategy: str, states: States, rng: random.Random) -> Balancer:
    """A new balancer for one service. Raises ValueError for an unknown strategy."""
    if strategy == "round_robin":
        return RoundRobinBalancer()
    if strategy == "random":
        return RandomBalancer(rng)
    if strategy == "weighted_response":
        return WeightedResponseBalancer(states, rng)
    if strategy == "session_sticky":
        return SessionStickyBalancer()
    if strategy == "least_request":
        return LeastRequestBalancer(states, rng)
    raise ValueError(f"unknown load balancer strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


def cookie_value(endpoint: Endpoint) -> str:
    """The session cookie value naming `endpoint`: opaque to clients, reversible here."""
    host, port = endpoint
    raw = f"{host}:{port}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_cookie_value(text: str) -> Endpoint | None:
    """The endpoint a session cookie value names, or None for anything malformed."""
    if len(text) > _MAX_COOKIE or not _BASE64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        decoded = raw.decode("ascii")
    except (binascii.Error, ValueError):
        return None
    host, sep, port = decoded.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not (port.isdigit() and len(port) <= 5):
        return None
    number = int(port)
    return (host, number) if 0 < number < 65536 else None
