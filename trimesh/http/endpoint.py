"""Per-endpoint state that attempts feed and policies read: sans-IO.

One `EndpointState` per upstream `host:port`, owned by the pool next to its
idle connections. Balancers, outlier ejection, bulkheads and metrics read it;
every attempt reports its outcome to it.

Besides counters and a plain latency EWMA (for metrics), it keeps a
peak-EWMA latency estimate (Finagle / Linkerd style) that the
`least_request` and `weighted_response` balancers read:

* a sample above the estimate replaces it (the peak), so a slowdown is felt
  at once;
* a sample below it pulls it down with weight `1 - exp(-elapsed / tau)`,
  where `elapsed` is the time since the previous sample, so recovery takes
  time in seconds, not a number of requests;
* a failure is a sample of `max(failure_penalty, 2 * estimate)`: it always
  counts as worse than anything the endpoint has done, so an instance that
  fails fast does not attract traffic by looking quick;
* when read, the estimate fades toward zero over the time since its last
  sample (same `tau`). Without that, a penalised instance that no balancer
  picks would never be sampled again and never recover; with it, an idle
  instance is retried once its bad reputation has faded.

Time is passed in (`now`, seconds on the drivers' clock). Without `now` a
sample decays the estimate by the fixed weight `EWMA_ALPHA`, as before, and
reads do not fade it.
"""

from __future__ import annotations

import math

import attrs

# Weight of the newest sample in the plain latency EWMA (and in the peak
# EWMA when a sample comes without a time).
EWMA_ALPHA = 0.3

# Decay time constant of the peak EWMA, seconds (Finagle's and Linkerd's default).
DECAY_TAU = 10.0

# Latency assumed for an endpoint with no sample yet, seconds: low, so a new
# instance is tried soon; `in_flight` still spreads a burst away from it.
DEFAULT_RTT = 0.001

# What one failure counts as, at least, seconds.
FAILURE_PENALTY = 1.0

# Floor of the estimate in `cost`, so a zero estimate (a mock clock, a very
# fast endpoint) still lets the in-flight count tell endpoints apart.
MIN_RTT = 1e-6


@attrs.define(slots=True)
class EndpointState:
    """What we know about one endpoint from the attempts made to it."""

    in_flight: int = 0
    consecutive_failures: int = 0
    successes: int = 0
    failures: int = 0
    latency_ewma: float | None = None
    ejected_until: float = 0.0
    # Peak-EWMA latency estimate (seconds) and the time of its last sample
    # (None until a sample came with a time).
    peak_ewma: float | None = None
    stamp: float | None = None
    tau: float = attrs.field(default=DECAY_TAU, kw_only=True)
    default_rtt: float = attrs.field(default=DEFAULT_RTT, kw_only=True)
    failure_penalty: float = attrs.field(default=FAILURE_PENALTY, kw_only=True)

    def started(self) -> None:
        self.in_flight += 1

    def succeeded(self, latency: float, now: float | None = None) -> None:
        """A response head arrived `latency` seconds after the attempt began, at `now`."""
        self.in_flight -= 1
        self.successes += 1
        self.consecutive_failures = 0
        old = self.latency_ewma
        self.latency_ewma = latency if old is None else old + EWMA_ALPHA * (latency - old)
        self.observe(latency, now)

    def failed(self, now: float | None = None) -> None:
        """No usable response: connect failure, reset, timeout or protocol error."""
        self.in_flight -= 1
        self.failures += 1
        self.consecutive_failures += 1
        self.observe(max(self.failure_penalty, 2 * (self.peak_ewma or 0.0)), now)

    def abandoned(self) -> None:
        """The attempt ended for a reason that says nothing about the endpoint."""
        self.in_flight -= 1

    def observe(self, sample: float, now: float | None = None) -> None:
        """Feed one latency sample (seconds) to the peak EWMA."""
        old = self.peak_ewma
        if now is None:
            weight = 1.0 - EWMA_ALPHA
        else:
            elapsed = 0.0 if self.stamp is None else max(now - self.stamp, 0.0)
            weight = math.exp(-elapsed / self.tau)
            self.stamp = now
        if old is None or sample > old:
            self.peak_ewma = sample
        else:
            self.peak_ewma = old * weight + sample * (1.0 - weight)

    def estimate(self, now: float) -> float | None:
        """The peak-EWMA latency faded for the time since its last sample; None if unknown."""
        if self.peak_ewma is None or self.stamp is None:
            return self.peak_ewma
        idle = max(now - self.stamp, 0.0)
        return self.peak_ewma * math.exp(-idle / self.tau)

    def cost(self, now: float) -> float:
        """Expected wait for one more request: estimate * (in flight + 1), lower is better."""
        known = self.estimate(now)
        rtt = self.default_rtt if known is None else max(known, MIN_RTT)
        return rtt * (max(self.in_flight, 0) + 1)

    def view(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "consecutive_failures": self.consecutive_failures,
            "successes": self.successes,
            "failures": self.failures,
            "latency_ewma_ms": _ms(self.latency_ewma),
            "peak_ewma_ms": _ms(self.peak_ewma),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
