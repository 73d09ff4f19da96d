"""The bench scenarios, run in order; each returns a `ScenarioResult`.

Extension point: append a `Scenario` to `SCENARIOS`. A scenario gets the
`Rig` (the started servers, the load generator, the options) and returns its
runs, ratios and headline `Figure`s; one that measures something other than
HTTP load (e.g. `registry`: time from a provider registering to a consumer's
cache containing it) sets ``http=False``, returns only `figures` (plus text
and JSON extras), and may start its own processes with `rig.procs` (they are
stopped when the bench ends).
"""

from __future__ import annotations

import pstats
import re
from collections.abc import Callable
from pathlib import Path

import attrs

from bench import registry as registry_bench
from bench import sidecar
from bench.load import Endpoint, LoadGenerator
from bench.measure import Measured, measure_paths
from bench.procs import Cores, Processes

THROUGHPUT_TARGET_RPS = 2500.0  # through trimesh, 50 connections
CPU_TARGET_US = 150.0  # trimesh's CPU per request at 50 connections (core round 2)
ADDED_P50_TARGET_MS = 0.15  # trimesh p50 minus direct p50, one connection (core round 2)
RATIOS = [
    ("trimesh", "direct"),
    ("trimesh-log", "direct"),
    ("nginx", "direct"),
    ("trimesh", "nginx"),
    ("trimesh", "floor"),
]
_REPO = str(Path(__file__).resolve().parents[1]) + "/"


@attrs.frozen
class Figure:
    """A headline number, with its target where the issue sets one."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    summary: bool = False  # repeated in the closing summary even without a target


@attrs.define
class ScenarioResult:
    name: str
    title: str
    runs: dict[str, Measured] = attrs.field(factory=dict)
    figures: list[Figure] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    text: str = ""  # printed verbatim after the tables (e.g. the profile)
    extra: dict[str, object] = attrs.field(factory=dict)  # JSON only


@attrs.define
class Rig:
    """Everything a scenario may use; built and torn down by `bench.__main__`."""

    procs: Processes
    cores: Cores
    gen: LoadGenerator
    endpoints: list[Endpoint]
    upstream_port: int
    duration: float
    warmup: float
    rounds: int
    connections: int
    profile: Path | None
    profile_top: int
    sidecars: dict[str, sidecar.Sidecar] = attrs.field(factory=dict)
    registry_runs: int = registry_bench.RUNS

    def measure(self, connections: int, names: list[str] | None = None) -> dict[str, Measured]:
        eps = [e for e in self.endpoints if names is None or e.name in names]
        return measure_paths(self.gen, eps, connections, self.duration, self.warmup, self.rounds)


@attrs.frozen
class Scenario:
    name: str
    help: str
    run: Callable[[Rig], ScenarioResult]
    enabled: Callable[[Rig], bool] = lambda rig: True
    # False for scenarios that send no HTTP load: running only those starts no servers.
    http: bool = True


def throughput(rig: Rig) -> ScenarioResult:
    n = rig.connections
    res = ScenarioResult("throughput", f"{n} keep-alive connections, ~100-byte responses")
    res.runs = rig.measure(n)
    tm = res.runs["trimesh"]
    res.figures.append(
        Figure(
            f"trimesh req/s at {n} connections",
            tm.rps,
            "req/s",
            f">= {THROUGHPUT_TARGET_RPS:,.0f}",
            tm.rps >= THROUGHPUT_TARGET_RPS,
        )
    )
    if "trimesh-log" in res.runs:
        res.figures.append(
            Figure(
                "trimesh req/s with the access log to a file", res.runs["trimesh-log"].rps, "req/s"
            )
        )
    res.figures += _cpu_figures(res.runs, n)
    logged = rig.sidecars.get("trimesh-log")
    if logged is not None:
        res.notes.append(
            f"trimesh-log wrote {logged.access_log_lines():,} access-log lines "
            "so far (all scenarios)"
        )
    direct = res.runs["direct"].rps
    if direct < 3 * tm.rps:
        res.notes.append(
            f"direct ran only {direct / tm.rps:.1f}x trimesh's rate: the load "
            "generator or upstream may be limiting the trimesh figure"
        )
    return res


def _cpu_figures(runs: dict[str, Measured], n: int) -> list[Figure]:
    """trimesh's CPU per request against its target, and against the floor's in the same run."""
    tm, fl = runs["trimesh"].cpu_us_per_request, None
    if "floor" in runs:
        fl = runs["floor"].cpu_us_per_request
    if tm is None:  # no /proc: nothing to compare
        return []
    out = [
        Figure(
            f"trimesh CPU per request at {n} connections",
            tm,
            "us",
            f"<= {CPU_TARGET_US:g}",
            tm <= CPU_TARGET_US,
        )
    ]
    if fl is not None:
        out.append(Figure("floor CPU per request", fl, "us", summary=True))
        out.append(Figure("trimesh / floor, CPU per request", tm / fl, "x", summary=True))
    return out


def one_connection(rig: Rig) -> ScenarioResult:
    res = ScenarioResult("one_connection", "1 keep-alive connection: latency added per request")
    res.runs = rig.measure(1)
    direct = res.runs["direct"].p50_ms
    added: dict[str, float] = {}
    for name in ["trimesh", "trimesh-log", "floor", "nginx"]:
        if name not in res.runs:
            continue
        added[name] = res.runs[name].p50_ms - direct
        target = ADDED_P50_TARGET_MS if name == "trimesh" else None
        res.figures.append(
            Figure(
                f"p50 added by {name} over direct (1 connection)",
                added[name],
                "ms",
                f"<= {target}" if target else "",
                (added[name] <= target) if target else None,
                summary=name == "floor",
            )
        )
    if "floor" in added and "trimesh" in added:
        res.figures.append(
            Figure(
                "p50 added: trimesh minus floor (1 connection)",
                added["trimesh"] - added["floor"],
                "ms",
                summary=True,
            )
        )
    return res


def profile(rig: Rig) -> ScenarioResult:
    """A separate sidecar under cProfile, loaded like `throughput`; not used for the ratios."""
    assert rig.profile is not None
    n = rig.connections
    res = ScenarioResult(
        "profile",
        f"trimesh under cProfile, {n} connections "
        "(slower than unprofiled; compare only functions' shares)",
    )
    sc = sidecar.start(
        rig.procs, "trimesh-profiled", rig.upstream_port, rig.cores.proxy, profile=rig.profile
    )
    ep = Endpoint(
        "trimesh-cProfile",
        "trimesh under python -m cProfile",
        sc.port,
        f"http://{sidecar.SERVICE}/",
        sidecar.SERVICE,
        sc.proc.pid,
    )
    res.runs = measure_paths(rig.gen, [ep], n, rig.duration, rig.warmup, 1)
    sc.stop(rig.procs)
    stats = pstats.Stats(str(rig.profile))
    res.text, res.extra["top"] = _top(stats, rig.profile_top)
    res.notes.append(f"profile written to {rig.profile} (open with pstats or snakeviz)")
    return res


def registry(rig: Rig) -> ScenarioResult:
    """Provider registers → consumer's cache holds it, per backend (see `bench.registry`)."""
    n = rig.registry_runs
    res = ScenarioResult(
        "registry", f"provider registers -> consumer's cache holds it, {n} runs per backend"
    )
    results = registry_bench.measure(rig.procs, rig.procs.logdir, n)
    for r in results:
        if r.skipped:
            res.notes.append(f"{r.name} SKIPPED: {r.skipped}")
            continue
        for p in (50, 99):
            res.figures.append(Figure(f"{r.name}: register -> cache p{p}", r.percentile(p), "ms"))
        if r.timeouts:
            res.notes.append(
                f"{r.name}: {r.timeouts} of {n} runs timed out after "
                f"{registry_bench.DEADLINE:g} s (left out of the percentiles)"
            )
    res.notes.append(
        "p50/p99 are nearest-rank over the runs (p99 of fewer than 100 runs is the maximum); "
        "servicecomb is the in-process Service Center double, not a real Service Center"
    )
    res.text = registry_bench.table(results)
    res.extra["backends"] = {r.name: r.as_dict() for r in results}
    return res


