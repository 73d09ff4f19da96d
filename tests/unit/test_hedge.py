"""Hedging: the latency tracker and the hedge policy; sans-IO and table-driven."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.unit.config_problems import assert_starts, problems_raised
from trimesh.policy.hedge import HedgePolicy, LatencyTracker, parse_hedge


def tracker_of(samples: list[float], **kwargs: int) -> LatencyTracker:
    tracker = LatencyTracker(**kwargs)
    for s in samples:
        tracker.observe(s)
    return tracker


# --- tracker ---------------------------------------------------------------------------


def test_quantile_is_unknown_below_min_samples() -> None:
    tracker = tracker_of([0.1] * 19)
    assert tracker.quantile(0.95) is None
    tracker.observe(0.1)
    assert tracker.quantile(0.95) == 0.1


@pytest.mark.parametrize(
    ("q", "value"),
    [(0.0, 1), (0.01, 1), (0.5, 50), (0.9, 90), (0.95, 95), (0.99, 99), (0.991, 100), (1.0, 100)],
)
def test_nearest_rank_quantiles_of_known_data(q: float, value: int) -> None:
    samples = [ms / 1000 for ms in range(1, 101)]
    random.Random(3).shuffle(samples)
    assert tracker_of(samples).quantile(q) == value / 1000


def test_memory_is_bounded_and_old_samples_leave() -> None:
    tracker = LatencyTracker(size=1000)
    for _ in range(5000):
        tracker.observe(10.0)
    assert len(tracker) == 1000
    assert tracker.quantile(0.95) == 10.0
    for _ in range(1000):
        tracker.observe(0.002)
    assert len(tracker) == 1000
    assert tracker.quantile(0.95) == 0.002  # every slow sample was overwritten
    assert tracker.quantile(1.0) == 0.002
    assert repr(tracker) == "<LatencyTracker held=1000/1000>"


def test_sorted_view_refreshes_every_refresh_samples() -> None:
    tracker = tracker_of([0.01] * 20, refresh=4)
    assert tracker.quantile(1.0) == 0.01
    for _ in range(3):
        tracker.observe(5.0)
    assert tracker.quantile(1.0) == 0.01  # stale: 3 new samples < refresh
    tracker.observe(5.0)
    assert tracker.quantile(1.0) == 5.0


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf"), float("-inf")])
def test_nonsense_latencies_are_ignored(bad: float) -> None:
    tracker = tracker_of([0.01] * 20)
    tracker.observe(bad)
    assert len(tracker) == 20
    assert tracker.quantile(1.0) == 0.01


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_quantile_out_of_range_is_a_bug(q: float) -> None:
    with pytest.raises(ValueError):
        tracker_of([0.01] * 20).quantile(q)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"min_samples": 0}, {"size": 10, "min_samples": 11}, {"refresh": 0}],
)
def test_tracker_rejects_invalid_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LatencyTracker(**kwargs)


# --- policy ----------------------------------------------------------------------------


def test_fixed_delay_ignores_the_tracker() -> None:
    policy = HedgePolicy(delay=0.05)
    assert policy.delay_for(LatencyTracker()) == 0.05
    assert policy.delay_for(tracker_of([9.0] * 50)) == 0.05


def test_p95_delay_waits_for_samples_then_follows_them() -> None:
    policy = HedgePolicy(delay="p95")
    tracker = LatencyTracker()
    assert policy.delay_for(tracker) is None  # do not hedge yet
    for ms in range(1, 101):
        tracker.observe(ms / 1000)
    assert policy.delay_for(tracker) == 0.095


def test_p95_delay_has_a_floor() -> None:
    policy = HedgePolicy(delay="p95", min_delay=0.005)
    assert policy.delay_for(tracker_of([0.0001] * 100)) == 0.005
    assert HedgePolicy(delay="p95", min_delay=0.0).delay_for(tracker_of([0.0001] * 100)) == 0.0001


@pytest.mark.parametrize(
    ("method", "replayable", "allowed"),
    [
        (b"GET", True, True),
        (b"HEAD", True, True),
        (b"PUT", True, True),
        (b"DELETE", True, True),
        (b"POST", True, False),
        (b"PATCH", True, False),
        (b"GET", False, False),
    ],
)
def test_only_idempotent_replayable_requests_are_hedged(
    method: bytes, replayable: bool, allowed: bool
) -> None:
    assert HedgePolicy(delay=0.01).allowed(method, replayable) is allowed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay": 0.0},
        {"delay": -1.0},
        {"delay": float("inf")},
        {"delay": "p99"},
        {"delay": 0.1, "max_hedges": 0},
        {"delay": 0.1, "min_delay": -0.1},
    ],
)
def test_policy_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HedgePolicy(**kwargs)


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"delay": "50ms"}, HedgePolicy(delay=0.05)),
        ({"delay": 0.2}, HedgePolicy(delay=0.2)),
        ({"delay": "p95"}, HedgePolicy(delay="p95")),
        ({"delay": "P95", "min_delay": "1ms"}, HedgePolicy(delay="p95", min_delay=0.001)),
        ({"delay": "p95", "min_delay": 0}, HedgePolicy(delay="p95", min_delay=0.0)),
        ({"delay": "1s", "max_hedges": 2}, HedgePolicy(delay=1.0, max_hedges=2)),
        ("p95", HedgePolicy(delay="p95")),
        ("20ms", HedgePolicy(delay=0.02)),
    ],
)
def test_parse_hedge(raw: Any, expected: HedgePolicy) -> None:
    assert parse_hedge(raw, "policies.default.hedge") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, ["h.delay: required"]),
        ({"delay": "p99"}, ["h.delay: expected a duration like 50ms, or p95; got 'p99'"]),
        ({"delay": 0}, ["h.delay: expected a duration"]),
        ("soon", ["h.delay: expected a duration"]),
        ({"delay": "p95", "max_hedges": 0}, ["h.max_hedges: must be positive"]),
        ({"delay": "p95", "min_delay": "x"}, ["h.min_delay: expected a duration"]),
        (
            {"dealy": "50ms", "max_hedges": "two"},
            ["h.dealy: unknown key", "h.max_hedges: expected a whole number", "h.delay: required"],
        ),
    ],
)
def test_parse_hedge_names_every_problem(raw: Any, expected: list[str]) -> None:
    assert_starts(problems_raised(parse_hedge, raw, "h"), expected)
