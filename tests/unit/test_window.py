"""RollingCounts, the bucketed window of the breaker and the retry budget: sans-IO."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimesh.policy._window import RollingCounts


def test_counts_add_up_within_one_bucket() -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    counts.add(0.1, 1, 0)
    counts.add(0.9, 2, 1)
    assert counts.totals(0.95) == (3, 1)
    assert (counts.a, counts.b) == (3, 1)


@pytest.mark.parametrize(
    ("added_at", "read_at", "kept"),
    [
        (0.5, 9.999, True),  # bucket [0, 1) is still the oldest of the ten
        (0.5, 10.0, False),  # bucket 0 is reused: its counts are gone
        (0.0, 9.0, True),
        (0.999, 10.0, False),  # leaves 9.001 s after it was added: bucket granularity
        (3.0, 12.5, True),
        (3.0, 13.0, False),
        (3.0, 1e9, False),  # a long gap empties every bucket
    ],
)
def test_a_count_leaves_when_its_bucket_is_reused(
    added_at: float, read_at: float, kept: bool
) -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    counts.add(added_at, 4, 2)
    assert counts.totals(read_at) == ((4, 2) if kept else (0, 0))


def test_only_the_buckets_that_left_are_emptied() -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    for second in range(10):
        counts.add(second + 0.5, 1, second)
    assert counts.totals(9.5) == (10, 45)
    assert counts.totals(12.0) == (7, 45 - 0 - 1 - 2)


def test_advance_moves_the_window_without_counting() -> None:
    counts = RollingCounts(window=4.0, buckets=2)  # buckets of 2 s
    counts.add(1.0, 5, 5)
    counts.add(3.0, 1, 0)
    counts.advance(4.0)
    assert (counts.a, counts.b) == (1, 0)


def test_a_clock_stepping_back_keeps_counting_in_the_current_bucket() -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    counts.add(5.0, 1, 0)
    counts.add(4.0, 1, 1)  # counted in the bucket of 5.0
    assert counts.totals(3.0) == (2, 1)
    assert counts.totals(14.9) == (2, 1)
    assert counts.totals(15.0) == (0, 0)


def test_reset_forgets_everything_and_restarts_the_window() -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    counts.add(100.0, 3, 3)
    counts.reset()
    assert (counts.a, counts.b) == (0, 0)
    counts.add(1.0, 1, 0)  # earlier than before the reset: a fresh window, not a step back
    assert counts.totals(10.999) == (1, 0)
    assert counts.totals(11.0) == (0, 0)


def test_one_bucket_is_a_tumbling_window() -> None:
    counts = RollingCounts(window=1.0, buckets=1)
    counts.add(0.2, 1, 1)
    assert counts.totals(0.99) == (1, 1)
    assert counts.totals(1.0) == (0, 0)


def test_repr_shows_the_totals() -> None:
    counts = RollingCounts(window=10.0, buckets=10)
    counts.add(2.5, 3, 1)
    assert repr(counts) == "<RollingCounts a=3 b=1 epoch=2 width=1.0>"


@pytest.mark.parametrize(
    ("window", "buckets"), [(0.0, 10), (-1.0, 10), (math.inf, 10), (math.nan, 10), (10.0, 0)]
)
def test_rejects_an_empty_window(window: float, buckets: int) -> None:
    with pytest.raises(ValueError):
        RollingCounts(window, buckets)


# --- property: the ring buffer equals a naive recount ----------------------------------

# Time moves by these steps: within a bucket, across a few, past the window, and back.
deltas = (
    st.sampled_from([0.0, 0.25, 1.0, 2.5, 10.0, -0.5, -3.0])
    | st.floats(0.0, 3.0)
    | st.floats(-2.0, 0.0)
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "totals", "reset"]),
        deltas,
        st.integers(0, 5),
        st.integers(0, 5),
    ),
    max_size=80,
)


def _naive_totals(
    events: list[tuple[int, int, int]], now_bucket: int, buckets: int
) -> tuple[int, int]:
    """Sum every event whose bucket is one of the last `buckets` up to `now_bucket`."""
    kept = [(a, b) for bucket, a, b in events if now_bucket - buckets < bucket <= now_bucket]
    return sum(a for a, _ in kept), sum(b for _, b in kept)


@settings(max_examples=300)
@given(
    window=st.sampled_from([1.0, 2.5, 10.0, 0.3]),
    buckets=st.integers(1, 12),
    start=st.floats(0.0, 1e6),
    ops=operations,
)
def test_totals_equal_a_naive_recount_of_the_last_window(
    window: float, buckets: int, start: float, ops: list[tuple[str, float, int, int]]
) -> None:
    counts = RollingCounts(window, buckets)
    width = window / buckets
    events: list[tuple[int, int, int]] = []  # (bucket counted in, a, b)
    newest: int | None = None  # the window's bucket: the clock never moves it back
    now = start
    for op, delta, a, b in ops:
        now = max(0.0, now + delta)
        if op == "reset":
            counts.reset()
            events.clear()
            newest = None
            continue
        bucket = math.floor(now / width)
        newest = bucket if newest is None else max(newest, bucket)
        if op == "add":
            counts.add(now, a, b)
            events.append((newest, a, b))
        else:
            assert counts.totals(now) == _naive_totals(events, newest, buckets)
        assert (counts.a, counts.b) == _naive_totals(events, newest, buckets)
