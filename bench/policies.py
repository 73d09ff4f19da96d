"""Scenarios for traffic policies: what they cost when idle, and what they buy when needed.

* `policies`: the same upstream through trimesh with no `policies`/`routes`,
  with 10 route rules + retries + a retry budget + least_request configured
  but not firing, with hedging configured too (a 1 s delay that never
  elapses), and with a circuit breaker, outlier ejection, a bulkhead and a
  rate limit configured but not firing. Same run, same load; the figures are
  ratios of req/s.
* `balancing`: three instances, one ten times slower; round_robin against
  least_request (P2C over peak-EWMA), same load.
* `hedging`: six instances, one slow; no hedge against `hedge: 10ms`; p99
  latency, and the extra upstream load hedging cost (requests the instances
  received per request the client sent). One slow instance in six needs
  hedges for about 17% of requests, inside the default retry budget (20%);
  with more slow traffic than the budget allows, the unhedged rest keeps p99
  where it was, which is the budget doing its job.

Slow instances are `bench/delayserver.py` processes, one per instance.
"""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

from bench import sidecar
from bench.load import Endpoint, LoadResult
from bench.measure import Measured, measure_paths
from bench.procs import HOST, free_port, wait_for_port
from bench.scenarios import Figure, Rig, ScenarioResult

POLICY_COST_TARGET = 0.90  # req/s with policies idle / without, same run (issue 7)
FAST_MS, SLOW_MS = 2.0, 20.0  # balancing: instance delays
HEDGE_FAST_MS, HEDGE_SLOW_MS, HEDGE_DELAY_MS = 2.0, 50.0, 10.0
HEDGE_FAST = 5  # fast instances beside the one slow one
SPREAD_CONNECTIONS = 16  # balancing and hedging: closed-loop clients

_ABSOLUTE = f"http://{sidecar.SERVICE}/"


def _idle_rules() -> list[dict[str, object]]:
    """Nine header rules no bench request matches, then a catch-all to version 1.0."""
    rules: list[dict[str, object]] = [
        {
            "precedence": 10 - i,
            "match": {"headers": {"x-canary": {"exact": f"group-{i}"}}},
            "route": [{"tags": {"version": "2.0"}, "weight": 100}],
        }
        for i in range(9)
    ]
    rules.append({"precedence": 1, "route": [{"tags": {"version": "1.0"}, "weight": 100}]})
    return rules


IDLE_POLICY: dict[str, object] = {
    "load_balancer": "least_request",
    "per_try_timeout": "5s",
    "retry": {
        "attempts": 2,
        "retry_on": ["connect-failure", "reset", "gateway-error"],
        "budget": {"ratio": 0.2, "min_per_second": 10},
    },
}


# Issue 8: breakers, outlier ejection, bulkhead and a rate limit, none of them firing.
RESILIENCE_POLICY: dict[str, object] = {
    "circuit_breaker": {"enabled": True, "request_volume_threshold": 20},
    "outlier": {"consecutive_failures": 5},
    "max_concurrent": 10_000,
    "rate_limit": {"qps": 1_000_000, "burst": 1_000_000},
}


def _endpoint(sc: sidecar.Sidecar, label: str) -> Endpoint:
    return Endpoint(sc.name, label, sc.port, _ABSOLUTE, sidecar.SERVICE, sc.proc.pid)


