"""Outlier detection (Envoy's consecutive failures): sans-IO, time passed in, table-driven."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from tests.unit.config_problems import problems_raised
from trimesh.http.stream import Endpoint
from trimesh.policy.outlier import OutlierDetector, OutlierPolicy, parse_outlier

A, B, C, D = (("127.0.0.1", p) for p in (8001, 8002, 8003, 8004))


def detector(**kwargs: Any) -> OutlierDetector:
    return OutlierDetector(OutlierPolicy(**kwargs))


def fail_times(det: OutlierDetector, endpoint: Endpoint, now: float, n: int, total: int) -> bool:
    """`n` failures at `now`; whether the last one ejected."""
    ejected = [det.failed(endpoint, now, total) for _ in range(n)]
    assert not any(ejected[:-1])
    return ejected[-1]


def test_ejects_at_the_nth_failure_in_a_row() -> None:
    det = detector(consecutive_failures=3)
    assert not fail_times(det, A, 0.0, 2, total=4)
    det.succeeded(A, 0.0)  # the streak ends
    assert not fail_times(det, A, 0.0, 2, total=4)
    assert not det.ejected(A, 0.0)
    assert det.failed(A, 0.0, 4)
    assert det.ejected(A, 0.0)
    assert det.ejections == 1


@pytest.mark.parametrize(
    ("now", "ejected"), [(10.0, True), (39.99, True), (40.0, False), (100.0, False)]
)
def test_ejection_lasts_base_ejection(now: float, ejected: bool) -> None:
    det = detector()
    assert fail_times(det, A, 10.0, 5, total=4)
    assert det.ejected(A, now) is ejected
    assert det.ejected(B, now) is False


@pytest.mark.parametrize(
    ("base", "top", "durations"),
    [
        (30.0, 300.0, [30.0, 60.0, 90.0, 120.0]),  # base x times
        (30.0, 70.0, [30.0, 60.0, 70.0, 70.0, 70.0]),  # capped
        (10.0, 10.0, [10.0, 10.0, 10.0]),
    ],
)
def test_ejection_time_grows_with_times_up_to_the_cap(
    base: float, top: float, durations: list[float]
) -> None:
    det = detector(base_ejection=base, max_ejection=top)
    now = 0.0
    for expected in durations:
        assert fail_times(det, A, now, 5, total=4)  # fails again as soon as it is back
        assert det.snapshot(now)["127.0.0.1:8001"]["ejected_until"] == expected
        now += expected
        assert not det.ejected(A, now)


@pytest.mark.parametrize(
    ("times", "back_for", "next_duration"),
    [
        (1, 0.0, 60.0),
        (1, 29.99, 60.0),
        (1, 30.0, 30.0),  # one base_ejection in: the multiplier decayed to 0
        (3, 0.0, 120.0),
        (3, 30.0, 90.0),
        (3, 60.0, 60.0),
        (3, 89.99, 60.0),
        (3, 90.0, 30.0),
        (3, 1000.0, 30.0),
    ],
)
def test_the_multiplier_decays_one_per_base_ejection_in(
    times: int, back_for: float, next_duration: float
) -> None:
    det = detector(base_ejection=30.0)
    now = 0.0
    for _ in range(times):
        assert fail_times(det, A, now, 5, total=4)
        now += 30.0 * det.snapshot(now)["127.0.0.1:8001"]["times"]
    now += back_for
    assert det.snapshot(now)["127.0.0.1:8001"]["times"] == max(0, times - int(back_for // 30))
    assert fail_times(det, A, now, 5, total=4)
    assert det.snapshot(now)["127.0.0.1:8001"]["ejected_until"] == next_duration


@pytest.mark.parametrize(
    ("total", "percent", "ejected"),
    [
        (1, 50.0, 0),  # never the last instance
        (1, 100.0, 0),
        (2, 50.0, 1),
        (2, 100.0, 1),  # one must stay in
        (3, 50.0, 1),  # 2 of 3 is 67 %
        (3, 10.0, 1),  # Envoy lets one out whatever the percentage
        (3, 100.0, 2),
        (4, 50.0, 2),
        (4, 49.0, 1),
        (10, 10.0, 1),
        (10, 30.0, 3),
    ],
)
def test_max_ejection_percent_with_few_instances(total: int, percent: float, ejected: int) -> None:
    det = detector(max_ejection_percent=percent)
    endpoints = [("127.0.0.1", 9000 + i) for i in range(total)]
    for endpoint in endpoints:
        fail_times(det, endpoint, 1.0, 5, total=total)
    assert sum(det.ejected(e, 1.0) for e in endpoints) == ejected == det.ejections
    assert len(det.available(endpoints, 1.0)) == total - ejected


def test_a_refused_ejection_starts_the_streak_over() -> None:
    det = detector()
    assert not fail_times(det, A, 0.0, 5, total=1)
    assert det.snapshot(0.0)["127.0.0.1:8001"]["consecutive"] == 0
    assert not fail_times(det, A, 0.0, 4, total=2)
    assert det.failed(A, 0.0, 2)  # now a second instance is known


def test_ejections_free_a_slot_when_they_end() -> None:
    det = detector()
    assert fail_times(det, A, 0.0, 5, total=2)
    assert not fail_times(det, B, 10.0, 5, total=2)  # A is still out
    assert fail_times(det, B, 30.0, 5, total=2)  # A is back


def test_failures_while_ejected_are_ignored() -> None:
    det = detector()
    assert fail_times(det, A, 0.0, 5, total=4)
    assert not fail_times(det, A, 1.0, 20, total=4)  # requests sent before the ejection
    assert det.snapshot(1.0)["127.0.0.1:8001"] == {
        "consecutive": 0,
        "ejected_until": 29.0,
        "times": 1,
    }
    assert det.ejections == 1


@attrs.frozen
class Candidate:
    endpoint: Endpoint
    instance_id: str


def test_available_filters_endpoints_and_candidates() -> None:
    det = detector()
    fail_times(det, B, 0.0, 5, total=4)
    assert det.available([A, B, C], 1.0) == [A, C]
    cands = [Candidate(e, str(e[1])) for e in (A, B, C)]
    assert det.available(cands, 1.0) == [cands[0], cands[2]]
    assert det.available([A, B, C], 30.0) == [A, B, C]
    assert det.available((), 1.0) == []


def test_available_returns_all_when_every_one_is_ejected() -> None:
    det = detector()
    fail_times(det, A, 0.0, 5, total=4)
    fail_times(det, B, 0.0, 5, total=4)
    assert det.available([A, B], 1.0) == [A, B]  # instances left the registry meanwhile
    assert det.available([A, B, C], 1.0) == [C]


def test_disabled_never_ejects() -> None:
    det = detector(enabled=False)
    assert not fail_times(det, A, 0.0, 50, total=4)
    assert det.available([A, B], 0.0) == [A, B]
    assert det.snapshot(0.0) == {}


def test_memory_holds_only_endpoints_with_something_to_remember() -> None:
    det = detector()
    fail_times(det, A, 0.0, 2, total=4)
    det.succeeded(A, 0.0)
    det.succeeded(B, 0.0)
    assert det.snapshot(0.0) == {}
    fail_times(det, A, 0.0, 5, total=4)
    det.succeeded(A, 40.0)  # back, but its multiplier has not decayed yet
    assert det.snapshot(40.0)["127.0.0.1:8001"]["times"] == 1
    det.succeeded(A, 60.0)
    assert det.snapshot(60.0) == {}
    fail_times(det, C, 100.0, 5, total=4)
    det.failed(D, 200.0, 4)  # the scan of an ejection decision drops C (decayed)
    fail_times(det, B, 200.0, 5, total=4)
    assert sorted(det.snapshot(200.0)) == ["127.0.0.1:8002", "127.0.0.1:8004"]
    assert repr(det) == "<OutlierDetector hosts=2 ejections=3>"


def test_snapshot_names_endpoints_and_is_json() -> None:
    det = detector()
    fail_times(det, ("::1", 80), 0.0, 5, total=4)
    det.failed(A, 0.0, 4)
    assert json.loads(json.dumps(det.snapshot(10.0))) == {
        "127.0.0.1:8001": {"consecutive": 1, "ejected_until": 0.0, "times": 0},
        "[::1]:80": {"consecutive": 0, "ejected_until": 20.0, "times": 1},
    }


# --- config ------------------------------------------------------------------------------


def test_parse_defaults_shorthand_and_every_key() -> None:
    assert parse_outlier(None, "o") == OutlierPolicy()
    assert parse_outlier({}, "o") == OutlierPolicy()
    assert parse_outlier("off", "o") == OutlierPolicy(enabled=False)
    assert parse_outlier(
        {
            "enabled": "on",
            "consecutive_failures": "3",
            "base_ejection": "10s",
            "max_ejection_percent": 30,
            "max_ejection": "1m",
        },
        "o",
    ) == OutlierPolicy(
        consecutive_failures=3, base_ejection=10.0, max_ejection_percent=30.0, max_ejection=60.0
    )


def test_parse_names_every_problem() -> None:
    problems = problems_raised(
        parse_outlier,
        {
            "consecutive_failures": 0,
            "base_ejection": "6m",
            "max_ejection_percent": "half",
            "interval": "10s",
        },
        "policies.services.pay.outlier",
    )
    where = "policies.services.pay.outlier."
    assert [p.split(":")[0] for p in problems] == [
        where + "interval",
        where + "consecutive_failures",
        where + "max_ejection_percent",
        where + "max_ejection",  # 300 s default < base 5 m
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("maybe", "o: expected true or false"),
        ([], "o: expected a mapping"),
        ({"max_ejection_percent": 0}, "o.max_ejection_percent: must be more than 0"),
        ({"max_ejection_percent": 101}, "o.max_ejection_percent:"),
        ({"enabled": 2}, "o.enabled: expected true or false"),
    ],
)
def test_parse_rejects(raw: Any, problem: str) -> None:
    problems = problems_raised(parse_outlier, raw, "o")
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": 0},
        {"base_ejection": 0.0},
        {"max_ejection_percent": 0.0},
        {"max_ejection_percent": 100.5},
        {"base_ejection": 60.0, "max_ejection": 30.0},
    ],
)
def test_policy_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OutlierPolicy(**kwargs)
