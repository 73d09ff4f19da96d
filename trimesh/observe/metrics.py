"""Prometheus metrics: request series counted per finished request, the rest read at scrape.

`Metrics.observe(rec)` runs once per request on the hot path: it folds the
record's labels (see "Cardinality rules" in docs/observability.md), finds the
pre-bound `prometheus_client` children for that label set in a dict and
increments them. Everything that is state rather than an event (connections,
registry, breakers, policy counters) is read from `MeshState`, which the
sidecar builds when Prometheus scrapes. Each `Metrics` owns its registry:
several sidecars may share a process (the tests do).

Resource handling: distinct services, sources and error kinds are capped
(`LabelCap`) and so is the number of bound label sets; past a cap, new values
fold into "other", so a flood of random names cannot grow memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trimesh import __version__
from trimesh.observe.live import OTHER, Finished, LabelCap, LatencyWindow, service_label

# 0.25 ms to 30 s: a loopback hop is a fraction of a millisecond, a slow
# upstream hits the default 30 s response timeout.
DURATION_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
REQUEST_LABELS = ("direction", "service", "source", "status_code", "error")
DURATION_LABELS = ("direction", "service", "source", "status_class")


@attrs.frozen
class MeshState:
    """The sidecar's state at scrape time; every field may be left at its default.

    Counters are totals since start; gauges are values now. Keys are label
    values (tuples where the series has two labels, in the order named).
    """

    # {"active": n, "idle": n}: pooled upstream connections.
    upstream_connections: Mapping[str, int] = attrs.field(factory=dict)
    upstream_connect_errors: Mapping[str, int] = attrs.field(factory=dict)  # service
    downstream_connections: Mapping[str, int] = attrs.field(factory=dict)  # listener
    connections_refused: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    registry_up: bool | None = None  # None: no registry session (static)
    registry_instances: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    registry_heartbeat_failures: int = 0
    registry_watch_restarts: int = 0
    retry_budget_exhausted: Mapping[str, int] = attrs.field(factory=dict)  # service
    circuit_state: Mapping[str, int] = attrs.field(factory=dict)  # 0 closed, 1 half-open, 2 open
    circuit_rejected: Mapping[str, int] = attrs.field(factory=dict)  # service
    bulkhead_rejected: Mapping[str, int] = attrs.field(factory=dict)  # service
    rate_limited: Mapping[tuple[str, str], int] = attrs.field(factory=dict)  # direction, service
    ejections: Mapping[str, int] = attrs.field(factory=dict)  # service
    faults_injected: Mapping[tuple[str, str], int] = attrs.field(factory=dict)  # service, kind
    log_lines_dropped: int = 0


class _Series:
    """The bound children of one label set, so `observe` does no label lookups."""

    __slots__ = ("duration", "mesher", "request_bytes", "requests", "response_bytes", "service")

    def __init__(
        self, metrics: Metrics, key: tuple[str, str, str | None, int | None, str | None]
    ) -> None:
        direction, service, raw_source, status, raw_error = key
        source, error = raw_source or "", raw_error or ""
        code = "" if status is None else str(status)
        status_class = "" if status is None else f"{status // 100}xx"
        self.service = service
        self.requests = metrics.requests.labels(direction, service, source, code, error)
        self.duration = metrics.duration.labels(direction, service, source, status_class)
        self.request_bytes = metrics.request_bytes.labels(direction, service)
        self.response_bytes = metrics.response_bytes.labels(direction, service)
        self.mesher = None if metrics.mesher is None else metrics.mesher.series(direction, service)


class Metrics:
    """The metrics of one sidecar and their exposition (`render`)."""

    def __init__(
        self,
        *,
        mesher_names: bool = False,
        snapshot: Callable[[], MeshState] | None = None,
        service: str = "",
        app: str = "default",
        version: str = "",
        max_services: int = 500,
        max_sources: int = 100,
        max_series: int = 5000,
    ) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "trimesh_requests", "Requests finished", REQUEST_LABELS, registry=reg
        )
        self.duration = Histogram(
            "trimesh_request_duration",
            "Time from the request head to the end of the response",
            DURATION_LABELS,
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        byte_labels = ("direction", "service")
        self.request_bytes = Counter(
            "trimesh_request",
            "Request body bytes received",
            byte_labels,
            unit="bytes",
            registry=reg,
        )
        self.response_bytes = Counter(
            "trimesh_response", "Response body bytes sent", byte_labels, unit="bytes", registry=reg
        )
        self.retries = Counter(
            "trimesh_retries",
            "Attempts made again (retry) or in parallel (hedge)",
            ("service", "reason"),
            registry=reg,
        )
        self.spans_dropped = Counter(
            "trimesh_spans_dropped", "Trace spans dropped: export queue full", registry=reg
        )
        Info("trimesh_build", "trimesh build", registry=reg).info({"version": __version__})
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        # Collectors that read the sidecar's own state: only on the event loop.
        self._on_loop: list[Collector] = []
        if snapshot is not None:
            self._on_loop.append(_StateCollector(snapshot))
        self.mesher = MesherSeries(service, app, version) if mesher_names else None
        if self.mesher is not None:
            self._on_loop.append(self.mesher)
        self._services = LabelCap(max_services)
        self._sources = LabelCap(max_sources)
        self._errors = LabelCap(64)
        self._max_series = max_series
        self._series: dict[tuple[str, str, str | None, int | None, str | None], _Series] = {}

    def __repr__(self) -> str:
        return (
            f"<Metrics series={len(self._series)}/{self._max_series}"
            f" services={len(self._services)} sources={len(self._sources)}>"
        )

    def observe(self, rec: Finished) -> None:
        """Count one finished request (hot path: a dict lookup and a few increments)."""
        service = service_label(rec, self._services)
        source = rec.source
        if source is not None:
            source = self._sources(source)
        error = rec.error
        if error is not None:
            error = self._errors(error)
        key = (rec.direction, service, source, rec.status, error)
        series = self._series.get(key)
        if series is None:
            series = self._bind(key)
        duration = rec.duration
        if duration is None:
            duration = time.monotonic() - rec.started
        series.requests.inc()
        series.duration.observe(duration)
        if rec.bytes_in:
            series.request_bytes.inc(rec.bytes_in)
        if rec.bytes_out:
            series.response_bytes.inc(rec.bytes_out)
        if rec.retries:
            self.retries.labels(series.service, "retry").inc(rec.retries)
        if rec.hedges:
            self.retries.labels(series.service, "hedge").inc(rec.hedges)
        if series.mesher is not None:
            series.mesher.observe(rec.status, duration, rec.started + duration)

    def _bind(self, key: tuple[str, str, str | None, int | None, str | None]) -> _Series:
        if len(self._series) >= self._max_series:
            # Over budget: a new label set shares one overflow set per status and error.
            direction, _, _, status, error = key
            key = (direction, OTHER, OTHER, status, error)
            series = self._series.get(key)
            if series is not None:
                return series
        series = self._series[key] = _Series(self, key)
        return series

    def count_dropped_spans(self, n: int) -> None:
        """Called by the tracing exporter when its queue was full."""
        self.spans_dropped.inc(n)

    def render(self, accept: str | None) -> tuple[str, bytes]:
        """(content type, body): OpenMetrics if `accept` asks for it, else text 0.0.4.

        Runs wholly on the calling thread: encoding costs ~8 us per sample
        (a few ms for a sidecar calling ten services), so the admin listener
        uses `render_off_loop`.
        """
        encoder, content_type = choose_encoder(accept or "")
        return content_type, encoder(_Scrape(self.registry, self._loop_families()))

    async def render_off_loop(self, accept: str | None) -> tuple[str, bytes]:
        """`render`, with the encoding in a worker thread so the event loop keeps serving.

        The sidecar's state is read here, on the loop; the thread then reads
        only prometheus-client's children, which take their own locks.
        """
        encoder, content_type = choose_encoder(accept or "")
        scrape = _Scrape(self.registry, self._loop_families())
        return content_type, await trio.to_thread.run_sync(encoder, scrape)

    def sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample, as exposed now (for tests and the admin API)."""
        for family in _Scrape(self.registry, self._loop_families()).collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return float(sample.value)
        return None

    def _loop_families(self) -> list[Metric]:
        return [family for collector in self._on_loop for family in collector.collect()]


