"""Fault injection: delay and/or abort a share of a service's requests. Sans-IO.

Each fault hits `percent` % of requests, drawn independently; a request hit by
both is first delayed, then aborted (as Istio and Mesher do). Randomness is
passed in as a `random.Random`, so a seeded test is exact.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy.retry import fail


@attrs.frozen
class Abort:
    """Answer `percent` % of requests with `status` instead of forwarding them."""

    percent: float = attrs.field(validator=_checks.percentage_or_zero)
    status: int = attrs.field(validator=_checks.error_status)


@attrs.frozen
class Delay:
    """Hold `percent` % of requests for `fixed` seconds before forwarding them."""

    percent: float = attrs.field(validator=_checks.percentage_or_zero)
    fixed: float = attrs.field(validator=_checks.positive)


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
_PERCENT = functools.partial(parse.percentage, allow_zero=True)  # 0 %: the fault is inert


def parse_fault(raw: Any, where: str) -> FaultPolicy:
    """`{abort: {percent: 10, status: 503}, delay: {percent: 50, fixed: 100ms}}`.

    `percent` defaults to 100 (Istio's default); `off` (or empty) for a fault means none.
    Error handling: raises the config error naming every bad key by its path.
    """
    if raw in _OFF:
        return FaultPolicy()
    problems: list[str] = []
    values = parse.mapping(raw, where, ("abort", "delay"), problems)
    abort = _fault(values.get("abort"), f"{where}.abort", "status", parse.error_status, problems)
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
    converters: dict[str, Callable[[Any], Any]] = {"percent": _PERCENT, what: convert}
    out = parse.parse_block(raw, where, converters, problems, required={what: "required"})
    return {"percent": 100.0, **out} if len(problems) == known else None