def policies(rig: Rig) -> ScenarioResult:
    n = rig.connections
    res = ScenarioResult(
        "policies", f"{n} connections: policies configured but not firing vs none, same run"
    )
    instance = [{"address": f"{HOST}:{rig.upstream_port}", "version": "1.0"}]
    routes = {"routes": {sidecar.SERVICE: _idle_rules()}}
    idle = {
        "trimesh-policies": IDLE_POLICY,
        "trimesh-hedge-idle": {**IDLE_POLICY, "hedge": "1s"},
        "trimesh-resilience": RESILIENCE_POLICY,
    }
    configured, hedged, resilient = (
        sidecar.start(
            rig.procs,
            name,
            rig.upstream_port,
            rig.cores.proxy,
            instances=instance,
            extra={**routes, "policies": {"default": policy}},
        )
        for name, policy in idle.items()
    )
    plain = rig.sidecars["trimesh"]
    eps = [
        _endpoint(plain, "trimesh, no policies"),
        _endpoint(configured, "10 rules, retries + budget, least_request (idle)"),
        _endpoint(hedged, "the same plus hedge: 1s (idle)"),
        _endpoint(resilient, "breaker, outlier, bulkhead, rate limit (idle)"),
    ]
    res.runs = measure_paths(rig.gen, eps, n, rig.duration, rig.warmup, rig.rounds)
    for sc in (configured, hedged, resilient):
        sc.stop(rig.procs)
    base = res.runs["trimesh"].rps
    ratio = res.runs["trimesh-policies"].rps / base
    res.figures.append(
        Figure(
            "req/s with policies idle / without",
            ratio,
            "x",
            f">= {POLICY_COST_TARGET:.2f}",
            ratio >= POLICY_COST_TARGET,
        )
    )
    res.figures.append(
        Figure(
            "req/s with hedging idle too / without",
            res.runs["trimesh-hedge-idle"].rps / base,
            "x",
            summary=True,
        )
    )
    resilience = res.runs["trimesh-resilience"].rps / base
    res.figures.append(
        Figure(
            "req/s with resilience policies idle / without",
            resilience,
            "x",
            f">= {POLICY_COST_TARGET:.2f}",
            resilience >= POLICY_COST_TARGET,
        )
    )
    _cpu_ratio(res, "trimesh-policies", "trimesh", "CPU per request, policies idle / without")
    _cpu_ratio(res, "trimesh-resilience", "trimesh", "CPU per request, resilience idle / without")
    return res


OBSERVE_TARGET = 0.90  # req/s with all observability on / all off, same run (issue 9)


def observability(rig: Rig) -> ScenarioResult:
    """Metrics, tracing (propagation and export at ratio 1) and the access log: on vs off."""
    n = rig.connections
    res = ScenarioResult(
        "observability", f"{n} connections: metrics + tracing + access log on vs all off"
    )
    port = free_port()
    script = Path(__file__).with_name("collector.py")
    collector = rig.procs.start("collector", [sys.executable, str(script), str(port)], None)
    wait_for_port(port, collector, 10, "span collector")
    off = {
        "observe": {
            "access_log": "off",
            "metrics": {"enabled": False},
            "tracing": {"propagate": False},
        }
    }
    tracing = {"exporter": "zipkin", "endpoint": f"http://{HOST}:{port}", "sample_ratio": 1.0}
    sampled = {**tracing, "sample_ratio": 0.1}
    variants = {
        "observe-off": (off, False, "all observability off"),
        "observe-default": ({}, False, "the defaults: metrics, trace propagation, no export"),
        "observe-sampled": (
            {"observe": {"tracing": sampled}},
            True,
            "metrics, access log, spans exported at sample_ratio 0.1",
        ),
        "observe-on": (
            {"observe": {"tracing": tracing}},
            True,
            "metrics, access log, every span exported",
        ),
    }
    started = []
    eps = []
    for name, (extra, logged, label) in variants.items():
        sc = sidecar.start(
            rig.procs, name, rig.upstream_port, rig.cores.proxy, access_log=logged, extra=extra
        )
        started.append(sc)
        eps.append(_endpoint(sc, label))
    res.runs = measure_paths(rig.gen, eps, n, rig.duration, rig.warmup, rig.rounds)
    for sc in started:
        sc.stop(rig.procs)
    ratio = res.runs["observe-on"].rps / res.runs["observe-off"].rps
    res.figures.append(
        Figure(
            "req/s with observability on / off",
            ratio,
            "x",
            f">= {OBSERVE_TARGET:.2f}",
            ratio >= OBSERVE_TARGET,
        )
    )
    _cpu_ratio(res, "observe-on", "observe-off", "CPU per request, observability on / off")
    off_rps = res.runs["observe-off"].rps
    for name, what in (("observe-default", "defaults"), ("observe-sampled", "10% sampled")):
        res.figures.append(
            Figure(f"req/s with {what} / all off", res.runs[name].rps / off_rps, "x", summary=True)
        )
    return res


def _cpu_ratio(res: ScenarioResult, a: str, b: str, name: str) -> None:
    ca, cb = res.runs[a].cpu_us_per_request, res.runs[b].cpu_us_per_request
    if ca is not None and cb:
        res.figures.append(Figure(name, ca / cb, "x", summary=True))


