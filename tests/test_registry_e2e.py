"""Service discovery end to end: real `trimesh serve` processes sharing a registry.

Each test runs a provider sidecar P (service `orders`) and a consumer sidecar
C (service `shop`) as subprocesses, each in front of its own in-process
`Upstream` app, on the `local` (SQLite) or a real `etcd` registry. Nothing
sleeps for a fixed time: every wait polls an admin endpoint or retries a
request under a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import yaml

from tests.etcd_server import EtcdServer, SwitchProxy
from tests.servers import Upstream
from trimesh.discovery._etcd_api import b64, prefix_end, unb64

TRIMESH = [sys.executable, "-m", "trimesh.cli"]
_BOUND = re.compile(rb"outbound [\d.]+:(\d+), inbound [\d.]+:(\d+), admin [\d.]+:(\d+)")
_VIA = re.compile(r"^1\.1 trimesh-([0-9a-f]{8})-out, 1\.1 trimesh-([0-9a-f]{8})-inb$")
GUARD = 20.0  # fail_after for any one wait on processes or a registry
POLL = 0.05
GONE = frozenset({"service-not-found", "no-instance"})


# ---------------------------------------------------------------- processes


@attrs.define
class Proc:
    """One `trimesh serve` process we started, its bound ports and its log so far."""

    name: str
    process: trio.Process
    outbound: int
    inbound: int
    admin: int
    log: bytearray

    def tail(self) -> str:
        return f"--- {self.name} log ---\n" + self.log.decode(errors="replace")[-3000:]


class Fleet:
    """Spawns sidecars into a nursery; SIGKILLs (by PID) whatever is still running at the end."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []

    async def spawn(self, name: str, config: dict[str, Any]) -> Proc:
        """Start `trimesh serve` and wait (by reading its log) until it has bound."""
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        process = await trio.lowlevel.open_process(
            [*TRIMESH, "serve", "-c", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert process.stderr is not None
        log = bytearray()
        proc = Proc(name, process, 0, 0, 0, log)
        self.procs.append(proc)
        with trio.fail_after(GUARD):
            while not (match := _BOUND.search(log)):
                chunk = await process.stderr.receive_some(4096)
                assert chunk, f"{name} exited early:\n{proc.tail()}"
                log += chunk
        proc.outbound, proc.inbound, proc.admin = (int(match[i]) for i in (1, 2, 3))
        self.nursery.start_soon(_drain_pipe, process, log)
        return proc

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    async def kill_all(self) -> None:
        for p in self.procs:
            if p.process.returncode is None:
                p.process.kill()
                await p.process.wait()


async def _drain_pipe(process: trio.Process, log: bytearray) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(4096):
        log += chunk


@pytest.fixture
async def fleet(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(nursery, tmp_path)
    try:
        yield fleet
    finally:
        await fleet.kill_all()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own (tests stop and restart it)."""
    server = EtcdServer(tmp_path)
    server.start()
    yield server
    server.stop()


def local_registry(tmp_path: Path, ttl: str = "1s") -> dict[str, Any]:
    return {
        "type": "local",
        "path": str(tmp_path / "registry.db"),
        "heartbeat_interval": "200ms",
        "ttl": ttl,
    }


def etcd_registry(server: EtcdServer, ttl: str = "2s") -> dict[str, Any]:
    return {
        "type": "etcd",
        "endpoints": [f"127.0.0.1:{server.client_port}"],
        "prefix": f"/t-{uuid.uuid4().hex[:8]}",
        "heartbeat_interval": "200ms",
        "ttl": ttl,
    }


def sidecar_config(
    service: str, app_port: int, registry: dict[str, Any], drain_timeout: str = "2s"
) -> dict[str, Any]:
    listen = {
        "outbound": "127.0.0.1:0",
        "inbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        # (Almost) no accepting after deregistering: these tests time deregistration and exit.
        "drain_delay": "1ms",
        "drain_timeout": drain_timeout,
    }
    if registry["type"] in ("etcd", "servicecomb"):
        # A network registry needs the address to advertise said outright; all on one machine here.
        listen["advertise"] = "127.0.0.1"
    return {
        "service": {"name": service},
        "app": {"ports": {"rest": app_port}},
        "listen": listen,
        "registry": registry,
        "observe": {"access_log": "off"},
    }


# ---------------------------------------------------------------- clients and polling


def proxy_client(proc: Proc) -> httpx.AsyncClient:
    return httpx.AsyncClient(proxy=f"http://127.0.0.1:{proc.outbound}", trust_env=False, timeout=5)


async def admin(proc: Proc, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        r = await c.get(f"http://127.0.0.1:{proc.admin}{path}")
    body: dict[str, Any] = r.json()
    return body


async def until(check: Callable[[], Any], what: str, fleet: Fleet) -> Any:
    """Poll the async `check` until it returns something truthy; fail with the logs if not."""
    last: object = None
    try:
        with trio.fail_after(GUARD):
            while True:
                last = await check()
                if last:
                    return last
                await trio.sleep(POLL)
    except trio.TooSlowError:
        pytest.fail(f"timed out waiting for {what}; last={last!r}\n{fleet.tails()}")


async def registered(proc: Proc) -> bool:
    return bool((await admin(proc, "/ready"))["registered"])


def instance_ports(state: dict[str, Any], service: str) -> list[int]:
    found = state["services"].get(service, {}).get("instances", [])
    return sorted(int(i["endpoint"].rsplit(":", 1)[1]) for i in found)


async def get_until(
    client: httpx.AsyncClient,
    url: str,
    ok: Callable[[httpx.Response], bool],
    fleet: Fleet,
) -> httpx.Response:
    """Send `GET url` again and again until `ok(response)`."""

    async def attempt() -> httpx.Response | None:
        try:
            r = await client.get(url)
        except httpx.TransportError:
            return None  # the consumer sidecar closed a kept-alive connection
        return r if ok(r) else None

    response: httpx.Response = await until(attempt, f"GET {url} to pass", fleet)
    return response


def status_ok(r: httpx.Response) -> bool:
    return r.status_code == 200


def gone(r: httpx.Response) -> bool:
    return r.headers.get("x-trimesh-error") in GONE


@attrs.define
class Pair:
    provider: Proc
    consumer: Proc
    provider_app: Upstream
    consumer_app: Upstream


async def start_pair(
    fleet: Fleet, nursery: trio.Nursery, registry: dict[str, Any], drain_timeout: str = "2s"
) -> Pair:
    """Provider `orders` and consumer `shop`, each with its own app, both registered."""
    provider_app, consumer_app = Upstream(), Upstream()
    await nursery.start(provider_app.serve)
    await nursery.start(consumer_app.serve)
    p_config = sidecar_config("orders", provider_app.port, registry, drain_timeout)
    p = await fleet.spawn("orders", p_config)
    c = await fleet.spawn("shop", sidecar_config("shop", consumer_app.port, registry))
    for proc in (p, c):
        await until(lambda proc=proc: registered(proc), f"{proc.name} registered", fleet)
    return Pair(p, c, provider_app, consumer_app)


async def assert_routes_to(
    client: httpx.AsyncClient, url: str, app: Upstream, fleet: Fleet
) -> None:
    """A request through the client's sidecar reaches `app` via the other sidecar."""
    before = len(app.seen)
    r = await get_until(client, url, status_ok, fleet)
    assert r.headers["x-app"] == "echo"
    assert len(app.seen) == before + 1
    seen = app.seen[-1]
    assert seen.target == httpx.URL(url).raw_path
    via = (seen.header(b"via") or b"").decode()
    tokens = _VIA.match(via)
    assert tokens is not None, via  # the consumer's outbound, then the provider's inbound
    assert tokens[1] != tokens[2], "one sidecar process must not serve both legs"


# ---------------------------------------------------------------- tests


async def test_local_registry_routes_both_ways(
    fleet: Fleet, nursery: trio.Nursery, tmp_path: Path
) -> None:
    pair = await start_pair(fleet, nursery, local_registry(tmp_path))
    async with proxy_client(pair.consumer) as shop, proxy_client(pair.provider) as orders:
        await assert_routes_to(shop, "http://orders/x?q=1", pair.provider_app, fleet)
        await assert_routes_to(orders, "http://shop/", pair.consumer_app, fleet)
        assert b"shop" in (pair.provider_app.seen[-1].header(b"x-cse-context") or b"")
    assert [s.target for s in pair.provider_app.seen] == [b"/x?q=1"]
    assert [s.target for s in pair.consumer_app.seen] == [b"/"]
    state = await admin(pair.consumer, "/v1/registry")
    assert instance_ports(state, "orders") == [pair.provider.inbound]
    assert state["registration"]["endpoint"] == f"rest://127.0.0.1:{pair.consumer.inbound}"


@pytest.mark.parametrize("backend", ["local", pytest.param("etcd", marks=pytest.mark.etcd)])
async def test_sigkilled_provider_leaves_discovery_within_its_lease(
    fleet: Fleet,
    nursery: trio.Nursery,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "local":
        ttl, registry = 1.0, local_registry(tmp_path, ttl="1s")
    else:
        ttl, registry = 2.0, etcd_registry(request.getfixturevalue("etcd"), ttl="2s")
    pair = await start_pair(fleet, nursery, registry)
    async with proxy_client(pair.consumer) as shop:
        await assert_routes_to(shop, "http://orders/", pair.provider_app, fleet)
        pair.provider.process.kill()  # SIGKILL: no deregistration, only the lease ends it
        killed = trio.current_time()
        assert await pair.provider.process.wait() == -signal.SIGKILL
        r = await get_until(shop, "http://orders/", gone, fleet)
        elapsed = trio.current_time() - killed
    assert r.status_code in (502, 503), r.status_code
    assert elapsed < ttl + 1.5, f"provider still routed {elapsed:.2f} s after SIGKILL"
    state = await admin(pair.consumer, "/v1/registry")
    assert instance_ports(state, "orders") == []


@pytest.mark.parametrize("backend", ["local", pytest.param("etcd", marks=pytest.mark.etcd)])
async def test_sigterm_deregisters_provider_well_within_ttl(
    fleet: Fleet,
    nursery: trio.Nursery,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    ttl = 10.0  # long, so only deregistration can explain a quick removal
    if backend == "local":
        registry = local_registry(tmp_path, ttl="10s")
    else:
        registry = etcd_registry(request.getfixturevalue("etcd"), ttl="10s")
    pair = await start_pair(fleet, nursery, registry)
    async with proxy_client(pair.consumer) as shop:
        await assert_routes_to(shop, "http://orders/", pair.provider_app, fleet)
        pair.provider.process.send_signal(signal.SIGTERM)
        stopped = trio.current_time()
        r = await get_until(shop, "http://orders/", gone, fleet)
        elapsed = trio.current_time() - stopped
    assert r.status_code in (502, 503), r.status_code
    assert elapsed < ttl / 5, f"provider still routed {elapsed:.2f} s after SIGTERM"
    with trio.fail_after(GUARD):
        assert await pair.provider.process.wait() == 0
    assert b"registry: deregistered" in pair.provider.log, pair.provider.tail()


async def test_sigterm_exit_is_not_held_by_an_idle_pooled_connection(
    fleet: Fleet, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A drain deadline far above LINGER, so only the linger can explain a slow exit.
    pair = await start_pair(fleet, nursery, local_registry(tmp_path, ttl="10s"), "10s")
    async with proxy_client(pair.consumer) as shop:
        await assert_routes_to(shop, "http://orders/", pair.provider_app, fleet)
    # The consumer's pool now holds one idle connection to P's inbound; nothing is in flight.
    pair.provider.process.send_signal(signal.SIGTERM)
    stopped = trio.current_time()
    with trio.fail_after(GUARD):
        assert await pair.provider.process.wait() == 0
    elapsed = trio.current_time() - stopped
    assert elapsed < 1.0, f"provider took {elapsed:.2f} s to exit after SIGTERM\n{fleet.tails()}"


async def etcd_instances(server: EtcdServer, prefix: str) -> dict[str, list[int]]:
    """Ports registered under `prefix`, by service name, read straight from etcd."""
    key = prefix.encode() + b"/"
    body = {"key": b64(key), "range_end": b64(prefix_end(key))}
    try:
        answer = await trio.to_thread.run_sync(server.post, "/v3/kv/range", body)
    except OSError:
        return {}
    found: dict[str, list[int]] = {}
    for kv in answer.get("kvs", []):
        doc = json.loads(unb64(kv["value"]))
        found.setdefault(doc["service"], []).append(doc["port"])
    return {name: sorted(ports) for name, ports in found.items()}


@pytest.mark.etcd
async def test_etcd_outage_serves_from_cache_then_recovers(
    fleet: Fleet, nursery: trio.Nursery, etcd: EtcdServer
) -> None:
    ttl = 2.0
    registry = etcd_registry(etcd, ttl="2s")
    prefix = registry["prefix"]
    pair = await start_pair(fleet, nursery, registry)
    p, c = pair.provider, pair.consumer
    async with proxy_client(c) as shop:
        await assert_routes_to(shop, "http://orders/a", pair.provider_app, fleet)
        assert await etcd_instances(etcd, prefix) == {"orders": [p.inbound], "shop": [c.inbound]}

        await trio.to_thread.run_sync(etcd.stop)
        # Longer than one lease: the cache, not the registry, answers.
        down_since, served = trio.current_time(), 0
        with trio.fail_after(GUARD):
            while trio.current_time() - down_since < ttl + 1.0:
                r = await shop.get("http://orders/during-outage")
                assert r.status_code == 200, (r.status_code, r.headers, fleet.tails())
                served += 1
                await trio.sleep(0.2)
        assert served >= 10
        assert [s.target for s in pair.provider_app.seen].count(b"/during-outage") == served

        async def outage_seen() -> bool:
            state = await admin(c, "/v1/registry")
            return state["services"]["orders"]["watch_error"] is not None

        await until(outage_seen, "the consumer to notice the outage", fleet)

        await trio.to_thread.run_sync(etcd.restart)

        async def both_back() -> bool:
            if await etcd_instances(etcd, prefix) != {"orders": [p.inbound], "shop": [c.inbound]}:
                return False
            for proc in (p, c):
                mine = (await admin(proc, "/v1/registry"))["registration"]
                fresh = mine["last_heartbeat_age"] is not None and mine["last_heartbeat_age"] < 1
                if not (mine["registered"] and mine["last_error"] is None and fresh):
                    return False
            state = await admin(c, "/v1/registry")
            return state["services"]["orders"]["watch_error"] is None

        await until(both_back, "both sidecars registered and watching again", fleet)
        for proc in (p, c):
            assert await registered(proc)

        # A provider that registers after the restart is discovered by the watcher.
        late_app = Upstream()
        await nursery.start(late_app.serve)
        late = await fleet.spawn("orders-2", sidecar_config("orders", late_app.port, registry))

        async def late_discovered() -> bool:
            state = await admin(c, "/v1/registry")
            return instance_ports(state, "orders") == sorted([p.inbound, late.inbound])

        await until(late_discovered, "the late provider in the consumer's cache", fleet)
        with trio.fail_after(GUARD):
            for _ in range(4):  # round robin over two instances
                r = await shop.get("http://orders/b")
                assert r.status_code == 200, (r.status_code, r.headers)
    assert [s.target for s in late_app.seen] == [b"/b", b"/b"]


@pytest.mark.etcd
async def test_hung_etcd_is_reported_and_registration_recovers(
    fleet: Fleet, nursery: trio.Nursery, etcd: EtcdServer
) -> None:
    proxy = SwitchProxy(etcd.endpoint)
    await nursery.start(proxy.serve)
    registry = {**etcd_registry(etcd, ttl="2s"), "call_timeout": "300ms"}
    registry["endpoints"] = [f"127.0.0.1:{proxy.port}"]
    app = Upstream()
    await nursery.start(app.serve)
    p = await fleet.spawn("orders", sidecar_config("orders", app.port, registry))
    await until(lambda: registered(p), "orders registered", fleet)

    proxy.blackhole()  # etcd accepts connections and never answers

    async def lost() -> dict[str, Any] | None:
        mine: dict[str, Any] = (await admin(p, "/v1/registry"))["registration"]
        return (
            mine
            if mine["last_error"] and not (mine["registered"] or mine["lease_current"])
            else None
        )

    mine = await until(lost, "/v1/registry to report the hung registry", fleet)
    assert "no answer within" in mine["last_error"], mine
    assert (await admin(p, "/ready"))["registered"] is False

    proxy.forward()

    async def back() -> bool:
        mine = (await admin(p, "/v1/registry"))["registration"]
        return bool(mine["registered"] and mine["lease_current"] and mine["last_error"] is None)

    await until(back, "registered again once etcd answers", fleet)
    assert await etcd_instances(etcd, registry["prefix"]) == {"orders": [p.inbound]}
