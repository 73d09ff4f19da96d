"""A registry that accepts connections and never answers, then heals; watch streams that go quiet.

The registries are real (etcd from `tests.etcd_server`, the Service Center
double) behind a `SwitchProxy`, so these tests run on the real clock with
deadlines of a fraction of a second and wait by polling under a guard. The
etcd watchdog's timing is tested on trio's mock clock with a scripted gateway.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tests.discovery.watcher import Watcher
from tests.etcd_server import EtcdServer, SwitchProxy
from tests.sc_double import ServiceCenterDouble
from trimesh.discovery import servicecomb
from trimesh.discovery._etcd_api import JsonObject
from trimesh.discovery.base import Instance, Registration, ServiceKey
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.etcd import EtcdRegistry
from trimesh.discovery.servicecomb import ServiceCombRegistry
from trimesh.discovery.session import Backoff, Discovery

GUARD = 15.0
POLL = 0.02
ORDERS = ServiceKey("orders")
# A lease of 2 s (etcd's minimum is about that), heartbeats every 0.2 s, and
# 0.3 s for any call: the heartbeat deadline is min(0.3, 0.2, 2 / 3) = 0.2 s.
ME = Registration("orders", "127.0.0.1", 8080, heartbeat_interval=0.2, lease_ttl=2.0)
CALL_TIMEOUT = 0.3


def session(registry: Any, me: Registration, cache: InstanceCache | None = None) -> Discovery:
    """A session with the test deadlines and a short backoff, so healing shows quickly."""
    return Discovery(
        registry,
        cache or InstanceCache(),
        me,
        app="default",
        call_timeout=CALL_TIMEOUT,
        backoff=lambda: Backoff(initial=0.05, cap=0.4),
    )


async def until(check: Callable[[], object], what: str) -> None:
    """Poll `check` until it is truthy (the registry changes state on its own clock)."""
    try:
        with trio.fail_after(GUARD):
            while not check():  # noqa: ASYNC110 - a real registry; no event to wait on
                await trio.sleep(POLL)
    except trio.TooSlowError:
        pytest.fail(f"timed out waiting for {what}")


def registration(discovery: Discovery) -> dict[str, Any]:
    state: dict[str, Any] = discovery.state()["registration"]
    return state


async def hang_then_heal(discovery: Discovery, proxy: SwitchProxy) -> str | None:
    """Blackhole the registry until our registration is lost and reported; heal; wait until back.

    Returns the error `state()` showed while the registry hung.
    """
    await until(lambda: discovery.lease_current, "the first registration")
    proxy.blackhole()
    await until(lambda: registration(discovery)["last_error"], "the hang to be reported")
    error = registration(discovery)["last_error"]
    await until(lambda: not registration(discovery)["registered"], "the lease to count as lost")
    assert not registration(discovery)["lease_current"]
    proxy.forward()
    await until(
        lambda: discovery.lease_current and registration(discovery)["last_error"] is None,
        "registered again after the registry healed",
    )
    return error


# ---------------------------------------------------------------- etcd


async def test_etcd_registration_survives_a_hung_etcd(
    etcd: EtcdServer, nursery: trio.Nursery
) -> None:
    proxy = SwitchProxy(etcd.endpoint)
    await nursery.start(proxy.serve)
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    registry = EtcdRegistry([proxy.endpoint], prefix=prefix, call_timeout=CALL_TIMEOUT)
    discovery = session(registry, ME)
    await nursery.start(discovery.run)

    error = await hang_then_heal(discovery, proxy)
    assert error == "keep registered: heartbeat: no answer within 0.2 s"
    # The instance etcd lists is the one we hold now, under a live lease.
    direct = EtcdRegistry([etcd.endpoint], prefix=prefix)
    with trio.fail_after(GUARD):
        listed = await direct.instances(ORDERS)
    assert [i.instance_id for i in listed] == [discovery.instance_id]


async def test_etcd_frozen_watch_stream_is_reopened(
    etcd: EtcdServer, nursery: trio.Nursery
) -> None:
    proxy = SwitchProxy(etcd.endpoint)
    await nursery.start(proxy.serve)
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    writer = EtcdRegistry([etcd.endpoint], prefix=prefix)
    watcher = EtcdRegistry([proxy.endpoint], prefix=prefix, watch_interval=0.2)
    snapshots = Watcher()
    with trio.fail_after(GUARD):
        nursery.start_soon(watcher.watch, ORDERS, snapshots)
        await snapshots.wait_for(lambda s: s == [])
        await writer.register(attrs.evolve(ME, port=8081))
        await snapshots.wait_for(lambda s: [i.port for i in s] == [8081])
        proxy.freeze()  # the stream stays open and says nothing more
        await writer.register(attrs.evolve(ME, port=8082))
        await snapshots.wait_for(lambda s: sorted(i.port for i in s) == [8081, 8082])
    assert proxy.accepted >= 3  # range, the frozen stream, the reopened one


@attrs.define
class ScriptedGateway:
    """Stands in for `EtcdGateway`: a range read answers revision 5; the test feeds each stream."""

    opened: list[tuple[JsonObject, trio.MemorySendChannel[JsonObject]]] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    async def call(self, path: str, body: JsonObject) -> JsonObject:
        return {"header": {"revision": "5"}}

    @asynccontextmanager
    async def stream(self, path: str, body: JsonObject) -> AsyncIterator[_Results]:
        send, receive = trio.open_memory_channel[JsonObject](16)
        self.opened.append((body, send))
        self.changed.set()
        self.changed = trio.Event()
        yield _Results(receive)

    async def streams(self, count: int) -> None:
        while len(self.opened) < count:
            await self.changed.wait()


@attrs.define
class _Results:
    receive_channel: trio.MemoryReceiveChannel[JsonObject]

    async def receive(self) -> JsonObject | None:
        try:
            return await self.receive_channel.receive()
        except trio.EndOfChannel:
            return None


async def test_etcd_watchdog_rearms_on_progress_and_reopens_after_silence(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    registry = EtcdRegistry([("127.0.0.1", 1)], watch_interval=60.0)
    gateway = ScriptedGateway()
    registry._api = gateway  # type: ignore[assignment]
    nursery.start_soon(registry.watch, ORDERS, Watcher())
    await gateway.streams(1)
    body, stream = gateway.opened[0]
    assert body["create_request"]["progress_notify"] is True
    assert body["create_request"]["start_revision"] == "6"
    start = trio.current_time()
    await stream.send({"created": True, "header": {"revision": "5"}})
    for revision in range(6, 16):  # a progress notification every 100 s: alive, if quiet
        await trio.sleep(100)
        await stream.send({"header": {"revision": str(revision)}})
    await trio.testing.wait_all_tasks_blocked()
    assert len(gateway.opened) == 1
    await gateway.streams(2)  # then silence: reopened 2 x 60 s after the last sign of life
    assert trio.current_time() - start == pytest.approx(1000 + 120)
    assert gateway.opened[1][0]["create_request"]["start_revision"] == "16"


# ---------------------------------------------------------------- Service Center


@pytest.fixture
async def sc(nursery: trio.Nursery) -> tuple[ServiceCenterDouble, SwitchProxy]:
    double = ServiceCenterDouble()
    port = await nursery.start(double.serve)
    proxy = SwitchProxy(("127.0.0.1", port))
    await nursery.start(proxy.serve)
    return double, proxy


async def test_servicecomb_registration_survives_a_hung_service_center(
    sc: tuple[ServiceCenterDouble, SwitchProxy], nursery: trio.Nursery
) -> None:
    double, proxy = sc
    registry = ServiceCombRegistry([proxy.endpoint], call_timeout=CALL_TIMEOUT)
    discovery = session(registry, ME)
    await nursery.start(discovery.run)

    error = await hang_then_heal(discovery, proxy)
    assert error == "keep registered: heartbeat: no answer within 0.2 s"
    assert [i["instanceId"] for i in double.instances_of("orders")] == [
        (discovery.instance_id or "").split("/")[1]
    ]


async def test_servicecomb_frozen_watch_websocket_is_replaced(
    sc: tuple[ServiceCenterDouble, SwitchProxy],
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    double, proxy = sc
    monkeypatch.setattr(servicecomb, "POLL_INTERVAL", 0.2)
    monkeypatch.setattr(servicecomb, "RESYNC_INTERVAL", 0.2)
    provider = ServiceCombRegistry([proxy.endpoint])
    consumer = ServiceCombRegistry([proxy.endpoint], call_timeout=CALL_TIMEOUT)
    me = Registration("web", "127.0.0.1", 9090)
    cache = InstanceCache()
    discovery = session(consumer, me, cache)
    with trio.fail_after(GUARD):
        first = await provider.register(ME)
        await nursery.start(discovery.run)
        discovery.ensure_watched("orders")
        await until(lambda: double.watches_opened == 1, "the watch websocket")
        proxy.freeze()
        await until(lambda: double.watches_opened == 2, "a new websocket after the ping failed")
        second = await provider.register(attrs.evolve(ME, port=8081))

        def both(c: InstanceCache) -> bool:
            found: tuple[Instance, ...] = c.lookup("orders") or ()
            return {i.instance_id for i in found} == {first, second}

        await until(lambda: both(cache), "the new instance through the new websocket")
    assert "watch: ping: no answer within 0.3 s" in caplog.text