class _Scrape(Collector):
    """One scrape: the registry's families, then those already read on the loop."""

    def __init__(self, registry: CollectorRegistry, families: list[Metric]) -> None:
        self._registry = registry
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._families


class _MesherCell:
    """Mesher's figures for one (service_name, app, version)."""

    __slots__ = ("counts", "latency_sum", "window")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0, 0]  # requests, successes, failures, 4xx, 5xx
        self.latency_sum = 0.0
        # Go's summary default: quantiles over the last 10 minutes.
        self.window = LatencyWindow(120.0, 5)

    def observe(self, status: int | None, seconds: float, now: float) -> None:
        counts = self.counts
        counts[0] += 1
        if status is None:
            counts[2] += 1  # no answer at all: a failure, of neither class
        elif 200 <= status < 300:
            counts[1] += 1
        elif status >= 400:
            counts[2] += 1
            counts[3 if status < 500 else 4] += 1
        self.latency_sum += seconds
        self.window.observe(seconds, now)


class MesherSeries(Collector):
    """ServiceComb Mesher's metric names and labels (`observe.metrics.mesher_names`).

    Labels `service_name, app, version` as Mesher set them: the target service
    for outbound calls, our own for inbound ones; `version` is ours inbound and
    empty outbound (the instance version is not carried to the record).
    `status_4xx`/`status_5xx` keep Mesher's names without `_total`, so they are
    exposed untyped; `request_latency_seconds` is a summary with Mesher's
    quantiles 0.5/0.9/0.99 over the last 10 minutes.
    """

    def __init__(self, service: str, app: str, version: str) -> None:
        self.service, self.app, self.version = service, app, version
        self.started = time.time()
        self._cells: dict[tuple[str, str], _MesherCell] = {}

    def series(self, direction: str, service: str) -> _MesherCell:
        key = (service, self.version if direction == "inbound" else "")
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _MesherCell()
        return cell

    def collect(self) -> Iterator[Metric]:
        names = ("service_name", "app", "version")
        counters = [
            CounterMetricFamily(name, name, labels=names)
            for name in ("requests_total", "successes_total", "failures_total")
        ]
        untyped = [Metric(name, name, "unknown") for name in ("status_4xx", "status_5xx")]
        latency = Metric("request_latency_seconds", "request_latency_seconds", "summary")
        now = time.monotonic()
        for (service, version), cell in self._cells.items():
            labels = {"service_name": service, "app": self.app, "version": version}
            for counter, count in zip(counters, cell.counts[:3], strict=True):
                counter.add_metric(list(labels.values()), count)
            for family, count in zip(untyped, cell.counts[3:], strict=True):
                family.add_sample(family.name, labels, count)
            counts, _, _ = cell.window.read(now)
            for q in (0.5, 0.9, 0.99):
                seconds = cell.window.quantile(q, counts)
                latency.add_sample(
                    latency.name,
                    {**labels, "quantile": str(q)},
                    math.nan if seconds is None else seconds,
                )
            latency.add_sample(latency.name + "_sum", labels, cell.latency_sum)
            latency.add_sample(latency.name + "_count", labels, cell.counts[0])
        yield from counters
        yield from untyped
        yield latency
        start = GaugeMetricFamily("start_time_seconds", "start_time_seconds", labels=names)
        start.add_metric([self.service, self.app, self.version], self.started)
        yield start


