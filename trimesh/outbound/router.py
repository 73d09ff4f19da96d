"""Outbound (consumer) routing: the service name in the target → its instances.

The request path reads the instance cache only; the first request for a
name the cache has never seen asks the registry once (bounded by the
connect timeout) and starts the watcher that keeps the cache current.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import attrs
import h11
import trio

from trimesh.config.policies import PolicyBook, ServicePolicy
from trimesh.discovery.base import Instance, RegistryError
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.session import Discovery
from trimesh.errors import (
    BadRequest,
    EgressDenied,
    LoopDetected,
    MethodNotAllowed,
    NoInstance,
    NotProxyRequest,
    RegistryUnreachable,
    ServiceNotFound,
    UpstreamConnect,
)
from trimesh.http import headers as hh
from trimesh.http.endpoint import EndpointState
from trimesh.http.governance import ServiceGuards
from trimesh.http.guard import Framing
from trimesh.http.route import Candidate, Route, forward_headers
from trimesh.http.stream import Endpoint
from trimesh.http.target import Target, is_origin_form, parse_absolute, parse_authority
from trimesh.http.tunnel import is_websocket_request
from trimesh.outbound.egress import DNS_TTL, EgressPolicy, looks_external, resolve
from trimesh.policy import deadline as pdeadline
from trimesh.policy.balancer import Balancer, PickContext, make_balancer, parse_cookie_value
from trimesh.policy.hedge import LatencyTracker
from trimesh.policy.match import request_info
from trimesh.policy.retry import RetryBudget
from trimesh.policy.routing import RouteRule, ServiceRouter

PROXY_HINT = (
    "this is trimesh's outbound proxy port: send absolute-form requests, e.g. set "
    "HTTP_PROXY=http://127.0.0.1:30101 and call http://<service-name>/path"
)

# Request headers the outbound router sets anew rather than passing through.
REPLACED = frozenset({b"host", b"x-forwarded-port", b"x-cse-context", pdeadline.HEADER})


@attrs.define
class ServiceState:
    """What the router keeps per target service across requests (built on first use)."""

    policy: ServicePolicy
    rules: ServiceRouter | None
    balancer: Balancer
    budget: RetryBudget
    # Response-head latencies, for hedging at the observed p95.
    latency: LatencyTracker
    # Breaker, bulkhead, rate limit and outlier ejection.
    guards: ServiceGuards
    # True when a request's details (path, headers, cookies) decide anything.
    needs_info: bool


class OutboundRouter:
    """Resolves `http://<service>[:port]/path` through the instance cache."""

    direction = "outbound"

    def __init__(
        self,
        cache: InstanceCache,
        *,
        via_token: bytes,
        source_service: str,
        discovery: Discovery | None = None,
        resolve_timeout: float = 5.0,
        allow_underscores: bool = False,
        policies: PolicyBook | None = None,
        routes: Mapping[str, Sequence[RouteRule]] | None = None,
        states: Callable[[Endpoint], EndpointState] | None = None,
        source_tags: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        egress: EgressPolicy | None = None,
        replace_headers: frozenset[bytes] = frozenset(),
    ) -> None:
        self.cache = cache
        self.discovery = discovery
        self.via_token = via_token
        self.policies = PolicyBook() if policies is None else policies
        self.routes = dict(routes or {})
        self._states = states if states is not None else _fresh_states()
        self._rng = rng or random.Random()
        self.services: dict[str, ServiceState] = {}
        # Headers set anew, not passed through (ours, plus tracing's when it propagates).
        self._replaced = REPLACED | replace_headers
        # Service state from before the last `reconfigure`, reused where its policy held.
        self._previous: dict[str, ServiceState] = {}
        self.egress = egress or EgressPolicy()
        # Our own listeners: never an egress destination (set once they are bound).
        self.own_addresses: frozenset[Endpoint] = frozenset()
        self._dns: dict[tuple[str, int], tuple[float, list[Endpoint]]] = {}
        self.source_service = source_service
        self.source_tags = dict(source_tags or {})
        self.resolve_timeout = resolve_timeout
        self.allow_underscores = allow_underscores
        # What almost every request gets: apps rarely send their own x-cse-context.
        self._fresh_context = hh.cse_context(None, source_service)

    async def route(
        self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None
    ) -> Route:
        received = hh.items(request.headers)
        if hh.via_has(received, self.via_token):
            raise LoopDetected("this request already passed this sidecar")
        target = _target(request.target, fixed)
        service = target.host
        port = target.effective_port
        external = self.egress.allows(service, port)
        if external:
            instances = await self._external(service, port)
        else:
            try:
                instances = await self._instances(service)
            except ServiceNotFound:
                if looks_external(service) or self.egress.knows(service):
                    raise EgressDenied(_denied(self.egress, service, port)) from None
                raise
        websocket = is_websocket_request(received)
        headers = forward_headers(
            received,
            framing,
            websocket=websocket,
            peer=peer,
            via_token=self.via_token,
            drop=self._replaced,
            allow_underscores=self.allow_underscores,
        )
        original_host = hh.get(received, b"host")
        sent = hh.get(received, b"x-cse-context")
        context = self._fresh_context if sent is None else hh.cse_context(sent, self.source_service)
        headers.append((b"host", target.authority))
        hh.set_default(headers, b"x-forwarded-host", original_host or target.authority)
        hh.set_default(headers, b"x-forwarded-proto", b"http")
        headers.append((b"x-forwarded-port", b"%d" % target.effective_port))
        if not external:  # our mesh's context is not for outside hosts
            headers.append((b"x-cse-context", context))
        state = self._service(service)
        route = Route(target.path, headers, (), service, websocket, state.policy)
        route.budget = state.budget
        route.source = self.source_service
        route.guards = state.guards
        state.budget.record_request(trio.current_time())
        if state.needs_info:
            info = request_info(
                request.method, target.path, received, self.source_service, self.source_tags
            )
            route.policy = self.policies.resolve(service, info)
            if state.rules is not None:
                _, instances = state.rules.select(info, instances)
            if state.policy.load_balancer == "session_sticky":
                cookie = state.policy.sticky_cookie
                route.sticky_cookie = cookie.encode()
                value = info.cookies.get(cookie)
                route.sticky = None if value is None else parse_cookie_value(value)
        if route.policy.hedge is not None:
            route.latency = state.latency
        route.propagated = pdeadline.parse(hh.get(received, pdeadline.HEADER))
        route.candidates = [Candidate(i.address, i.instance_id) for i in instances]
        return route

    def reconfigure(
        self,
        policies: PolicyBook,
        routes: Mapping[str, Sequence[RouteRule]],
        egress: EgressPolicy,
    ) -> None:
        """Swap in a reloaded snapshot; requests already routed keep the one they had.

        Per-service state (breaker windows, ejections, budgets, balancer
        positions) carries over where the part of the policy it serves is
        unchanged; it is rebuilt lazily on each service's next request.
        """
        self.policies = policies
        self.routes = dict(routes)
        self.egress = egress
        self._previous = {**self._previous, **self.services}
        self.services = {}
        self._dns.clear()

    async def _external(self, host: str, port: int) -> Sequence[Instance]:
        """An allowed egress host's addresses (cached briefly), never one of our listeners."""
        now = trio.current_time()
        cached = self._dns.get((host, port))
        if cached is None or cached[0] <= now:
            try:
                with trio.fail_after(self.resolve_timeout):
                    found = await resolve(host, port)
            except (OSError, trio.TooSlowError) as exc:
                raise UpstreamConnect(f"cannot resolve {host!r}: {exc or 'timed out'}") from exc
            cached = self._dns[(host, port)] = (now + DNS_TTL, found)
        addresses = [a for a in cached[1] if a not in self.own_addresses]
        if not addresses:
            raise EgressDenied(f"{host}:{port} is this sidecar's own listener")
        return [Instance(host, f"{host}:{port}", a[0], a[1]) for a in addresses]

    def _service(self, service: str) -> ServiceState:
        state = self.services.get(service)
        if state is None and service in self._previous:
            state = self._carried(service, self._previous.pop(service))
        if state is None:
            policy = self.policies.base(service)
            rules = self.routes.get(service, ())
            ratio, per_second = policy.budget
            state = self.services[service] = ServiceState(
                policy=policy,
                rules=ServiceRouter(rules, policy.default_version)
                if rules or policy.default_version
                else None,
                balancer=make_balancer(policy.load_balancer, self._states, self._rng),
                budget=RetryBudget(ratio, per_second),
                latency=LatencyTracker(),
                guards=ServiceGuards.build(policy, trio.current_time()),
                needs_info=bool(rules)
                or policy.default_version is not None
                or policy.load_balancer == "session_sticky"
                or self.policies.has_api_blocks(service),
            )
        return state

    def _carried(self, service: str, old: ServiceState) -> ServiceState | None:
        """`old`'s state under the reloaded policy, or None to build it afresh."""
        policy = self.policies.base(service)
        rules = self.routes.get(service, ())
        ordered = tuple(sorted(rules, key=lambda rule: -rule.precedence))
        same_rules = old.rules is not None and old.rules.rules == ordered
        if (rules or old.rules is not None) and not same_rules:
            return None  # route rules changed: their weights start a new cycle
        kept = ("load_balancer", "budget", "default_version", "sticky_cookie")
        if any(getattr(policy, k) != getattr(old.policy, k) for k in kept):
            return None
        old.guards.reconfigure(policy, trio.current_time())
        old.policy = policy
        old.needs_info = old.needs_info or self.policies.has_api_blocks(service)
        self.services[service] = old
        return old

    def pick(self, route: Route, tried: Sequence[Endpoint]) -> Candidate | None:
        left = route.candidates
        if tried:
            left = [c for c in left if c.endpoint not in tried]
        if not left:
            return None
        state = self.services.get(route.service or "")
        if state is None:
            return left[0]
        now = trio.current_time()
        outlier = state.guards.outlier
        if outlier.any_ejected(now):
            left = outlier.available(left, now)  # ejected instances sit out
        return state.balancer.pick(left, PickContext(now, route.sticky))

    async def tunnel(self, request: h11.Request) -> Target:
        try:
            host, port = parse_authority(request.target)
        except BadRequest as exc:
            raise MethodNotAllowed("CONNECT needs <service-name>:<port>") from exc
        if port is None:
            raise MethodNotAllowed("CONNECT needs a port: <host>:<port>")
        if self.egress.allows(host, port):
            found = await self._external(host, port)
            return Target(host, port, b"/", tuple(i.address for i in found))
        if looks_external(host) or self.egress.knows(host):
            raise EgressDenied(_denied(self.egress, host, port))
        try:
            await self._instances(host)
        except (ServiceNotFound, NoInstance) as exc:
            raise MethodNotAllowed(
                "CONNECT is only supported to a known service name (no egress tunnelling)"
            ) from exc
        return Target(host, port, b"/")

    async def _instances(self, service: str) -> Sequence[Instance]:
        instances = self.cache.lookup(service)
        if instances is None:
            await self._resolve_first_use(service)
            instances = self.cache.lookup(service)
        if instances is None:
            raise ServiceNotFound(f"no service named {service!r} in the registry", service)
        if not instances:
            raise NoInstance(f"service {service!r} has no usable instance that is UP")
        return instances

    async def _resolve_first_use(self, service: str) -> None:
        if self.discovery is None:
            return
        try:
            with trio.fail_after(self.resolve_timeout):
                await self.discovery.resolve(service)
        except (RegistryError, trio.TooSlowError) as exc:
            detail = str(exc) or "timed out"
            raise RegistryUnreachable(f"looking up {service!r}: {detail}") from exc


def _denied(egress: EgressPolicy, host: str, port: int) -> str:
    if egress.knows(host):
        return f"port {port} of {host!r} is not in egress.allow"
    return f"{host!r} is neither a service in the registry nor in egress.allow"


def _fresh_states() -> Callable[[Endpoint], EndpointState]:
    """Endpoint state for a router used without a pool (tests, `trimesh route test`)."""
    states: dict[Endpoint, EndpointState] = {}
    return lambda endpoint: states.setdefault(endpoint, EndpointState())


def _target(raw: bytes, fixed: Target | None) -> Target:
    if fixed is not None:
        path = raw if is_origin_form(raw) else parse_absolute(raw).path
        return Target(fixed.host, fixed.port, path)
    if is_origin_form(raw):
        raise NotProxyRequest(PROXY_HINT)
    return parse_absolute(raw)
