"""Load balancers (`trimesh.policy.balancer`): distributions with fixed seeds, stickiness, P2C."""

from __future__ import annotations

import base64
import heapq
import random
from collections import Counter
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimesh.http.endpoint import EndpointState
from trimesh.http.stream import Endpoint
from trimesh.policy.balancer import (
    COOKIE,
    STRATEGIES,
    Balancer,
    PickContext,
    cookie_value,
    make_balancer,
    parse_cookie_value,
)

NOW = PickContext(now=1000.0)


@attrs.frozen
class Candidate:
    """Shaped like `trimesh.http.route.Candidate` (kept local: the balancer needs `.endpoint`)."""

    endpoint: Endpoint
    instance_id: str


def candidates(*ports: int) -> list[Candidate]:
    return [Candidate(("127.0.0.1", p), f"i{p}") for p in ports]


class States:
    """An endpoint → state table like the pool's, recording every lookup."""

    def __init__(self) -> None:
        self.table: dict[Endpoint, EndpointState] = {}
        self.looked_up: list[Endpoint] = []

    def __call__(self, endpoint: Endpoint) -> EndpointState:
        self.looked_up.append(endpoint)
        return self.table.setdefault(endpoint, EndpointState())

    def answered(self, port: int, latency: float, now: float = NOW.now) -> None:
        state = self(("127.0.0.1", port))
        state.started()
        state.succeeded(latency, now)


def balancer(strategy: str, states: States | None = None, seed: int = 7) -> Balancer:
    return make_balancer(strategy, states or States(), random.Random(seed))


def tally(b: Balancer, cands: Sequence[Candidate], n: int, ctx: PickContext = NOW) -> Counter[int]:
    return Counter(b.pick(cands, ctx).endpoint[1] for _ in range(n))


# -- round robin, random ------------------------------------------------------------------


def test_round_robin_cycles_exactly() -> None:
    b = balancer("round_robin")
    cands = candidates(1, 2, 3)
    assert [b.pick(cands, NOW).endpoint[1] for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]


def test_round_robin_counter_is_per_balancer() -> None:
    a, b = balancer("round_robin"), balancer("round_robin")
    cands = candidates(1, 2)
    a.pick(cands, NOW)
    assert b.pick(cands, NOW).endpoint[1] == 1


def test_round_robin_stays_even_when_the_set_changes() -> None:
    b = balancer("round_robin")
    tally(b, candidates(1, 2, 3), 5)
    assert tally(b, candidates(1, 3, 4, 5), 400) == {1: 100, 3: 100, 4: 100, 5: 100}


def test_random_is_uniform() -> None:
    counts = tally(balancer("random", seed=1), candidates(1, 2, 3, 4), 10_000)
    assert set(counts) == {1, 2, 3, 4}
    for n in counts.values():
        assert abs(n - 2500) < 150  # about 3.5 standard deviations


def test_random_is_reproducible_with_a_seed() -> None:
    cands = candidates(1, 2, 3)
    first, again = balancer("random", seed=3), balancer("random", seed=3)
    assert [first.pick(cands, NOW) for _ in range(20)] == [
        again.pick(cands, NOW) for _ in range(20)
    ]


# -- weighted response --------------------------------------------------------------------


def test_weighted_response_favours_the_faster_instance() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.100)
    counts = tally(balancer("weighted_response", states), candidates(1, 2), 10_000)
    assert 7 < counts[1] / counts[2] < 13  # weights 1/10 ms : 1/100 ms


def test_weighted_response_gives_a_new_instance_the_average_weight() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.100)
    counts = tally(balancer("weighted_response", states), candidates(1, 2, 3), 16_500)
    # weights 100 and 10; the newcomer gets their mean, 55, of 165 in all
    assert abs(counts[1] - 10_000) < 250
    assert abs(counts[2] - 1_000) < 120
    assert abs(counts[3] - 5_500) < 220


def test_weighted_response_without_any_data_is_uniform() -> None:
    counts = tally(balancer("weighted_response"), candidates(1, 2, 3), 9_000)
    for n in counts.values():
        assert abs(n - 3000) < 200


def test_weighted_response_counts_failures_as_slow() -> None:
    states = States()
    states.answered(1, 0.001)
    states.answered(2, 0.050)
    failing = states(("127.0.0.1", 1))
    failing.started()
    failing.failed(NOW.now)
    counts = tally(balancer("weighted_response", states), candidates(1, 2), 5_000)
    assert counts[1] < counts[2] / 10


