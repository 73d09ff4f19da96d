"""Resilience through real sidecars and apps: circuit breaking, outlier ejection, the
bulkhead, rate limits on both sides, fault injection and egress.

Every test drives real loopback sockets; time-based ones run on the autojump clock.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from tests.test_proxy import raw_request
from tests.test_traffic_policy import app, client, consumer, instance
from trimesh.config.load import load
from trimesh.config.reload import local_layers
from trimesh.sidecar import Bound, Sidecar


async def admin_json(bound: Bound, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound.admin[1]}") as admin:
        reply = await admin.get(path)
    assert reply.status_code == 200
    return reply.json()


# --- circuit breaker -------------------------------------------------------------------


async def test_a_failing_provider_trips_the_breaker_and_it_recovers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    health = {"status": 200}

    async def moody(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return health["status"], [], b"moody"

    provider = Upstream(moody)
    await nursery.start(provider.serve)
    breaker = {"enabled": True, "request_volume_threshold": 10, "sleep_window": "5s"}
    _, bound = await consumer(
        nursery,
        [instance(provider)],
        policies={"default": {"circuit_breaker": breaker, "retry": {"attempts": 0}}},
    )
    async with client(bound) as http:
        assert (await http.get("http://orders/a")).status_code == 200
        health["status"] = 503
        answers = [await http.get("http://orders/a") for _ in range(15)]
        kinds = Counter(r.headers.get("x-trimesh-error", "upstream") for r in answers)
        # 1 success + 9 failures: 90% of 10 requests opens it; the rest never reach the app.
        assert kinds == {"upstream": 9, "circuit-open": 6}
        assert len(provider.seen) == 10
        rejected = answers[-1]
        assert rejected.status_code == 503 and 1 <= int(rejected.headers["retry-after"]) <= 5
        state = await admin_json(bound, "/v1/policies")
        assert state["services"]["orders"]["circuit_breaker"]["state"] == "open"

        health["status"] = 200
        await trio.sleep(5)  # the sleep window: the next request is the probe
        assert (await http.get("http://orders/a")).status_code == 200
        assert [(await http.get("http://orders/a")).status_code for _ in range(5)] == [200] * 5
    state = await admin_json(bound, "/v1/policies")
    assert state["services"]["orders"]["circuit_breaker"]["state"] == "closed"


async def test_a_failed_probe_opens_the_circuit_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    down = await app(nursery, "down", 503)
    breaker = {"enabled": True, "request_volume_threshold": 4, "sleep_window": "2s"}
    _, bound = await consumer(
        nursery,
        [instance(down)],
        policies={"default": {"circuit_breaker": breaker, "retry": {"attempts": 0}}},
    )
    async with client(bound) as http:
        for _ in range(6):
            await http.get("http://orders/a")
        assert len(down.seen) == 4
        await trio.sleep(2)
        probe = await http.get("http://orders/a")
        after = await http.get("http://orders/a")
    assert probe.status_code == 503 and "x-trimesh-error" not in probe.headers  # the app's
    assert after.headers["x-trimesh-error"] == "circuit-open"
    assert len(down.seen) == 5  # exactly one probe went through


# --- outlier ejection -------------------------------------------------------------------


async def test_one_bad_instance_of_three_is_ejected_and_comes_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    bad = await app(nursery, "bad", 503)
    good = [await app(nursery, "a"), await app(nursery, "b")]
    _, bound = await consumer(
        nursery,
        [instance(bad), *(instance(g) for g in good)],
        policies={"default": {"retry": {"attempts": 0}, "outlier": {"base_ejection": "10s"}}},
    )
    async with client(bound) as http:
        statuses = Counter([(await http.get("http://orders/a")).status_code for _ in range(60)])
        # Round robin: every third request until the 5th consecutive failure ejects it.
        assert statuses == {503: 5, 200: 55}
        assert len(bad.seen) == 5
        state = await admin_json(bound, "/v1/policies")
        (ejected,) = [
            v for v in state["services"]["orders"]["outlier"].values() if v["ejected_until"] > 0
        ]
        assert ejected["times"] == 1
        await trio.sleep(10)  # base_ejection x 1: it is back in the rotation
        await http.get("http://orders/a")
        await http.get("http://orders/a")
        await http.get("http://orders/a")
    assert len(bad.seen) == 6


# --- bulkhead ---------------------------------------------------------------------------


async def test_the_bulkhead_rejects_at_exactly_the_limit(nursery: trio.Nursery) -> None:
    release = trio.Event()
    arrived = trio.Semaphore(0)

    async def held(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        arrived.release()
        await release.wait()
        return 200, [], b"done"

    slow = Upstream(held)
    await nursery.start(slow.serve)
    _, bound = await consumer(
        nursery, [instance(slow)], policies={"services": {"orders": {"max_concurrent": 3}}}
    )
    results: list[int] = []
    async with client(bound) as http:

        async def one() -> None:
            results.append((await http.get("http://orders/a")).status_code)

        async with trio.open_nursery() as inner:
            for _ in range(3):
                inner.start_soon(one)
            for _ in range(3):
                await arrived.acquire()  # three requests in flight at the app
            over = await http.get("http://orders/a")
            assert over.status_code == 503
            assert over.headers["x-trimesh-error"] == "max-concurrency"
            release.set()
        after = await http.get("http://orders/a")
    assert results == [200, 200, 200] and after.status_code == 200
    assert len(slow.seen) == 4  # the rejected one never reached the app


# --- rate limits ------------------------------------------------------------------------


async def test_consumer_rate_limit_holds_the_configured_rate_over_a_window(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    provider = await app(nursery, "p")
    _, bound = await consumer(
        nursery,
        [instance(provider)],
        policies={"services": {"orders": {"rate_limit": {"qps": 5, "burst": 5}}}},
    )
    statuses: Counter[int] = Counter()
    async with client(bound) as http:
        for _ in range(80):  # one request every 50 ms for 4 s
            reply = await http.get("http://orders/a")
            statuses[reply.status_code] += 1
            if reply.status_code == 429:
                assert reply.headers["x-trimesh-error"] == "rate-limited"
                assert int(reply.headers["retry-after"]) >= 1
            await trio.sleep(0.05)
    # burst 5 + 5/s x 4 s = 25 (the last interval may or may not have refilled)
    assert statuses[200] in (24, 25) and statuses[200] + statuses[429] == 80
    assert len(provider.seen) == statuses[200]


async def test_inbound_limits_per_caller_and_a_429_is_not_turned_into_a_502(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    backend = await app(nursery, "backend")
    provider_cfg = sidecar_config(
        service={"name": "orders"},
        app={"ports": {"rest": backend.port}},
        inbound={"rate_limit": {"qps": 100, "per_source": {"web": {"qps": 1, "burst": 2}}}},
    )
    _, provider = await start_sidecar(nursery, provider_cfg)
    # Through a consumer sidecar named `web`: its x-cse-context names the caller.
    _, web = await consumer(nursery, [{"address": f"127.0.0.1:{provider.inbound[1]}"}])
    async with client(web) as http:
        answers = [await http.get("http://orders/a") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert answers[2].headers["x-trimesh-error"] == "rate-limited"
    assert "retry-after" in answers[2].headers
    # Another caller has its own share (only the overall 100/s applies to it).
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{provider.inbound[1]}") as http:
        other = [
            (await http.get("/a", headers={"x-cse-context": '{"x-cse-src-microservice":"x"}'}))
            for _ in range(4)
        ]
    assert [a.status_code for a in other] == [200] * 4
    assert len(backend.seen) == 6


# --- fault injection --------------------------------------------------------------------


async def test_abort_percentage_is_within_tolerance_and_marked(nursery: trio.Nursery) -> None:
    provider = await app(nursery, "p")
    fault = {"abort": {"percent": 30, "status": 418}}
    _, bound = await consumer(
        nursery, [instance(provider)], policies={"services": {"orders": {"fault": fault}}}
    )
    async with client(bound) as http:
        answers = [await http.get("http://orders/a") for _ in range(400)]
    aborted = [a for a in answers if a.status_code == 418]
    assert 120 - 40 <= len(aborted) <= 120 + 40  # 4 standard deviations of Binomial(400, .3)
    assert all(a.headers["x-trimesh-error"] == "fault-abort" for a in aborted)
    assert len(provider.seen) == 400 - len(aborted)


async def test_a_fault_for_one_header_value_only(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    provider = await app(nursery, "p")
    tester = {
        "match": {"headers": {"x-test": {"exact": "chaos"}}},
        "fault": {"delay": {"percent": 100, "fixed": "3s"}, "abort": {"status": 503}},
    }
    _, bound = await consumer(
        nursery, [instance(provider)], policies={"services": {"orders": [tester]}}
    )
    async with client(bound) as http:
        start = trio.current_time()
        chaos = await http.get("http://orders/a", headers={"x-test": "chaos"})
        elapsed = trio.current_time() - start
        calm = await http.get("http://orders/a", headers={"x-test": "calm"})
    assert chaos.status_code == 503 and chaos.headers["x-trimesh-error"] == "fault-abort"
    assert 3 <= elapsed < 3.5  # delayed first, then aborted
    assert calm.status_code == 200 and len(provider.seen) == 1


async def test_a_client_that_leaves_cancels_an_injected_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    provider = await app(nursery, "p")
    fault = {"delay": {"percent": 100, "fixed": "60s"}}
    _, bound = await consumer(nursery, [instance(provider)], policies={"default": {"fault": fault}})
    with trio.move_on_after(1):
        await raw_request(bound.outbound[1], b"GET http://orders/a HTTP/1.1\r\nHost: o\r\n\r\n")
    state = await admin_json(bound, "/v1/policies")
    with trio.fail_after(1):
        while state["services"]["orders"]["in_flight"]:  # the delay ended with the client
            await trio.sleep(0.01)
            state = await admin_json(bound, "/v1/policies")
    assert provider.seen == []


# --- egress -----------------------------------------------------------------------------


async def test_egress_forwards_allowed_hosts_and_denies_the_rest(nursery: trio.Nursery) -> None:
    outside = await app(nursery, "outside")
    _, bound = await start_sidecar(
        nursery,
        sidecar_config(egress={"allow": [{"hosts": ["localhost"], "ports": [outside.port]}]}),
    )
    async with client(bound) as http:
        allowed = await http.get(f"http://localhost:{outside.port}/x")
        wrong_port = await http.get(f"http://localhost:{outside.port + 1}/x")
        unknown = await http.get("http://example.com/x")
    assert allowed.status_code == 200 and allowed.text == "outside"
    assert outside.seen[0].header(b"host") == f"localhost:{outside.port}".encode()
    assert outside.seen[0].header(b"x-cse-context") is None  # mesh context stays inside
    for denied in (wrong_port, unknown):
        assert denied.status_code == 403
        assert denied.headers["x-trimesh-error"] == "egress-denied"
    assert len(outside.seen) == 1


async def test_egress_connect_opens_a_byte_tunnel(nursery: trio.Nursery) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data.upper())

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    _, bound = await start_sidecar(nursery, sidecar_config(egress={"allow": [f"localhost:{port}"]}))
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        await stream.send_all(b"CONNECT localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port)
        head = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(1024)
        assert head.startswith(b"HTTP/1.1 200 ")
        await stream.send_all(b"tls bytes, really")
        got = b""
        with trio.fail_after(5):
            while len(got) < 17:
                got += await stream.receive_some(1024)
    assert got == b"TLS BYTES, REALLY"


async def test_egress_never_reaches_our_own_listeners(nursery: trio.Nursery) -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    admin_port = probe.getsockname()[1]
    probe.close()  # a port the admin listener then takes, so the config can name it
    raw = sidecar_config(egress={"allow": [{"hosts": ["127.0.0.1"], "ports": [admin_port]}]})
    raw["listen"]["admin"] = f"127.0.0.1:{admin_port}"
    _, bound = await start_sidecar(nursery, raw)
    assert bound.admin[1] == admin_port
    for request in (
        b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % admin_port,
        b"GET http://127.0.0.1:%d/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        % admin_port,
    ):
        out = await raw_request(bound.outbound[1], request)
        assert out.startswith(b"HTTP/1.1 403 "), out
        assert b"x-trimesh-error: egress-denied" in out


# --- live reload ------------------------------------------------------------------------


async def test_reload_under_load_fails_no_request_and_rejects_a_bad_edit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = await app(nursery, "v1"), await app(nursery, "v2")
    path = tmp_path / "trimesh.yaml"

    def write(rules_to: str, **extra: Any) -> None:
        raw = sidecar_config(
            service={"name": "web"},
            registry={"services": {"orders": [instance(v1, "1.0"), instance(v2, "2.0")]}},
            routes={
                "orders": [
                    {"precedence": 1, "route": [{"tags": {"version": rules_to}, "weight": 100}]}
                ]
            },
            **extra,
        )
        path.write_text(json.dumps(raw))

    write("1.0")
    sidecar = Sidecar(
        load(path, env={}), reload_source=local_layers(path, env={}), config_path=path
    )
    bound: Bound = await nursery.start(sidecar.run)
    seen: Counter[str] = Counter()
    failures: list[int] = []
    stop = trio.Event()
    # Set once `seen[name]` reaches the count: the test waits on these, not on a sleep.
    waits: dict[str, tuple[int, trio.Event]] = {}

    async def until_seen(name: str, count: int) -> None:
        waits[name] = (count, trio.Event())
        with trio.fail_after(10):
            await waits[name][1].wait()

    async def hammer() -> None:
        async with client(bound) as http:
            while not stop.is_set():
                reply = await http.get("http://orders/a")
                if reply.status_code != 200:
                    failures.append(reply.status_code)
                seen[reply.text] += 1
                want = waits.get(reply.text)
                if want is not None and seen[reply.text] >= want[0]:
                    want[1].set()

    async def reloaded(count: int) -> dict[str, Any]:
        """/v1/config once `count` reloads (the one at start included) have been judged."""
        with trio.fail_after(10):
            while True:
                status: dict[str, Any] = (await admin_json(bound, "/v1/config"))["reload"]
                if status["reloads"] + status["rejected"] >= count:
                    return status
                await trio.sleep(0.05)

    async with trio.open_nursery() as load_nursery:
        for _ in range(4):
            load_nursery.start_soon(hammer)
        await until_seen("v1", 50)
        write("2.0")  # every request now goes to v2
        first = await reloaded(2)
        assert first["applied"] == 1
        await until_seen("v2", seen["v2"] + 50)
        path.write_text(path.read_text().replace('"weight": 100', '"weight": 250'))
        second = await reloaded(3)
        stop.set()
    assert failures == []
    assert second["rejected"] == 1 and "routes.orders[0]" in second["last_error"]
    # The bad edit changed nothing: still all on v2.
    async with client(bound) as http:
        assert (await http.get("http://orders/a")).text == "v2"
    listen_change = json.loads(path.read_text().replace('"weight": 250', '"weight": 100'))
    listen_change["listen"]["drain_delay"] = "20ms"
    path.write_text(json.dumps(listen_change))
    third = await reloaded(4)
    assert third["applied"] == 1 and sidecar.config.listen.drain_delay == 0.01  # needs a restart
    assert third["pending_restart"] == ["listen"]
    sidecar.shutdown()


async def test_policies_apply_to_egress_hosts_by_name(nursery: trio.Nursery) -> None:
    outside = await app(nursery, "outside")
    fault = {"abort": {"percent": 100, "status": 503}}
    raw = sidecar_config(
        egress={"allow": [{"hosts": ["localhost", "127.0.0.1"], "ports": [outside.port]}]},
        policies={"services": {"localhost": {"fault": fault}}},
    )
    _, bound = await start_sidecar(nursery, raw)
    async with client(bound) as http:
        by_name = await http.get(f"http://localhost:{outside.port}/x")
        by_address = await http.get(f"http://127.0.0.1:{outside.port}/x")
    assert by_name.status_code == 503 and by_name.headers["x-trimesh-error"] == "fault-abort"
    assert by_address.status_code == 200  # another host name: another policy
    assert len(outside.seen) == 1
