"""Visibility through real sidecars: a real Prometheus scrapes a sidecar carrying traffic,
a trace crosses three sidecars, the dashboard renders live data in a real browser, and a
flood of random host names does not grow the series.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.prometheus_server import PrometheusServer, find_prometheus
from tests.rawserver import RawConn, RawUpstream
from tests.servers import Upstream, sidecar_config, start_sidecar
from tests.test_dashboard import CHROMIUM, chromium
from tests.test_export import start_collector
from tests.test_traffic_policy import app, client, consumer, instance, three_sidecars
from trimesh.sidecar import Bound


def admin(bound: Bound) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound.admin[1]}")


async def test_a_real_prometheus_scrapes_what_the_sidecar_carried(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    find_prometheus()  # skips where Debian's prometheus is absent (fails under CI=true)
    ok, bad = await app(nursery, "ok"), await app(nursery, "bad", 503)
    _, bound = await consumer(
        nursery,
        [instance(ok), instance(bad)],
        policies={"default": {"retry": {"attempts": 0}, "outlier": {"enabled": False}}},
    )
    async with client(bound) as http:
        statuses = [(await http.get("http://orders/a")).status_code for _ in range(40)]
        missing = [(await http.get("http://nowhere/a")).status_code for _ in range(5)]
    assert statuses.count(200) == 20 and statuses.count(503) == 20 and missing == [502] * 5
    prometheus = PrometheusServer(tmp_path, {"sidecar": f"127.0.0.1:{bound.admin[1]}/metrics"})
    await prometheus.start()
    try:
        with trio.fail_after(30):
            while True:
                found = await prometheus.query(
                    'sum by (status_code) (trimesh_requests_total{direction="outbound"})'
                )
                counts = {r["metric"].get("status_code"): float(r["value"][1]) for r in found}
                if counts:
                    break
                await trio.sleep(0.2)
        assert counts == {"200": 20.0, "503": 20.0, "502": 5.0}
        unknown = await prometheus.query('sum(trimesh_requests_total{service="unknown"})')
        assert float(unknown[0]["value"][1]) == 5.0
        built = await prometheus.query("trimesh_build_info")
        assert built and built[0]["metric"]["version"]
    finally:
        await prometheus.stop()


async def test_openmetrics_is_served_when_asked_for(nursery: trio.Nursery) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config())
    async with admin(bound) as http:
        text = await http.get("/metrics")
        om = await http.get("/metrics", headers={"accept": "application/openmetrics-text"})
        mesher = await http.get("/v1/mesher/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    assert "trimesh_build_info" in mesher.text


async def test_a_flood_of_random_names_does_not_grow_the_series(nursery: trio.Nursery) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config())
    rng = random.Random(7)

    async def series() -> int:
        async with admin(bound) as http:
            body = (await http.get("/metrics")).text
        return sum(1 for line in body.splitlines() if line.startswith("trimesh_requests_total{"))

    async with client(bound) as http:
        for _ in range(20):
            await http.get(f"http://{rng.getrandbits(64):x}/")
        before = await series()
        for _ in range(400):
            await http.get(f"http://{rng.getrandbits(64):x}/")
    assert before == await series() == 1  # all folded into service="unknown"


async def test_one_trace_crosses_three_sidecars_with_parented_spans(
    nursery: trio.Nursery,
) -> None:
    """client → A → B → app B → B → C → app C; every sidecar exports to one collector."""
    collector = await start_collector(nursery)
    tracing = {"exporter": "zipkin", "endpoint": collector.endpoint(), "flush_interval": "50ms"}

    app_c = Upstream()
    await nursery.start(app_c.serve)

    async def hang_up(conn: RawConn) -> None:
        await conn.next_request()  # read it, answer nothing: A retries on B

    dead = RawUpstream(hang_up)
    await nursery.start(dead.serve)
    observe = {"access_log": "off", "tracing": tracing}
    a, _ = await three_sidecars(
        nursery, app_c, (b"traceparent",), before_b=(f"127.0.0.1:{dead.port}",), observe=observe
    )
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{a.outbound[1]}") as http:
        assert (await http.get("http://b/start")).status_code == 200
    spans: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(spans) < 5:  # A: request + retry; B: server, request; C: server
            seen = await collector.posts.receive()
            spans += json.loads(seen.body)
    assert len({s["traceId"] for s in spans}) == 1  # one trace
    by_id = {s["id"]: s for s in spans}
    roots = [s for s in spans if "parentId" not in s]
    assert len(roots) == 1 and roots[0]["localEndpoint"]["serviceName"] == "a"
    assert app_c.seen[0].header(b"traceparent") is not None

    def chain(span: dict[str, Any]) -> list[str]:
        names = []
        while span is not None:
            names.append(f"{span['localEndpoint']['serviceName']}:{span.get('kind', 'INTERNAL')}")
            span = by_id.get(span.get("parentId", ""))  # type: ignore[assignment]
        return names[::-1]

    deepest = max(spans, key=lambda s: len(chain(s)))
    assert len(spans) == 5
    assert chain(deepest) == [
        "a:CLIENT",  # the request at A (its first attempt met the dead instance)
        "a:CLIENT",  # A's retry, a child span
        "b:SERVER",  # B's inbound
        "b:CLIENT",  # app B's call to C, one attempt: one span
        "c:SERVER",  # C's inbound
    ]
    root = roots[0]
    assert root["tags"]["http.response.status_code"] == "200"  # the request's outcome


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
async def test_the_dashboard_shows_live_services_in_a_real_browser(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    provider = await app(nursery, "p")
    _, bound = await consumer(nursery, [instance(provider)])
    stop = trio.Event()

    async def traffic() -> None:
        async with client(bound) as http:
            while not stop.is_set():
                await http.get("http://orders/a")
                await trio.sleep(0.01)

    nursery.start_soon(traffic)
    async with admin(bound) as http:
        with trio.fail_after(10):
            while True:  # poll the admin API until a figure for `orders` exists
                services = (await http.get("/v1/overview")).json()["services"]
                if services.get("orders", {}).get("live"):
                    break
                await trio.sleep(0.05)
        overview = (await http.get("/v1/overview")).json()
    assert overview["identity"]["service"] == "web"
    assert overview["services"]["orders"]["live"]["rps"] > 0
    dom = await chromium(f"http://127.0.0.1:{bound.admin[1]}/", tmp_path / "profile", "--dump-dom")
    stop.set()
    assert "orders" in dom and "web" in dom
    assert "Disconnected" not in dom or "hidden" in dom


async def test_connect_errors_and_refused_connections_are_counted(
    nursery: trio.Nursery,
) -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there: every connect fails
    raw = sidecar_config(
        registry={"services": {"orders": [f"127.0.0.1:{closed_port}"]}},
        limits={"max_connections": 1},
    )
    _, bound = await start_sidecar(nursery, raw)
    async with client(bound) as http:
        assert (await http.get("http://orders/a")).status_code == 502
        held = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
        async with held:
            with trio.fail_after(5):
                while True:  # the second connection is over the limit: refused
                    extra = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
                    async with extra:
                        answer = await extra.receive_some(1024)
                    if b" 503 " in answer:
                        break
    async with admin(bound) as http:
        text = (await http.get("/metrics")).text
    assert 'trimesh_upstream_connect_errors_total{service="orders"} 1.0' in text
    assert 'trimesh_connections_refused_total{listener="outbound",reason="max-connections"}' in text