# What `_StateCollector` reads from `MeshState`: field, metric, help, labels, type.
STATE_FAMILIES: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("upstream_connections", "trimesh_upstream_connections",
     "Pooled upstream connections", ("state",), "gauge"),
    ("upstream_connect_errors", "trimesh_upstream_connect_errors",
     "Upstream connects that failed", ("service",), "counter"),
    ("downstream_connections", "trimesh_downstream_connections",
     "Open client connections", ("listener",), "gauge"),
    ("connections_refused", "trimesh_connections_refused",
     "Client connections refused at accept", ("listener", "reason"), "counter"),
    ("registry_up", "trimesh_registry_up",
     "1 while the registry session is healthy", (), "gauge"),
    ("registry_instances", "trimesh_registry_instances",
     "Instances the registry lists", ("service", "status"), "gauge"),
    ("registry_heartbeat_failures", "trimesh_registry_heartbeat_failures",
     "Heartbeats that failed", (), "counter"),
    ("registry_watch_restarts", "trimesh_registry_watch_restarts",
     "Registry watches started again", (), "counter"),
    ("retry_budget_exhausted", "trimesh_retry_budget_exhausted",
     "Retries the retry budget refused", ("service",), "counter"),
    ("circuit_state", "trimesh_circuit_state",
     "Circuit breaker state: 0 closed, 1 half-open, 2 open", ("service",), "gauge"),
    ("circuit_rejected", "trimesh_circuit_rejected",
     "Requests refused by an open circuit", ("service",), "counter"),
    ("bulkhead_rejected", "trimesh_bulkhead_rejected",
     "Requests refused over max_concurrent", ("service",), "counter"),
    ("rate_limited", "trimesh_rate_limited",
     "Requests refused by a rate limit", ("direction", "service"), "counter"),
    ("ejections", "trimesh_ejections",
     "Instances ejected by outlier detection", ("service",), "counter"),
    ("faults_injected", "trimesh_fault_injected",
     "Faults injected", ("service", "kind"), "counter"),
    ("log_lines_dropped", "trimesh_log_lines_dropped",
     "Log lines dropped because the log sink was full", (), "counter"),
)  # fmt: skip


class _StateCollector(Collector):
    """Reads `MeshState` at scrape time and yields its families."""

    def __init__(self, snapshot: Callable[[], MeshState]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        for field, name, doc, labels, kind in STATE_FAMILIES:
            values = getattr(state, field)
            if values is None:
                continue  # e.g. registry_up without a registry session
            if not labels:
                values = {(): int(values)}
            family: Metric
            if kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=labels)
            else:
                family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in values.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            yield family
