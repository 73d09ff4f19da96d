"""The whole program: one root nursery (see docs/architecture.md).

```
root nursery (Sidecar.run)
├── signal watcher → graceful drain
├── pool reapers, discovery
├── admin listener
└── handler nursery (drain deadline)
     └── listener nursery (outbound, inbound) → one task per connection
```
"""

from __future__ import annotations

import gc
import json
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import attrs
import trio

from trimesh.admin import (
    AdminRequest,
    AdminRoutes,
    AdminSettings,
    Raw,
    run_admin,
    version_body,
)
from trimesh.config.centre import ConfigCentre
from trimesh.config.model import Address, Config, ServiceConfig
from trimesh.config.reload import ConfigWatcher, RawSource
from trimesh.discovery.base import Instance
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.factory import build_registry, instance_filter, registration_for
from trimesh.discovery.health import health_loop, health_target
from trimesh.discovery.session import Discovery
from trimesh.discovery.static import StaticRegistry
from trimesh.discovery.trust import is_loopback
from trimesh.errors import Overloaded
from trimesh.http import stream as hs
from trimesh.http import synthetic
from trimesh.http.connection import Drain, ListenerContext, serve_connection
from trimesh.http.exchange import Policy
from trimesh.http.pool import UpstreamPool
from trimesh.http.route import Router
from trimesh.inbound.router import InboundRouter
from trimesh.observe import dashboard
from trimesh.observe.accesslog import AccessLog, AccessRecord
from trimesh.observe.introspect import count_tasks, jsonable, task_tree
from trimesh.observe.live import LiveStats
from trimesh.observe.metrics import MeshState, Metrics
from trimesh.observe.tracing import HEADERS as TRACE_HEADERS
from trimesh.observe.tracing import Tracer
from trimesh.outbound.router import OutboundRouter
from trimesh.policy.ratelimit import InboundLimiter, RateLimit
from trimesh.policy.routing import RouteRule

log = logging.getLogger("trimesh.sidecar")
# How long graceful shutdown waits for the registry to drop our instance.
DEREGISTER_TIMEOUT = 5.0
_OVERLOADED = synthetic.render(Overloaded("too many connections on this listener"))


@attrs.frozen
class Bound:
    """Where the listeners actually bound (port 0 resolved)."""

    outbound: Address
    inbound: Address
    admin: Address


