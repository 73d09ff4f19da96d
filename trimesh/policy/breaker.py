"""Circuit breaker (Hystrix semantics, as in ServiceComb Mesher / go-chassis): sans-IO.

Closed: outcomes are counted in a rolling window (`window` seconds in `buckets`
buckets). Once the window holds at least `request_volume_threshold` requests and
`error_threshold_percentage` % of them failed, the circuit opens: every request is
refused until `sleep_window` has passed. Then it is half-open: exactly one request
(the probe) goes through; its success closes the circuit with fresh counts, its
failure opens it for another `sleep_window`. Time is passed in as `now`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy._window import RollingCounts
from trimesh.policy.retry import fail

State = Literal["closed", "open", "half-open"]


@attrs.frozen
class BreakerPolicy:
    """When a service's circuit opens and for how long; off unless `enabled`."""

    enabled: bool = False
    request_volume_threshold: int = attrs.field(default=20, validator=_checks.positive)
    error_threshold_percentage: float = attrs.field(default=50.0, validator=_checks.percentage)
    sleep_window: float = attrs.field(default=15.0, validator=_checks.positive)
    force_open: bool = False
    force_closed: bool = False
    failure_statuses: frozenset[int] = attrs.field(
        default=frozenset({502, 503, 504}), validator=_checks.error_statuses
    )
    window: float = attrs.field(default=10.0, validator=_checks.positive)
    buckets: int = attrs.field(default=10, validator=_checks.positive)

    def __attrs_post_init__(self) -> None:
        if self.force_open and self.force_closed:
            raise ValueError("force_open and force_closed exclude each other")


class CircuitBreaker:
    """One service's circuit: `allow` before a request, `record` or `abandon` after it.

    Outcomes that arrive while the circuit is open come from requests let through
    before it opened; they are ignored, except that any outcome while a probe is out
    decides the probe (`record` carries no token to tell them apart). A probe that
    has reported nothing for `sleep_window` is presumed lost and another may go.
    """

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._counts = RollingCounts(policy.window, policy.buckets)  # a: requests, b: errors
        self._opened_at: float | None = None  # None: closed
        self._probe_at: float | None = None  # when the half-open probe went; None: none out
        self.opened = 0  # times the circuit opened, for metrics
        self.rejected = 0  # requests refused, for metrics

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker opened_at={self._opened_at} probe_at={self._probe_at}"
            f" requests={self._counts.a} errors={self._counts.b}>"
        )

    def allow(self, now: float) -> bool:
        """Whether a request may go now; False: answer 503 circuit-open."""
        policy = self.policy
        if not policy.enabled or policy.force_closed:
            return True
        if policy.force_open or not self._may_go(now):
            self.rejected += 1
            return False
        return True

    def _may_go(self, now: float) -> bool:
        if self._opened_at is None and not self._trip(now):
            return True
        assert self._opened_at is not None
        sleep = self.policy.sleep_window
        if now < self._opened_at + sleep:
            return False
        if self._probe_at is not None and now < self._probe_at + sleep:
            return False
        self._probe_at = now
        return True

    def record(self, now: float, ok: bool) -> None:
        """The outcome of a request `allow` let through."""
        policy = self.policy
        if not policy.enabled or policy.force_open:
            return
        if self._opened_at is None:
            if ok:
                self._counts.add(now, 1, 0)
            else:
                self._counts.add(now, 1, 1)
                if not policy.force_closed:
                    self._trip(now)
        elif self._probe_at is not None:
            self._probe_at = None
            if ok:
                self._close()
            else:
                self._opened_at = now

    def abandon(self, now: float) -> None:
        """A request `allow` let through ended with no outcome: the probe, if out, is freed."""
        if self._opened_at is not None:
            self._probe_at = None

    def state(self, now: float) -> State:
        policy = self.policy
        if not policy.enabled or policy.force_closed:
            return "closed"
        if policy.force_open:
            return "open"
        if self._opened_at is None and not self._trip(now):
            return "closed"
        assert self._opened_at is not None
        return "open" if now < self._opened_at + policy.sleep_window else "half-open"

    def retry_after(self, now: float) -> float:
        """Seconds until the next probe may go; 0 if one may go now or the circuit is closed.

        A forced-open circuit never probes: it answers `sleep_window` as a hint.
        """
        state = self.state(now)
        if state == "closed":
            return 0.0
        if self.policy.force_open:
            return self.policy.sleep_window
        assert self._opened_at is not None
        since = self._opened_at if self._probe_at is None else self._probe_at
        return max(0.0, since + self.policy.sleep_window - now)

    def is_failure_status(self, status: int) -> bool:
        return status in self.policy.failure_statuses

    def snapshot(self, now: float) -> dict[str, Any]:
        """The circuit for the admin view (JSON-able)."""
        state = self.state(now)
        requests, errors = self._counts.totals(now)
        return {
            "state": state,
            "requests": requests,
            "errors": errors,
            "error_percentage": round(100.0 * errors / requests, 1) if requests else 0.0,
            "opened_at": self._opened_at,
            "retry_after": self.retry_after(now),
            "probing": self._probe_at is not None,
            "opened": self.opened,
            "rejected": self.rejected,
        }

    def _trip(self, now: float) -> bool:
        """Open the (closed) circuit if the window is over both thresholds."""
        counts = self._counts
        counts.advance(now)
        policy = self.policy
        total = counts.a
        if total < policy.request_volume_threshold:
            return False
        if 100.0 * counts.b < policy.error_threshold_percentage * total:
            return False
        self._opened_at = now
        self._probe_at = None
        self.opened += 1
        return True

    def _close(self) -> None:
        self._opened_at = None
        self._counts.reset()


# --- config ---------------------------------------------------------------------------

_KEYS = (
    "enabled",
    "request_volume_threshold",
    "error_threshold_percentage",
    "sleep_window",
    "force_open",
    "force_closed",
    "failure_statuses",
)


def parse_circuit_breaker(raw: Any, where: str) -> BreakerPolicy:
    """The `circuit_breaker` block; empty for the defaults (off), `off`/`on` as shorthand.

    Error handling: raises the config error naming every bad key by its path.
    """
    problems: list[str] = []
    out = parse.switch_or_block(raw, where, _CONVERTERS, problems, keys=_KEYS)
    if out.get("force_open") and out.get("force_closed"):
        problems.append(f"{where}.force_closed: cannot be true with force_open")
    if (out.get("force_open") or out.get("force_closed")) and not out.get("enabled"):
        problems.append(f"{where}.enabled: force_open/force_closed need enabled: true")
    if problems:
        fail(problems)
    return BreakerPolicy(**out)


def _failure_statuses(raw: Any) -> frozenset[int]:
    """`[502, 503]` or `"502,503"` → status codes 400-599."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of status codes like [502, 503], got {raw!r}")
    out = set()
    for item in items:
        try:
            out.add(parse.error_status(item))
        except ValueError:
            raise ValueError(f"expected status codes 400-599, got {item!r}") from None
    return frozenset(out)


# Problems are listed in this order, the switches first; `_KEYS` is the documented order.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "enabled": parse.boolean,
    "force_open": parse.boolean,
    "force_closed": parse.boolean,
    "request_volume_threshold": parse.positive_int,
    "error_threshold_percentage": parse.percentage,
    "sleep_window": parse.duration,
    "failure_statuses": _failure_statuses,
}
