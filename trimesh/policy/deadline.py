"""Deadline propagation: the `x-trimesh-deadline-ms` header, read, written and applied.

An outgoing request carries the milliseconds its caller has left; a sidecar that
receives it clamps its own timeouts to that budget, so a chain of services never
works past the first caller's deadline. Pure functions; the drivers own the clock.
"""

from __future__ import annotations

import math

HEADER = b"x-trimesh-deadline-ms"
# A budget beyond a day is a bug or a lie; it is read (and written) as a day.
CAP_MS = 86_400_000
# More digits than this cannot be a sane budget; checked before int() so a long
# field costs nothing to reject.
_MAX_DIGITS = 12


def parse(value: bytes | None) -> float | None:
    """Seconds remaining from a header value, or None if absent or malformed.

    The value is a non-negative integer count of milliseconds, optionally repeated
    as a comma-separated list (a repeated header), in which case the smallest wins.
    Never raises: anything else (signs, decimals, junk) gives None.
    """
    if value is None:
        return None
    budgets = []
    for part in value.split(b","):
        digits = part.strip(b" \t")
        if not (0 < len(digits) <= _MAX_DIGITS and digits.isdigit()):
            return None
        budgets.append(int(digits))
    return min(*budgets, CAP_MS) / 1000


def format(remaining: float) -> bytes:
    """The header value for `remaining` seconds: whole milliseconds, rounded down, >= 0."""
    if math.isnan(remaining) or remaining <= 0:
        return b"0"
    if remaining * 1000 >= CAP_MS:
        return str(CAP_MS).encode()
    return str(math.floor(remaining * 1000)).encode()


def clamp(own_timeout: float | None, propagated: float | None) -> float | None:
    """The tighter of our own timeout and a propagated budget (None: no limit)."""
    if own_timeout is None:
        return propagated
    if propagated is None:
        return own_timeout
    return min(own_timeout, propagated)
