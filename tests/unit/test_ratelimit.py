"""Token buckets and inbound limits: sans-IO, time passed in, exact arithmetic."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.config_problems import assert_starts, error_of, problems_raised
from trimesh import convert as parse
from trimesh.policy.ratelimit import (
    InboundLimiter,
    InboundLimits,
    RateLimit,
    TokenBucket,
    parse_inbound_rate_limit,
    parse_rate_limit,
)

# --- token bucket ----------------------------------------------------------------------


def test_a_new_bucket_grants_its_burst_then_says_when() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(100.0) == pytest.approx(0.1)
    assert bucket.try_take(100.04) == pytest.approx(0.06)  # refusals take nothing
    assert bucket.try_take(100.1) == 0.0
    assert bucket.try_take(100.1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("rate", "burst", "idle", "granted"),
    [
        (10.0, 5, 0.0, 5),
        (10.0, 5, 0.25, 5),  # refilled 2.5, but it was full: never above burst
        (10.0, 5, 3600.0, 5),
        (0.5, 1, 0.0, 1),
        (100.0, 100, 0.0, 100),
    ],
)
def test_idle_time_never_fills_past_the_burst(
    rate: float, burst: int, idle: float, granted: int
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    count = 0
    while bucket.try_take(idle) == 0.0:
        count += 1
    assert count == granted


@pytest.mark.parametrize(
    ("rate", "spent_at", "asked_at", "retry_after"),
    [
        (10.0, 0.0, 0.0, 0.1),
        (10.0, 0.0, 0.03, 0.07),
        (0.5, 0.0, 0.0, 2.0),  # a fractional rate: one request every 2 s
        (0.5, 0.0, 1.5, 0.5),
        (3.0, 5.0, 5.0, 1 / 3),
    ],
)
def test_retry_after_arithmetic(
    rate: float, spent_at: float, asked_at: float, retry_after: float
) -> None:
    bucket = TokenBucket(rate, 1, spent_at)
    assert bucket.try_take(spent_at) == 0.0
    wait = bucket.try_take(asked_at)
    assert wait == pytest.approx(retry_after)
    assert bucket.try_take(asked_at + wait) == 0.0  # honest: the token is there then


def test_rounding_never_refuses_a_due_token() -> None:
    bucket = TokenBucket(10.0, 1, 0.0)
    now = 0.0
    for _ in range(1000):
        assert bucket.try_take(now) == 0.0
        now += 0.1  # accumulates float error; 0.1 x 10 per second is exactly one token


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(1.0, 1, 10.0)
    assert bucket.try_take(10.0) == 0.0
    assert bucket.try_take(5.0) == pytest.approx(1.0)
    assert bucket.try_take(10.5) == pytest.approx(0.5)
    assert repr(bucket) == "<TokenBucket rate=1.0 burst=1 tokens=0.500>"


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)])
def test_bucket_rejects_invalid_arguments(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# Gaps between takes in token intervals (1 / rate): bursts at one instant, half
# and whole tokens, idle stretches, and anything in between.
gaps = st.just(0.0) | st.sampled_from([0.5, 0.999, 1.0, 50.0]) | st.floats(0.0, 3.0)


@given(
    st.floats(min_value=0.01, max_value=1000.0),
    st.integers(min_value=1, max_value=20),
    st.lists(gaps, min_size=10, max_size=100),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any stretch of any sequence of takes, the grants stay within the budget."""
    start = 1000.0
    bucket = TokenBucket(rate, burst, start)
    now, granted = start, []
    for gap in gaps:
        now += gap / rate
        wait = bucket.try_take(now)
        assert wait >= 0.0
        if wait == 0.0:
            granted.append(now)
    assert len(granted) <= burst + rate * (now - start) + 1e-6
    for i, first in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + rate * (granted[j] - first) + 1e-6