# -- session sticky -----------------------------------------------------------------------


def test_session_sticky_sticks_to_the_named_endpoint() -> None:
    b = balancer("session_sticky")
    ctx = PickContext(now=0.0, sticky=("127.0.0.1", 2))
    assert {b.pick(candidates(1, 2, 3), ctx).endpoint for _ in range(10)} == {("127.0.0.1", 2)}


@pytest.mark.parametrize("sticky", [None, ("127.0.0.1", 9), ("127.0.0.2", 2)])
def test_session_sticky_falls_back_to_round_robin(sticky: Endpoint | None) -> None:
    b = balancer("session_sticky")
    ctx = PickContext(now=0.0, sticky=sticky)
    assert [b.pick(candidates(1, 2, 3), ctx).endpoint[1] for _ in range(4)] == [1, 2, 3, 1]


def test_session_sticky_falls_back_when_its_instance_is_gone() -> None:
    b = balancer("session_sticky")
    ctx = PickContext(now=0.0, sticky=("127.0.0.1", 2))
    assert b.pick(candidates(1, 2), ctx).endpoint[1] == 2
    assert tally(b, candidates(1, 3), 4, ctx) == {1: 2, 3: 2}
    assert b.pick(candidates(1, 2, 3), ctx).endpoint[1] == 2  # back again: sticks again


@pytest.mark.parametrize(
    "endpoint",
    [("127.0.0.1", 8080), ("::1", 1), ("orders.internal", 65535), ("fe80::1%eth0", 443)],
)
def test_cookie_value_round_trips(endpoint: Endpoint) -> None:
    value = cookie_value(endpoint)
    assert parse_cookie_value(value) == endpoint
    assert value.isascii() and ";" not in value and "=" not in value and " " not in value
    assert endpoint[0] not in value  # opaque: not the address in clear


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "a",
        "!!!!",
        "é",
        "MTI3LjAuMC4xOjgwODA=",  # padded (we never send padding)
        "MTI3LjAu MC4xOjgwODA",
        b64(b"127.0.0.1"),
        b64(b"127.0.0.1:"),
        b64(b":8080"),
        b64(b"127.0.0.1:0"),
        b64(b"127.0.0.1:65536"),
        b64(b"127.0.0.1:999999"),
        b64(b"127.0.0.1:-1"),
        b64(b"127.0.0.1:80a"),
        b64(b"127.0.0.1: 80"),
        b64(b"bad host:80"),
        b64(b"\xff\xfe:80"),
        b64(b"a;b:80"),
        b64(b"x" * 500 + b":80"),
    ],
)
def test_junk_cookie_values_are_rejected(junk: str) -> None:
    assert parse_cookie_value(junk) is None


@given(st.from_regex(r"[A-Za-z0-9._:%-]{1,80}", fullmatch=True), st.integers(1, 65535))
def test_any_valid_endpoint_round_trips(host: str, port: int) -> None:
    assert parse_cookie_value(cookie_value((host, port))) == (host, port)


@given(st.text(max_size=80) | st.binary(max_size=60).map(b64))
def test_any_cookie_text_parses_or_is_rejected_without_raising(text: str) -> None:
    found = parse_cookie_value(text)
    if found is not None:
        assert 0 < found[1] < 65536
        assert parse_cookie_value(cookie_value(found)) == found


def test_default_cookie_name() -> None:
    assert COOKIE == "trimesh-sticky"


# -- least request (P2C over peak EWMA) ---------------------------------------------------


def test_least_request_with_one_candidate_does_not_compare() -> None:
    states = States()
    only = candidates(5)
    assert balancer("least_request", states).pick(only, NOW) == only[0]
    assert states.looked_up == []


@pytest.mark.parametrize("n", [2, 3, 5])
def test_p2c_always_compares_two_distinct_candidates(n: int) -> None:
    states = States()
    b = balancer("least_request", states)
    cands = candidates(*range(1, n + 1))
    pairs: set[tuple[Endpoint, ...]] = set()
    for _ in range(500):
        states.looked_up.clear()
        b.pick(cands, NOW)
        assert len(states.looked_up) == 2
        assert states.looked_up[0] != states.looked_up[1]
        pairs.add(tuple(states.looked_up))
    assert len(pairs) == n * (n - 1)  # every ordered pair of distinct candidates occurs


