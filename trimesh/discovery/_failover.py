"""Registry deadlines and endpoint failover, shared by the etcd and Service Center backends.

A registry call has one deadline, owned by whoever makes the call (the
session, or a backend for the calls its watch makes on its own). Within it,
`first_answer` tries the endpoints in `EndpointOrder` and gives each attempt
an equal share of what is left (`attempt_share`), so a member that accepts
connections and never answers costs a share, not the whole deadline, and the
next member is still tried.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import trio

from trimesh.discovery.base import RegistryUnavailable

__all__ = ["MIN_ATTEMPT", "EndpointOrder", "attempt_share", "call_deadline", "first_answer"]

log = logging.getLogger("trimesh.discovery")

Endpoint = tuple[str, int]
T = TypeVar("T")

# No attempt gets less than this, even when that leaves the later endpoints
# little: a share too short to connect on a healthy network helps nobody.
MIN_ATTEMPT = 0.1


@contextmanager
def call_deadline(seconds: float, what: str = "") -> Iterator[None]:
    """Run the block under a deadline of `seconds`; expiry raises `RegistryUnavailable`.

    A registry that does not answer in time is unavailable, like one that
    refuses the connection: the caller backs off and tries again. `what`
    prefixes the error message.
    """
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        prefix = f"{what}: " if what else ""
        raise RegistryUnavailable(f"{prefix}no answer within {seconds:g} s") from None


def attempt_share(remaining: float, left: int) -> float:
    """How long one endpoint may take: an equal part of `remaining` over the `left` to try."""
    if math.isinf(remaining):
        return math.inf
    return max(MIN_ATTEMPT, remaining / max(1, left))


class EndpointOrder:
    """Sans-IO: which endpoint to try first (the last one that answered), then the rest in order."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self.endpoints = tuple(endpoints)
        self._current = 0

    def __repr__(self) -> str:
        host, port = self.current
        return f"current={host}:{port} of {len(self.endpoints)}"

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self._current]

    def order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._current + step) % count for step in range(count)]

    def answered(self, index: int) -> None:
        self._current = index

    def skip(self) -> None:
        """The current endpoint failed outside `first_answer`: start with the next one."""
        self._current = (self._current + 1) % len(self.endpoints)


async def first_answer(
    order: EndpointOrder,
    attempt: Callable[[Endpoint], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    what: str,
) -> T:
    """The result of `attempt` on the first endpoint that answers, within the caller's deadline.

    Error handling: an attempt raising one of `retry_on`, or using up its
    share, moves on to the next endpoint; when none answered,
    `RegistryUnavailable` (from the last failure). Anything else propagates
    at once. Without a caller deadline each attempt is unbounded.
    """
    indices = order.order()
    last: Exception | None = None
    for tried, index in enumerate(indices):
        host, port = order.endpoints[index]
        remaining = trio.current_effective_deadline() - trio.current_time()
        share = attempt_share(remaining, len(indices) - tried)
        failure: Exception = RegistryUnavailable(f"no answer within {share:.2f} s")
        with trio.move_on_after(share):
            try:
                result = await attempt((host, port))
            except retry_on as exc:
                failure = exc
            else:
                order.answered(index)
                return result
        log.info("%s %s:%s failed: %s", what, host, port, failure)
        last = failure
    raise RegistryUnavailable(f"no {what} endpoint answered: {last}") from last
