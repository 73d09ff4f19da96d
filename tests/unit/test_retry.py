"""Retry decisions, backoff and the retry budget: sans-IO, table-driven, fixed seeds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.unit.config_problems import assert_starts, problems_raised
from trimesh import convert as parse
from trimesh.policy.retry import (
    Backoff,
    RetryBudget,
    RetryPolicy,
    parse_budget,
    parse_retry,
)

# --- backoff ---------------------------------------------------------------------------


def test_constant_backoff_is_always_base() -> None:
    backoff = Backoff(kind="constant", base=0.1, max=0.05)
    rng = random.Random(1)
    assert [backoff.delay(i, rng) for i in range(5)] == [0.1] * 5


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 10, 1000])
def test_exponential_backoff_stays_within_full_jitter_bounds(index: int) -> None:
    backoff = Backoff(base=0.025, max=0.25)
    bound = min(0.25, 0.025 * 2**index)
    rng = random.Random(7)
    delays = [backoff.delay(index, rng) for _ in range(2000)]
    assert all(0.0 <= d <= bound for d in delays)
    # Full jitter spreads over the whole range, not just its top half.
    assert min(delays) < bound * 0.05
    assert max(delays) > bound * 0.95


def test_exponential_backoff_is_deterministic_for_a_seed() -> None:
    backoff = Backoff()
    first = [backoff.delay(i, random.Random(42)) for i in range(6)]
    again = [backoff.delay(i, random.Random(42)) for i in range(6)]
    assert first == again
    other = [backoff.delay(i, random.Random(43)) for i in range(6)]
    assert first != other


def test_negative_retry_index_counts_as_the_first_retry() -> None:
    backoff = Backoff(base=0.01, max=1.0)
    assert all(backoff.delay(-3, random.Random(s)) <= 0.01 for s in range(50))


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "linear"}, {"base": -0.1}, {"max": float("nan")}, {"max": float("inf")}],
)
def test_backoff_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# --- retry decisions -------------------------------------------------------------------

ALL = RetryPolicy(
    retry_on=frozenset({"connect-failure", "reset", "per-try-timeout", "gateway-error"}),
    statuses=frozenset({429}),
)


@pytest.mark.parametrize(
    ("policy", "kind", "retryable"),
    [
        (RetryPolicy(), "connect-failure", True),
        (RetryPolicy(), "reset", True),
        (RetryPolicy(), "per-try-timeout", False),
        (ALL, "per-try-timeout", True),
        (ALL, "protocol", False),
        (ALL, "gateway-error", False),  # a status condition, not an attempt failure
        (ALL, "upstream-timeout", False),
        (RetryPolicy(retry_on=frozenset()), "connect-failure", False),
    ],
)
def test_retryable_failure(policy: RetryPolicy, kind: str, retryable: bool) -> None:
    assert policy.retryable_failure(kind) is retryable


@pytest.mark.parametrize(
    ("policy", "status", "retryable"),
    [
        (RetryPolicy(), 502, False),
        (RetryPolicy(), 503, False),
        (ALL, 502, True),
        (ALL, 503, True),
        (ALL, 504, True),
        (ALL, 500, False),
        (ALL, 429, True),
        (ALL, 200, False),
        (RetryPolicy(statuses=frozenset({500})), 500, True),
        (RetryPolicy(statuses=frozenset({500})), 503, False),
    ],
)
def test_retryable_status(policy: RetryPolicy, status: int, retryable: bool) -> None:
    assert policy.retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("method", "replayable", "non_idempotent", "allowed"),
    [
        (b"GET", True, False, True),
        (b"HEAD", True, False, True),
        (b"OPTIONS", True, False, True),
        (b"TRACE", True, False, True),
        (b"PUT", True, False, True),
        (b"DELETE", True, False, True),
        (b"POST", True, False, False),
        (b"PATCH", True, False, False),
        (b"POST", True, True, True),
        (b"GET", False, False, False),  # the body outgrew the replay buffer
        (b"POST", False, True, False),
        (b"get", True, False, False),  # methods are case-sensitive
    ],
)
def test_allowed(method: bytes, replayable: bool, non_idempotent: bool, allowed: bool) -> None:
    policy = RetryPolicy(non_idempotent=non_idempotent)
    assert policy.allowed(method, replayable) is allowed


@pytest.mark.parametrize(
    ("policy", "max_retries", "same"),
    [
        (RetryPolicy(), 2, [False, False]),
        (RetryPolicy(attempts=0), 0, []),
        (RetryPolicy(attempts=5, retry_on_same=1, retry_on_next=2), 3, [True, False, False]),
        (RetryPolicy(retry_on_same=2), 2, [True, True]),
        (RetryPolicy(retry_on_next=0), 0, []),
        (RetryPolicy(retry_on_next=3), 3, [False, False, False]),
        (RetryPolicy(retry_on_same=0, retry_on_next=1), 1, [False]),
    ],
)
def test_max_retries_and_instance_choice(
    policy: RetryPolicy, max_retries: int, same: list[bool]
) -> None:
    assert policy.max_retries == max_retries
    assert [policy.same_instance(i) for i in range(max_retries)] == same


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": -1},
        {"retry_on_same": -1},
        {"retry_on_next": -2},
        {"retry_on": frozenset({"5xx"})},
        {"statuses": frozenset({200})},
        {"statuses": frozenset({600})},
    ],
)
def test_retry_policy_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- budget ----------------------------------------------------------------------------


def spend(budget: RetryBudget, now: float, n: int) -> int:
    """How many of `n` retries at `now` the budget grants."""
    return sum(budget.try_spend(now) for _ in range(n))


def test_budget_floor_allows_min_per_second_times_window() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    assert budget.available(0.0) == 10.0
    assert spend(budget, 0.0, 11) == 10
    assert budget.exhausted == 1
    assert budget.available(0.0) == 0.0


def test_budget_ratio_grows_with_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0)
    assert not budget.try_spend(0.0)
    for _ in range(10):
        budget.record_request(0.0)
    assert spend(budget, 0.0, 3) == 2
    for _ in range(5):
        budget.record_request(1.0)
    assert spend(budget, 1.0, 3) == 1  # 0.2 x 15 = 3 retries in all
    assert budget.exhausted == 1 + 1 + 2


def test_budget_ratio_and_floor_add_up() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.5, window=10.0)
    for _ in range(4):
        budget.record_request(0.0)
    assert spend(budget, 0.0, 10) == 7  # 0.5 x 4 + 0.5 x 10


def test_budget_forgives_float_rounding() -> None:
    budget = RetryBudget(ratio=0.29, min_per_second=0.0, window=10.0)
    for _ in range(100):
        budget.record_request(0.0)
    assert spend(budget, 0.0, 30) == 29  # 0.29 x 100 is 28.999999999999996 in floats


def test_budget_requests_leave_the_window_when_their_bucket_is_reused() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)  # buckets of 1 s
    for _ in range(4):
        budget.record_request(0.5)  # bucket [0, 1)
    budget.record_request(3.0)  # bucket [3, 4)
    assert budget.available(9.999) == 5.0
    assert budget.available(10.0) == 1.0  # bucket 0 reused: its 4 requests are gone
    assert budget.available(13.0) == 0.0
    assert not budget.try_spend(13.0)


def test_budget_spent_retries_expire_too() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10.0)  # floor of 2
    assert spend(budget, 0.0, 1) == 1
    assert spend(budget, 5.0, 2) == 1
    assert spend(budget, 9.9, 1) == 0
    assert spend(budget, 10.0, 2) == 1  # the retry of t=0 left the window
    assert spend(budget, 15.0, 2) == 1  # so did the one of t=5
    assert budget.exhausted == 1 + 1 + 1 + 1


def test_budget_long_gap_clears_everything() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    for i in range(100):
        budget.record_request(i * 0.1)
    assert budget.available(9.95) == 100.0
    assert budget.available(1e9) == 0.0
    budget.record_request(1e9 + 0.5)
    assert spend(budget, 1e9 + 0.5, 2) == 1


def test_budget_other_window_sizes_scale_buckets() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=20.0)  # buckets of 2 s
    budget.record_request(1.9)
    assert budget.available(19.9) == 1.0
    assert budget.available(20.0) == 0.0


def test_budget_clock_stepping_back_keeps_counting() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    budget.record_request(5.0)
    budget.record_request(4.0)
    assert budget.available(5.0) == 2.0
    assert budget.available(14.9) == 2.0
    assert budget.available(15.0) == 0.0


def test_budget_repr_shows_its_counts() -> None:
    budget = RetryBudget(min_per_second=0.0)
    budget.record_request(0.0)
    budget.try_spend(0.0)
    assert repr(budget) == ("<RetryBudget ratio=0.2 floor=0.0 requests=1 retries=0 exhausted=1>")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": -0.1},
        {"ratio": float("nan")},
        {"min_per_second": -1.0},
        {"min_per_second": float("inf")},
        {"window": 0.0},
    ],
)
def test_budget_rejects_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, RetryPolicy()),
        ({}, RetryPolicy()),
        (False, RetryPolicy(attempts=0)),
        ("off", RetryPolicy(attempts=0)),
        ({"attempts": 0}, RetryPolicy(attempts=0)),
        ({"attempts": "3"}, RetryPolicy(attempts=3)),
        (
            {"retry_on": ["connect-failure", "Gateway-Error", 429, "500"]},
            RetryPolicy(
                retry_on=frozenset({"connect-failure", "gateway-error"}),
                statuses=frozenset({429, 500}),
            ),
        ),
        (
            {"retry_on": "reset, per-try-timeout,503"},
            RetryPolicy(
                retry_on=frozenset({"reset", "per-try-timeout"}), statuses=frozenset({503})
            ),
        ),
        ({"retry_on": []}, RetryPolicy(retry_on=frozenset())),
        ({"retry_on_same": 1}, RetryPolicy(retry_on_same=1, retry_on_next=0)),
        ({"retry_on_next": 2}, RetryPolicy(retry_on_next=2)),
        # Merged blocks may bring both; Mesher's counts win.
        ({"attempts": 5, "retry_on_next": 1}, RetryPolicy(attempts=5, retry_on_next=1)),
        ({"non_idempotent": True}, RetryPolicy(non_idempotent=True)),
        (
            {"backoff": {"kind": "constant", "base": "100ms"}},
            RetryPolicy(backoff=Backoff(kind="constant", base=0.1)),
        ),
        (
            {"backoff": {"base": "10ms", "max": "1s"}},
            RetryPolicy(backoff=Backoff(base=0.01, max=1.0)),
        ),
        ({"backoff": {"base": 0}}, RetryPolicy(backoff=Backoff(base=0.0))),
        ({"backoff": {}}, RetryPolicy()),
    ],
)
def test_parse_retry(raw: Any, expected: RetryPolicy) -> None:
    assert parse_retry(raw, "policies.default.retry") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1], ["r: expected a mapping"]),
        ({"attempt": 2}, ["r.attempt: unknown key (expected one of attempts,"]),
        ({"attempts": -1}, ["r.attempts: expected a whole number (0 or more), got -1"]),
        ({"attempts": True}, ["r.attempts: expected a whole number"]),
        ({"attempts": 1.5}, ["r.attempts: expected a whole number"]),
        ({"retry_on": {"a": 1}}, ["r.retry_on: expected a list"]),
        (
            {"retry_on": ["reset", "5xx", 200, True]},
            ["r.retry_on[1]: unknown condition '5xx'", "r.retry_on[2]: unknown condition 200",
             "r.retry_on[3]: unknown condition True"],
        ),
        ({"retry_on_next": "x"}, ["r.retry_on_next: expected a whole number"]),
        ({"non_idempotent": "maybe"}, ["r.non_idempotent: expected true or false"]),
        ({"backoff": "fast"}, ["r.backoff: expected a mapping"]),
        ({"backoff": {"kind": "linear"}}, ["r.backoff.kind: expected one of constant"]),
        ({"backoff": {"base": "soon"}}, ["r.backoff.base: expected a duration"]),
        ({"backoff": {"max": 0}}, ["r.backoff.max: must be positive"]),
        ({"backoff": {"base": "1s", "max": "100ms"}}, ["r.backoff.max: must be at least base"]),
        ({"backoff": {"jitter": 1}}, ["r.backoff.jitter: unknown key"]),
        (
            {"attempts": "x", "budget": {}, "backoff": {"base": "x", "max": "y"}},
            ["r.budget: unknown key", "r.attempts: expected", "r.backoff.base: expected",
             "r.backoff.max: expected"],
        ),
    ],
)  # fmt: skip
def test_parse_retry_names_every_problem(raw: Any, expected: list[str]) -> None:
    assert_starts(problems_raised(parse_retry, raw, "r"), expected)


def test_parsed_constant_backoff_may_have_base_over_max() -> None:
    # max only bounds the exponential kind; a constant pause is base, whatever max says.
    policy = parse_retry({"backoff": {"kind": "constant", "base": "1s"}}, "r")
    assert policy.backoff.delay(3, random.Random(0)) == 1.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (0.2, 10.0)),
        ({}, (0.2, 10.0)),
        ({"ratio": 0.5}, (0.5, 10.0)),
        ({"ratio": 0, "min_per_second": "2.5"}, (0.0, 2.5)),
        ({"min_per_second": 0}, (0.2, 0.0)),
    ],
)
def test_parse_budget(raw: Any, expected: tuple[float, float]) -> None:
    assert parse_budget(raw, "b") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("lots", ["b: expected a mapping"]),
        ({"ratio": -1}, ["b.ratio: must be a non-negative number"]),
        ({"ratio": "nan"}, ["b.ratio: must be a non-negative number"]),
        ({"ratio": True}, ["b.ratio: expected a number"]),
        ({"ratio": [1]}, ["b.ratio: expected a number"]),
        (
            {"ttl": 10, "min_per_second": "x", "ratio": "y"},
            ["b.ttl: unknown key", "b.ratio: expected a number", "b.min_per_second: expected"],
        ),
    ],
)
def test_parse_budget_names_every_problem(raw: Any, expected: list[str]) -> None:
    assert_starts(problems_raised(parse_budget, raw, "b"), expected)


# --- the block parser the policy parsers share --------------------------------------------

CONVERTERS = {"size": parse.positive_int, "on": parse.boolean}


@pytest.mark.parametrize(
    ("raw", "kwargs", "out", "problems"),
    [
        ({"size": "3", "on": "yes"}, {}, {"size": 3, "on": True}, []),
        ({}, {}, {}, []),
        (
            {"colour": 1, "on": "maybe", "size": 0},
            {},
            {},
            [
                "b.colour: unknown key (expected one of size, on)",
                "b.size: must be positive, got 0",
                "b.on: expected true or false, got 'maybe'",
            ],
        ),
        ({"on": 1, "size": "x"}, {}, {"on": True}, ["b.size: expected a whole number, got 'x'"]),
        ([1], {}, {}, ["b: expected a mapping, got [1]"]),
        ({"extra": 1}, {"keys": ("on", "size", "extra")}, {}, []),  # the caller reads `extra`
        (
            {"colour": 1},
            {"keys": ("on", "size"), "required": {"size": "required (a count)"}},
            {},
            ["b.colour: unknown key (expected one of on, size)", "b.size: required (a count)"],
        ),
        ("x", {"required": {"size": "required"}}, {}, ["b: expected a mapping, got 'x'"]),
    ],
)
def test_parse_block(
    raw: Any, kwargs: dict[str, Any], out: dict[str, Any], problems: list[str]
) -> None:
    found: list[str] = []
    assert parse.parse_block(raw, "b", CONVERTERS, found, **kwargs) == out
    assert found == problems


@pytest.mark.parametrize(
    ("raw", "out", "problems"),
    [
        (None, {}, []),
        ("off", {"enabled": False}, []),
        (True, {"enabled": True}, []),
        ("sometimes", {}, ["b: expected true or false, got 'sometimes'"]),
        ({"size": 2}, {"size": 2}, []),
        ([], {}, ["b: expected a mapping, got []"]),
    ],
)
def test_switch_or_block(raw: Any, out: dict[str, Any], problems: list[str]) -> None:
    found: list[str] = []
    assert parse.switch_or_block(raw, "b", CONVERTERS, found) == out
    assert found == problems
