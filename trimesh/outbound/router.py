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
    LoopDetected,
    MethodNotAllowed,
    NoInstance,
    NotProxyRequest,
    RegistryUnreachable,
    ServiceNotFound,
)
from trimesh.http import headers as hh
from trimesh.http.endpoint import EndpointState
from trimesh.http.governance import ServiceGuards
from trimesh.http.guard import Framing
from trimesh.http.route import Candidate, Route, forward_headers
from trimesh.http.stream import Endpoint
from trimesh.http.target import Target, is_origin_form, parse_absolute, parse_authority
from trimesh.http.tunnel import is_websocket_request
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
    ) -> None:
        self.cache = cache
        self.discovery = discovery
        self.via_token = via_token
        self.policies = PolicyBook() if policies is None else policies
        self.routes = dict(routes or {})
        self._states = states if states is not None else _fresh_states()
        self._rng = rng or random.Random()
        self.services: dict[str, ServiceState] = {}
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
        instances = await self._instances(service)
        websocket = is_websocket_request(received)
        headers = forward_headers(
            received,
            framing,
            websocket=websocket,
            peer=peer,
            via_token=self.via_token,
            drop=REPLACED,
            allow_underscores=self.allow_underscores,
        )
        original_host = hh.get(received, b"host")
        sent = hh.get(received, b"x-cse-context")
        context = self._fresh_context if sent is None else hh.cse_context(sent, self.source_service)
        headers.append((b"host", target.authority))
        hh.set_default(headers, b"x-forwarded-host", original_host or target.authority)
        hh.set_default(headers, b"x-forwarded-proto", b"http")
        headers.append((b"x-forwarded-port", b"%d" % target.effective_port))
        headers.append((b"x-cse-context", context))
        state = self._service(service)
        route = Route(target.path, headers, (), service, websocket, state.policy)
        route.budget = state.budget
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

    def _service(self, service: str) -> ServiceState:
        state = self.services.get(service)
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
        left = state.guards.outlier.available(left, now)  # ejected instances sit out
        return state.balancer.pick(left, PickContext(now, route.sticky))

    async def tunnel(self, request: h11.Request) -> Target:
        try:
            host, port = parse_authority(request.target)
        except BadRequest as exc:
            raise MethodNotAllowed("CONNECT needs <service-name>:<port>") from exc
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
