"""Prometheus metrics (`trimesh.observe.metrics`): series, folding, exposition, a real scrape."""

from __future__ import annotations

import json
import random
import re
import time
import tracemalloc
from pathlib import Path

import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.prometheus_server import (
    MetricsEndpoint,
    PrometheusServer,
    find_prometheus,
    find_promtool,
)
from tests.unit.test_live import record
from trimesh import __version__
from trimesh.observe.metrics import STATE_FAMILIES, MeshState, Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "trimesh.json"
# What Grafana substitutes in the dashboard's queries, for running them ourselves.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$job": ".*",
    "$instance": ".*",
    "$direction": ".*",
    "$service": ".*",
}
OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.42 sends


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.sample_value(name, labels)


def request_labels(**labels: str) -> dict[str, str]:
    """The labels of an outbound 200 from "orders", with `labels` replaced."""
    base = {"direction": "outbound", "service": "orders", "source": "", "status_code": "200"}
    return {**base, "error": "", **labels}


def full_state() -> MeshState:
    return MeshState(
        upstream_connections={"active": 3, "idle": 5},
        upstream_connect_errors={"orders": 2},
        downstream_connections={"outbound": 4, "inbound": 1},
        connections_refused={("outbound", "overloaded"): 7},
        registry_up=True,
        registry_instances={("orders", "UP"): 2, ("orders", "DOWN"): 1},
        registry_heartbeat_failures=1,
        registry_watch_restarts=2,
        retry_budget_exhausted={"orders": 3},
        circuit_state={"orders": 2, "pay": 0},
        circuit_rejected={"orders": 9},
        bulkhead_rejected={"orders": 1},
        rate_limited={("outbound", "orders"): 4},
        ejections={"orders": 1},
        faults_injected={("orders", "abort"): 5},
        log_lines_dropped=6,
    )


def test_requests_are_counted_with_folded_labels() -> None:
    metrics = Metrics()
    metrics.observe(record())
    metrics.observe(record())
    metrics.observe(record(status=None, error="downstream-disconnect"))
    metrics.observe(record(service="no-such", status=502, error="service-not-found"))
    metrics.observe(record(service=None, status=400, error="bad-request"))
    metrics.observe(record(direction="inbound", service="me", source="caller"))
    total = "trimesh_requests_total"
    assert value(metrics, total, **request_labels()) == 2
    disconnected = request_labels(status_code="", error="downstream-disconnect")
    assert value(metrics, total, **disconnected) == 1
    unknown = request_labels(service="unknown", status_code="502", error="service-not-found")
    assert value(metrics, total, **unknown) == 1
    bad = request_labels(service="unknown", status_code="400", error="bad-request")
    assert value(metrics, total, **bad) == 1
    inbound = request_labels(direction="inbound", service="me", source="caller")
    assert value(metrics, total, **inbound) == 1
    assert value(metrics, total, **request_labels(service="no-such")) is None


def test_duration_bytes_and_retries() -> None:
    metrics = Metrics()
    metrics.observe(record(duration=0.0004, bytes_in=10, bytes_out=300, retries=2))
    metrics.observe(record(duration=2.0, status=503, hedges=1))
    metrics.observe(record(duration=50.0, status=None))
    hist = "trimesh_request_duration_seconds"
    ok = {"direction": "outbound", "service": "orders", "source": "", "status_class": "2xx"}
    assert value(metrics, hist + "_bucket", **ok, le="0.00025") == 0
    assert value(metrics, hist + "_bucket", **ok, le="0.0005") == 1
    assert value(metrics, hist + "_sum", **(ok | {"status_class": "5xx"})) == 2.0
    assert value(metrics, hist + "_bucket", **(ok | {"status_class": ""}), le="30.0") == 0
    assert value(metrics, hist + "_bucket", **(ok | {"status_class": ""}), le="+Inf") == 1
    pair = {"direction": "outbound", "service": "orders"}
    assert value(metrics, "trimesh_request_bytes_total", **pair) == 10
    assert value(metrics, "trimesh_response_bytes_total", **pair) == 300
    retries = "trimesh_retries_total"
    assert value(metrics, retries, service="orders", reason="retry") == 2
    assert value(metrics, retries, service="orders", reason="hedge") == 1


