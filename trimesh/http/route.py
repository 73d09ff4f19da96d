"""Where one request goes: the `Route` a router decides, and the `Router` protocol.

Routing (which service, which candidate endpoints, which headers) is decided
once per request; picking one endpoint is a separate step the attempt loop
takes, so a retry or a refused connection can pick again. Pure and
synchronous except for `Router.route`, which may await the registry on the
first use of a service name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import h11

from trimesh.config.policies import INBOUND, ServicePolicy
from trimesh.http import headers as hh
from trimesh.http.guard import Framing
from trimesh.http.stream import Endpoint
from trimesh.http.target import Target
from trimesh.policy.hedge import LatencyTracker

if TYPE_CHECKING:
    from trimesh.http.governance import ServiceGuards
    from trimesh.observe.tracing import Span, Tracer


@attrs.frozen
class Candidate:
    """One endpoint a request may go to."""

    endpoint: Endpoint
    instance_id: str


class RetryBudgetLike(Protocol):
    def try_spend(self, now: float) -> bool: ...


@attrs.define(slots=True)
class Route:
    target: bytes
    headers: hh.Headers
    candidates: Sequence[Candidate]
    service: str | None = None
    websocket: bool = False
    # The policy this request runs under, resolved once (service and API match).
    policy: ServicePolicy = INBOUND
    # Seconds left of the caller's deadline (`x-trimesh-deadline-ms`), if it sent one.
    propagated: float | None = None
    # The service's retry budget; None: retries are not budgeted (inbound).
    budget: RetryBudgetLike | None = None
    # Session stickiness: the cookie's name, and the endpoint the request's cookie names.
    sticky_cookie: bytes | None = None
    sticky: Endpoint | None = None
    # The service's observed response-head latencies, when its policy hedges.
    latency: LatencyTracker | None = None
    # Tracing: the request's span here, and the tracer attempts start their spans with.
    span: Span | None = None
    tracer: Tracer | None = None
    # The calling service: ours when outbound, the caller's (x-cse-context) when inbound.
    source: str | None = None
    # The target service's breaker, bulkhead, rate limit and outlier state; None: ungoverned.
    guards: ServiceGuards | None = None


class Router(Protocol):
    """Decides where a request goes. Raises `ProxyError` subclasses."""

    direction: str
    via_token: bytes

    async def route(
        self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None
    ) -> Route: ...

    def pick(self, route: Route, tried: Sequence[Endpoint]) -> Candidate | None:
        """One candidate not in `tried` (the balancer's choice), or None if none is left."""
        ...

    async def tunnel(self, request: h11.Request) -> Target:
        """Accept `CONNECT` to a target, or raise (`MethodNotAllowed`)."""
        ...


def forward_headers(
    received: hh.Headers,
    framing: Framing,
    *,
    websocket: bool,
    peer: str,
    via_token: bytes,
    drop: frozenset[bytes] = frozenset(),
    allow_underscores: bool = False,
) -> hh.Headers:
    """End-to-end request headers plus regenerated framing, X-Forwarded-For and Via."""
    kept, length = hh.end_to_end(
        received, keep_upgrade=websocket, drop=drop, allow_underscores=allow_underscores
    )
    if framing.chunked:
        kept.append((b"transfer-encoding", b"chunked"))
    elif length is not None:
        kept.append((b"content-length", b"%d" % (framing.content_length or 0)))
    hh.append_list(kept, b"x-forwarded-for", peer.encode())
    hh.append_list(kept, b"via", b"1.1 " + via_token)
    return kept
