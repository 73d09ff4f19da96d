"""Tests of local app health (`trimesh.discovery.health`) against real apps on loopback.

Real sockets, so the real clock (autojump would fire the probe timeout while
a connect is in flight); tests wait on recorded transitions, never on sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import trio

from tests.servers import Seen, Upstream
from trimesh.config.model import AppConfig, HealthConfig
from trimesh.discovery.base import Instance, Registration, ServiceKey, Status
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.health import check_app, health_loop, health_target
from trimesh.discovery.local import LocalRegistry
from trimesh.discovery.session import Discovery

TCP = HealthConfig(protocol="tcp", interval=0.02, timeout=2.0)
HTTP = HealthConfig(protocol="http", path="/healthz", interval=0.02, timeout=2.0)


class TcpApp:
    """A TCP app the test can stop (listener closed) and start again on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        self._stopped = trio.Event()
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                await trio.serve_listeners(trio.aclose_forcefully, listeners)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()


class Recorder:
    """A `StatusTarget` that remembers every status it was given."""

    def __init__(self) -> None:
        self.statuses: list[Status] = []
        self._changed = trio.Event()

    async def set_status(self, status: Status) -> None:
        self.statuses.append(status)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[Status]:
        while len(self.statuses) < count:
            await self._changed.wait()
        return self.statuses


class Toggle:
    """An HTTP responder whose status the test switches."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hang = False

    async def __call__(
        self, seen: Seen, up: Upstream
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self.hang:
            await trio.sleep_forever()
        return self.status, [(b"content-type", b"text/plain")], b"ok"


class ObservedCache(InstanceCache):
    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def update(self, service: str, instances: Iterable[Instance]) -> None:
        super().update(service, instances)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[InstanceCache], object]) -> None:
        while not predicate(self):
            await self._changed.wait()


def test_health_target_resolves_the_named_port() -> None:
    app = AppConfig(host="10.1.1.1", ports={"rest": 8080, "admin": 9090}, health=TCP)
    assert health_target(app) == ("10.1.1.1", 8080)
    assert health_target(AppConfig(ports={"rest": 8080})) is None


async def test_tcp_probe(nursery: trio.Nursery) -> None:
    app = TcpApp()
    await app.start(nursery)
    with trio.fail_after(10):
        assert await check_app(TCP, "127.0.0.1", app.port)
        await app.stop()
        assert not await check_app(TCP, "127.0.0.1", app.port)


async def test_http_probe_compares_the_status(nursery: trio.Nursery) -> None:
    toggle = Toggle(200)
    app = Upstream(toggle)
    await nursery.start(app.serve)
    with trio.fail_after(10):
        assert await check_app(HTTP, "127.0.0.1", app.port)
        assert app.seen[-1].method == b"GET" and app.seen[-1].target == b"/healthz"
        toggle.status = 503
        assert not await check_app(HTTP, "127.0.0.1", app.port)
        toggle.status = 202
        assert await check_app(
            HealthConfig(protocol="http", expect_status=202), "127.0.0.1", app.port
        )


async def test_http_probe_of_a_closed_port_is_false() -> None:
    app = TcpApp()
    async with trio.open_nursery() as nursery:
        await app.start(nursery)
        await app.stop()
    with trio.fail_after(10):
        assert not await check_app(HTTP, "127.0.0.1", app.port)


async def test_loop_reports_first_result_then_only_changes_tcp(nursery: trio.Nursery) -> None:
    app = TcpApp()
    await app.start(nursery)
    recorder = Recorder()
    with trio.fail_after(10):
        nursery.start_soon(health_loop, TCP, "127.0.0.1", app.port, recorder)
        assert await recorder.wait_for(1) == ["UP"]
        await app.stop()
        assert await recorder.wait_for(2) == ["UP", "DOWN"]
        await app.start(nursery)
        assert await recorder.wait_for(3) == ["UP", "DOWN", "UP"]


async def test_loop_http_status_and_timeout(nursery: trio.Nursery) -> None:
    toggle = Toggle(503)
    app = Upstream(toggle)
    await nursery.start(app.serve)
    recorder = Recorder()
    cfg = HealthConfig(protocol="http", path="/healthz", interval=0.02, timeout=0.2)
    with trio.fail_after(10):
        nursery.start_soon(health_loop, cfg, "127.0.0.1", app.port, recorder)
        assert await recorder.wait_for(1) == ["DOWN"]  # the first result is always reported
        toggle.status = 200
        assert await recorder.wait_for(2) == ["DOWN", "UP"]
        toggle.hang = True  # accepts, never answers: the probe times out
        assert await recorder.wait_for(3) == ["DOWN", "UP", "DOWN"]


async def test_down_app_disappears_from_a_consumers_cache(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    app = TcpApp()
    await app.start(nursery)
    path = tmp_path / "registry.db"
    me = Registration("orders", "127.0.0.1", 18080, heartbeat_interval=0.05, lease_ttl=5.0)
    async with (
        LocalRegistry(path, poll_interval=0.01) as provider_registry,
        LocalRegistry(path, poll_interval=0.01) as consumer_registry,
    ):
        provider = Discovery(provider_registry, InstanceCache(), me, app="default")
        cache = ObservedCache()
        consumer = Discovery(consumer_registry, cache, None, app="default")
        with trio.fail_after(20):
            async with trio.open_nursery() as inner:
                await inner.start(provider.run)
                await inner.start(consumer.run)
                inner.start_soon(health_loop, TCP, "127.0.0.1", app.port, provider)
                consumer.ensure_watched("orders")

                def statuses(c: InstanceCache) -> list[str]:
                    return [i.status for i in c.all("orders")]

                await cache.wait_for(lambda c: statuses(c) == ["UP"])
                assert len(cache.lookup("orders") or ()) == 1

                await app.stop()
                await cache.wait_for(lambda c: statuses(c) == ["DOWN"])
                assert cache.lookup("orders") == ()  # known, but nothing to route to
                assert [
                    i.status for i in await consumer_registry.instances(ServiceKey("orders"))
                ] == ["DOWN"]

                await app.start(nursery)
                await cache.wait_for(lambda c: statuses(c) == ["UP"])
                assert [i.instance_id for i in cache.lookup("orders") or ()] == [
                    provider.instance_id
                ]
                inner.cancel_scope.cancel()
    assert "marking our instance DOWN" in caplog.text
