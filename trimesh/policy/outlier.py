"""Outlier detection (Envoy's consecutive-failure kind): eject failing endpoints. Sans-IO.

After `consecutive_failures` failures in a row an endpoint is ejected for
`base_ejection x times` (capped at `max_ejection`), `times` counting its recent
ejections; every `base_ejection` it then stays in takes one off `times`. What
counts as a failure is the caller's decision. Time is passed in as `now`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import attrs

from trimesh import convert as parse
from trimesh.policy import _checks
from trimesh.policy.retry import fail

if TYPE_CHECKING:
    from trimesh.http.stream import Endpoint


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> Endpoint: ...


C = TypeVar("C", bound=HasEndpoint)


@attrs.frozen
class OutlierPolicy:
    """When an endpoint is ejected from its service's balancing, and for how long."""

    enabled: bool = True
    consecutive_failures: int = attrs.field(default=5, validator=_checks.positive)
    base_ejection: float = attrs.field(default=30.0, validator=_checks.positive)
    max_ejection_percent: float = attrs.field(default=50.0, validator=_checks.percentage)
    max_ejection: float = attrs.field(default=300.0, validator=_checks.positive)

    def __attrs_post_init__(self) -> None:
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection must be at least base_ejection")


class _Host:
    __slots__ = ("consecutive", "times", "until")

    def __init__(self) -> None:
        self.consecutive = 0  # failures in a row
        self.times = 0  # ejection multiplier as of `until` (decays after it)
        self.until = -math.inf  # end of the latest ejection


class OutlierDetector:
    """The endpoints of one service: failures in a row, ejections, and who is in.

    Memory: an endpoint has an entry only while it has something to remember (a
    failure streak, an ejection or an undecayed multiplier).
    """

    def __init__(self, policy: OutlierPolicy) -> None:
        self.policy = policy
        self._hosts: dict[Endpoint, _Host] = {}
        # Envoy stops growing the multiplier once base x times reaches the cap.
        self._cap = math.ceil(policy.max_ejection / policy.base_ejection)
        self._horizon = -math.inf  # no endpoint is ejected at or after this time
        self.ejections = 0  # total, for metrics

    def __repr__(self) -> str:
        return f"<OutlierDetector hosts={len(self._hosts)} ejections={self.ejections}>"

    def succeeded(self, endpoint: Endpoint, now: float) -> None:
        """A request to `endpoint` succeeded: its failure streak ends."""
        host = self._hosts.get(endpoint)
        if host is None:
            return
        host.consecutive = 0
        if host.until <= now and self._times(host, now) == 0:
            del self._hosts[endpoint]

    def failed(self, endpoint: Endpoint, now: float, total: int) -> bool:
        """A request to `endpoint` failed; True if that ejected it.

        `total` is the number of instances the service has now; an ejection that
        would leave none in, or more than `max_ejection_percent` out (beyond the
        first), is refused and the streak starts over, as Envoy does.
        """
        policy = self.policy
        if not policy.enabled:
            return False
        host = self._hosts.get(endpoint)
        if host is None:
            host = self._hosts[endpoint] = _Host()
        elif host.until > now:
            return False  # a request that started before the ejection
        host.consecutive += 1
        if host.consecutive < policy.consecutive_failures:
            return False
        allowed = self._may_eject(now, total)  # before the reset: it prunes streak-less hosts
        host.consecutive = 0
        if not allowed:
            return False
        host.times = min(self._times(host, now) + 1, self._cap)
        host.until = now + min(policy.base_ejection * host.times, policy.max_ejection)
        self._horizon = max(self._horizon, host.until)
        self.ejections += 1
        return True

    def ejected(self, endpoint: Endpoint, now: float) -> bool:
        if now >= self._horizon:
            return False
        host = self._hosts.get(endpoint)
        return host is not None and host.until > now

    def any_ejected(self, now: float) -> bool:
        """Whether an ejection may still be running (False: `available` would change nothing)."""
        return now < self._horizon

    @overload
    def available(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]: ...
    @overload
    def available(self, endpoints: Sequence[C], now: float) -> list[C]: ...

    def available(self, endpoints: Sequence[Any], now: float) -> list[Any]:
        """The endpoints (or candidates with `.endpoint`) not ejected; all if none is left."""
        if not self.any_ejected(now):
            return list(endpoints)
        found = [e for e in endpoints if not self.ejected(_key(e), now)]
        return found or list(endpoints)

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """Per `host:port`: failure streak, seconds of ejection left, multiplier (JSON-able)."""
        return {
            _name(endpoint): {
                "consecutive": host.consecutive,
                "ejected_until": max(0.0, host.until - now),
                "times": self._times(host, now),
            }
            for endpoint, host in sorted(self._hosts.items())
        }

    def _times(self, host: _Host, now: float) -> int:
        """The multiplier at `now`: one less per `base_ejection` spent in since `until`."""
        if host.times == 0 or now <= host.until:
            return host.times
        decayed = math.floor((now - host.until) / self.policy.base_ejection)
        return max(0, host.times - decayed)

    def _may_eject(self, now: float, total: int) -> bool:
        """Whether one more ejection keeps an instance in and stays within the percentage."""
        active = 0
        for endpoint, host in list(self._hosts.items()):
            if host.until > now:
                active += 1
            elif host.consecutive == 0 and self._times(host, now) == 0:
                del self._hosts[endpoint]  # nothing left to remember
        if active + 1 >= total:
            return False
        # Envoy lets one endpoint out whatever the percentage, or it would never eject
        # from a small service.
        return active == 0 or 100.0 * (active + 1) <= self.policy.max_ejection_percent * total


def _key(item: Any) -> Endpoint:
    return item if isinstance(item, tuple) else item.endpoint


def _name(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- config ---------------------------------------------------------------------------

_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "enabled": parse.boolean,
    "consecutive_failures": parse.positive_int,
    "base_ejection": parse.duration,
    "max_ejection_percent": parse.percentage,
    "max_ejection": parse.duration,
}


def parse_outlier(raw: Any, where: str) -> OutlierPolicy:
    """The `outlier` block; empty for the defaults (on), `off`/`on` as shorthand.

    Error handling: raises the config error naming every bad key by its path.
    """
    problems: list[str] = []
    out = parse.switch_or_block(raw, where, _CONVERTERS, problems)
    default = OutlierPolicy()
    base = out.get("base_ejection", default.base_ejection)
    top = out.get("max_ejection", default.max_ejection)
    if top < base:
        problems.append(
            f"{where}.max_ejection: must be at least base_ejection ({base}s), got {top}s"
        )
    if problems:
        fail(problems)
    return OutlierPolicy(**out)
