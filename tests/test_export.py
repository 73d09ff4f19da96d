"""Span export to a real loopback collector, and what a bad collector costs the producer.

The OTLP payloads are read back with the official `opentelemetry-proto` message
types; the Zipkin payload is checked against Zipkin's v2 span schema. A dead or
silent collector must cost `Span.end` nothing: the queue stays bounded, drops are
counted, and a shutdown flush ends by its deadline.
"""

from __future__ import annotations

import base64
import inspect
import ipaddress
import json
import logging
import math
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.servers import Seen, Upstream
from trimesh import __version__
from trimesh.observe.export import Exporter
from trimesh.observe.tracing import Span, Tracer, extract, parse_tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_PARENT = "00f067aa0ba902b7"
T0 = 1_700_000_000_000_000_000  # ns since the epoch


class Collector:
    """A recording collector: answers `status`, or never answers when `hang`."""

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self._send, self.posts = trio.open_memory_channel[Seen](math.inf)
        self.app = Upstream(self._answer)

    async def _answer(
        self, seen: Seen, _: Upstream
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self._send.send_nowait(seen)
        if self.hang:
            await trio.sleep_forever()
        return self.status, [(b"content-type", b"application/json")], b"{}"

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"


async def start_collector(nursery: trio.Nursery, **kwargs: Any) -> Collector:
    collector = Collector(**kwargs)
    await nursery.start(collector.app.serve)
    return collector


def make_tracer(endpoint: str, dropped: list[int] | None = None, **config: Any) -> Tracer:
    on_dropped = None if dropped is None else dropped.append
    return Tracer(
        parse_tracing({"endpoint": endpoint, "exporter": "otlp", **config}, "observe.tracing"),
        service="Orders",
        instance_id="i-1",
        app="shop",
        version="1.2",
        on_dropped=on_dropped,
    )


def exporter_of(tracer: Tracer) -> Exporter:
    assert tracer.exporter is not None
    return tracer.exporter


def request_spans(tracer: Tracer) -> list[Span]:
    """An inbound server span, the outbound request span under it, and its failed attempt."""
    incoming = extract(
        [
            (b"traceparent", f"00-{TRACE}-{REMOTE_PARENT}-01".encode()),
            (b"tracestate", b"vendor=x"),
        ]
    )
    server = tracer.start("GET", "server", incoming, T0)
    server.set_request("GET", "/api/1", "orders", 30103)
    request = tracer.start("GET orders", "internal", server.context, T0 + 1_000)
    attempt = tracer.start("GET", "client", request.context, T0 + 2_000)
    attempt.set_request("GET", "/api/1", "127.0.0.1", 8080, "payments")
    attempt.set_response(None, "upstream-timeout")
    attempt.end(T0 + 1_500_000)
    request.end(T0 + 1_600_000)
    server.set_response(504, None)
    server.end(T0 + 1_700_000)
    return [attempt, request, server]


# --- OTLP -----------------------------------------------------------------------------


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/HTTP JSON writes ids as hex, where proto3 JSON (json_format) expects base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("traceId", "spanId", "parentSpanId"):
            value = base64.b64encode(bytes.fromhex(value)).decode()
        out[key] = _hex_ids_to_base64(value)
    return out


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value"))


def check_otlp(request: ExportTraceServiceRequest, spans: list[Span]) -> None:
    """`request` holds exactly `spans`, with their ids, parents, kinds, times and attributes."""
    (resource_spans,) = request.resource_spans
    resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
    assert resource == {
        "service.name": "Orders",
        "service.namespace": "shop",
        "service.version": "1.2",
        "service.instance.id": "i-1",
    }
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("trimesh", __version__)
    got = {s.span_id.hex(): s for s in scope_spans.spans}
    assert set(got) == {s.context.span_id for s in spans}
    kinds = {"internal": 1, "server": 2, "client": 3}
    for span in spans:
        pb = got[span.context.span_id]
        assert pb.trace_id.hex() == TRACE and pb.trace_state == "vendor=x"
        assert pb.parent_span_id.hex() == span.context.parent_id
        assert (pb.name, pb.kind) == (span.name, kinds[span.kind])
        assert (pb.start_time_unix_nano, pb.end_time_unix_nano) == (span.start_ns, span.end_ns)
        attributes = {kv.key: _value(kv.value) for kv in pb.attributes}
        assert attributes == {**(span.attributes or {}), "trimesh.instance.id": "i-1"}
        assert pb.status.code == (2 if span.error else 0)
        # Sampled, and whether the parent is remote is known: only the server's is.
        assert pb.flags == 0x101 | (0x200 if span.kind == "server" else 0)
    attempt = got[spans[0].context.span_id]
    assert {kv.key: _value(kv.value) for kv in attempt.attributes} == {
        "http.request.method": "GET",
        "url.path": "/api/1",
        "server.address": "127.0.0.1",
        "server.port": 8080,
        "peer.service": "payments",
        "error.type": "upstream-timeout",
        "trimesh.instance.id": "i-1",
    }


async def test_otlp_json_parses_with_the_official_message_types(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery)
    tracer = make_tracer(collector.endpoint())
    spans = request_spans(tracer)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    seen = collector.posts.receive_nowait()
    assert (seen.method, seen.target) == (b"POST", b"/v1/traces")
    assert seen.header(b"content-type") == b"application/json"
    text = json.dumps(_hex_ids_to_base64(json.loads(seen.body)))
    check_otlp(json_format.Parse(text, ExportTraceServiceRequest()), spans)
    assert exporter_of(tracer).exported == 3


async def test_otlp_protobuf_parses_with_the_official_message_types(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery)
    tracer = make_tracer(collector.endpoint() + "/base/", protocol="protobuf")
    spans = request_spans(tracer)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    seen = collector.posts.receive_nowait()
    assert seen.target == b"/base/v1/traces"
    assert seen.header(b"content-type") == b"application/x-protobuf"
    request = ExportTraceServiceRequest()
    request.ParseFromString(seen.body)
    check_otlp(request, spans)


# --- Zipkin ---------------------------------------------------------------------------

# Zipkin's v2 span model (zipkin2-api.yaml), written out as the checks below.
ZIPKIN_FIELDS = {
    "traceId", "name", "parentId", "id", "kind", "timestamp", "duration", "debug", "shared",
    "localEndpoint", "remoteEndpoint", "annotations", "tags",
}  # fmt: skip
HEX = re.compile(r"[0-9a-f]+")


def _check_endpoint(endpoint: Any) -> None:
    assert isinstance(endpoint, dict) and set(endpoint) <= {"serviceName", "ipv4", "ipv6", "port"}
    assert isinstance(endpoint.get("serviceName", ""), str)
    if "ipv4" in endpoint:
        assert ipaddress.ip_address(endpoint["ipv4"]).version == 4
    if "ipv6" in endpoint:
        assert ipaddress.ip_address(endpoint["ipv6"]).version == 6
    if "port" in endpoint:
        assert type(endpoint["port"]) is int and 0 < endpoint["port"] < 65536


def check_zipkin_span(span: Mapping[str, Any]) -> None:
    """One span against the schema: field set, id formats, types, units."""
    assert set(span) <= ZIPKIN_FIELDS and {"traceId", "id"} <= set(span)
    assert len(span["traceId"]) in (16, 32) and HEX.fullmatch(span["traceId"])
    for key in ("id", "parentId"):
        if key in span:
            assert len(span[key]) == 16 and HEX.fullmatch(span[key])
    assert span.get("kind", "CLIENT") in ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
    assert isinstance(span.get("name", ""), str) and span.get("name", "") == span["name"].lower()
    assert type(span["timestamp"]) is int and span["timestamp"] > 0
    assert type(span["duration"]) is int and span["duration"] >= 1
    for key in ("debug", "shared"):
        assert type(span.get(key, False)) is bool
    for key in ("localEndpoint", "remoteEndpoint"):
        if key in span:
            _check_endpoint(span[key])
    for annotation in span.get("annotations", []):
        assert type(annotation["timestamp"]) is int and isinstance(annotation["value"], str)
    tags = span.get("tags", {})
    assert isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())


