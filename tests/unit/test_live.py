"""Rolling per-service figures and label folding (`trimesh.observe.live`), no clock."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

from trimesh.observe.accesslog import AccessRecord
from trimesh.observe.live import (
    OTHER,
    QUANTILE_BOUNDS,
    RECENT_ERRORS,
    UNKNOWN,
    LabelCap,
    LatencyWindow,
    LiveStats,
    estimate_quantile,
    service_label,
)


@attrs.define(slots=True)
class Record(AccessRecord):
    """`AccessRecord` with the fields issue 9 adds to it (the lead adds them there)."""

    source: str | None = None
    duration: float | None = None


def record(**fields: Any) -> Record:
    """A finished outbound 200 to "orders" that took 2 ms, ending at t=1000.002."""
    defaults: dict[str, Any] = {
        "conn": 1,
        "direction": "outbound",
        "service": "orders",
        "status": 200,
        "started": 1000.0,
        "duration": 0.002,
        "start_wall": 1.7e9,
        "path": "/api",
    }
    return Record(**(defaults | fields))


@pytest.mark.parametrize(
    ("service", "error", "label"),
    [
        ("orders", None, "orders"),
        ("orders", "upstream-timeout", "orders"),
        (None, None, UNKNOWN),
        (None, "bad-request", UNKNOWN),
        ("x1y2z3", "service-not-found", UNKNOWN),
        ("evil.example", "egress-denied", UNKNOWN),
        ("someone-else", "misdirected", UNKNOWN),
        ("never-seen", "registry-unavailable", UNKNOWN),
    ],
)
def test_service_label_folds_names_that_never_resolved(
    service: str | None, error: str | None, label: str
) -> None:
    assert service_label(record(service=service, error=error), LabelCap(10)) == label


def test_label_cap_admits_up_to_limit_then_folds() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ("a", "b", "c", "a", "b", "d")] == ["a", "b", OTHER, "a", "b", OTHER]
    assert len(cap) == 2
    assert cap("x" * 200) == OTHER  # too long to be a label, even with room left
    assert repr(cap) == "<LabelCap 2/2>"


def test_view_counts_rate_success_and_latency_per_service() -> None:
    live = LiveStats()
    for i in range(100):
        live.observe(record(started=1000.0 + i * 0.5, duration=0.010))
    live.observe(record(service="pay", status=503, error="upstream-connect", started=1040.0))
    live.observe(record(service="pay", status=404, started=1041.0))
    view = live.view(1050.0)
    orders, pay = view["orders"], view["pay"]
    assert orders["requests"] == 100
    # First seen at t=1000.01: 100 requests over 49.99 s of existence.
    assert orders["rps"] == pytest.approx(100 / 49.99, rel=1e-3)
    assert orders["success_rate"] == 1.0
    assert orders["p50_ms"] == pytest.approx(10, rel=0.25)
    assert orders["p99_ms"] == pytest.approx(10, rel=0.25)
    # A proxy error fails; an app's 404 is an answer, so it succeeds.
    assert (pay["requests"], pay["success_rate"]) == (2, 0.5)
    assert sum(orders["rate_history"]) * 5 == 100


def test_requests_leave_the_window_after_a_minute() -> None:
    live = LiveStats()
    live.observe(record(started=1000.0))
    assert live.view(1030.0)["orders"]["requests"] == 1
    quiet = live.view(1000.0 + 61.0)["orders"]
    assert quiet == {
        "requests": 0,
        "rps": 0.0,
        "success_rate": None,
        "p50_ms": None,
        "p99_ms": None,
        "rate_history": [0.0] * 12,
    }
    # A slot reused a minute later starts from zero.
    live.observe(record(started=1060.5))
    assert live.view(1061.0)["orders"]["requests"] == 1


def test_quantiles_track_a_known_distribution() -> None:
    rng = random.Random(7)
    window = LatencyWindow(5.0, 12)
    values = sorted(rng.lognormvariate(-5, 1) for _ in range(5000))  # median ~6.7 ms
    for v in values:
        window.observe(v, 10.0)
    counts, failures, _ = window.read(10.0)
    assert failures == 0
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert window.quantile(q, counts) == pytest.approx(exact, rel=0.25)


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([0] * (len(QUANTILE_BOUNDS) + 1), 0.5, None),
        ([0] * len(QUANTILE_BOUNDS) + [3], 0.99, QUANTILE_BOUNDS[-1]),  # beyond the last bound
        ([4] + [0] * len(QUANTILE_BOUNDS), 1.0, QUANTILE_BOUNDS[0]),
    ],
)
def test_estimate_quantile_edges(counts: list[int], q: float, expected: float | None) -> None:
    assert estimate_quantile(q, counts, QUANTILE_BOUNDS) == expected


def test_random_names_do_not_grow_the_per_service_state() -> None:
    live = LiveStats(max_services=10)
    rng = random.Random(1)
    for i in range(20_000):
        name = f"{rng.getrandbits(64):x}.example"
        error = "service-not-found" if i % 2 else None
        live.observe(record(service=name, error=error, status=502 if error else 200))
    view = live.view(1001.0)
    assert len(view) == 12  # ten admitted, "unknown" and "other"
    assert view[UNKNOWN]["requests"] == 10_000
    assert view[OTHER]["requests"] == 10_000 - 10
    assert repr(live) == f"<LiveStats services=12 errors={RECENT_ERRORS}>"


def test_recent_errors_are_the_last_ones_newest_first() -> None:
    live = LiveStats()
    live.observe(record(status=200))
    for i in range(RECENT_ERRORS + 5):
        live.observe(
            record(status=504, error="upstream-timeout", start_wall=float(i), path=f"/p/{i}")
        )
    assert live.recent_errors(0) == []
    last = live.recent_errors(2)
    assert last == [
        {
            "ts": float(RECENT_ERRORS + 4),
            "direction": "outbound",
            "service": "orders",
            "status": 504,
            "error": "upstream-timeout",
            "path": f"/p/{RECENT_ERRORS + 4}",
        },
        {
            "ts": float(RECENT_ERRORS + 3),
            "direction": "outbound",
            "service": "orders",
            "status": 504,
            "error": "upstream-timeout",
            "path": f"/p/{RECENT_ERRORS + 3}",
        },
    ]
    assert len(live.recent_errors(10_000)) == RECENT_ERRORS


def test_recent_errors_keep_long_names_and_paths_short() -> None:
    live = LiveStats()
    live.observe(record(service="s" * 5000, path="/" + "p" * 5000, error="service-not-found"))
    (entry,) = live.recent_errors(1)
    assert len(entry["service"]) == 200
    assert len(entry["path"]) == 200
