"""Two counters summed over a rolling window of time buckets: sans-IO, fixed memory.

The circuit breaker counts requests and errors in one, the retry budget requests
and retries. Time is passed in as `now` (seconds, any monotonic origin).
"""

from __future__ import annotations

from math import floor, isfinite


class RollingCounts:
    """Counters `a` and `b` over the last `window` seconds, in `buckets` buckets.

    A bucket covers `window / buckets` seconds of the clock (bucket n starts at
    n x width), so a count leaves the totals when its bucket is reused, between
    `window - width` and `window` seconds after it was added. `a` and `b` are the
    totals as of the last `add`, `advance` or `totals`; `advance(now)` first to read
    them at `now` without building a tuple. Every call is O(1) while the clock stays
    in one bucket and O(buckets) at most.
    """

    __slots__ = ("_a", "_b", "_epoch", "_size", "_slot", "_width", "a", "b")

    def __init__(self, window: float, buckets: int) -> None:
        if not (isfinite(window) and window > 0):
            raise ValueError(f"window must be positive, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        self._width = window / buckets
        self._size = buckets
        self._a = [0] * buckets
        self._b = [0] * buckets
        self.a = 0
        self.b = 0
        self._epoch: int | None = None  # number of the current bucket since time 0
        self._slot = 0  # index of the current bucket in `_a` and `_b`

    def __repr__(self) -> str:
        return f"<RollingCounts a={self.a} b={self.b} epoch={self._epoch} width={self._width}>"

    def add(self, now: float, a: int, b: int) -> None:
        """Count `a` and `b` more in the bucket of `now`."""
        epoch = floor(now / self._width)
        if epoch != self._epoch:
            self._move(epoch)
        slot = self._slot
        self._a[slot] += a
        self._b[slot] += b
        self.a += a
        self.b += b

    def advance(self, now: float) -> None:
        """Move the window to `now`, so that `a` and `b` are the totals at `now`."""
        epoch = floor(now / self._width)
        if epoch != self._epoch:
            self._move(epoch)

    def totals(self, now: float) -> tuple[int, int]:
        """`(a, b)` summed over the window at `now`."""
        self.advance(now)
        return self.a, self.b

    def reset(self) -> None:
        """Forget every count; the next call starts the window afresh."""
        for slot in range(self._size):
            self._a[slot] = self._b[slot] = 0
        self.a = self.b = 0
        self._epoch = None
        self._slot = 0

    def _move(self, epoch: int) -> None:
        """Make bucket `epoch` current, emptying the buckets that left the window."""
        last = self._epoch
        if last is None:
            last = epoch
        elif epoch < last:
            return  # a clock that steps back (it should not) keeps counting in the current bucket
        size = self._size
        for step in range(1, min(epoch - last, size) + 1):
            slot = (last + step) % size
            self.a -= self._a[slot]
            self.b -= self._b[slot]
            self._a[slot] = self._b[slot] = 0
        self._epoch = epoch
        self._slot = epoch % size
