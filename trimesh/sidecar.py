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

import logging
import secrets
import signal
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from trimesh.admin import AdminRoutes, serve_admin, version_body
from trimesh.config.model import Address, Config
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.factory import build_registry, registration_for
from trimesh.discovery.health import health_loop, health_target
from trimesh.discovery.session import Discovery
from trimesh.discovery.static import StaticRegistry
from trimesh.http.pool import UpstreamPool
from trimesh.mesh.connection import Drain, ListenerContext, serve_connection
from trimesh.mesh.exchange import ExchangeSettings
from trimesh.mesh.inbound import InboundRouter
from trimesh.mesh.outbound import OutboundRouter
from trimesh.mesh.plan import Router
from trimesh.observe.accesslog import AccessLog

log = logging.getLogger("trimesh.sidecar")
# How long graceful shutdown waits for the registry to drop our instance.
DEREGISTER_TIMEOUT = 5.0
_OVERLOADED_BODY = b"trimesh: overloaded: too many connections on this listener\n"
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"x-trimesh-error: overloaded\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)


@attrs.frozen
class Bound:
    """Where the listeners actually bound (port 0 resolved)."""

    outbound: Address
    inbound: Address
    admin: Address


class Sidecar:
    """Owns every long-lived object; `run` is the root nursery."""

    def __init__(self, config: Config, *, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.instance_token = secrets.token_hex(4)
        self.cache = InstanceCache()
        self.registry = build_registry(config.registry, app=config.service.app)
        if isinstance(self.registry, StaticRegistry):
            for name in config.registry.services:
                self.cache.update(name, self.registry.snapshot(name))
        self.discovery = Discovery(self.registry, self.cache, None, app=config.service.app)
        self.access_log = access_log or AccessLog.open(config.observe.access_log)
        up = config.upstream
        self.pools = [
            UpstreamPool(max_idle=up.pool_max_idle, idle_timeout=up.pool_idle_timeout)
            for _ in range(2)
        ]
        self.drain = Drain()
        self.bound: Bound | None = None
        self._stop = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<Sidecar {self.config.service.name} token={self.instance_token} bound={self.bound}>"
        )

    def via_token(self, direction: str) -> bytes:
        return f"trimesh-{self.instance_token}-{direction[:3]}".encode()

    def shutdown(self) -> None:
        """Begin a graceful drain (idempotent)."""
        self._stop.set()

    def _context(self, router: Router, pool: UpstreamPool, outbound: bool) -> ListenerContext:
        c = self.config
        settings = ExchangeSettings(
            connect_timeout=c.upstream.connect_timeout,
            response_timeout=c.upstream.response_timeout,
            body_idle_timeout=c.limits.body_idle_timeout,
            via_token=router.via_token,
            draining=lambda: self.drain.draining,
        )
        return ListenerContext(
            router=router,
            limits=c.limits,
            exchange=settings,
            pool=pool,
            access_log=self.access_log,
            drain=self.drain,
            cache=self.cache if outbound else None,
            discovery=self.discovery if outbound else None,
        )

    async def run(
        self,
        *,
        signals: bool = False,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()` (or SIGTERM/SIGINT when `signals`), then drain."""
        c = self.config
        outbound = OutboundRouter(
            self.cache, via_token=self.via_token("outbound"), source_service=c.service.name
        )
        inbound = InboundRouter(c.app, via_token=self.via_token("inbound"), service=c.service.name)
        try:
            async with trio.open_nursery() as root:
                if signals:
                    root.start_soon(self._watch_signals, root.cancel_scope)
                for pool in self.pools:
                    root.start_soon(pool.reaper)
                if self.access_log.enabled:
                    root.start_soon(self.access_log.flusher)
                await root.start(self.discovery.run)
                admin = await root.start(self._serve_admin, c.listen.admin)
                async with trio.open_nursery() as handlers:
                    async with trio.open_nursery() as listeners:
                        out_addr = await listeners.start(
                            self._serve,
                            c.listen.outbound,
                            handlers,
                            self._context(outbound, self.pools[0], True),
                        )
                        in_addr = await listeners.start(
                            self._serve,
                            c.listen.inbound,
                            handlers,
                            self._context(inbound, self.pools[1], False),
                        )
                        self.bound = Bound(out_addr, in_addr, admin)
                        self.discovery.register_self(registration_for(c, in_addr))
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
                        task_status.started(self.bound)
                        await self._stop.wait()
                        with trio.move_on_after(DEREGISTER_TIMEOUT):
                            await self.discovery.deregister()
                        listeners.cancel_scope.cancel()
                    log.info(
                        "draining: listeners closed, %d s for in-flight requests",
                        c.listen.drain_timeout,
                    )
                    self.drain.begin()
                    handlers.cancel_scope.deadline = trio.current_time() + c.listen.drain_timeout
                root.cancel_scope.cancel()
        finally:
            self.access_log.flush()
            for pool in self.pools:
                pool.close_all()
                await pool.reap()
            with trio.move_on_after(2, shield=True):
                await self.registry.aclose()
        log.info("stopped")

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
                await _refuse(stream)
                return
            active += 1
            try:
                await serve_connection(stream, ctx)
            finally:
                active -= 1

        bound = listeners[0].socket.getsockname()
        await _serve_listeners(
            handle, listeners, handlers, partial(task_status.started, (bound[0], bound[1]))
        )

    async def _serve_admin(self, addr: Address, *, task_status: trio.TaskStatus[Address]) -> None:
        routes = self.admin_routes()
        listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
        bound = listeners[0].socket.getsockname()
        task_status.started((bound[0], bound[1]))
        header_timeout = self.config.limits.header_timeout
        await trio.serve_listeners(
            partial(serve_admin, routes=routes, header_timeout=header_timeout), listeners
        )

    def admin_routes(self) -> AdminRoutes:
        routes = AdminRoutes()
        routes.add("/health", lambda: (200, {"status": "alive"}))
        routes.add("/ready", self._ready)
        routes.add("/v1/mesher/health", self._mesher_health)
        routes.add("/v1/mesher/version", lambda: (200, version_body()))
        routes.add("/v1/registry", lambda: (200, self.discovery.state()))
        return routes

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
            handlers.start_soon(handler, stream)