def test_least_request_avoids_the_slow_instance() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.010)
    states.answered(3, 0.200)
    counts = tally(balancer("least_request", states), candidates(1, 2, 3), 3_000)
    assert counts[3] == 0  # it loses every pair it is in
    assert abs(counts[1] - 1500) < 120


def test_least_request_sends_most_picks_to_the_fast_instance() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.050)
    states.answered(3, 0.200)
    counts = tally(balancer("least_request", states), candidates(1, 2, 3), 3_000)
    assert counts[1] > 1850  # wins every pair it is in: two thirds
    assert counts[3] == 0


def test_least_request_with_equal_latency_prefers_fewer_in_flight() -> None:
    states = States()
    for port in (1, 2):
        states.answered(port, 0.020)
    busy = states(("127.0.0.1", 1))
    for _ in range(3):
        busy.started()
    counts = tally(balancer("least_request", states), candidates(1, 2), 1_000)
    assert counts == {2: 1000}


def test_least_request_does_not_chase_an_instance_that_fails_fast() -> None:
    states = States()
    states.answered(1, 0.001)
    states.answered(2, 0.020)
    failing = states(("127.0.0.1", 1))
    failing.started()
    failing.failed(NOW.now)
    counts = tally(balancer("least_request", states), candidates(1, 2), 1_000)
    assert counts == {2: 1000}


def simulate(strategy: str, latencies: dict[int, float], requests: int) -> Counter[int]:
    """Requests arriving every millisecond; each pick feeds back its latency when it ends."""
    states = States()
    b = balancer(strategy, states, seed=11)
    cands = candidates(*latencies)
    pending: list[tuple[float, int]] = []
    counts: Counter[int] = Counter()
    for k in range(requests):
        now = k * 0.001
        while pending and pending[0][0] <= now:
            done, port = heapq.heappop(pending)
            states(("127.0.0.1", port)).succeeded(latencies[port], done)
        port = b.pick(cands, PickContext(now=now)).endpoint[1]
        states(("127.0.0.1", port)).started()
        heapq.heappush(pending, (now + latencies[port], port))
        counts[port] += 1
    return counts


def test_least_request_under_load_steers_away_from_the_slow_instance() -> None:
    latencies = {1: 0.005, 2: 0.005, 3: 0.100}
    p2c = simulate("least_request", latencies, 5_000)
    rr = simulate("round_robin", latencies, 5_000)
    assert rr[3] > 1600
    assert 0 < p2c[3] < 250  # still probed, never flooded


# -- state across candidate-set changes ---------------------------------------------------


def test_what_is_known_about_an_endpoint_survives_set_changes() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.010)
    states.answered(3, 0.200)
    b = balancer("least_request", states)
    tally(b, candidates(1, 2, 3), 100)
    # instance 2 leaves, instance 4 arrives, 3 is listed first: 3 is still known slow
    counts = tally(b, candidates(3, 1, 4), 3_000)
    assert counts[3] == 0
    assert counts[4] > 0  # a newcomer is tried at once (default estimate)
    assert states(("127.0.0.1", 3)).peak_ewma == 0.200


def test_weighted_response_keeps_weights_across_set_changes() -> None:
    states = States()
    states.answered(1, 0.010)
    states.answered(2, 0.100)
    b = balancer("weighted_response", states)
    tally(b, candidates(1, 2), 100)
    counts = tally(b, candidates(2, 5, 1), 10_000)
    assert counts[1] > 5 * counts[2]


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_picks_a_candidate(strategy: str) -> None:
    b = balancer(strategy)
    cands = candidates(1, 2, 3)
    for size in (1, 2, 3):
        assert b.pick(cands[:size], NOW) in cands[:size]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="least_request"):
        make_balancer("fastest", States(), random.Random(0))


@given(
    strategy=st.sampled_from(STRATEGIES),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=8, unique=True),
    sticky=st.none() | st.integers(1, 65535),
    seed=st.integers(0, 2**32),
)
def test_a_pick_is_always_one_of_the_candidates(
    strategy: str, ports: list[int], sticky: int | None, seed: int
) -> None:
    states = States()
    for p in ports[::2]:
        states.answered(p, p / 100_000)
    b = make_balancer(strategy, states, random.Random(seed))
    ctx = PickContext(now=NOW.now, sticky=None if sticky is None else ("127.0.0.1", sticky))
    cands = candidates(*ports)
    for _ in range(5):
        assert b.pick(cands, ctx) in cands