def test_state_is_read_at_scrape_time() -> None:
    calls: list[int] = []

    def snapshot() -> MeshState:
        calls.append(1)
        return full_state()

    metrics = Metrics(snapshot=snapshot)
    for _ in range(10):
        metrics.observe(record())
    assert calls == []  # never on the request path
    _, body = metrics.render(None)
    assert len(calls) == 1
    families = {f.name: f for f in parse_text(body.decode())}
    for _, name, _, _, _ in STATE_FAMILIES:
        assert name in families, name
    assert value(metrics, "trimesh_upstream_connections", state="idle") == 5
    assert value(metrics, "trimesh_registry_up") == 1
    assert value(metrics, "trimesh_registry_instances", service="orders", status="DOWN") == 1
    assert value(metrics, "trimesh_circuit_state", service="orders") == 2
    assert value(metrics, "trimesh_rate_limited_total", direction="outbound", service="orders") == 4
    assert value(metrics, "trimesh_fault_injected_total", service="orders", kind="abort") == 5
    assert value(metrics, "trimesh_registry_heartbeat_failures_total") == 1
    assert value(metrics, "trimesh_log_lines_dropped_total") == 6


def test_registry_up_is_absent_without_a_registry_session() -> None:
    metrics = Metrics(snapshot=MeshState)
    assert value(metrics, "trimesh_registry_up") is None


def test_build_process_and_span_figures() -> None:
    metrics = Metrics()
    metrics.count_dropped_spans(3)
    assert value(metrics, "trimesh_build_info", version=__version__) == 1
    assert value(metrics, "trimesh_spans_dropped_total") == 3
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):  # fmt: skip
        assert value(metrics, name) is not None, name


def test_sidecars_in_one_process_keep_their_own_counts() -> None:
    first, second = Metrics(), Metrics()
    first.observe(record())
    assert value(first, "trimesh_requests_total", **request_labels()) == 1
    assert value(second, "trimesh_requests_total", **request_labels()) is None


def test_mesher_names_follow_mesher() -> None:
    metrics = Metrics(mesher_names=True, service="me", app="shop", version="1.2")
    now = time.monotonic()  # the quantile window is read at scrape time
    for status in (200, 201, 302, 404, 429, 500, 503, None):
        metrics.observe(record(status=status, duration=0.004, started=now))
    metrics.observe(record(direction="inbound", service="me", duration=0.001, started=now))
    target = {"service_name": "orders", "app": "shop", "version": ""}
    assert value(metrics, "requests_total", **target) == 8
    assert value(metrics, "successes_total", **target) == 2
    assert value(metrics, "failures_total", **target) == 5
    assert value(metrics, "status_4xx", **target) == 2
    assert value(metrics, "status_5xx", **target) == 2
    assert value(metrics, "request_latency_seconds_count", **target) == 8
    p99 = value(metrics, "request_latency_seconds", **target, quantile="0.99")
    assert p99 == pytest.approx(0.004, rel=0.25)
    own = {"service_name": "me", "app": "shop", "version": "1.2"}
    assert value(metrics, "requests_total", **own) == 1
    assert value(metrics, "start_time_seconds", **own) is not None
    assert value(Metrics(), "requests_total", **target) is None  # off by default


def test_render_negotiates_the_format() -> None:
    metrics = Metrics()
    metrics.observe(record())
    text_type, text = metrics.render(None)
    assert text_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in text
    om_type, om = metrics.render(OPENMETRICS_ACCEPT)
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    assert om.endswith(b"# EOF\n")
    assert metrics.render("text/plain")[0] == text_type


