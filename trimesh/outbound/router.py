"""Outbound (consumer) routing: service name in the target → a picked instance."""

from __future__ import annotations

import h11

from trimesh.discovery.cache import InstanceCache
from trimesh.errors import LoopDetected, NoInstance, NotProxyRequest, ServiceNotFound
from trimesh.http import headers as hh
from trimesh.http.guard import Framing
from trimesh.http.target import Target, is_origin_form, parse_absolute
from trimesh.http.tunnel import is_websocket_request
from trimesh.mesh.balancer import RoundRobin
from trimesh.mesh.plan import Plan, forward_headers

PROXY_HINT = (
    "this is trimesh's outbound proxy port: send absolute-form requests, e.g. set "
    "HTTP_PROXY=http://127.0.0.1:30101 and call http://<service-name>/path"
)


# Request headers the outbound router sets anew rather than passing through.
REPLACED = frozenset({b"host", b"x-forwarded-port", b"x-cse-context"})


class OutboundRouter:
    """Resolves `http://<service>[:port]/path` through the instance cache."""

    direction = "outbound"

    def __init__(self, cache: InstanceCache, *, via_token: bytes, source_service: str) -> None:
        self.cache = cache
        self.via_token = via_token
        self.balancer = RoundRobin()
        self.source_service = source_service
        # What almost every request gets: apps rarely send their own x-cse-context.
        self._fresh_context = hh.cse_context(None, source_service)

    def plan(self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None) -> Plan:
        received = hh.items(request.headers)
        if hh.via_has(received, self.via_token):
            raise LoopDetected("this request already passed this sidecar")
        if fixed is not None:
            path = request.target
            target = Target(
                fixed.host, fixed.port, path if is_origin_form(path) else parse_absolute(path).path
            )
        elif is_origin_form(request.target):
            raise NotProxyRequest(PROXY_HINT)
        else:
            target = parse_absolute(request.target)
        service = target.host
        instances = self.cache.lookup(service)
        if instances is None:
            raise ServiceNotFound(f"no service named {service!r} in the registry", service)
        if not instances:
            raise NoInstance(f"service {service!r} has no instance that is UP")
        instance = self.balancer.pick(service, instances)
        websocket = is_websocket_request(received)
        headers = forward_headers(
            received,
            framing,
            websocket=websocket,
            peer=peer,
            via_token=self.via_token,
            drop=REPLACED,
        )
        original_host = hh.get(received, b"host")
        sent = hh.get(received, b"x-cse-context")
        context = self._fresh_context if sent is None else hh.cse_context(sent, self.source_service)
        headers.append((b"host", target.authority))
        hh.set_default(headers, b"x-forwarded-host", original_host or target.authority)
        hh.set_default(headers, b"x-forwarded-proto", b"http")
        headers.append((b"x-forwarded-port", b"%d" % target.effective_port))
        headers.append((b"x-cse-context", context))
        return Plan(
            endpoint=instance.address,
            target=target.path,
            headers=headers,
            service=service,
            instance=instance.instance_id,
            websocket=websocket,
        )
