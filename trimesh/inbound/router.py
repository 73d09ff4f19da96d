"""Inbound (provider) routing: requests from other sidecars → the local app.

The app port is the declared default (`rest`) port; `X-Forwarded-Port` may
choose another port only if it is declared in `app.ports`. Any other value
is ignored, so a caller can never reach an arbitrary local port (an SSRF
hole in Mesher, which forwards to whatever port the header names).

A request whose `Host` names a service (the outbound sidecar sends the
service name there) that is not ours is answered 421 `misdirected`: a stale
registry entry must never deliver `orders` traffic to the `payments` app.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11
import trio

from trimesh.config.model import AppConfig
from trimesh.discovery.trust import parse_ip
from trimesh.errors import (
    BadRequest,
    LoopDetected,
    MethodNotAllowed,
    Misdirected,
    NoInstance,
    RateLimited,
)
from trimesh.http import headers as hh
from trimesh.http.guard import Framing
from trimesh.http.route import Candidate, Route, forward_headers
from trimesh.http.stream import Endpoint
from trimesh.http.target import Target, is_origin_form, parse_absolute, parse_authority
from trimesh.http.tunnel import is_websocket_request
from trimesh.policy import deadline as pdeadline
from trimesh.policy.ratelimit import InboundLimiter

# The caller's deadline is read here and sent on to the app as what is left of it.
REPLACED = frozenset({b"host", pdeadline.HEADER})


class InboundRouter:
    direction = "inbound"

    def __init__(
        self,
        app: AppConfig,
        *,
        via_token: bytes,
        service: str,
        own_hosts: Sequence[str] = (),
        allow_underscores: bool = False,
        limiter: InboundLimiter | None = None,
        replace_headers: frozenset[bytes] = frozenset(),
    ) -> None:
        self.host = app.host
        self.default_port = app.default_port
        self.declared = frozenset(app.ports.values())
        self.via_token = via_token
        self.service = service
        # Host names that mean "this sidecar" besides our service name.
        self.own_hosts = frozenset(h.lower() for h in (*own_hosts, "localhost", service))
        self.allow_underscores = allow_underscores
        self._replaced = REPLACED | replace_headers
        # `inbound.rate_limit`; replaced whole on a config reload.
        self.limiter = limiter

    def app_port(self, received: hh.Headers) -> int:
        wanted = hh.get(received, b"x-forwarded-port")
        if wanted is not None and wanted.isdigit() and int(wanted) in self.declared:
            return int(wanted)
        if self.default_port is None:
            raise NoInstance("no app port declared (set app.ports or SERVICE_PORTS)")
        return self.default_port

    async def route(
        self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None
    ) -> Route:
        received = hh.items(request.headers)
        if hh.via_has(received, self.via_token):
            raise LoopDetected("this request already passed this sidecar")
        path = request.target
        host = hh.get(received, b"host")
        if not is_origin_form(path):
            # RFC 9112 3.2.2: the absolute-form target's authority replaces Host.
            absolute = parse_absolute(path)
            path, host = absolute.path, absolute.authority
        if host is not None:
            self._check_host(host)
        source = hh.cse_source(hh.get(received, b"x-cse-context"))
        if self.limiter is not None:
            wait = self.limiter.check(source, trio.current_time())
            if wait:
                who = "" if source is None else f" for callers from {source!r}"
                raise RateLimited(f"over the inbound rate limit{who}", retry_after=wait)
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
        port = self.app_port(received)
        # HTTP/1.0 callers may send no Host; the app still gets one.
        headers.append(
            (b"host", host if host is not None else b"%s:%d" % (self.host.encode(), port))
        )
        candidate = Candidate((self.host, port), f"{self.host}:{port}")
        route = Route(path, headers, [candidate], self.service, websocket)
        route.source = source
        route.propagated = pdeadline.parse(hh.get(received, pdeadline.HEADER))
        return route

    def _check_host(self, host: bytes) -> None:
        try:
            name, _ = parse_authority(host, allow_no_port=True)
        except BadRequest:
            return  # not a name we can judge (an IPv6 literal, say): not a service name
        if name.lower() in self.own_hosts or parse_ip(name) is not None:
            return
        raise Misdirected(f"this sidecar serves {self.service!r}, not {name!r}")

    def pick(self, route: Route, tried: Sequence[Endpoint]) -> Candidate | None:
        return None if tried else route.candidates[0]

    async def tunnel(self, request: h11.Request) -> Target:
        raise MethodNotAllowed("CONNECT is not accepted on the inbound listener")
