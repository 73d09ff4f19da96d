"""The circuit breaker (Hystrix semantics): sans-IO, time passed in, table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.config_problems import error_of, problems_raised
from trimesh import convert as parse
from trimesh.policy.breaker import BreakerPolicy, CircuitBreaker, parse_circuit_breaker

ON = BreakerPolicy(enabled=True)  # 20 requests, 50 %, 15 s sleep, 10 s window


def breaker(**kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker(BreakerPolicy(enabled=True, **kwargs))


def feed(cb: CircuitBreaker, now: float, ok: int = 0, failed: int = 0) -> None:
    """`ok` successes then `failed` failures at `now`, each allowed first."""
    for outcome in [True] * ok + [False] * failed:
        assert cb.allow(now)
        cb.record(now, outcome)


def tripped(now: float = 1.0, **kwargs: Any) -> CircuitBreaker:
    cb = breaker(**kwargs)
    feed(cb, now, failed=cb.policy.request_volume_threshold)
    assert cb.state(now) == "open"
    return cb


# --- closed → open ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ok", "failed", "opens"),
    [
        (0, 19, False),  # 100 % errors but under the volume threshold
        (0, 20, True),
        (10, 10, True),  # exactly 50 %: the threshold is inclusive
        (11, 9, False),  # 45 %
        (50, 50, True),
        (51, 49, False),
        (0, 0, False),
    ],
)
def test_opens_on_volume_and_error_percentage(ok: int, failed: int, opens: bool) -> None:
    cb = breaker()
    feed(cb, 1.0, ok=ok, failed=failed)
    assert cb.state(1.0) == ("open" if opens else "closed")
    assert cb.allow(1.0) is not opens


@pytest.mark.parametrize(
    ("second_batch_at", "opens"),
    [
        (9.99, True),  # both batches in the window: 20 failures
        (10.0, False),  # bucket [0, 1) was reused at t=10: its 10 failures left
        (10.5, False),
        (25.0, False),  # far past: every bucket emptied
    ],
)
def test_old_buckets_leave_the_window(second_batch_at: float, opens: bool) -> None:
    cb = breaker()
    feed(cb, 0.5, failed=10)
    feed(cb, second_batch_at, failed=10)
    assert cb.state(second_batch_at) == ("open" if opens else "closed")


def test_expiry_of_successes_can_open_the_circuit() -> None:
    cb = breaker(error_threshold_percentage=70)
    feed(cb, 0.5, ok=10)
    feed(cb, 5.0, failed=20)  # 66.7 % of 30: still closed
    assert cb.state(9.9) == "closed"
    assert not cb.allow(10.5)  # the successes left; 20 failures remain: 100 %
    assert cb.snapshot(10.5)["opened_at"] == 10.5


def test_a_window_of_other_shape() -> None:
    cb = breaker(window=2.0, buckets=4, request_volume_threshold=2)
    feed(cb, 0.1, failed=1)
    feed(cb, 2.1, failed=1)  # the first left with its 0.5 s bucket
    assert cb.state(2.1) == "closed"
    feed(cb, 2.2, failed=1)
    assert cb.state(2.2) == "open"


# --- open → half-open → closed/open ----------------------------------------------------


@pytest.mark.parametrize(
    ("now", "state", "retry_after"),
    [(1.0, "open", 15.0), (6.0, "open", 10.0), (15.99, "open", 0.01), (16.0, "half-open", 0.0)],
)
def test_open_rejects_until_the_sleep_window_passed(
    now: float, state: str, retry_after: float
) -> None:
    cb = tripped(1.0)
    assert cb.state(now) == state
    assert cb.retry_after(now) == pytest.approx(retry_after)
    assert cb.allow(now) is (state == "half-open")


def test_half_open_lets_exactly_one_probe_through() -> None:
    cb = tripped(1.0)
    assert cb.allow(16.0)
    assert [cb.allow(t) for t in (16.0, 16.5, 20.0, 30.99)] == [False] * 4
    assert cb.state(20.0) == "half-open"
    assert cb.retry_after(20.0) == pytest.approx(11.0)  # until the probe is presumed lost
    assert cb.rejected == 4


def test_probe_success_closes_with_fresh_counts() -> None:
    cb = tripped(1.0)
    assert cb.allow(16.0)
    cb.record(17.0, True)
    assert cb.state(17.0) == "closed"
    assert cb.snapshot(17.0)["requests"] == 0
    feed(cb, 17.0, failed=19)  # the old 20 failures are forgotten
    assert cb.state(17.0) == "closed"
    feed(cb, 17.0, failed=1)
    assert cb.state(17.0) == "open"
    assert cb.opened == 2


def test_probe_failure_opens_for_another_sleep_window() -> None:
    cb = tripped(1.0)
    assert cb.allow(16.0)
    cb.record(18.0, False)
    assert cb.state(18.0) == "open"
    assert cb.retry_after(18.0) == 15.0
    assert not cb.allow(32.99)
    assert cb.allow(33.0)  # the next probe
    assert not cb.allow(33.0)


def test_abandon_frees_the_probe() -> None:
    cb = tripped(1.0)
    assert cb.allow(16.0)
    assert not cb.allow(16.1)
    cb.abandon(16.2)
    assert cb.state(16.2) == "half-open"
    assert cb.allow(16.3)
    assert not cb.allow(16.3)


def test_abandon_while_closed_changes_nothing() -> None:
    cb = breaker()
    feed(cb, 1.0, failed=19)
    assert cb.allow(1.0)
    cb.abandon(1.0)  # not counted
    assert cb.snapshot(1.0)["requests"] == 19
    assert cb.state(1.0) == "closed"


def test_a_lost_probe_is_replaced_after_a_sleep_window() -> None:
    cb = tripped(1.0)
    assert cb.allow(16.0)  # never reports
    assert not cb.allow(30.99)
    assert cb.allow(31.0)
    assert not cb.allow(31.0)


def test_outcomes_of_requests_sent_before_opening_are_ignored() -> None:
    cb = tripped(1.0)
    cb.record(2.0, True)  # let through before the trip; no probe is out
    assert cb.state(2.0) == "open"
    cb.record(16.5, True)  # half-open, still no probe out
    assert cb.state(16.5) == "half-open"
    assert cb.allow(16.5)


# --- forced, disabled ------------------------------------------------------------------


def test_force_open_always_rejects() -> None:
    cb = breaker(force_open=True)
    assert [cb.allow(t) for t in (0.0, 100.0, 1e6)] == [False] * 3
    assert cb.state(5.0) == "open"
    assert cb.retry_after(5.0) == 15.0
    cb.record(5.0, True)
    assert cb.state(5.0) == "open"


def test_force_closed_always_allows_but_still_counts() -> None:
    cb = breaker(force_closed=True)
    feed(cb, 1.0, failed=100)
    assert cb.allow(1.0)
    assert cb.state(1.0) == "closed"
    snap = cb.snapshot(1.0)
    assert (snap["requests"], snap["errors"], snap["error_percentage"]) == (100, 100, 100.0)
    assert cb.retry_after(1.0) == 0.0


def test_disabled_allows_everything_and_counts_nothing() -> None:
    cb = CircuitBreaker(BreakerPolicy())
    for t in range(100):
        assert cb.allow(float(t))
        cb.record(float(t), False)
    assert cb.state(100.0) == "closed"
    assert cb.snapshot(100.0)["requests"] == 0


# --- snapshot, statuses ----------------------------------------------------------------


def test_snapshot_is_json_and_tells_the_state() -> None:
    cb = breaker()
    feed(cb, 1.0, ok=15, failed=5)
    assert cb.snapshot(1.0) == {
        "state": "closed",
        "requests": 20,
        "errors": 5,
        "error_percentage": 25.0,
        "opened_at": None,
        "retry_after": 0.0,
        "probing": False,
        "opened": 0,
        "rejected": 0,
    }
    feed(cb, 2.0, failed=10)  # 15 of 30: opens at the last one
    snap = json.loads(json.dumps(cb.snapshot(3.0)))
    assert (snap["state"], snap["opened_at"], snap["retry_after"]) == ("open", 2.0, 14.0)
    assert repr(cb).startswith("<CircuitBreaker opened_at=2.0")


@pytest.mark.parametrize(
    ("status", "failure"), [(502, True), (503, True), (504, True), (500, False)]
)
def test_failure_statuses(status: int, failure: bool) -> None:
    assert CircuitBreaker(ON).is_failure_status(status) is failure


# --- property ----------------------------------------------------------------------------

# Gaps around the 5 s sleep window and 1 s buckets, and some in between.
gaps = st.sampled_from([0.0, 0.5, 1.0, 4.99, 5.0, 10.0]) | st.floats(0.0, 8.0)
step = st.tuples(gaps, st.sampled_from(["allow", "ok", "fail", "abandon"]))


@settings(max_examples=150)
@given(st.lists(step, min_size=30, max_size=100))
def test_open_refuses_and_half_open_has_one_probe(steps: list[tuple[float, str]]) -> None:
    """Whatever happens: open refuses; half-open sends one probe, another only when it is
    decided, abandoned or presumed lost (a sleep window without an outcome)."""
    cb = breaker(request_volume_threshold=2, sleep_window=5.0)
    now, probe_at = 0.0, None  # the model: when the probe still out went
    for gap, op in steps:
        now += gap
        state = cb.state(now)
        if op == "allow":
            allowed = cb.allow(now)
            if state == "open":
                assert not allowed
            elif state == "half-open":
                free = probe_at is None or now >= probe_at + 5.0
                assert allowed is free
                probe_at = now if allowed else probe_at
            else:
                assert allowed
        elif state != "closed":
            if op == "abandon":
                cb.abandon(now)
            else:
                cb.record(now, op == "ok")
            probe_at = None
        elif op != "abandon":
            cb.record(now, op == "ok")


# --- config ------------------------------------------------------------------------------


def test_parse_defaults_and_shorthand() -> None:
    assert parse_circuit_breaker(None, "cb") == BreakerPolicy()
    assert parse_circuit_breaker({}, "cb") == BreakerPolicy()
    assert parse_circuit_breaker("off", "cb") == BreakerPolicy(enabled=False)
    assert parse_circuit_breaker(True, "cb") == ON


def test_parse_every_key() -> None:
    policy = parse_circuit_breaker(
        {
            "enabled": "yes",
            "request_volume_threshold": "5",
            "error_threshold_percentage": 12.5,
            "sleep_window": "500ms",
            "force_closed": True,
            "failure_statuses": "500, 503",
        },
        "cb",
    )
    assert policy == BreakerPolicy(
        enabled=True,
        request_volume_threshold=5,
        error_threshold_percentage=12.5,
        sleep_window=0.5,
        force_closed=True,
        failure_statuses=frozenset({500, 503}),
    )


def test_parse_names_every_problem() -> None:
    problems = problems_raised(
        parse_circuit_breaker,
        {
            "enabled": "maybe",
            "request_volume_threshold": 0,
            "error_threshold_percentage": 101,
            "sleep_window": "soon",
            "failure_statuses": [502, 200],
            "window": "10s",
        },
        "policies.default.circuit_breaker",
    )
    where = "policies.default.circuit_breaker."
    assert [p.split(":")[0] for p in problems] == [
        where + "window",
        where + "enabled",
        where + "request_volume_threshold",
        where + "error_threshold_percentage",
        where + "sleep_window",
        where + "failure_statuses",
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"enabled": True, "force_open": True, "force_closed": True}, "cb.force_closed: cannot"),
        ({"force_open": True}, "cb.enabled: force_open/force_closed need enabled"),
        ("sometimes", "cb: expected true or false"),
        ([1], "cb: expected a mapping"),
        ({"enabled": True, "error_threshold_percentage": 0}, "cb.error_threshold_percentage:"),
        ({"enabled": True, "failure_statuses": 502}, "cb.failure_statuses: expected a list"),
    ],
)
def test_parse_rejects(raw: Any, problem: str) -> None:
    problems = problems_raised(parse_circuit_breaker, raw, "cb")
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_volume_threshold": 0},
        {"error_threshold_percentage": 0.0},
        {"error_threshold_percentage": float("nan")},
        {"sleep_window": 0.0},
        {"failure_statuses": frozenset({200})},
        {"buckets": 0},
        {"window": float("inf")},
        {"force_open": True, "force_closed": True},
    ],
)
def test_policy_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(enabled=True, **kwargs)


@pytest.mark.parametrize(("value", "expected"), [(12.5, 12.5), ("100", 100.0), (" 0.5 ", 0.5)])
def test_percentage_converts(value: Any, expected: float) -> None:
    assert parse.percentage(value) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "must be more than 0 and at most 100, got 0"),
        ("100.5", "must be more than 0 and at most 100, got '100.5'"),
        (float("nan"), "must be more than 0 and at most 100, got nan"),
        (True, "expected a percentage (0-100), got True"),
        ("half", "expected a percentage (0-100), got 'half'"),
        ([50], "expected a percentage (0-100), got [50]"),
    ],
)
def test_percentage_rejects(value: Any, error: str) -> None:
    assert error_of(parse.percentage, value) == error