def _delay_servers(rig: Rig, name: str, delays_ms: list[float]) -> list[int]:
    script = Path(__file__).with_name("delayserver.py")
    ports = []
    for i, delay in enumerate(delays_ms):
        port = free_port()
        argv = [sys.executable, str(script), str(port), f"{delay:g}"]
        proc = rig.procs.start(f"{name}-{i}", argv, rig.cores.upstream)
        wait_for_port(port, proc, 10, f"delay server {name}-{i}")
        ports.append(port)
    return ports


def _instances(ports: list[int]) -> list[dict[str, object]]:
    return [{"address": f"{HOST}:{port}"} for port in ports]


def balancing(rig: Rig) -> ScenarioResult:
    n = SPREAD_CONNECTIONS
    res = ScenarioResult(
        "balancing",
        f"{n} connections, instances answering after {FAST_MS:g}, {FAST_MS:g} and {SLOW_MS:g} ms",
    )
    ports = _delay_servers(rig, "lb", [FAST_MS, FAST_MS, SLOW_MS])
    eps = []
    started = []
    for strategy in ("round_robin", "least_request"):
        sc = sidecar.start(
            rig.procs,
            f"lb-{strategy}",
            ports[0],
            rig.cores.proxy,
            instances=_instances(ports),
            extra={"policies": {"default": {"load_balancer": strategy}}},
        )
        started.append(sc)
        eps.append(_endpoint(sc, f"trimesh, {strategy}"))
    res.runs = measure_paths(rig.gen, eps, n, rig.duration, rig.warmup, rig.rounds)
    for sc in started:
        sc.stop(rig.procs)
    rr, p2c = res.runs["lb-round_robin"], res.runs["lb-least_request"]
    res.figures += [
        Figure("least_request / round_robin, req/s", p2c.rps / rr.rps, "x", summary=True),
        Figure("least_request / round_robin, p50", p2c.p50_ms / rr.p50_ms, "x", summary=True),
        Figure("least_request / round_robin, p99", p2c.p99_ms / rr.p99_ms, "x", summary=True),
    ]
    return res


def _received(ports: list[int]) -> int:
    """Requests the delay servers have been sent so far."""
    total = 0
    for port in ports:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", "/__count")
            total += int(conn.getresponse().read().split()[0])
        finally:
            conn.close()
    return total


def hedging(rig: Rig) -> ScenarioResult:
    n = SPREAD_CONNECTIONS
    res = ScenarioResult(
        "hedging",
        f"{n} connections, {HEDGE_FAST} instances at {HEDGE_FAST_MS:g} ms and one at "
        f"{HEDGE_SLOW_MS:g} ms; "
        f"round robin, no hedge vs hedge after {HEDGE_DELAY_MS:g} ms",
    )
    ports = _delay_servers(rig, "hedge", [HEDGE_FAST_MS] * HEDGE_FAST + [HEDGE_SLOW_MS])
    variants = {"hedge-off": None, "hedge-on": f"{HEDGE_DELAY_MS:g}ms"}
    load: dict[str, float] = {}
    rounds: dict[str, list[LoadResult]] = {}
    for name, delay in variants.items():
        policy = {} if delay is None else {"hedge": delay}
        sc = sidecar.start(
            rig.procs,
            name,
            ports[0],
            rig.cores.proxy,
            instances=_instances(ports),
            extra={"policies": {"default": policy}},
        )
        ep = _endpoint(sc, f"trimesh, {'no hedge' if delay is None else 'hedge ' + delay}")
        rig.gen.run(ep, n, rig.warmup)
        before = _received(ports)
        result = rig.gen.run(ep, n, rig.duration)
        load[name] = (_received(ports) - before) / max(result.requests, 1)
        rounds[name] = [result]
        res.runs[name] = Measured(ep, (result,), None)
        sc.stop(rig.procs)
    off, on = res.runs["hedge-off"], res.runs["hedge-on"]
    res.figures += [
        Figure("hedging / no hedge, req/s", on.rps / off.rps, "x", summary=True),
        Figure("hedging p99 / no hedge p99", on.p99_ms / off.p99_ms, "x", summary=True),
        Figure("hedging p50 / no hedge p50", on.p50_ms / off.p50_ms, "x", summary=True),
        Figure(
            "upstream requests per client request, hedging", load["hedge-on"], "x", summary=True
        ),
        Figure("upstream requests per client request, no hedge", load["hedge-off"], "x"),
    ]
    res.extra["upstream_requests_per_request"] = load
    return res
