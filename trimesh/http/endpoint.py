"""Per-endpoint state that attempts feed and policies read: sans-IO.

One `EndpointState` per upstream `host:port`, owned by the pool next to its
idle connections. Balancers, outlier ejection, bulkheads and metrics read it;
every attempt reports its outcome to it.
"""

from __future__ import annotations

import attrs

# Weight of the newest sample in the latency EWMA.
EWMA_ALPHA = 0.3


@attrs.define(slots=True)
class EndpointState:
    """What we know about one endpoint from the attempts made to it."""

    in_flight: int = 0
    consecutive_failures: int = 0
    successes: int = 0
    failures: int = 0
    latency_ewma: float | None = None
    ejected_until: float = 0.0

    def started(self) -> None:
        self.in_flight += 1

    def succeeded(self, latency: float) -> None:
        """A response head arrived `latency` seconds after the attempt began."""
        self.in_flight -= 1
        self.successes += 1
        self.consecutive_failures = 0
        old = self.latency_ewma
        self.latency_ewma = latency if old is None else old + EWMA_ALPHA * (latency - old)

    def failed(self) -> None:
        """No usable response: connect failure, reset, timeout or protocol error."""
        self.in_flight -= 1
        self.failures += 1
        self.consecutive_failures += 1

    def abandoned(self) -> None:
        """The attempt ended for a reason that says nothing about the endpoint."""
        self.in_flight -= 1

    def view(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "consecutive_failures": self.consecutive_failures,
            "successes": self.successes,
            "failures": self.failures,
            "latency_ewma_ms": None
            if self.latency_ewma is None
            else round(self.latency_ewma * 1000, 3),
        }
