"""The configuration snapshot: frozen attrs objects, built once, never parsed again.

`trimesh.config.load` turns YAML + environment + CLI flags into these;
everything downstream reads only these objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from trimesh.config.policies import PolicyBook
from trimesh.observe.tracing import TracingConfig
from trimesh.outbound.egress import EgressPolicy
from trimesh.policy.ratelimit import InboundLimits
from trimesh.policy.routing import RouteRule

Address = tuple[str, int]
RegistryType = Literal["static", "local", "etcd", "servicecomb"]


@attrs.frozen
class ServiceConfig:
    """Who our app is, as registered."""

    name: str = "trimesh-app"
    app: str = "default"
    version: str = "0.0.1"
    environment: str = ""
    metadata: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ListenConfig:
    outbound: Address = ("127.0.0.1", 30101)
    inbound: Address = ("127.0.0.1", 30103)
    admin: Address = ("127.0.0.1", 30102)
    # Host other sidecars should use to reach our inbound listener.
    advertise: str | None = None
    # On SIGTERM: keep accepting (answering `Connection: close`) this long, then stop.
    drain_delay: float = 5.0
    drain_timeout: float = 20.0
    # Bearer token for the admin listener: mutating endpoints need it when set, and
    # every endpoint does when the admin listener is not on loopback (then it is required).
    admin_token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class HealthConfig:
    protocol: Literal["http", "tcp"] = "tcp"
    path: str = "/health"
    port: str = "rest"
    interval: float = 5.0
    timeout: float = 2.0
    expect_status: int = 200


@attrs.frozen
class AppConfig:
    """The local app that inbound traffic goes to."""

    host: str = "127.0.0.1"
    ports: Mapping[str, int] = attrs.field(factory=dict)
    health: HealthConfig | None = None

    @property
    def default_port(self) -> int | None:
        """The `rest` port, else the only declared port, else none."""
        if "rest" in self.ports:
            return self.ports["rest"]
        if len(self.ports) == 1:
            return next(iter(self.ports.values()))
        return None


@attrs.frozen
class Limits:
    """Downstream limits; each guards the proxy against one abuse."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_request_line: int = 8 * 1024
    max_body_bytes: int | None = None
    header_timeout: float = 10.0
    body_idle_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    # Whole-request receive deadline (head and body); None = off, like nginx and Envoy.
    request_timeout: float | None = None
    # Keep header fields whose names contain "_" (dropped by default, as nginx does).
    allow_underscores: bool = False
    # A WebSocket / CONNECT tunnel with no byte either way for this long is closed.
    tunnel_idle_timeout: float = 3600.0
    # Largest upstream response head (status line + fields) we accept.
    max_response_header_bytes: int = 64 * 1024
    # Connections on the admin listener.
    admin_max_connections: int = 64


@attrs.frozen
class UpstreamConfig:
    connect_timeout: float = 5.0
    # Time from the end of the request to the response head.
    response_timeout: float = 30.0
    pool_max_idle: int = 64
    pool_idle_timeout: float = 60.0


@attrs.frozen
class StaticInstance:
    host: str
    port: int
    version: str = ""
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RegistryConfig:
    type: RegistryType = "local"
    services: Mapping[str, tuple[StaticInstance, ...]] = attrs.field(factory=dict)
    path: Path | None = None
    endpoints: tuple[Address, ...] = ()
    prefix: str = "/trimesh"
    project: str = "default"
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    heartbeat_interval: float = 10.0
    ttl: float = 30.0
    # Deadline of one registry call (a heartbeat gets min(this, interval, ttl/3)).
    call_timeout: float = 5.0
    # When set, instances outside these networks (CIDR) are never used.
    allow_networks: tuple[str, ...] = ()


@attrs.frozen
class MetricsConfig:
    # Count requests for /metrics, /v1/services and the dashboard (off: none of the three).
    enabled: bool = True
    # Also expose Mesher's metric names, so Mesher's Grafana dashboards keep working.
    mesher_names: bool = False


@attrs.frozen
class ObserveConfig:
    # "stderr", "stdout", "off", or a file path.
    access_log: str = "stderr"
    # The program log: "text" lines or "json" objects (with trace_id/span_id in a request).
    log_format: Literal["text", "json"] = "text"
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    # Trace propagation (on) and span export (off); see docs/tracing.md.
    tracing: TracingConfig = attrs.field(factory=TracingConfig)


@attrs.frozen
class InboundConfig:
    """The provider side's own governance (`inbound`)."""

    rate_limit: InboundLimits = attrs.field(factory=InboundLimits)


@attrs.frozen
class Config:
    service: ServiceConfig = ServiceConfig()
    listen: ListenConfig = ListenConfig()
    app: AppConfig = AppConfig()
    limits: Limits = Limits()
    upstream: UpstreamConfig = UpstreamConfig()
    registry: RegistryConfig = RegistryConfig()
    observe: ObserveConfig = ObserveConfig()
    # Route rules per target service, highest precedence first (`routes`).
    routes: Mapping[str, tuple[RouteRule, ...]] = attrs.field(factory=dict)
    policies: PolicyBook = attrs.field(factory=PolicyBook)
    inbound: InboundConfig = attrs.field(factory=InboundConfig)
    egress: EgressPolicy = attrs.field(factory=EgressPolicy)
    log_level: str = "info"