@given(
    st.floats(min_value=0.01, max_value=1000.0),
    st.integers(min_value=1, max_value=20),
    st.lists(gaps, min_size=10, max_size=100),
)
def test_waiting_the_retry_after_is_always_enough(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for gap in gaps:
        now += gap / rate
        wait = bucket.try_take(now)
        if wait:
            now += wait
            assert bucket.try_take(now) == 0.0


# --- inbound limiter -------------------------------------------------------------------


def limiter(now: float = 0.0) -> InboundLimiter:
    limits = InboundLimits(
        overall=RateLimit(qps=10.0, burst=4),
        per_source={"web": RateLimit(qps=1.0, burst=2)},
    )
    return InboundLimiter(limits, now)


def test_a_source_is_held_to_its_own_limit_first() -> None:
    lim = limiter()
    assert [lim.check("web", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert lim.check("web", 0.0) == pytest.approx(1.0)  # its own bucket: 1 qps
    # web's refusals took nothing from the overall bucket: 2 of 4 are left.
    assert [lim.check("batch", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert lim.check(None, 0.0) == pytest.approx(0.1)  # overall: 10 qps
    assert lim.refused == 2


def test_a_source_token_is_not_refunded_when_the_overall_limit_refuses() -> None:
    lim = limiter()
    assert [lim.check(None, 0.0) for _ in range(4)] == [0.0] * 4
    assert lim.check("web", 0.0) == pytest.approx(0.1)  # overall refused
    assert lim.check("web", 0.0) == pytest.approx(0.1)
    assert lim.check("web", 0.1) == pytest.approx(0.9)  # both of web's tokens were spent


@pytest.mark.parametrize(
    ("limits", "source", "granted"),
    [
        (InboundLimits(), "web", 1000),
        (InboundLimits(), None, 1000),
        (InboundLimits(overall=RateLimit(1.0, 5)), "anyone", 5),
        (InboundLimits(per_source={"web": RateLimit(1.0, 3)}), "web", 3),
        (InboundLimits(per_source={"web": RateLimit(1.0, 3)}), "other", 1000),
        (InboundLimits(per_source={"web": RateLimit(1.0, 3)}), None, 1000),
    ],
)
def test_which_buckets_apply(limits: InboundLimits, source: str | None, granted: int) -> None:
    lim = InboundLimiter(limits, 0.0)
    count = 0
    while count < 1000 and lim.check(source, 0.0) == 0.0:
        count += 1
    assert count == granted


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        ({"qps": 100}, RateLimit(100.0, 100)),
        ({"qps": 2.5}, RateLimit(2.5, 3)),  # burst defaults to ceil(qps)
        ({"qps": 0.2}, RateLimit(0.2, 1)),  # ... and at least 1
        ({"qps": "50", "burst": "5"}, RateLimit(50.0, 5)),
    ],
)
def test_parse_rate_limit(raw: Any, limit: RateLimit) -> None:
    assert parse_rate_limit(raw, "rl") == limit


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        ({}, ["rl.qps: required"]),
        ({"burst": 5}, ["rl.qps: required"]),
        ({"qps": 0}, ["rl.qps: must be a positive number"]),
        ({"qps": "fast", "burst": 0}, ["rl.qps: expected", "rl.burst: must be positive"]),
        ({"qps": True}, ["rl.qps: expected"]),
        ({"qps": "nan"}, ["rl.qps: must be a positive number"]),
        ({"qps": 1, "brust": 2}, ["rl.brust: unknown key"]),
        (100, ["rl: expected a mapping"]),
    ],
)
def test_parse_rate_limit_names_every_problem(raw: Any, problems: list[str]) -> None:
    assert_starts(problems_raised(parse_rate_limit, raw, "rl"), problems)


def test_parse_inbound() -> None:
    assert parse_inbound_rate_limit(None, "in") == InboundLimits()
    assert parse_inbound_rate_limit({}, "in") == InboundLimits()
    assert parse_inbound_rate_limit(
        {"qps": 100, "per_source": {"web": {"qps": 10, "burst": 20}, "batch": {"qps": 1}}}, "in"
    ) == InboundLimits(
        overall=RateLimit(100.0, 100),
        per_source={"web": RateLimit(10.0, 20), "batch": RateLimit(1.0, 1)},
    )
    only = parse_inbound_rate_limit({"per_source": {"web": {"qps": 1}}}, "in")
    assert only.overall is None


def test_parse_inbound_names_every_problem() -> None:
    problems = problems_raised(
        parse_inbound_rate_limit,
        {
            "burst": 3,
            "per_sorce": {},
            "per_source": {"web": {"qps": -1}, "bad name!": {"qps": 1}, "x": {}},
        },
        "inbound.rate_limit",
    )
    where = "inbound.rate_limit."
    assert [p.split(":")[0] for p in problems] == [
        where + "per_sorce",
        where + "qps",
        where + "per_source.web.qps",
        where + "per_source.bad name!",
        where + "per_source.x.qps",
    ]


def test_parse_inbound_per_source_must_be_a_mapping() -> None:
    assert problems_raised(parse_inbound_rate_limit, {"per_source": ["web"]}, "in") == [
        "in.per_source: expected a mapping of service to limit"
    ]


@pytest.mark.parametrize("kwargs", [{"qps": 0.0, "burst": 1}, {"qps": 1.0, "burst": 0}])
def test_rate_limit_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)


@pytest.mark.parametrize(("value", "expected"), [(2, 2.0), ("0.5", 0.5), (1e-3, 0.001)])
def test_positive_number_converts(value: Any, expected: float) -> None:
    assert parse.positive_number(value) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "must be a positive number, got 0"),
        ("-1", "must be a positive number, got '-1'"),
        ("inf", "must be a positive number, got 'inf'"),
        ("nan", "must be a positive number, got 'nan'"),
        (True, "expected a number, got True"),
        (None, "expected a number, got None"),
    ],
)
def test_positive_number_rejects(value: Any, error: str) -> None:
    assert error_of(parse.positive_number, value) == error


def test_positive_number_names_what_it_expected() -> None:
    qps = functools.partial(parse.positive_number, expected="requests per second")
    assert error_of(qps, "fast") == "expected requests per second, got 'fast'"
