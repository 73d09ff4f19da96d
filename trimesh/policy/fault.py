"""Fault injection: delay and/or abort a share of a service's requests. Sans-IO.

Each fault hits `percent` % of requests, drawn independently; a request hit by
both is first delayed, then aborted (as Istio and Mesher do). Randomness is
passed in as a `random.Random`, so a seeded test is exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trimesh.config import parse
from trimesh.policy.retry import _mapping, _take, fail


def _percent(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"{attribute.name} must be within [0, 100], got {value!r}")


def _error_status(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not 400 <= value <= 599:
        raise ValueError(f"{attribute.name} must be a status code 400-599, got {value!r}")


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class Abort:
    """Answer `percent` % of requests with `status` instead of forwarding them."""

    percent: float = attrs.field(validator=_percent)
    status: int = attrs.field(validator=_error_status)


@attrs.frozen
class Delay:
    """Hold `percent` % of requests for `fixed` seconds before forwarding them."""

    percent: float = attrs.field(validator=_percent)
    fixed: float = attrs.field(validator=_positive)


_NO_FAULT: tuple[float, int | None] = (0.0, None)


@attrs.frozen
class FaultPolicy:
    """The faults injected into a service's requests; both None: none."""

    abort: Abort | None = None
    delay: Delay | None = None

    def decide(self, rng: random.Random) -> tuple[float, int | None]:
        """(seconds to delay the request or 0, the status to abort it with or None)."""
        delay, abort = self.delay, self.abort
        # random() < 1, so 100 % always hits and 0 % never does.
        seconds, status = 0.0, None
        if delay is not None and rng.random() * 100.0 < delay.percent:
            seconds = delay.fixed
        if abort is not None and rng.random() * 100.0 < abort.percent:
            status = abort.status
        if not seconds and status is None:
            return _NO_FAULT
        return seconds, status


# --- config ---------------------------------------------------------------------------

_OFF = (None, False, "off")


def parse_fault(raw: Any, where: str) -> FaultPolicy:
    """`{abort: {percent: 10, status: 503}, delay: {percent: 50, fixed: 100ms}}`.

    `percent` defaults to 100 (Istio's default); `off` (or empty) for a fault means none.
    Error handling: raises the config error naming every bad key by its path.
    """
    if raw in _OFF:
        return FaultPolicy()
    problems: list[str] = []
    values = _mapping(raw, where, ("abort", "delay"), problems)
    abort = _fault(values.get("abort"), f"{where}.abort", "status", _status, problems)
    delay = _fault(values.get("delay"), f"{where}.delay", "fixed", parse.duration, problems)
    if problems:
        fail(problems)
    return FaultPolicy(
        abort=None if abort is None else Abort(**abort),
        delay=None if delay is None else Delay(**delay),
    )


def _fault(
    raw: Any, where: str, what: str, convert: Callable[[Any], Any], problems: list[str]
) -> dict[str, Any] | None:
    """One fault's `{percent, <what>}` as keyword arguments; None when off or invalid."""
    if raw in _OFF:
        return None
    known = len(problems)
    values = _mapping(raw, where, ("percent", what), problems)
    out: dict[str, Any] = {"percent": 100.0}
    _take(values, "percent", _percentage, where, problems, out)
    _take(values, what, convert, where, problems, out)
    if isinstance(raw, Mapping) and what not in raw:
        problems.append(f"{where}.{what}: required")
    return out if len(problems) == known else None


def _percentage(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage (0-100), got {value!r}")
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a percentage (0-100), got {value!r}") from None
    if not 0 <= n <= 100:
        raise ValueError(f"must be within 0-100, got {value!r}")
    return n


def _status(value: Any) -> int:
    text = str(value).strip() if isinstance(value, int | str) else ""
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a status code 400-599, got {value!r}")
    if not 400 <= int(text) <= 599:
        raise ValueError(f"must be a status code 400-599 (an error), got {value!r}")
    return int(text)