def _top(stats: pstats.Stats, count: int) -> tuple[str, list[dict[str, object]]]:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:count]  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    lines = [
        f"top {count} functions by tottime (total {total:.2f} s):",
        f"{'tottime':>8} {'%':>5} {'cumtime':>8} {'ncalls':>10}  function",
    ]
    table = []
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        where = f"{_short(file)}:{line}({func})"
        calls = f"{nc}/{cc}" if nc != cc else str(nc)
        lines.append(f"{tt:8.3f} {100 * tt / total:5.1f} {ct:8.3f} {calls:>10}  {where}")
        table.append(
            {"function": where, "ncalls": nc, "tottime": round(tt, 4), "cumtime": round(ct, 4)}
        )
    return "\n".join(lines), table


def _short(file: str) -> str:
    """A path relative to the repo or to the interpreter's library, for a narrow table."""
    short = re.sub(r"^.*/(?:site-packages|lib/python3\.\d+)/", "", file)
    return short.removeprefix(_REPO)


def _policies(rig: Rig) -> ScenarioResult:
    from bench import policies  # it imports this module

    return policies.policies(rig)


def _balancing(rig: Rig) -> ScenarioResult:
    from bench import policies

    return policies.balancing(rig)


def _observability(rig: Rig) -> ScenarioResult:
    from bench import policies

    return policies.observability(rig)


def _hedging(rig: Rig) -> ScenarioResult:
    from bench import policies

    return policies.hedging(rig)


SCENARIOS: list[Scenario] = [
    Scenario("throughput", "req/s and p50/p99 at --connections (50)", throughput),
    Scenario("one_connection", "p50 latency trimesh adds at 1 connection", one_connection),
    Scenario(
        "policies",
        "req/s with 10 route rules, retries, a budget and least_request configured but idle",
        _policies,
    ),
    Scenario("balancing", "round_robin vs least_request with one instance 10x slower", _balancing),
    Scenario("hedging", "p99 and extra load with and without hedging, one slow instance", _hedging),
    Scenario(
        "observability",
        "req/s with metrics, tracing export and the access log on vs all off",
        _observability,
    ),
    Scenario(
        "profile",
        "cProfile of the sidecar under the throughput load (--profile)",
        profile,
        lambda rig: rig.profile is not None,
    ),
    Scenario(
        "registry",
        "ms from a provider registering to a consumer's cache holding it, per registry "
        "backend (--registry-runs)",
        registry,
        http=False,
    ),
]
