"""Endpoint state: counters and the peak-EWMA latency estimate (`trimesh.http.endpoint`)."""

from __future__ import annotations

import math

import pytest

from trimesh.http.endpoint import (
    DECAY_TAU,
    DEFAULT_RTT,
    EWMA_ALPHA,
    FAILURE_PENALTY,
    MIN_RTT,
    EndpointState,
)


def answered(state: EndpointState, latency: float, now: float | None) -> None:
    state.started()
    state.succeeded(latency, now)


def test_counters_follow_outcomes() -> None:
    state = EndpointState()
    for _ in range(3):
        state.started()
    state.succeeded(0.01, 1.0)
    state.failed(2.0)
    assert (state.in_flight, state.successes, state.failures) == (1, 1, 1)
    assert state.consecutive_failures == 1
    state.abandoned()
    assert state.in_flight == 0
    assert (state.failures, state.consecutive_failures) == (1, 1)
    answered(state, 0.01, 3.0)
    assert state.consecutive_failures == 0


def test_first_sample_is_the_estimate() -> None:
    state = EndpointState()
    assert state.peak_ewma is None
    answered(state, 0.05, 100.0)
    assert state.peak_ewma == 0.05
    assert state.estimate(100.0) == 0.05


def test_a_higher_sample_replaces_the_estimate_at_once() -> None:
    state = EndpointState()
    answered(state, 0.01, 100.0)
    answered(state, 0.5, 100.001)
    assert state.peak_ewma == 0.5


@pytest.mark.parametrize("elapsed", [0.0, 1.0, DECAY_TAU, 5 * DECAY_TAU])
def test_a_lower_sample_pulls_the_estimate_down_by_elapsed_time(elapsed: float) -> None:
    state = EndpointState()
    answered(state, 0.1, 100.0)
    answered(state, 0.01, 100.0 + elapsed)
    w = math.exp(-elapsed / DECAY_TAU)
    assert state.peak_ewma == pytest.approx(0.1 * w + 0.01 * (1 - w))


def test_recovery_takes_time_not_request_count() -> None:
    quick, slow = EndpointState(), EndpointState()
    for s in (quick, slow):
        answered(s, 0.2, 0.0)
    # Ten fast answers spread over five time constants bring the estimate near
    # the new latency; ten within 10 ms barely move it.
    for i in range(1, 11):
        answered(quick, 0.01, DECAY_TAU / 2 * i)
        answered(slow, 0.01, 0.001 * i)
    assert quick.peak_ewma == pytest.approx(0.01, abs=0.002)
    assert slow.peak_ewma is not None and slow.peak_ewma > 0.19


def test_tau_is_per_state() -> None:
    state = EndpointState(tau=1.0)
    answered(state, 0.1, 0.0)
    answered(state, 0.0, 1.0)
    assert state.peak_ewma == pytest.approx(0.1 * math.exp(-1.0))


def test_without_a_time_samples_use_the_fixed_weight() -> None:
    state = EndpointState()
    answered(state, 0.1, None)
    answered(state, 0.0, None)
    assert state.peak_ewma == pytest.approx(0.1 * (1 - EWMA_ALPHA))
    assert state.stamp is None
    assert state.estimate(1e6) == state.peak_ewma  # no time known: no fading


def test_plain_ewma_is_kept_for_metrics() -> None:
    state = EndpointState()
    answered(state, 0.1, 0.0)
    answered(state, 0.2, 1.0)
    assert state.latency_ewma == pytest.approx(0.1 + EWMA_ALPHA * 0.1)
    assert state.view()["latency_ewma_ms"] == pytest.approx(130.0)
    assert state.view()["peak_ewma_ms"] == pytest.approx(200.0)


def test_a_failure_counts_as_a_penalty_sample() -> None:
    state = EndpointState()
    answered(state, 0.001, 0.0)
    state.started()
    state.failed(0.5)
    assert state.peak_ewma == FAILURE_PENALTY
    # Worse than anything seen: a slow endpoint that fails doubles its estimate.
    slow = EndpointState()
    answered(slow, 3.0, 0.0)
    slow.started()
    slow.failed(0.5)
    assert slow.peak_ewma == 6.0


def test_a_failure_without_any_sample_is_a_penalty_too() -> None:
    state = EndpointState(failure_penalty=0.25)
    state.started()
    state.failed()
    assert state.peak_ewma == 0.25


def test_abandoned_says_nothing_about_latency() -> None:
    state = EndpointState()
    answered(state, 0.01, 0.0)
    state.started()
    state.abandoned()
    assert state.peak_ewma == 0.01


def test_cost_is_estimate_times_in_flight_plus_one() -> None:
    state = EndpointState()
    answered(state, 0.02, 10.0)
    assert state.cost(10.0) == pytest.approx(0.02)
    state.started()
    state.started()
    assert state.cost(10.0) == pytest.approx(0.06)


def test_unknown_endpoint_costs_the_default_rtt() -> None:
    state = EndpointState()
    assert state.cost(0.0) == DEFAULT_RTT
    state.started()
    assert state.cost(0.0) == 2 * DEFAULT_RTT
    assert EndpointState(default_rtt=0.05).cost(0.0) == 0.05


def test_a_zero_estimate_still_counts_in_flight() -> None:
    state = EndpointState()
    answered(state, 0.0, 0.0)
    idle = state.cost(0.0)
    state.started()
    assert idle == MIN_RTT
    assert state.cost(0.0) == 2 * MIN_RTT


def test_estimate_fades_while_idle_so_a_penalised_endpoint_is_retried() -> None:
    state = EndpointState()
    state.started()
    state.failed(0.0)
    assert state.cost(0.0) == FAILURE_PENALTY
    later = DECAY_TAU * math.log(FAILURE_PENALTY / 0.01) + 1.0
    assert state.cost(later) < 0.01  # now cheaper than a healthy 10 ms endpoint
    assert state.peak_ewma == FAILURE_PENALTY  # reading changes nothing
    assert state.estimate(-5.0) == FAILURE_PENALTY  # a clock behind the stamp does not grow it