async def test_render_off_loop_exposes_the_same_series() -> None:
    metrics = Metrics(mesher_names=True, snapshot=full_state)
    for status in (200, 503):
        metrics.observe(record(status=status, started=time.monotonic()))

    def steady(body: bytes, om: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples that do not move between two scrapes (no process figures)."""
        families = (parse_openmetrics if om else parse_text)(body.decode())
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families
            if not f.name.startswith(("process_", "python_"))
            for s in f.samples
        }

    for accept in (None, OPENMETRICS_ACCEPT):
        here = metrics.render(accept)
        there = await metrics.render_off_loop(accept)
        assert here[0] == there[0]
        om = accept is not None
        assert steady(here[1], om) == steady(there[1], om)
        failed = (
            "trimesh_requests_total",
            tuple(sorted(request_labels(status_code="503").items())),
        )
        assert steady(there[1], om)[failed] == 1


async def test_promtool_accepts_the_text_exposition() -> None:
    promtool = find_promtool()
    for mesher_names in (False, True):
        metrics = Metrics(mesher_names=mesher_names, snapshot=full_state)
        for status in (200, 404, 503, None):
            metrics.observe(record(status=status, retries=1))
        _, body = metrics.render(None)
        done = await trio.run_process(
            [promtool, "check", "metrics"],
            stdin=body,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        problems = (done.stdout + done.stderr).decode()
        assert (done.returncode, problems) == (0, ""), f"mesher_names={mesher_names}"


def test_openmetrics_exposition_parses_strictly() -> None:
    # Debian's promtool (2.42) lints only the text format; the OpenMetrics
    # parser of prometheus-client is strict about that grammar, and the real
    # Prometheus below scrapes OpenMetrics too.
    metrics = Metrics(mesher_names=True, snapshot=full_state)
    for status in (200, 503, None):
        metrics.observe(record(status=status))
    _, body = metrics.render(OPENMETRICS_ACCEPT)
    names = {family.name: family.type for family in parse_openmetrics(body.decode())}
    assert names["trimesh_requests"] == "counter"
    assert names["trimesh_request_duration_seconds"] == "histogram"
    assert names["trimesh_build"] == "info"
    assert names["status_4xx"] == "unknown"
    assert names["request_latency_seconds"] == "summary"


def random_flood(metrics: Metrics, rng: random.Random, count: int) -> None:
    """Requests naming random hosts: unresolved, denied, or resolved with random callers."""
    for i in range(count):
        name = f"{rng.getrandbits(48):x}.example"
        kind = i % 4
        if kind == 0:
            metrics.observe(record(service=None, status=502, error="service-not-found"))
        elif kind == 1:
            metrics.observe(record(service=name, status=403, error="egress-denied"))
        elif kind == 2:
            metrics.observe(record(service=name, status=rng.choice((200, 404, 503))))
        else:
            metrics.observe(record(direction="inbound", service="me", source=name))


def sample_count(metrics: Metrics) -> int:
    _, body = metrics.render(None)
    return sum(len(family.samples) for family in parse_text(body.decode()))


def test_a_flood_of_random_names_keeps_series_and_memory_bounded() -> None:
    rng = random.Random(9)
    metrics = Metrics(max_services=20, max_sources=10, max_series=200)
    baseline = sample_count(metrics)
    random_flood(metrics, rng, 100_000)
    # Per label set: a counter and its _created (2), a histogram of 16 buckets,
    # +Inf, _count, _sum and _created (20); two byte counters per service (4).
    bound = baseline + 201 * (2 + 20 + 4)
    assert sample_count(metrics) <= bound
    shape = re.fullmatch(r"<Metrics series=(\d+)/200 services=20 sources=10>", repr(metrics))
    assert shape is not None and int(shape[1]) <= 201, repr(metrics)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        random_flood(metrics, rng, 20_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, f"grew {grown} bytes over 20,000 more random names"


def test_unresolved_names_share_one_series() -> None:
    metrics = Metrics()
    rng = random.Random(3)
    kinds = ("service-not-found", "egress-denied", "registry-unavailable")

    def flood(count: int) -> None:
        for i in range(count):
            name = None if i % 5 == 0 else f"{rng.getrandbits(48):x}.example"
            metrics.observe(record(service=name, status=502, error=kinds[i % 3]))

    flood(1000)
    samples = sample_count(metrics)
    flood(100_000)
    assert sample_count(metrics) == samples
    unknown = request_labels(service="unknown", status_code="502", error="service-not-found")
    assert value(metrics, "trimesh_requests_total", **unknown) == 334 + 33_334
    assert repr(metrics) == "<Metrics series=3/5000 services=0 sources=0>"


def test_past_the_series_budget_new_label_sets_fold_into_other() -> None:
    metrics = Metrics(max_series=2)
    for service in ("a", "b", "c", "d"):
        metrics.observe(record(service=service))
    total = "trimesh_requests_total"
    assert value(metrics, total, **request_labels(service="b")) == 1
    assert value(metrics, total, **request_labels(service="c")) is None
    assert value(metrics, total, **request_labels(service="other", source="other")) == 2


def both(n: int) -> dict[str, float]:
    return {"openmetrics": n, "text": n}


async def test_prometheus_scrapes_the_requests_observed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    binary = find_prometheus()
    metrics = Metrics(mesher_names=True, snapshot=full_state)
    sent: list[int] = []

    def send(n: int) -> None:
        for i in range(n):
            status = (200, 200, 404, 503)[i % 4]
            metrics.observe(record(service=("orders", "pay", "cart")[i % 3], status=status))
            sent.append(status)

    send(37)
    endpoint = MetricsEndpoint(metrics.render_off_loop)
    port = await nursery.start(endpoint.serve)
    jobs = {"openmetrics": f"127.0.0.1:{port}/metrics", "text": f"127.0.0.1:{port}/metrics/text"}
    prometheus = PrometheusServer(tmp_path, jobs, binary)
    expr = "sum by (job) (trimesh_requests_total)"
    try:
        with trio.move_on_after(60):
            await prometheus.start()
            await prometheus.wait_for(expr, "job", both(len(sent)))
            send(50)  # counting goes on between scrapes
            await prometheus.wait_for(expr, "job", both(len(sent)))
        assert await prometheus.values(expr, "job") == both(87)
        for expr, expected in [
            ("sum by (job) (trimesh_request_duration_seconds_count)", 87),
            ("sum by (job) (requests_total)", 87),
            ('sum by (job) (trimesh_requests_total{status_code="503"})', sent.count(503)),
            ("sum by (job) (trimesh_registry_up)", 1),
            ("sum by (job) (up)", 1),
        ]:
            assert await prometheus.values(expr, "job") == both(expected), expr
        for expr in dashboard_queries():  # Prometheus parses every query of the dashboard
            await prometheus.query(expr)
    finally:
        await prometheus.stop()
    served = set(endpoint.served)
    assert any(t.startswith("application/openmetrics-text") for t in served), served
    assert any(t.startswith("text/plain; version=0.0.4") for t in served), served


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, Grafana's variables filled in."""
    model = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", ())]
    for name, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def test_grafana_dashboard_is_a_model_over_our_series() -> None:
    model = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in model["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert all(t["datasource"] == source for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = {p["title"] for p in panels}
    for wanted in ("Request rate per service", "Success rate per service",
                   "p50 latency per service", "p99 latency per service", "Registry up",
                   "Circuit breakers", "Retries and hedges", "Refused by policy"):  # fmt: skip
        assert wanted in titles
    for expr in dashboard_queries():
        assert "$" not in expr, expr
    # Every series a query names is one the sidecar exposes.
    metrics = Metrics(snapshot=full_state)
    metrics.observe(record(retries=1))
    _, body = metrics.render(None)
    exposed = {s.name for f in parse_text(body.decode()) for s in f.samples}
    named = {n for e in dashboard_queries() for n in re.findall(r"\b(?:trimesh|process)_\w+", e)}
    assert named - exposed == set()
