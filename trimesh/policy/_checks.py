"""attrs validators shared by the policy models; each raises ValueError naming the field.

They guard objects built in code; config values are checked first by the converters
of `trimesh.convert`, which give the key path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _rule(holds: Callable[[Any], bool], rule: str) -> Validator:
    """A validator raising "<field> <rule>, got <value>" unless `holds(value)`."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not holds(value):
            raise ValueError(f"{attribute.name} {rule}, got {value!r}")

    return check


positive = _rule(lambda v: math.isfinite(v) and v > 0, "must be positive")
non_negative = _rule(lambda v: math.isfinite(v) and v >= 0, "must be a non-negative number")
# A count that may be None (not set).
count = _rule(lambda v: v is None or not v < 0, "must not be negative")
percentage = _rule(lambda v: 0 < v <= 100, "must be within (0, 100]")
percentage_or_zero = _rule(lambda v: 0 <= v <= 100, "must be within [0, 100]")
error_status = _rule(
    lambda v: not isinstance(v, bool) and 400 <= v <= 599, "must be a status code 400-599"
)


def at_least(low: float) -> Validator:
    """A validator for a finite number of at least `low`."""
    return _rule(lambda v: math.isfinite(v) and v >= low, f"must be at least {low}")


def error_statuses(_: Any, attribute: attrs.Attribute[Any], value: frozenset[int]) -> None:
    """Every code in the set is an error status, 400-599."""
    if any(not 400 <= s <= 599 for s in value):
        raise ValueError(f"{attribute.name}: status codes must be 400-599, got {sorted(value)}")
