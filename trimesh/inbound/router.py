"""Inbound (provider) routing: requests from other sidecars → the local app.

The app port is the declared default (`rest`) port; `X-Forwarded-Port` may
choose another port only if it is declared in `app.ports`. Any other value
is ignored, so a caller can never reach an arbitrary local port (an SSRF
hole in Mesher, which forwards to whatever port the header names).
"""

from __future__ import annotations

import h11

from trimesh.config.model import AppConfig
from trimesh.errors import LoopDetected, NoInstance
from trimesh.http import headers as hh
from trimesh.http.guard import Framing
from trimesh.http.target import Target, is_origin_form, parse_absolute
from trimesh.http.tunnel import is_websocket_request
from trimesh.mesh.plan import Plan, forward_headers


class InboundRouter:
    direction = "inbound"

    def __init__(self, app: AppConfig, *, via_token: bytes, service: str) -> None:
        self.host = app.host
        self.default_port = app.default_port
        self.declared = frozenset(app.ports.values())
        self.via_token = via_token
        self.service = service

    def app_port(self, received: hh.Headers) -> int:
        wanted = hh.get(received, b"x-forwarded-port")
        if wanted is not None and wanted.isdigit() and int(wanted) in self.declared:
            return int(wanted)
        if self.default_port is None:
            raise NoInstance("no app port declared (set app.ports or SERVICE_PORTS)")
        return self.default_port

    def plan(self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None) -> Plan:
        received = hh.items(request.headers)
        if hh.via_has(received, self.via_token):
            raise LoopDetected("this request already passed this sidecar")
        path = request.target
        if not is_origin_form(path):
            path = parse_absolute(path).path
        websocket = is_websocket_request(received)
        headers = forward_headers(
            received, framing, websocket=websocket, peer=peer, via_token=self.via_token
        )
        port = self.app_port(received)
        return Plan(
            endpoint=(self.host, port),
            target=path,
            headers=headers,
            service=self.service,
            instance=f"{self.host}:{port}",
            websocket=websocket,
        )
