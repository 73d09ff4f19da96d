"""Fault injection: seeded decisions within statistical tolerance, and its config."""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.config_problems import error_of, problems_raised
from trimesh import convert as parse
from trimesh.policy.fault import Abort, Delay, FaultPolicy, parse_fault

N = 20_000


def tally(policy: FaultPolicy, seed: int = 11) -> Counter[tuple[float, int | None]]:
    rng = random.Random(seed)
    return Counter(policy.decide(rng) for _ in range(N))


def within(count: int, percent: float) -> bool:
    """`count` of N is within 5 standard deviations of `percent` %."""
    p = percent / 100
    return abs(count - N * p) <= 5 * math.sqrt(N * p * (1 - p))


def test_no_fault_draws_nothing() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    assert FaultPolicy().decide(rng) == (0.0, None)
    assert rng.getstate() == state


@pytest.mark.parametrize(
    ("policy", "always"),
    [
        (FaultPolicy(abort=Abort(100.0, 503)), (0.0, 503)),
        (FaultPolicy(abort=Abort(0.0, 503)), (0.0, None)),
        (FaultPolicy(delay=Delay(100.0, 0.25)), (0.25, None)),
        (FaultPolicy(delay=Delay(0.0, 0.25)), (0.0, None)),
        (FaultPolicy(abort=Abort(100.0, 429), delay=Delay(100.0, 1.5)), (1.5, 429)),
    ],
)
def test_zero_and_hundred_percent_are_exact(
    policy: FaultPolicy, always: tuple[float, int | None]
) -> None:
    assert tally(policy) == {always: N}


@pytest.mark.parametrize("percent", [0.5, 10.0, 33.3, 50.0, 90.0])
def test_abort_hits_its_percentage(percent: float) -> None:
    counts = tally(FaultPolicy(abort=Abort(percent, 503)))
    assert set(counts) <= {(0.0, 503), (0.0, None)}
    assert within(counts[(0.0, 503)], percent), counts


@pytest.mark.parametrize("percent", [1.0, 25.0, 75.0])
def test_delay_hits_its_percentage(percent: float) -> None:
    counts = tally(FaultPolicy(delay=Delay(percent, 0.1)))
    assert within(counts[(0.1, None)], percent), counts


def test_abort_and_delay_are_drawn_independently() -> None:
    counts = tally(FaultPolicy(abort=Abort(10.0, 500), delay=Delay(50.0, 0.1)))
    assert within(counts[(0.1, 500)], 5.0)
    assert within(counts[(0.1, None)], 45.0)
    assert within(counts[(0.0, 500)], 5.0)
    assert within(counts[(0.0, None)], 45.0)


def test_a_seed_gives_the_same_decisions() -> None:
    policy = FaultPolicy(abort=Abort(30.0, 503), delay=Delay(30.0, 0.1))
    first = [policy.decide(random.Random(7)) for _ in range(3)]
    rng_a, rng_b = random.Random(9), random.Random(9)
    assert [policy.decide(rng_a) for _ in range(50)] == [policy.decide(rng_b) for _ in range(50)]
    assert len(set(first)) == 1


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "policy"),
    [
        (None, FaultPolicy()),
        ("off", FaultPolicy()),
        ({}, FaultPolicy()),
        (
            {"abort": {"percent": 10, "status": 503}, "delay": {"percent": "50", "fixed": "100ms"}},
            FaultPolicy(abort=Abort(10.0, 503), delay=Delay(50.0, 0.1)),
        ),
        ({"abort": {"status": "429"}}, FaultPolicy(abort=Abort(100.0, 429))),  # Istio's default
        ({"delay": {"fixed": 2}, "abort": "off"}, FaultPolicy(delay=Delay(100.0, 2.0))),
        ({"abort": {"percent": 0, "status": 500}}, FaultPolicy(abort=Abort(0.0, 500))),
    ],
)
def test_parse_fault(raw: Any, policy: FaultPolicy) -> None:
    assert parse_fault(raw, "f") == policy


def test_parse_names_every_problem() -> None:
    problems = problems_raised(
        parse_fault,
        {
            "abort": {"percent": 101, "status": 200},
            "delay": {"percent": -1, "fixd": "1s"},
            "reset": {},
        },
        "policies.services.pay.fault",
    )
    where = "policies.services.pay.fault."
    assert [p.split(":")[0] for p in problems] == [
        where + "reset",
        where + "abort.percent",
        where + "abort.status",
        where + "delay.fixd",
        where + "delay.percent",
        where + "delay.fixed",
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"abort": {"status": 200}}, "f.abort.status: must be a status code 400-599"),
        ({"abort": {"status": 600}}, "f.abort.status: must be a status code 400-599"),
        ({"abort": {"status": 99}}, "f.abort.status: must be a status code 400-599"),
        ({"abort": {"status": True}}, "f.abort.status: expected a status code"),
        ({"abort": {"status": "5xx"}}, "f.abort.status: expected a status code"),
        ({"abort": {"percent": 10}}, "f.abort.status: required"),
        ({"abort": {"percent": "ten", "status": 503}}, "f.abort.percent: expected a percentage"),
        ({"delay": {"fixed": "0s"}}, "f.delay.fixed: must be positive"),
        ({"delay": {"fixed": "soon"}}, "f.delay.fixed: expected a duration"),
        ({"delay": 5}, "f.delay: expected a mapping"),
        ([], "f: expected a mapping"),
    ],
)
def test_parse_rejects(raw: Any, problem: str) -> None:
    problems = problems_raised(parse_fault, raw, "f")
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "make",
    [
        lambda: Abort(101.0, 503),
        lambda: Abort(-0.1, 503),
        lambda: Abort(float("nan"), 503),
        lambda: Abort(10.0, 200),
        lambda: Abort(10.0, 600),
        lambda: Delay(10.0, 0.0),
        lambda: Delay(10.0, float("inf")),
    ],
)
def test_invalid_faults_cannot_be_built(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


PERCENT_OR_ZERO = functools.partial(parse.percentage, allow_zero=True)


@pytest.mark.parametrize(
    ("convert", "value", "expected"),
    [
        (PERCENT_OR_ZERO, 0, 0.0),
        (PERCENT_OR_ZERO, "100", 100.0),
        (parse.error_status, 503, 503),
        (parse.error_status, " 429 ", 429),
    ],
)
def test_converters(convert: Callable[[Any], Any], value: Any, expected: Any) -> None:
    assert convert(value) == expected


@pytest.mark.parametrize(
    ("convert", "value", "error"),
    [
        (PERCENT_OR_ZERO, -1, "must be within 0-100, got -1"),
        (PERCENT_OR_ZERO, 101, "must be within 0-100, got 101"),
        (PERCENT_OR_ZERO, False, "expected a percentage (0-100), got False"),
        (parse.error_status, 200, "must be a status code 400-599 (an error), got 200"),
        (parse.error_status, "600", "must be a status code 400-599 (an error), got '600'"),
        (parse.error_status, True, "expected a status code 400-599, got True"),
        (parse.error_status, 503.0, "expected a status code 400-599, got 503.0"),
        (parse.error_status, "-503", "expected a status code 400-599, got '-503'"),
        (parse.error_status, None, "expected a status code 400-599, got None"),
    ],
)
def test_converters_reject(convert: Callable[[Any], Any], value: Any, error: str) -> None:
    assert error_of(convert, value) == error
