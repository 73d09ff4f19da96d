"""Tests of the Service Center registry (`trimesh.discovery.servicecomb`) against `sc_double`."""

from __future__ import annotations

import json
import logging
import re
import socket
from typing import Any

import attrs
import pytest
import trio

from tests.discovery.watcher import Watcher
from tests.sc_double import Seen, ServiceCenterDouble
from trimesh.discovery import servicecomb
from trimesh.discovery._servicecomb_wire import (
    _Watch,
    error_of,
    field,
    instance_body,
    instance_from_json,
    instances_from,
    parse_endpoint,
    split_id,
)
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    Registration,
    RegistryUnavailable,
    ServiceKey,
)
from trimesh.discovery.servicecomb import ServiceCenterError, ServiceCombRegistry
from trimesh.http.client import Response, request

ORDERS = ServiceKey("orders")
TIMEOUT = 5


@attrs.define
class FakeClock:
    """The double's lease clock, moved by hand."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class SC:
    double: ServiceCenterDouble
    port: int

    def registry(self, **kwargs: Any) -> ServiceCombRegistry:
        return ServiceCombRegistry([("127.0.0.1", self.port)], **kwargs)

    async def call(self, method: str, path: str, **kwargs: Any) -> Response:
        return await request(method, "127.0.0.1", self.port, path, **kwargs)

    def seen(self, method: str, suffix: str) -> list[Any]:
        return [s for s in self.double.log if s.method == method and s.path.endswith(suffix)]


def orders(port: int = 8080, **changes: Any) -> Registration:
    return attrs.evolve(Registration("orders", "127.0.0.1", port), **changes)


def web(**changes: Any) -> Registration:
    return attrs.evolve(Registration("web", "127.0.0.1", 9090), **changes)


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sc(nursery: trio.Nursery, clock: FakeClock) -> SC:
    double = ServiceCenterDouble(clock=clock)
    return SC(double, await nursery.start(double.serve))


# -- the sans-IO pieces ----------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("rest://10.0.0.1:8080?sslEnabled=false", ("10.0.0.1", 8080)),
        ("rest://[::1]:30103", ("::1", 30103)),
        ("rest://host.local:1", ("host.local", 1)),
        ("highway://10.0.0.1:7070", None),
        ("rest://10.0.0.1", None),
        ("rest://10.0.0.1:99999", None),
        ("not an endpoint", None),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int] | None) -> None:
    assert parse_endpoint(endpoint) == expected


def test_instance_from_json_picks_the_rest_endpoint() -> None:
    data = {
        "serviceId": "s1",
        "instanceId": "i1",
        "endpoints": ["highway://10.0.0.1:7070", "rest://10.0.0.1:8080?sslEnabled=false"],
        "status": "OUTOFSERVICE",
        "version": "1.2.0",
        "properties": {"zone": "a"},
    }
    found = instance_from_json(data, ORDERS, "production")
    assert found == Instance(
        "orders", "s1/i1", "10.0.0.1", 8080, "default", "1.2.0", "production", "DOWN",
        tags={"zone": "a"},
    )  # fmt: skip
    assert instance_from_json({**data, "endpoints": []}, ORDERS, "") is None


ROW = {"serviceId": "s1", "instanceId": "i1", "endpoints": ["rest://10.0.0.1:8080"]}


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        ["a", "list"],
        {**ROW, "endpoints": "rest://10.0.0.1:8080"},
        {**ROW, "properties": ["zone"]},
        {**ROW, "serviceId": 5},
        {**ROW, "instanceId": {"id": 1}},
    ],
)
def test_malformed_instances_are_skipped_with_a_warning(
    data: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "trimesh.discovery"):
        assert instance_from_json(data, ORDERS, "") is None
        assert instances_from([data, ROW], ORDERS, "")[0].instance_id == "s1/i1"
    assert "ignoring a malformed instance" in caplog.text
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records)


def test_answers_of_the_wrong_shape_are_unavailable() -> None:
    assert instances_from(None, ORDERS, "") == ()  # Service Center omits an empty list
    with pytest.raises(RegistryUnavailable, match="not a list"):
        instances_from({"a": 1}, ORDERS, "")
    assert field({"serviceId": "s1"}, "serviceId") == "s1"
    for answer in ({}, {"serviceId": 5}, {"serviceId": ""}):
        with pytest.raises(RegistryUnavailable, match="no serviceId"):
            field(answer, "serviceId")


def test_malformed_watch_events_are_skipped_or_found_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = _Watch(ORDERS, lambda snapshot: None)
    key = {"appId": "default", "serviceName": "orders"}
    with caplog.at_level(logging.WARNING, "trimesh.discovery"):
        assert watch.apply('{"action": "CREATE", "key": "orders"}', "")
        assert not watch.apply(json.dumps({"action": "CREATE", "key": key, "instance": 7}), "")
        event = {"action": "CREATE", "key": key, "instance": {**ROW, "properties": "x"}}
        assert watch.apply(json.dumps(event), "")
    assert watch.current == {}
    assert caplog.text.count("WARNING") == 3
    assert all(not r.exc_info for r in caplog.records)


def test_instance_body_health_check_covers_the_lease() -> None:
    body = instance_body(orders(heartbeat_interval=10, lease_ttl=30), "box", None)["instance"]
    assert body["healthCheck"] == {"mode": "push", "interval": 10, "times": 2}
    assert body["endpoints"] == ["rest://127.0.0.1:8080?sslEnabled=false"]
    assert "instanceId" not in body
    again = instance_body(orders(heartbeat_interval=0.5, lease_ttl=1), "", "i9")["instance"]
    assert again["healthCheck"]["interval"] == 1 and again["instanceId"] == "i9"
    assert again["hostName"] == "127.0.0.1"


def test_error_of_and_split_id() -> None:
    body = b'{"errorCode":"400017","errorMessage":"Instance does not exist","detail":"x"}'
    error = error_of(Response(400, {}, body))
    assert (error.status, error.code) == (400, "400017")
    assert error_of(Response(502, {}, b"<html>")).code == ""
    assert split_id("s/i") == ("s", "i")
    for bad in ("s", "/i", "s/"):
        with pytest.raises(ValueError):
            split_id(bad)


# -- registration ----------------------------------------------------------------


async def test_register_creates_the_service_once(sc: SC) -> None:
    first, second = sc.registry(), sc.registry()
    a = await first.register(orders(metadata={"zone": "a"}))
    b = await second.register(orders(port=8081))
    assert a.split("/")[0] == b.split("/")[0]
    assert len(sc.double.services) == 1
    assert len(sc.seen("POST", "/microservices")) == 1  # the second found it via existence
    lease = sc.double.leases[split_id(a)]
    assert lease.body["endpoints"] == ["rest://127.0.0.1:8080?sslEnabled=false"]
    assert lease.body["properties"] == {"zone": "a"}
    assert lease.body["healthCheck"]["mode"] == "push"


async def test_register_is_idempotent_and_updates_metadata(sc: SC) -> None:
    registry = sc.registry()
    first = await registry.register(orders(metadata={"zone": "a"}))
    again = await registry.register(orders(metadata={"zone": "b"}))
    assert first == again
    [body] = sc.double.instances_of("orders")
    assert body["properties"] == {"zone": "b"}
    assert await registry.register(orders(version="2.0.0")) != first  # a new micro-service


async def test_register_create_answers_existing_service_id(sc: SC) -> None:
    service = {"appId": "default", "serviceName": "orders", "version": "0.0.1"}
    created = await sc.call(
        "POST", "/v4/default/registry/microservices", json_body={"service": service}
    )
    again = await sc.call(
        "POST", "/v4/default/registry/microservices", json_body={"service": service}
    )
    assert created.status == again.status == 200
    assert created.json() == again.json()


# -- heartbeats, leases, status --------------------------------------------------


async def test_heartbeat_renews_the_lease(sc: SC, clock: FakeClock) -> None:
    registry = sc.registry()
    # Service Center raises push leases to interval >= 5 s, times >= 3: 5 * (3 + 1).
    instance_id = await registry.register(orders(heartbeat_interval=5, lease_ttl=10))
    clock.now += 15
    await registry.heartbeat(instance_id)
    clock.now += 15  # 30 s after register, 15 s after the heartbeat
    await registry.heartbeat(instance_id)
    clock.now += 20
    sc.double.sweep()
    assert sc.double.instances_of("orders") == []
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)


async def test_forgotten_instance_raises_lease_expired_then_register_again(sc: SC) -> None:
    registry = sc.registry()
    instance_id = await registry.register(orders())
    sc.double.expire_now(*split_id(instance_id))
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)
    with pytest.raises(LeaseExpired):
        await registry.set_status(instance_id, "DOWN")
    assert [s.status for s in sc.seen("PUT", "/heartbeat")] == [400]
    renewed = await registry.register(orders())
    await registry.heartbeat(renewed)
    assert len(sc.double.instances_of("orders")) == 1


async def test_set_status_down_and_up(sc: SC) -> None:
    provider, consumer = sc.registry(), sc.registry()
    instance_id = await provider.register(orders())
    await consumer.register(web())
    await provider.set_status(instance_id, "DOWN")
    assert [i.status for i in await consumer.instances(ORDERS)] == ["DOWN"]
    await provider.set_status(instance_id, "UP")
    assert [i.status for i in await consumer.instances(ORDERS)] == ["UP"]
    assert sc.seen("PUT", "/status")[-1].query == {"value": "UP"}


async def test_deregister_and_missing_is_fine(sc: SC) -> None:
    registry = sc.registry()
    instance_id = await registry.register(orders())
    await registry.deregister(instance_id)
    assert sc.double.instances_of("orders") == []
    await registry.deregister(instance_id)
    assert [s.status for s in sc.seen("DELETE", split_id(instance_id)[1])] == [200, 400]


# -- find ------------------------------------------------------------------------


async def test_find_presents_consumer_and_caches_by_revision(sc: SC) -> None:
    provider, consumer = sc.registry(), sc.registry()
    instance_id = await provider.register(orders())
    consumer_id, _ = split_id(await consumer.register(web()))
    [found] = await consumer.instances(ORDERS)
    assert (found.instance_id, found.address) == (instance_id, ("127.0.0.1", 8080))
    assert await consumer.instances(ORDERS) == [found]
    first, second = sc.seen("GET", "/registry/instances")
    assert first.headers["x-consumerid"] == consumer_id
    assert "rev" not in first.query and first.status == 200
    assert second.query["rev"] and second.status == 304
    assert sc.double.dependencies[consumer_id] == {("default", "", "default", "orders")}
    await provider.register(orders(port=8081))
    assert len(await consumer.instances(ORDERS)) == 2
    assert sc.seen("GET", "/registry/instances")[-1].status == 200


async def test_find_unknown_provider_is_empty(sc: SC) -> None:
    registry = sc.registry()
    assert await registry.instances(ServiceKey("nobody")) == []
    await registry.register(web())
    assert await registry.instances(ServiceKey("nobody")) == []


async def test_find_after_service_center_lost_the_consumer(sc: SC) -> None:
    provider, consumer = sc.registry(), sc.registry()
    await provider.register(orders())
    consumer_id, _ = split_id(await consumer.register(web()))
    sc.double.drop_service(consumer_id)
    assert len(await consumer.instances(ORDERS)) == 1
    anonymous = sc.seen("GET", "/registry/instances")[-1]
    assert anonymous.status == 200 and "x-consumerid" not in anonymous.headers


# -- services --------------------------------------------------------------------


class ListingDouble(ServiceCenterDouble):
    """The double plus ListService, ``GET /v4/{project}/registry/microservices``.

    Service Center answers ``{"services": [MicroService, ...]}``: every
    micro-service of the project, with or without instances, empty fields
    omitted; it has no appId filter, so clients filter.
    """

    def _route(self, seen: Seen, body: bytes, headers: list[tuple[str, str]]) -> Any:
        match = re.fullmatch(r"/v4/([^/]+)/registry/microservices", seen.path)
        if seen.method != "GET" or match is None:
            return super()._route(seen, body, headers)
        self._authorize(seen.headers)
        listed = [
            {
                "serviceId": s.service_id,
                "appId": s.app,
                "serviceName": s.name,
                "version": s.version,
                **({"environment": s.env} if s.env else {}),
                "status": "UP",
            }
            for s in self.services.values()
            if s.project == match[1]
        ]
        return {"services": listed} if listed else {}


async def test_services_lists_names_with_instances(nursery: trio.Nursery, clock: FakeClock) -> None:
    double = ListingDouble(clock=clock)
    sc = SC(double, await nursery.start(double.serve))
    provider, consumer = sc.registry(), sc.registry()
    assert await consumer.services("default") == []
    await provider.register(orders())
    await provider.register(orders(port=8081, version="2.0.0"))  # a second micro-service
    await provider.register(orders(service="users", app="shop"))
    await sc.registry().register(orders(service="prod-only", environment="production"))
    gone = await provider.register(orders(service="gone"))
    await provider.deregister(gone)  # Service Center keeps the micro-service
    client = await provider.register(orders(service="client-only"))
    await provider.deregister(client)
    client_id, _ = split_id(client)
    path = f"/v4/default/registry/microservices/{client_id}/instances"
    without_endpoints = {"instance": {"hostName": "box", "endpoints": []}}
    assert (await sc.call("POST", path, json_body=without_endpoints)).status == 200
    consumer_id, _ = split_id(await consumer.register(web()))

    assert await consumer.services("default") == ["orders", "web"]
    assert await consumer.services("shop") == ["users"]
    assert await consumer.services("nobody") == []
    # Names are checked anonymously: listing records no dependency of ours.
    assert consumer_id not in double.dependencies
    assert await sc.registry().services("default") == ["orders", "web"]


async def test_services_refused_is_a_service_center_error(sc: SC) -> None:
    # The plain double has no ListService route: it answers 404, as a proxy might.
    with pytest.raises(ServiceCenterError) as caught:
        await sc.registry().services("default")
    assert caught.value.status == 404


# -- watch -----------------------------------------------------------------------


async def test_watch_follows_the_websocket(sc: SC, nursery: trio.Nursery) -> None:
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    first = await provider.register(orders())
    consumer_id, _ = split_id(await consumer.register(web()))
    with trio.fail_after(TIMEOUT):
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: [i.instance_id for i in s] == [first])
        second = await provider.register(orders(port=8081))
        await watcher.wait_for(lambda s: {i.instance_id for i in s} == {first, second})
        assert consumer_id in sc.double.watchers
        await provider.set_status(second, "DOWN")
        await watcher.wait_for(
            lambda s: {(i.port, i.status) for i in s} == {(8080, "UP"), (8081, "DOWN")}
        )
        await provider.deregister(second)
        await watcher.wait_for(lambda s: [i.instance_id for i in s] == [first])
        sc.double.expire_now(*split_id(first))
        await watcher.wait_for(lambda s: s == [])
    # Only the subscription's own find: every change came over the websocket.
    assert len(sc.seen("GET", "/registry/instances")) == 1
    assert len(watcher.snapshots) == 5


async def test_watch_expire_event_finds_again(sc: SC, nursery: trio.Nursery) -> None:
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    await consumer.register(web())
    first = await provider.register(orders())
    with trio.fail_after(TIMEOUT):
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: len(s) == 1)
        # Changed behind the watcher's back, then announced with EXPIRE only.
        sc.double.leases[split_id(first)].body["properties"] = {"zone": "b"}
        sc.double.publish_expire(split_id(first)[0])
        await watcher.wait_for(lambda s: s and s[0].tags == {"zone": "b"})
    assert len(sc.seen("GET", "/registry/instances")) == 2


async def test_watch_polls_until_registered(sc: SC, nursery: trio.Nursery) -> None:
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    first = await provider.register(orders())
    with trio.fail_after(TIMEOUT):
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: len(s) == 1)
        assert "x-consumerid" not in sc.seen("GET", "/registry/instances")[0].headers
        consumer_id, _ = split_id(await consumer.register(web()))
        second = await provider.register(orders(port=8081))
        # Registering wakes the poll at once; the websocket then delivers the change.
        await watcher.wait_for(lambda s: {i.instance_id for i in s} == {first, second})
    assert sc.double.watchers[consumer_id]


async def test_watch_polls_with_revision_while_unregistered(
    sc: SC, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicecomb, "POLL_INTERVAL", 0.01)
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    first = await provider.register(orders())
    with trio.fail_after(TIMEOUT):
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: len(s) == 1)
        while not any(s.status == 304 for s in sc.seen("GET", "/registry/instances")):
            await sc.double.logged.wait()
        second = await provider.register(orders(port=8081))
        await watcher.wait_for(lambda s: {i.instance_id for i in s} == {first, second})
    assert sc.double.watchers == {}
    assert len(watcher.snapshots) == 2  # the 304 polls in between changed nothing


async def test_watch_sees_a_provider_that_did_not_exist_at_the_first_find(
    sc: SC, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Service Center pushes events only for providers the consumer has found, so
    # a service registered after the watch started is caught by the periodic find.
    monkeypatch.setattr(servicecomb, "POLL_INTERVAL", 0.05)
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    await consumer.register(web())
    with trio.fail_after(TIMEOUT):
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: s == [])
        first = await provider.register(orders())
        await watcher.wait_for(lambda s: [i.instance_id for i in s] == [first])


async def test_a_malformed_instance_is_skipped_by_find_and_watch(
    sc: SC, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    provider, consumer, watcher = sc.registry(), sc.registry(), Watcher()
    good = await provider.register(orders())
    bad = await provider.register(orders(port=8081))
    sc.double.leases[split_id(bad)].body["properties"] = ["not", "an", "object"]
    await consumer.register(web())
    with caplog.at_level(logging.WARNING, "trimesh.discovery"), trio.fail_after(TIMEOUT):
        assert [i.instance_id for i in await consumer.instances(ORDERS)] == [good]
        nursery.start_soon(consumer.watch, ORDERS, watcher)
        await watcher.wait_for(lambda s: [i.instance_id for i in s] == [good])
        await provider.set_status(bad, "DOWN")  # an UPDATE event carrying the bad row
        third = await provider.register(orders(port=8082))
        await watcher.wait_for(lambda s: {i.instance_id for i in s} == {good, third})
    assert caplog.text.count("ignoring a malformed instance") >= 2
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records)


async def test_watch_refused_for_an_unknown_consumer(sc: SC) -> None:
    consumer = sc.registry()
    consumer_id, _ = split_id(await consumer.register(web()))
    sc.double.drop_service(consumer_id)
    with trio.fail_after(TIMEOUT), pytest.raises(RegistryUnavailable, match="service does not"):
        await consumer.watch(ORDERS, Watcher())


async def test_watch_ends_with_unavailable_when_the_server_goes(clock: FakeClock) -> None:
    double, watcher = ServiceCenterDouble(clock=clock), Watcher()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as server:
            sc = SC(double, await server.start(double.serve))
            consumer = sc.registry()
            await consumer.register(web())
            async with trio.open_nursery() as watching:

                async def watch() -> None:
                    with pytest.raises(RegistryUnavailable):
                        await consumer.watch(ORDERS, watcher)

                watching.start_soon(watch)
                await watcher.wait_for(lambda s: True)
                server.cancel_scope.cancel()


# -- errors, failover, RBAC ------------------------------------------------------


async def test_unreachable_and_server_errors_are_unavailable(sc: SC) -> None:
    nowhere = ServiceCombRegistry([("127.0.0.1", dead_port())])
    with pytest.raises(RegistryUnavailable) as caught:
        await nowhere.register(orders())
    assert caught.value.__cause__ is not None
    with pytest.raises(RegistryUnavailable):
        await nowhere.watch(ORDERS, Watcher())
    registry = sc.registry()
    instance_id = await registry.register(orders())
    sc.double.outage = True
    with pytest.raises(RegistryUnavailable, match="500011"):
        await registry.heartbeat(instance_id)
    with pytest.raises(RegistryUnavailable):
        await registry.instances(ORDERS)


async def test_refusals_are_service_center_errors(sc: SC) -> None:
    registry = sc.registry()
    with pytest.raises(ServiceCenterError) as caught:
        await registry.register(orders(service="bad name"))
    assert (caught.value.status, caught.value.code) == (400, "400001")
    with pytest.raises(ValueError):
        await registry.heartbeat("no-slash")


async def test_fails_over_to_the_next_endpoint(sc: SC) -> None:
    endpoints = [("127.0.0.1", dead_port()), ("127.0.0.1", sc.port)]
    async with ServiceCombRegistry(endpoints) as registry:
        instance_id = await registry.register(orders())
        await registry.heartbeat(instance_id)
        assert f"127.0.0.1:{sc.port}" in repr(registry)


async def test_rbac_token_and_reauth_on_401(sc: SC) -> None:
    sc.double.accounts["mesher"] = "s3cret!"
    anonymous = sc.registry()
    with pytest.raises(ServiceCenterError) as caught:
        await anonymous.register(orders())
    assert caught.value.status == 401
    with pytest.raises(ServiceCenterError):
        await sc.registry(username="mesher", password="wrong").register(orders())
    registry = sc.registry(username="mesher", password="s3cret!")
    instance_id = await registry.register(orders())
    sc.double.tokens.clear()  # e.g. the token expired
    await registry.heartbeat(instance_id)
    assert [s.status for s in sc.seen("POST", "/v4/token")] == [401, 200, 200]
    assert sc.seen("PUT", "/heartbeat")[-1].headers["authorization"].startswith("Bearer ")


# -- the double rejects what Service Center rejects -------------------------------


def instance(**changes: Any) -> dict[str, Any]:
    body = {
        "hostName": "box",
        "endpoints": ["rest://127.0.0.1:1"],
        "healthCheck": {"mode": "push", "interval": 5, "times": 3},
    }
    return {"instance": {**body, **changes}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "400001"),
        (b"", "400001"),
        (instance(endpoints=[""]), "400001"),
        (instance(hostName=""), "400001"),
        (instance(healthCheck={"mode": "poke", "interval": 5}), "400001"),
        (instance(healthCheck={"mode": "push", "interval": 0}), "400001"),
        (instance(status="SLEEPING"), "400001"),
    ],
)
async def test_double_rejects_invalid_instances(sc: SC, body: Any, code: str) -> None:
    service_id, _ = split_id(await sc.registry().register(orders()))
    path = f"/v4/default/registry/microservices/{service_id}/instances"
    kwargs = {"body": body} if isinstance(body, bytes) else {"json_body": body}
    resp = await sc.call("POST", path, **kwargs)
    assert (resp.status, resp.json()["errorCode"]) == (400, code)


async def test_double_answers_service_center_codes(sc: SC) -> None:
    base = "/v4/default/registry/microservices"
    unknown = await sc.call("POST", f"{base}/nope/instances", json_body=instance())
    assert (unknown.status, unknown.json()["errorCode"]) == (400, "400012")
    service_id, _ = split_id(await sc.registry().register(orders()))
    beat = await sc.call("PUT", f"{base}/{service_id}/instances/nope/heartbeat")
    assert (beat.status, beat.json()["errorCode"]) == (400, "400017")
    # Instances without endpoints are allowed (client-only instances).
    client_only = await sc.call(
        "POST", f"{base}/{service_id}/instances", json_body=instance(endpoints=[])
    )
    assert client_only.status == 200
    find = "/v4/default/registry/instances?appId=default&serviceName=orders"
    stranger = await sc.call("GET", find, headers={"x-consumerid": "nope"})
    assert (stranger.status, stranger.json()["errorCode"]) == (400, "400012")