class Sidecar:
    """Owns every long-lived object; `run` is the root nursery."""

    def __init__(
        self,
        config: Config,
        *,
        access_log: AccessLog | None = None,
        reload_source: RawSource | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        # Live reload (`trimesh serve`): re-read these layers on SIGHUP or a file change.
        self.reload_source = reload_source
        self.config_path = config_path
        self.config_watcher: ConfigWatcher | None = None
        self.instance_token = secrets.token_hex(4)
        self.cache = InstanceCache()
        self.registry = build_registry(config.registry, app=config.service.app)
        if isinstance(self.registry, StaticRegistry):
            for name in config.registry.services:
                self.cache.update(name, self.registry.snapshot(name))
        self.discovery = Discovery(
            self.registry,
            self.cache,
            None,
            app=config.service.app,
            call_timeout=config.registry.call_timeout,
        )
        self.access_log = access_log or AccessLog.open(config.observe.access_log)
        up = config.upstream
        self.pools = [
            UpstreamPool(max_idle=up.pool_max_idle, idle_timeout=up.pool_idle_timeout)
            for _ in range(2)
        ]
        self.drain = Drain()
        # Every finished request's record feeds the metrics and the live figures.
        self.metrics = Metrics(
            mesher_names=config.observe.metrics.mesher_names,
            snapshot=self.mesh_state,
            service=config.service.name,
            app=config.service.app,
            version=config.service.version,
        )
        self.live = LiveStats()
        self.observers: tuple[Callable[[AccessRecord], None], ...] = (
            (self.metrics.observe, self.live.observe, self._count_connect_errors)
            if config.observe.metrics.enabled
            else ()
        )
        # Connections refused per (listener, reason); connect failures per target service.
        self.refused: dict[tuple[str, str], int] = {}
        self.connect_errors: dict[str, int] = {}
        self._contexts: dict[str, ListenerContext] = {}
        self.bound: Bound | None = None
        self._stop = trio.Event()
        c = config
        tracing = c.observe.tracing
        self.tracer: Tracer | None = None
        if tracing.propagate:
            self.tracer = Tracer(
                tracing,
                service=c.service.name,
                instance_id=f"{c.service.name}-{self.instance_token}",
                app=c.service.app,
                version=c.service.version,
                on_dropped=self.metrics.count_dropped_spans,
            )
        trace_headers = TRACE_HEADERS if self.tracer is not None else frozenset()
        self.outbound = OutboundRouter(
            self.cache,
            via_token=self.via_token("outbound"),
            source_service=c.service.name,
            discovery=self.discovery,
            resolve_timeout=c.upstream.connect_timeout,
            allow_underscores=c.limits.allow_underscores,
            policies=c.policies,
            routes=c.routes,
            states=self.pools[0].state,
            source_tags=source_tags(c.service),
            egress=c.egress,
            replace_headers=trace_headers,
        )
        own_hosts = [h for h in (c.listen.advertise, c.listen.inbound[0]) if h]
        self.inbound = InboundRouter(
            c.app,
            via_token=self.via_token("inbound"),
            service=c.service.name,
            own_hosts=own_hosts,
            allow_underscores=c.limits.allow_underscores,
            # Built before trio's clock runs: time 0, which only means "full".
            limiter=_limiter(c, 0.0),
            replace_headers=trace_headers,
        )

    def _count_connect_errors(self, rec: AccessRecord) -> None:
        # Only services the router holds state for: a bounded set, never a random name.
        if rec.error == "upstream-connect" and rec.service in self.outbound.services:
            self.connect_errors[rec.service] = self.connect_errors.get(rec.service, 0) + 1

    def mesh_state(self) -> MeshState:
        """What a scrape reads besides the request counters (see trimesh/observe/metrics.py)."""
        now = trio.current_time()
        services = sorted(self.outbound.services.items())
        guards = [(name, state.guards) for name, state in services]
        instances: dict[tuple[str, str], int] = {}
        for name, found in self.cache.snapshot().items():
            for instance in found:
                key = (name, instance.status)
                instances[key] = instances.get(key, 0) + 1
        static = isinstance(self.registry, StaticRegistry)
        inbound_limiter = self.inbound.limiter
        return MeshState(
            upstream_connections={
                "active": sum(p.active_count() for p in self.pools),
                "idle": sum(p.idle_count() for p in self.pools),
            },
            downstream_connections={n: len(ctx.conns) for n, ctx in self._contexts.items()},
            connections_refused=dict(self.refused),
            upstream_connect_errors=dict(self.connect_errors),
            registry_up=None if static else self.discovery.last_error is None,
            registry_instances=instances,
            registry_heartbeat_failures=self.discovery.heartbeat_failures,
            registry_watch_restarts=self.discovery.watch_restarts,
            retry_budget_exhausted={n: s.budget.exhausted for n, s in services},
            circuit_state={n: _CIRCUIT[g.breaker.state(now)] for n, g in guards},
            circuit_rejected={n: g.circuit_rejected for n, g in guards},
            bulkhead_rejected={n: g.over_concurrency for n, g in guards},
            rate_limited={
                **{("outbound", n): g.rate_limited for n, g in guards},
                **(
                    {("inbound", self.config.service.name): inbound_limiter.refused}
                    if inbound_limiter is not None
                    else {}
                ),
            },
            ejections={n: g.outlier.ejections for n, g in guards},
            faults_injected={
                (n, kind): count for n, g in guards for kind, count in g.faults.items()
            },
            log_lines_dropped=self.access_log.dropped,
        )

    def apply_config(self, new: Config) -> None:
        """Swap in a reloaded config (its reloadable sections): synchronous, so atomic.

        A request reads its policy, rules and limits once, when it is routed,
        so requests in flight finish on the snapshot they started with.
        """
        old, self.config = self.config, new
        if (old.policies, old.routes, old.egress) != (new.policies, new.routes, new.egress):
            self.outbound.reconfigure(new.policies, new.routes, new.egress)
        if old.inbound != new.inbound:
            self.inbound.limiter = _limiter(new, trio.current_time())
        if old.log_level != new.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        log.info("configuration reloaded")

    def __repr__(self) -> str:
        return (
            f"<Sidecar {self.config.service.name} token={self.instance_token} bound={self.bound}>"
        )

    def via_token(self, direction: str) -> bytes:
        return f"trimesh-{self.instance_token}-{direction[:3]}".encode()

    def shutdown(self) -> None:
        """Begin a graceful drain (idempotent)."""
        self._stop.set()

    def _context(self, router: Router, pool: UpstreamPool) -> ListenerContext:
        c = self.config
        policy = Policy(
            connect_timeout=c.upstream.connect_timeout,
            response_timeout=c.upstream.response_timeout,
            body_idle_timeout=c.limits.body_idle_timeout,
            via_token=router.via_token,
            max_response_head=c.limits.max_response_header_bytes,
            allow_underscores=c.limits.allow_underscores,
            draining=lambda: self.drain.draining,
        )
        ctx = ListenerContext(
            router=router,
            limits=c.limits,
            policy=policy,
            pool=pool,
            access_log=self.access_log,
            drain=self.drain,
            observers=self.observers,
            tracer=self.tracer,
        )
        self._contexts[router.direction] = ctx
        return ctx

    async def run(
        self,
        *,
        signals: bool = False,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()` (or SIGTERM/SIGINT when `signals`), then drain."""
        c = self.config
        outbound, inbound = self.outbound, self.inbound
        try:
            async with trio.open_nursery() as root:
                if signals:
                    root.start_soon(self._watch_signals, root.cancel_scope)
                for pool in self.pools:
                    root.start_soon(pool.reaper)
                if self.access_log.enabled:
                    root.start_soon(self.access_log.flusher)
                exporter = None if self.tracer is None else self.tracer.exporter
                if exporter is not None:
                    root.start_soon(exporter.run, name="trace-exporter")
                if self.reload_source is not None:
                    self.config_watcher = ConfigWatcher(
                        self.reload_source,
                        c,
                        self.apply_config,
                        path=self.config_path,
                        centre=ConfigCentre.for_registry(c.registry)
                        if c.registry.type == "etcd"
                        else None,
                        signals=signals,
                    )
                    await root.start(self.config_watcher.run)
                await root.start(self.discovery.run)
                admin = await root.start(
                    run_admin,
                    c.listen.admin,
                    self.admin_routes(),
                    AdminSettings(
                        header_timeout=c.limits.header_timeout,
                        write_timeout=c.limits.header_timeout,
                        max_connections=c.limits.admin_max_connections,
                        via_tokens=(self.via_token("outbound"), self.via_token("inbound")),
                        token=c.listen.admin_token,
                        token_for_all=not is_loopback(c.listen.admin[0]),
                    ),
                )
                async with trio.open_nursery() as handlers:
                    async with trio.open_nursery() as listeners:
                        out_addr = await listeners.start(
                            self._serve,
                            c.listen.outbound,
                            handlers,
                            self._context(outbound, self.pools[0]),
                        )
                        in_addr = await listeners.start(
                            self._serve,
                            c.listen.inbound,
                            handlers,
                            self._context(inbound, self.pools[1]),
                        )
                        self.bound = Bound(out_addr, in_addr, admin)
                        outbound.own_addresses = _own_addresses(self.bound)
                        me = registration_for(c, in_addr)
                        # Registry rows may never point us at our own ports or link-local.
                        own = (out_addr, admin)
                        self.cache.set_filter(instance_filter(c.registry, own, advertised=me.host))
                        self.discovery.register_self(me)
                        target = health_target(c.app)
                        if c.app.health is not None and target is not None:
                            root.start_soon(health_loop, c.app.health, *target, self.discovery)
                        log.info(
                            "trimesh %s: outbound %s:%d, inbound %s:%d, admin %s:%d",
                            c.service.name,
                            *out_addr,
                            *in_addr,
                            *admin,
                        )
                        # Everything built at startup (modules, config, metric families)
                        # lives as long as the process: keep the collector from walking it
                        # again and again, a cost every request was paying.
                        gc.freeze()
                        task_status.started(self.bound)
                        await self._stop.wait()
                        await self._drain_delay(root)
                        listeners.cancel_scope.cancel()
                    log.info(
                        "draining: listeners closed, %g s for in-flight requests",
                        c.listen.drain_timeout,
                    )
                    handlers.cancel_scope.deadline = trio.current_time() + c.listen.drain_timeout
                if exporter is not None:
                    # What is left of the drain deadline; spans not sent by then are counted.
                    with trio.CancelScope(deadline=handlers.cancel_scope.deadline):
                        await exporter.flush()
                root.cancel_scope.cancel()
        finally:
            with trio.move_on_after(1, shield=True):
                await self.access_log.aclose()
            for pool in self.pools:
                pool.close_all()
                await pool.reap()
            with trio.move_on_after(2, shield=True):
                await self.registry.aclose()
        log.info("stopped")

    async def _drain_delay(self, root: trio.Nursery) -> None:
        """Deregister at once; keep accepting (answering `Connection: close`) a while.

        The app gets SIGTERM at the same moment and may still make its last
        calls; consumers may still race our deregistration.
        """
        self.drain.begin()
        root.start_soon(self._deregister)
        delay = self.config.listen.drain_delay
        log.info("draining: deregistering; still accepting for %g s", delay)
        await trio.sleep(delay)

    async def _deregister(self) -> None:
        with trio.move_on_after(DEREGISTER_TIMEOUT):
            await self.discovery.deregister()

    async def _serve(
        self,
        addr: Address,
        handlers: trio.Nursery,
        ctx: ListenerContext,
        *,
        task_status: trio.TaskStatus[Address],
    ) -> None:
        listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
        limit = ctx.limits.max_connections
        active = 0

        async def handle(stream: trio.SocketStream) -> None:
            nonlocal active
            if active >= limit:
                key = (ctx.router.direction, "max-connections")
                self.refused[key] = self.refused.get(key, 0) + 1
                await _refuse(stream)
                return
            active += 1
            try:
                await serve_connection(stream, ctx)
            finally:
                active -= 1

        await _serve_listeners(
            handle,
            listeners,
            handlers,
            partial(task_status.started, hs.local_address(listeners[0])),
        )

    def admin_routes(self) -> AdminRoutes:
        routes = AdminRoutes()
        routes.add("/health", lambda: (200, {"status": "alive"}))
        routes.add("/ready", self._ready)
        routes.add("/v1/mesher/health", self._mesher_health)
        routes.add("/v1/mesher/version", lambda: (200, version_body()))
        routes.add("/v1/registry", lambda: (200, self.discovery.state()))
        routes.add_prefix("/v1/mesher/routeRule/", self._route_rules)
        routes.add("/v1/policies", self._policies)
        routes.add("/v1/config", self._config_view)
        routes.add("/v1/connections", self._connections)
        routes.add("/v1/services", self._services)
        routes.add("/v1/overview", self._overview)
        routes.add_async("/metrics", self._metrics)
        routes.add_async("/v1/mesher/metrics", self._metrics)
        routes.add("/debug/tasks", self._tasks)
        routes.add_request("/v1/log-level", self._log_level, (b"GET", b"PUT", b"POST"))
        for path in ("/", "/dashboard.js", "/dashboard.css"):
            routes.add(path, partial(_dashboard_asset, path))
        return routes

    def _config_view(self) -> tuple[int, object]:
        """The effective configuration (secrets redacted) and how live reload is doing."""
        watcher = self.config_watcher
        reload = {"enabled": False} if watcher is None else {"enabled": True, **watcher.status()}
        return 200, {"config": jsonable(self.config), "reload": reload}

    def _connections(self) -> tuple[int, object]:
        """Open downstream connections per listener, and upstream ones per endpoint."""
        now = trio.current_time()
        down = {
            name: [
                {
                    "id": conn_id,
                    "peer": info.peer,
                    "age": round(now - info.opened, 3),
                    "requests": info.requests,
                    "state": info.state,
                }
                for conn_id, info in sorted(ctx.conns.items())
            ]
            for name, ctx in self._contexts.items()
        }
        up = {name: self.pools[i].view(now) for i, name in enumerate(("outbound", "inbound"))}
        return 200, {"downstream": down, "upstream": up}

    async def _metrics(self, request: AdminRequest) -> tuple[int, object]:
        """Prometheus text, or OpenMetrics when the scraper's Accept asks for it."""
        accept = request.headers.get(b"accept", b"").decode("latin-1") or None
        with trio.move_on_after(self.config.limits.header_timeout):
            content_type, body = await self.metrics.render_off_loop(accept)
            return 200, Raw(content_type, body)
        return 503, {"error": "rendering the metrics took too long"}

    def _services(self) -> tuple[int, object]:
        return 200, self._service_views()

    def _service_views(self) -> dict[str, dict[str, object]]:
        """Every service this sidecar knows: instances, and the last minute's figures."""
        live = self.live.view(time.monotonic())
        known = self.cache.snapshot()
        names = sorted(set(known) | set(live) - {"unknown"})
        return {
            name: {
                "instances": [_instance(i) for i in known.get(name, ())],
                "live": live.get(name),
            }
            for name in names
        }

    def _overview(self) -> tuple[int, object]:
        """Everything the dashboard shows, in one answer (see docs/dashboard.md)."""
        now = trio.current_time()
        services = self._service_views()
        for name, state in self.outbound.services.items():
            entry = services.setdefault(name, {"instances": [], "live": None})
            entry["policies"] = state.guards.snapshot(now)
        bound = self.bound
        return 200, {
            "identity": {
                "service": self.config.service.name,
                "version": self.config.service.version,
                "app": self.config.service.app,
                "instance": self.discovery.instance_id or self.instance_token,
                "listeners": None
                if bound is None
                else {k: f"{h}:{p}" for k, (h, p) in attrs.asdict(bound).items()},
                "registry": {
                    "type": self.config.registry.type,
                    "registered": self.discovery.registered,
                    "error": self.discovery.last_error,
                },
                "draining": self.drain.draining,
            },
            "services": services,
            "errors": self.live.recent_errors(50),
        }

    def _tasks(self) -> tuple[int, object]:
        tree = task_tree()
        return 200, {"tasks": count_tasks(tree), "tree": tree}

    def _log_level(self, request: AdminRequest) -> tuple[int, object]:
        """GET the program's log level, or PUT/POST `{"level": "debug"}` (or `?level=debug`)."""
        root = logging.getLogger()
        if request.method in (b"GET", b"HEAD"):
            return 200, {"level": logging.getLevelName(root.level).lower()}
        level = _requested_level(request)
        if level not in LOG_LEVELS:
            return 400, {"error": f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"}
        root.setLevel(level.upper())
        log.warning("log level set to %s through the admin API", level)
        return 200, {"level": level}

    def _policies(self) -> tuple[int, object]:
        """Breaker, ejection, bulkhead and rate-limit state per target service, and inbound's."""
        now = trio.current_time()
        return 200, {
            "services": {
                name: state.guards.snapshot(now)
                for name, state in sorted(self.outbound.services.items())
            },
            "inbound": {"rate_limit": _limiter_view(self.inbound.limiter)},
            "egress": self.outbound.egress.view(),
        }

    def _route_rules(self, service: str) -> tuple[int, object]:
        """Mesher's `GET /v1/mesher/routeRule/{service}`: the rules in force, 404 if none."""
        rules = self.config.routes.get(service)
        if not rules:
            return 404, {"error": f"no route rule for service {service!r}"}
        return 200, [rule_view(rule) for rule in rules]

    def _ready(self) -> tuple[int, object]:
        """Ready = listeners bound, registered (others can find us), not draining."""
        registered = self.discovery.lease_current
        ready = self.bound is not None and registered and not self.drain.draining
        body: dict[str, object] = {
            "ready": ready,
            "listeners": attrs.asdict(self.bound) if self.bound else None,
            "registered": registered,
            "registry": self.config.registry.type,
            "draining": self.drain.draining,
        }
        if self.discovery.last_error and not registered:
            body["error"] = self.discovery.last_error
        return (200 if ready else 503), body

    def _mesher_health(self) -> tuple[int, object]:
        ok = self.bound is not None and not self.drain.draining
        body: dict[str, object] = {
            "serviceName": self.config.service.name,
            "version": self.config.service.version,
            "status": "green" if ok else "red",
            "connectedConfigCenterClient": False,
            "connectedMonitoring": False,
        }
        if not ok:
            body["error"] = "draining" if self.drain.draining else "listeners not bound"
        return (200 if ok else 503), body

    async def _watch_signals(self, root: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop.is_set():
                    log.warning("second signal %s: stopping now", signal.Signals(signum).name)
                    root.cancel()
                    return
                log.info("%s: graceful shutdown", signal.Signals(signum).name)
                self.shutdown()


async def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 and close without RST: half-close, then drain briefly."""
    try:
        await stream.send_all(_OVERLOADED)
        await stream.send_eof()
        with trio.move_on_after(1):
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    handlers: trio.Nursery,
    started: Callable[[], None],
) -> None:
    """Accept on every listener, spawning handlers into the separate handler nursery."""
    async with trio.open_nursery() as accept:
        for listener in listeners:
            accept.start_soon(_accept_loop, listener, handler, handlers)
        started()


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    handlers: trio.Nursery,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning.
                log.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            # Named for `GET /debug/tasks`: which peer each connection task serves.
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:
                host, port = "?", 0
            handlers.start_soon(handler, stream, name=f"connection from {host}:{port}")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_CIRCUIT = {"closed": 0, "half-open": 1, "open": 2}


def _instance(i: Instance) -> dict[str, object]:
    return {
        "id": i.instance_id,
        "address": f"{i.host}:{i.port}",
        "version": i.version,
        "status": i.status,
        "lease_age": None if i.lease_age is None else round(i.lease_age, 3),
    }


def _dashboard_asset(path: str) -> tuple[int, object]:
    found = dashboard.asset(path)
    if found is None:
        return 404, {"error": f"no dashboard file {path}"}
    return 200, Raw(*found)


def _requested_level(request: AdminRequest) -> str | None:
    for part in request.query.split("&"):
        name, _, value = part.partition("=")
        if name == "level":
            return value.lower()
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return None
    level = body.get("level") if isinstance(body, dict) else body
    return level.lower() if isinstance(level, str) else None


def _limiter(config: Config, now: float) -> InboundLimiter | None:
    """`inbound.rate_limit`'s buckets (they start full), or None when it sets no limit."""
    limits = config.inbound.rate_limit
    if limits.overall is None and not limits.per_source:
        return None
    return InboundLimiter(limits, now)


def _limiter_view(limiter: InboundLimiter | None) -> dict[str, object] | None:
    if limiter is None:
        return None
    overall = limiter.limits.overall

    def view(limit: RateLimit | None) -> dict[str, float] | None:
        return None if limit is None else {"qps": limit.qps, "burst": limit.burst}

    return {
        "overall": view(overall),
        "per_source": {k: view(v) for k, v in sorted(limiter.limits.per_source.items())},
        "refused": limiter.refused,
    }


def _own_addresses(bound: Bound) -> frozenset[tuple[str, int]]:
    """Our listeners as egress could reach them (a wildcard bind is reachable on loopback)."""
    out = set()
    for host, port in (bound.outbound, bound.inbound, bound.admin):
        out.add((host, port))
        if host in ("0.0.0.0", "::", ""):
            out.update({("127.0.0.1", port), ("::1", port)})
    return frozenset(out)


def source_tags(service: ServiceConfig) -> dict[str, str]:
    """Our own tags, as a route rule's `source_tags` sees them: version, app, metadata."""
    return {**service.metadata, "version": service.version, "app": service.app}


def rule_view(rule: RouteRule) -> dict[str, object]:
    """A rule as configured (Mesher's routeRule document shape)."""
    return dict(rule.raw)
