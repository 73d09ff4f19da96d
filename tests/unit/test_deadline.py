"""The propagated deadline header: parse, format, clamp; sans-IO and table-driven."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimesh.policy import deadline


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (b"0", 0.0),
        (b"1", 0.001),
        (b"1500", 1.5),
        (b"007", 0.007),
        (b" 250\t", 0.25),
        (b"86400000", 86400.0),
        (b"86400001", 86400.0),  # capped at a day
        (b"999999999999", 86400.0),
        (b"1000, 200", 0.2),  # a repeated header: the tightest budget wins
        (b"200,1000", 0.2),
        (b"", None),
        (b" ", None),
        (b"-1", None),
        (b"+5", None),
        (b"1.5", None),
        (b"1e3", None),
        (b"0x10", None),
        (b"12ms", None),
        (b"1 000", None),
        (b"1000,", None),
        (b",", None),
        (b"1000, abc", None),
        (b"\xd9\xa3", None),  # ARABIC-INDIC DIGIT THREE in UTF-8
        (b"\xff", None),
        (b"9999999999999", None),  # 13 digits: not a budget
        (b"9" * 5000, None),
    ],
)
def test_parse(value: bytes | None, seconds: float | None) -> None:
    assert deadline.parse(value) == seconds


@given(st.binary(max_size=40))
def test_parse_never_raises_and_stays_in_range(value: bytes) -> None:
    seconds = deadline.parse(value)
    assert seconds is None or 0.0 <= seconds <= 86400.0


@pytest.mark.parametrize(
    ("remaining", "value"),
    [
        (1.5, b"1500"),
        (0.25, b"250"),
        (0.0, b"0"),
        (0.0009, b"0"),  # floor: never promise more than is left
        (0.9999, b"999"),
        (30.0, b"30000"),
        (-3.0, b"0"),
        (float("-inf"), b"0"),
        (float("nan"), b"0"),
        (86400.0, b"86400000"),
        (1e12, b"86400000"),
        (float("inf"), b"86400000"),
    ],
)
def test_format(remaining: float, value: bytes) -> None:
    assert deadline.format(remaining) == value


@given(st.floats(min_value=0.0, max_value=86399.0))
def test_format_then_parse_loses_under_a_millisecond(remaining: float) -> None:
    seconds = deadline.parse(deadline.format(remaining))
    assert seconds is not None
    assert remaining - 0.001 <= seconds <= remaining or math.isclose(seconds, remaining)


@pytest.mark.parametrize(
    ("own", "propagated", "clamped"),
    [
        (None, None, None),
        (30.0, None, 30.0),
        (None, 2.5, 2.5),
        (30.0, 2.5, 2.5),
        (1.0, 2.5, 1.0),
        (5.0, 0.0, 0.0),  # a spent budget stays spent
        (0.5, 0.5, 0.5),
    ],
)
def test_clamp(own: float | None, propagated: float | None, clamped: float | None) -> None:
    assert deadline.clamp(own, propagated) == clamped


def test_header_name_is_lower_case_as_h11_delivers_it() -> None:
    assert deadline.HEADER == b"x-trimesh-deadline-ms"