async def test_zipkin_payload_matches_the_v2_span_schema(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery, status=202)
    tracer = make_tracer(collector.endpoint(), exporter="zipkin")
    attempt, request, server = request_spans(tracer)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    seen = collector.posts.receive_nowait()
    assert (seen.target, seen.header(b"content-type")) == (b"/api/v2/spans", b"application/json")
    payload = json.loads(seen.body)
    assert isinstance(payload, list) and len(payload) == 3
    for item in payload:
        check_zipkin_span(item)
    by_id = {item["id"]: item for item in payload}
    z_attempt, z_request, z_server = (by_id[s.context.span_id] for s in (attempt, request, server))
    assert z_server["parentId"] == REMOTE_PARENT and z_server["kind"] == "SERVER"
    assert z_request["parentId"] == server.context.span_id and "kind" not in z_request
    assert z_attempt["parentId"] == request.context.span_id and z_attempt["kind"] == "CLIENT"
    assert z_attempt["remoteEndpoint"] == {
        "serviceName": "payments",
        "ipv4": "127.0.0.1",
        "port": 8080,
    }
    assert z_attempt["localEndpoint"] == {"serviceName": "orders"}
    assert (z_attempt["timestamp"], z_attempt["duration"]) == ((T0 + 2_000) // 1000, 1498)
    assert z_attempt["tags"]["error"] == "upstream-timeout"
    assert z_attempt["tags"]["server.port"] == "8080"
    assert z_server["tags"]["error"] == "504" and z_server["tags"]["trimesh.instance.id"] == "i-1"


# --- batching -------------------------------------------------------------------------


def spans_in(seen: Seen) -> int:
    doc = json.loads(seen.body)
    return sum(len(s["spans"]) for r in doc["resourceSpans"] for s in r["scopeSpans"])


def end_spans(tracer: Tracer, count: int) -> None:
    for _ in range(count):
        tracer.start("GET", "server").end()


async def test_a_full_batch_is_sent_at_once(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery)
    tracer = make_tracer(collector.endpoint(), batch_size=4, flush_interval=3600)
    await nursery.start(exporter_of(tracer).run)
    end_spans(tracer, 3)
    await trio.testing.wait_all_tasks_blocked()
    assert collector.app.seen == []  # a partial batch waits for the interval
    end_spans(tracer, 1)
    with trio.fail_after(10):
        seen = await collector.posts.receive()
    assert spans_in(seen) == 4


async def test_a_partial_batch_is_sent_every_flush_interval(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery)
    tracer = make_tracer(collector.endpoint(), flush_interval="50ms")
    await nursery.start(exporter_of(tracer).run)
    started = trio.current_time()
    end_spans(tracer, 2)
    with trio.fail_after(10):
        seen = await collector.posts.receive()
    assert spans_in(seen) == 2 and trio.current_time() - started >= 0.05


async def test_shutdown_flush_sends_every_queued_batch(nursery: trio.Nursery) -> None:
    collector = await start_collector(nursery)
    tracer = make_tracer(collector.endpoint(), batch_size=4, max_queue=16)
    end_spans(tracer, 10)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    sizes = [spans_in(collector.posts.receive_nowait()) for _ in range(3)]
    assert sizes == [4, 4, 2]
    assert (exporter_of(tracer).exported, len(exporter_of(tracer))) == (10, 0)


# --- bad collectors -------------------------------------------------------------------


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_dead_collector_costs_the_producer_nothing_but_counted_drops(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    assert not inspect.iscoroutinefunction(Span.end)
    assert not inspect.iscoroutinefunction(Exporter.offer)
    dropped: list[int] = []
    tracer = make_tracer(
        f"http://127.0.0.1:{free_port()}",
        dropped,
        max_queue=16,
        batch_size=8,
        flush_interval="10ms",
    )
    exporter = exporter_of(tracer)
    await nursery.start(exporter.run)
    producing = 0.0
    for _ in range(20):
        t = time.perf_counter()
        end_spans(tracer, 10)
        producing += time.perf_counter() - t
        assert len(exporter) <= 16
        await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(10):
        await exporter.flush()  # what is still queued fails the same way
    assert exporter.exported == 0
    assert sum(dropped) == exporter.dropped == 200
    # Starting and ending a span stays a few µs however dead the collector is.
    assert producing / 200 < 500e-6
    failures = [r for r in caplog.records if "span export" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING


async def test_a_silent_collector_bounds_the_queue_and_the_shutdown_flush(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    collector = await start_collector(nursery, hang=True)
    dropped: list[int] = []
    tracer = make_tracer(
        collector.endpoint(), dropped, max_queue=8, batch_size=4, flush_interval="1s", timeout="5s"
    )
    exporter = exporter_of(tracer)
    await nursery.start(exporter.run)
    end_spans(tracer, 4)
    await collector.posts.receive()  # the collector has the batch and sits on it
    posted = trio.current_time()
    end_spans(tracer, 20)  # while that POST hangs: 8 fit, 12 are dropped at once
    assert (len(exporter), sum(dropped)) == (8, 12)
    await trio.sleep(4.9)
    assert exporter.dropped == 12
    await trio.sleep(0.2)  # the hung batch was given up after `timeout`, and counted
    assert exporter.dropped == 16
    with trio.move_on_after(2) as scope:
        await exporter.flush()  # waits behind the next hung POST until the deadline
    assert scope.cancelled_caught
    assert trio.current_time() - posted == pytest.approx(7.1)
    assert sum(dropped) == exporter.dropped and exporter.exported == 0
    assert exporter.dropped + len(exporter) <= 24


async def test_a_collector_that_refuses_batches_counts_them_until_it_recovers(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trimesh.observe.export")
    collector = await start_collector(nursery, status=503)
    dropped: list[int] = []
    tracer = make_tracer(collector.endpoint(), dropped)
    end_spans(tracer, 3)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    assert dropped == [3]
    collector.status = 200
    end_spans(tracer, 2)
    with trio.fail_after(10):
        await exporter_of(tracer).flush()
    assert (exporter_of(tracer).exported, exporter_of(tracer).dropped) == (2, 3)
    messages = [r.getMessage() for r in caplog.records if r.name == "trimesh.observe.export"]
    assert "status 503" in messages[0] and "works again (3 dropped so far)" in messages[1]
